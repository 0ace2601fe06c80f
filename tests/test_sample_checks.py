"""sample.py failing fast: generate()'s argument checks, NaN/inf logits, the prefill grouping,
and the CLI's flag checks, prompt budget and one-line errors (tiny models, CPU, seconds)."""
import json

import pytest
import torch

import sample
import toy
from model import Transformer
from sample import generate, prefill_groups
from test_sample import PROMPTS, tiny


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


# ----------------------------------------------------------------------------- prefill grouping

def test_prefill_groups_sort_by_length_and_respect_the_budget():
    # lengths 3, 3, 5, 10 sorted (ties in queue order); 2 x 3 = 6 fits 12, 3 x 5 = 15 does not;
    # 2 x 10 = 20 does not either; a prompt over the budget is a group of its own
    assert prefill_groups({0: 5, 1: 3, 2: 3, 3: 10}, budget=12) == [[1, 2], [0], [3]]
    assert prefill_groups({7: 40}, budget=12) == [[7]]
    assert prefill_groups({4: 2, 9: 2, 1: 2}, budget=6) == [[4, 9, 1]]          # 3 x 2 = 6: exactly
    assert prefill_groups({}, budget=6) == []
    lengths = {p: len(q) for p, q in enumerate(PROMPTS * 7)}
    groups = prefill_groups(lengths, budget=64)
    assert sorted(p for g in groups for p in g) == sorted(lengths)               # each prompt once
    assert all(len(g) == 1 or len(g) * max(lengths[p] for p in g) <= 64 for g in groups)


# ----------------------------------------------------------------------------- generate's arguments

BAD_ARGS = [
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature=-0.5), ValueError, "temperature"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=float("nan")), ValueError, "top_p"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(n=0), ValueError, "n must"),
    (dict(n=2.0), TypeError, "n must"),
    (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(kv_budget=1.5e9), TypeError, "kv_budget"),
    (dict(kv_budget=0), ValueError, "kv_budget"),
    (dict(max_rows=-1), ValueError, "max_rows"),
    (dict(max_rows=0), ValueError, "max_rows"),        # None is "no cap"; 0 is a mistake
    (dict(check_every=0), ValueError, "check_every"),
    (dict(prefill_tokens=0), ValueError, "prefill_tokens"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(stop_ids=[3, 1.5]), TypeError, r"stop_ids\[1\]"),
    (dict(stop_ids=torch.tensor([3.0])), TypeError, "stop_ids"),
    (dict(callback=3), TypeError, "callback"),
    (dict(prompts=[[5, 1.7]]), TypeError, r"prompts\[0\]\[1\]"),   # not truncated to 1
    (dict(prompts=[[5], [1, 96]]), ValueError, r"prompts\[1\].*outside the vocabulary"),
    (dict(prompts=[[-1]]), ValueError, "outside the vocabulary"),
    (dict(prompts=[[1, 2], []]), ValueError, r"prompts\[1\] is empty"),
    (dict(prompts=[]), ValueError, "prompts is empty"),
    (dict(prompts="hello"), TypeError, "prompts"),
    (dict(prompts=torch.tensor([[1.0, 2.0]])), TypeError, r"prompts\[0\]"),
]


@pytest.mark.parametrize("kw,error,match", BAD_ARGS, ids=[str(k)[:40] for k, _, _ in BAD_ARGS])
def test_generate_refuses_bad_arguments_by_name(kw, error, match):
    kw = dict(dict(prompts=[[5, 6, 7]], max_new_tokens=4, kv_budget=2**20), **kw)
    with pytest.raises(error, match=match):
        generate(tiny(), **kw)


def test_kv_budget_message_uses_readable_units():
    # one row: K and V x 2 layers x 2 KV heads x 8 dims x 300 tokens x 4 bytes = 75.0 KiB
    with pytest.raises(ValueError, match=r"the KV budget of 9\.8 KiB holds no sequence of 300 tokens, which needs "
                                         r"75\.0 KiB of KV cache \(the longest prompt, 200 tokens, \+ max_new_tokens"):
        generate(tiny(), [list(range(50)) * 4], max_new_tokens=100, kv_budget=10_000)


def test_kv_budget_rule_is_one_reading_of_gib_and_one_check():
    """--kv-gib at every entry point is GiB through kv_budget_of (0 or None: generate()'s default
    budget); kv_budget_problem is generate()'s own check, made by the CLIs before loading weights."""
    assert sample.kv_budget_of(0) is None and sample.kv_budget_of(0.0) is None and sample.kv_budget_of(None) is None
    assert sample.kv_budget_of(1.5) == 3 * 2**29
    cfg, f32 = tiny().config, torch.float32
    per_row = sample.KVCache.bytes_per_row(cfg, 300, f32)
    assert per_row == 2 * 2 * 2 * 8 * 300 * 4
    assert sample.kv_budget_problem(cfg, None, 300, f32) == ""              # the default: sized later
    assert sample.kv_budget_problem(cfg, per_row, 300, f32) == ""
    assert sample.kv_budget_problem(cfg, per_row - 1, 300, f32).startswith("the KV budget of 75.0 KiB holds no")
    generate(tiny(), [list(range(50)) * 4], max_new_tokens=100, kv_budget=per_row)   # exactly one row fits


def test_stop_ids_as_a_tensor_or_an_int_stop_like_a_list():
    m = tiny("qwen2", seed=1)
    kw = dict(n=2, max_new_tokens=24, temperature=1.0, seed=3)
    free = generate(m, PROMPTS, stop_ids=[], **kw)
    stop = free[0].tokens[5]                      # a token that some completion samples
    want = [(o.tokens, o.finish_reason) for o in generate(m, PROMPTS, stop_ids=[stop], **kw)]
    assert "stop" in {why for _, why in want}
    for ids in (torch.tensor([stop]), torch.tensor(stop), stop):
        got = generate(m, PROMPTS, stop_ids=ids, **kw)
        assert [(o.tokens, o.finish_reason) for o in got] == want


def test_max_rows_none_is_no_cap():
    st = {}
    generate(tiny(), PROMPTS, n=3, max_new_tokens=2, max_rows=None, stats=st)
    assert st["rows"] == 3 * len(PROMPTS)
    generate(tiny(), PROMPTS, n=3, max_new_tokens=2, max_rows=4, stats=st)
    assert st["rows"] == 4


def test_chunk_buffers_are_no_wider_than_max_new_tokens(monkeypatch):
    made = []

    class Spy(sample._Decoder):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            made.append(self)
    monkeypatch.setattr(sample, "_Decoder", Spy)
    generate(tiny(), PROMPTS, n=2, max_new_tokens=3, check_every=16, stop_ids=[])
    generate(tiny(), PROMPTS, n=2, max_new_tokens=40, check_every=16, stop_ids=[])
    assert [tuple(d.u.shape) for d in made] == [(10, 3), (10, 16)]       # (rows, chunk)
    assert made[0].tok.shape == made[0].lp.shape == (10, 3)


# ----------------------------------------------------------------------------- non-finite logits

def test_nan_logits_at_the_prefill_raise():
    m = tiny()
    with torch.no_grad():
        m.norm.weight[0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"not finite \(log-prob nan\) at the prefill of sequence \d"):
        generate(m, PROMPTS, max_new_tokens=8, temperature=0.7, seed=0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_inf_logits_at_a_decode_step_raise(temperature):
    """A token the run samples at new-token index k (and nowhere before) gets an inf embedding:
    the prefill and steps up to k stay finite, the step that reads it (decode step k + 1, in the
    second chunk of 4) has NaN logits, and generate() says which step and sequence."""
    m = tiny()
    prompt, kw = [5, 6, 7], dict(max_new_tokens=12, temperature=temperature, seed=0, stop_ids=[], check_every=4)
    clean = generate(m, [prompt], **kw)[0].tokens
    k = next(k for k in range(4, 12) if clean[k] not in prompt + clean[:k])
    with torch.no_grad():
        m.embed_tokens.weight[clean[k]] = float("inf")
    with pytest.raises(FloatingPointError, match=rf"decode step {k + 1} of sequence 0 \(prompt 0, sample 0\)"):
        generate(m, [prompt], **kw)


# ----------------------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy")
    toy.build_model_dir(str(path / "m"), layers=1, hidden=32)
    recs = toy.make_task(3, seed=0)
    recs[1]["problem"] = "What is " + " + ".join(["5"] * 50_000) + "?"   # 200 KB, ~100K tokens
    with open(path / "d.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    return path


BAD_FLAGS = [
    (["--temperature", "nan"], "--temperature must be a finite number, not nan"),
    (["--temperature", "-1"], "--temperature must be >= 0.0, not -1.0"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1], not 1.5"),
    (["--top-k", "-2"], "--top-k must be >= 0, not -2"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, not 0"),
    (["--max-rows", "0"], "--max-rows must be >= 1, not 0"),
    (["--kv-gib", "-1"], "--kv-gib must be >= 0.0, not -1.0"),
    (["--kv-gib", "inf"], "--kv-gib must be a finite number, not inf"),
    (["--prompt-budget", "0"], "--prompt-budget must be >= 1, not 0"),
    (["--prompt", "  "], "--prompt is empty"),
    (["--samples", "2"], "unrecognized arguments: --samples 2"),     # evaluate.py's flag
    (["--model", "nope"], "--model nope: no such folder"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_cli_checks_flags_before_loading_anything(flags, message, model_dir, monkeypatch, capsys):
    monkeypatch.chdir(model_dir)
    monkeypatch.setattr(sample.Tokenizer, "from_pretrained", pytest.fail)
    monkeypatch.setattr(sample.Transformer, "from_pretrained", pytest.fail)
    with pytest.raises(SystemExit) as e:
        sample.main(["--model", "m", "--prompt", "What is 1 + 2?", *flags])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "sample.py: error: " + message


def test_cli_kv_gib_0_is_the_default_and_too_little_fails_before_loading(model_dir, monkeypatch, capsys):
    """--kv-gib 0 is generate()'s default budget, as in train.py and polish.py; a budget that holds
    no sequence is one line from kv_budget_problem before any weight is read."""
    monkeypatch.chdir(model_dir)
    assert sample.parse_flags(["--model", "m", "--prompt", "hi", "--kv-gib", "0"]).kv_gib == 0.0
    assert sample.parse_flags(["--model", "m", "--prompt", "hi"]).kv_gib == 0.0
    seen = {}
    real = sample.generate

    def spy(model, prompts, **kw):
        seen.update(kw)
        return real(model, prompts, **kw)
    monkeypatch.setattr(sample, "generate", spy)
    sample.main(["--model", "m", "--prompt", "What is 1 + 2?", "--max-new-tokens", "2", "--kv-gib", "0"])
    assert seen["kv_budget"] is None
    monkeypatch.setattr(sample.Transformer, "from_pretrained", pytest.fail)
    with pytest.raises(SystemExit) as e:
        sample.main(["--model", "m", "--prompt", "What is 1 + 2?", "--max-new-tokens", "4", "--kv-gib", "1e-6"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith("sample.py: error: --kv-gib 1e-06: the KV budget of 1.0 KiB holds no sequence of "
                             "18 tokens")
    assert err[0].endswith("(the longest prompt, 14 tokens, + --max-new-tokens 4): raise --kv-gib or lower "
                           "--max-new-tokens")


def test_cli_prompt_over_the_budget_is_one_line(model_dir, monkeypatch, capsys):
    monkeypatch.chdir(model_dir)
    monkeypatch.setattr(sample.Transformer, "from_pretrained", pytest.fail)
    with pytest.raises(SystemExit) as e:
        sample.main(["--model", "m", "--prompt", "What is 1 + 2?", "--prompt-budget", "5"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith("--prompt is 14 tokens, over --prompt-budget 5")


def test_cli_nan_model_is_one_line_naming_the_folder(model_dir, tmp_path, capsys):
    m = Transformer.from_pretrained(str(model_dir / "m"))
    with torch.no_grad():
        m.norm.weight.fill_(float("nan"))
    m.save_pretrained(str(tmp_path / "nan"))
    toy.write_tokenizer(str(tmp_path / "nan"))
    with pytest.raises(SystemExit) as e:
        sample.main(["--model", str(tmp_path / "nan"), "--prompt", "What is 1 + 2?", "--max-new-tokens", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"sample.py: error: --model {tmp_path / 'nan'}: generate: the model's logits are not finite")


def test_cli_data_runs_evaluate_py_with_a_notice(model_dir, monkeypatch, capsys):
    """`sample.py --data` is evaluate.py under its old name: a notice, then evaluate.py's own
    checks and messages (its flags, its program name)."""
    monkeypatch.chdir(model_dir)
    with pytest.raises(SystemExit) as e:
        sample.main(["--model", "m", "--data", "nope.jsonl", "--samples", "2"])
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("sample.py --data is now evaluate.py: running python evaluate.py --model m --data nope.jsonl "
                      "--samples 2")
    assert err[-1] == "evaluate.py: error: --data nope.jsonl: no such file or folder"
