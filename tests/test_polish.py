"""polish.py: the selection rule, the length floor, the output schema, rounds, resume after a
kill and after a torn line, merging rank parts, and one real run on the toy model.

Bookkeeping tests replace polish.generate by a scripted stand-in that answers the toy's
addition problems with chosen chains (exploratory, summary-style, wrong, truncated, ...).
"""
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest

import data
import parts
import polish
import toy
from sample import Completion

REPO = Path(__file__).resolve().parents[1]
TOK = None   # the toy tokenizer, set by the `toy_dir` fixture (or by drive())

EXPLORE = "Let me add. Wait, the carry. Hmm, let me check that again: {c}.\n</think>\n\nThe answer is \\boxed{{{c}}}."
SUMMARY = "Adding column by column from the right and carrying gives {c} as the sum.\n</think>\n\n\\boxed{{{c}}}."
NO_THINK = "Adding column by column from the right and carrying gives the sum \\boxed{{{c}}}."
SHORT = "ok\n</think>\\boxed{{{c}}}"


def chain(kind: str, c: int) -> tuple:
    """(text, finish_reason) of a scripted sample for a problem whose answer is c."""
    if kind == "wrong":
        return EXPLORE.format(c=c + 1), "stop"
    if kind == "truncated":
        return EXPLORE.format(c=c), "length"
    return {"explore": EXPLORE, "summary": SUMMARY, "no_think": NO_THINK, "short": SHORT}[kind].format(c=c), "stop"


def scripted(plan, delay: float = 0.0):
    """A stand-in for sample.generate: plan(a, b, sample, call) -> a chain kind, where call counts
    how often the problem was sampled. Tokens come back through the callback in two pieces."""
    seen = Counter()

    def gen(model, prompts, n=1, callback=None, **kw):
        outs = []
        for p in prompts:
            a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", TOK.decode(p)).groups())
            seen[(a, b)] += 1
            for j in range(n):
                text, fin = chain(plan(a, b, j, seen[(a, b)]), a + b)
                ids = TOK.encode(text) + ([TOK.eos_id] if fin == "stop" else [])
                outs.append(Completion(ids, [0.0] * len(ids), fin))
                callback(len(outs) - 1, ids[:3], None)
                callback(len(outs) - 1, ids[3:], fin)
            time.sleep(delay)
        return outs
    gen.seen = seen
    return gen


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    global TOK
    d = str(tmp_path_factory.mktemp("toy") / "model")
    toy.build_model_dir(d, hidden=32, layers=1)
    TOK = data.Tokenizer.from_pretrained(d)
    return d


def make_sums(n: int, seed: int) -> list:
    """Distinct two-number problems "What is a + b?" (the scripted sampler reads a and b back)."""
    rng, rows = random.Random(seed), {}
    while len(rows) < n:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows[(a, b)] = {"problem": f"What is {a} + {b}?", "answer": str(a + b), "solution": f"{a} + {b} = {a + b}"}
    return list(rows.values())


def task(tmp_path, n: int) -> tuple[str, list]:
    recs = make_sums(n, seed=3)
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path), recs


def run(monkeypatch, toy_dir, data_path, out, plan, *flags) -> Counter:
    fake = scripted(plan)
    monkeypatch.setattr(polish, "generate", fake)
    polish.main(["--model", toy_dir, "--data", data_path, "--out", str(out), "--samples", "4",
                 "--min-tokens", "12", "--workers", "1", "--chunk", "2", *flags])
    return fake.seen


def rows_of(path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def exits(capsys, argv, code: int = 2) -> str:
    """polish.main(argv) must end with exit status `code`; its stderr."""
    with pytest.raises(SystemExit) as e:
        polish.main(argv)
    assert e.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


class NoWeights:
    """Stands in for polish.Transformer where a test must end before any weights are loaded."""

    @classmethod
    def from_pretrained(cls, *args, **kw):
        raise AssertionError("the weights were loaded")


# ----------------------------------------------------------------------------- rules

def test_selection_rule_prefers_exploratory_chains():
    assert polish.markers("Wait, hmm. Let me check. Alternatively x; double-check y. So 5.") == 5
    assert polish.markers("no markers here </think> wait, let me check") == 0   # reasoning only
    assert polish.score("wait " * 3, 1500) == pytest.approx(2.0)                # per 1k tokens
    assert polish.pick([(0.0, 900), (3.0, 100), (3.0, 200), (3.0, 200)]) == 2   # score, longer, first


def test_floor_default_and_cap():
    assert polish.default_floor(131072, 8192) == 2048      # R1-Distill-Qwen, 8K budget
    assert polish.default_floor(131072, 200_000) == 32768  # a quarter of max_position_embeddings
    assert polish.default_floor(1024, 32) == 8


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        polish.parse_config(["--help"])
    text = capsys.readouterr().out
    for f in fields(polish.Config):
        assert "--" + f.name.replace("_", "-") in text
    assert "shortest acceptable chain" in text


# ----------------------------------------------------------------------------- bookkeeping

def test_rows_schema_acceptance_and_selection(tmp_path, monkeypatch, toy_dir, capsys):
    data_path, recs = task(tmp_path, 4)
    script = {0: ["wrong", "summary", "explore", "explore"], 1: ["wrong"] * 4,
              2: ["truncated", "no_think", "short", "wrong"], 3: ["summary"] * 4}
    index = {(int(a), int(b)): i for i, r in enumerate(recs)
             for a, b in [re.search(r"(\d+) \+ (\d+)", r["problem"]).groups()]}
    assert len(TOK.encode(SHORT.format(c=99))) < 12 <= len(TOK.encode(SUMMARY.format(c=0)))
    run(monkeypatch, toy_dir, data_path, tmp_path / "out.jsonl", lambda a, b, j, k: script[index[a, b]][j])
    rows = rows_of(tmp_path / "out.jsonl")
    assert [r["problem"] for r in rows] == [r["problem"] for r in recs]        # input order
    for r, rec in zip(rows, recs):
        assert r["original_solution"] == rec["solution"] and r["answer"] == rec["answer"]
        assert {"polished", "samples", "correct", "pass_rate", "tokens", "model", "seed"} <= set(r["polish"])
    m = [r["polish"] for r in rows]
    c0 = int(recs[0]["answer"])
    assert rows[0]["solution"] == EXPLORE.format(c=c0) and m[0]["polished"]
    assert (m[0]["correct"], m[0]["accepted"], m[0]["pass_rate"]) == (3, 3, 0.75)
    assert m[0]["tokens"] == len(TOK.encode(rows[0]["solution"])) and m[0]["score"] > m[0]["accepted_score"]
    assert not m[1]["polished"] and m[1]["pass_rate"] == 0 and m[1]["tokens"] == 0
    assert rows[1]["solution"] == recs[1]["solution"]                          # unpolished: original kept
    # truncated or under the floor: correct, not accepted; without </think> (R1 template): not correct
    assert not m[2]["polished"] and (m[2]["correct"], m[2]["pass_rate"]) == (2, 0.5)
    assert m[3]["polished"] and m[3]["pass_rate"] == 1.0 and m[3]["score"] == 0.0
    out = capsys.readouterr()
    assert "4/4 problems" in out.err and "2 polished (50.0%)" in out.out and "selection" in out.out
    # data.py stats reads the output
    data.main(["stats", str(tmp_path / "out.jsonl"), "--model", toy_dir])
    text = capsys.readouterr().out
    assert "polished: 2 of 4 (50.0%)" in text and "0.0:1" in text and "1.0:1" in text


def test_rounds_resample_only_unsolved(tmp_path, monkeypatch, toy_dir):
    data_path, recs = task(tmp_path, 3)
    hard = tuple(map(int, re.search(r"(\d+) \+ (\d+)", recs[1]["problem"]).groups()))
    never = tuple(map(int, re.search(r"(\d+) \+ (\d+)", recs[2]["problem"]).groups()))
    seen = run(monkeypatch, toy_dir, data_path, tmp_path / "o.jsonl",
               lambda a, b, j, k: "wrong" if (a, b) == never or ((a, b) == hard and k == 1) else "explore",
               "--rounds", "3", "--max-new-tokens", "32", "--min-tokens", "-1")
    m = [r["polish"] for r in rows_of(tmp_path / "o.jsonl")]
    assert [(x["rounds"], x["samples"], x["polished"]) for x in m] == [(1, 4, True), (2, 8, True), (3, 12, False)]
    assert m[1]["pass_rate"] == 0.5 and sorted(seen.values()) == [1, 2, 4]   # + the never solved one's guided round
    assert (m[2]["method"], m[2]["guided_rounds"], m[2]["guided_samples"]) == ("none", 1, 4)
    assert m[0]["min_tokens"] == 8                          # min(1024, 32) // 4 for the toy


def test_torn_line_and_resume(tmp_path, monkeypatch, toy_dir):
    data_path, recs = task(tmp_path, 5)
    out = tmp_path / "o.jsonl"
    run(monkeypatch, toy_dir, data_path, out, lambda *a: "explore")
    full = out.read_text().splitlines(keepends=True)
    out.unlink()
    part = tmp_path / "o.rank0-of-1.jsonl"
    part.write_text("".join(full[:2]) + full[2][:40])                   # killed mid-write
    seen = run(monkeypatch, toy_dir, data_path, out, lambda *a: "explore")
    assert len(seen) == 3 and not part.exists()                         # only the unfinished ones
    assert out.read_text().splitlines(keepends=True) == full
    part.write_text("".join(full[:2]) + "\0" * 30 + "\n")               # garbage after a crash
    assert parts.read_rows(str(part), repair=True) == [json.loads(x) for x in full[:2]]
    assert part.read_text() == "".join(full[:2])
    part.write_text(full[0] + "{broken\n" + full[1])                    # not the last line: an error
    with pytest.raises(data.DataError, match=r"o.rank0-of-1.jsonl:2"):
        parts.read_rows(str(part))


def test_merge_parts_and_world_size_change(tmp_path, monkeypatch, toy_dir, capsys):
    data_path, recs = task(tmp_path, 5)
    out = tmp_path / "o.jsonl"
    run(monkeypatch, toy_dir, data_path, out, lambda *a: "summary")
    full = out.read_text().splitlines(keepends=True)
    out.unlink()
    for r in range(2):                                                  # what two ranks leave
        (tmp_path / f"o.rank{r}-of-2.jsonl").write_text("".join(reversed(full[r::2])))
    polish.main(["merge", "--data", data_path, "--out", str(out)])
    assert out.read_text().splitlines(keepends=True) == full and not parts.part_files(str(out))
    assert "5 problems: 5 polished" in capsys.readouterr().out
    out.unlink()
    (tmp_path / "o.rank0-of-2.jsonl").write_text("".join(full[0::2]))   # rank 1 never finished
    assert "2 of 5 problems have no row yet" in exits(capsys, ["merge", "--data", data_path, "--out", str(out)])
    seen = run(monkeypatch, toy_dir, data_path, out, lambda *a: "summary")   # resumed on 1 GPU
    assert len(seen) == 2 and out.read_text().splitlines(keepends=True) == full
    other = tmp_path / "other.jsonl"                                    # another input, same --out
    other.write_text("".join(json.dumps(r) + "\n" for r in make_sums(3, seed=99)))
    with pytest.raises(SystemExit):
        run(monkeypatch, toy_dir, str(other), out, lambda *a: "summary")
    assert "matches no problem" in capsys.readouterr().err


def drive(argv):
    """Subprocess entry for the kill test: polish.main with a slow scripted sampler."""
    global TOK
    TOK = data.Tokenizer.from_pretrained(argv[argv.index("--model") + 1])
    signal.signal(signal.SIGINT, signal.default_int_handler)   # a shell may start us with SIGINT ignored
    polish.generate = scripted(lambda *a: "explore", delay=0.25)
    polish.Transformer = StubModel              # the stand-in sampler needs no weights
    polish.main(argv)


class StubModel:
    config = SimpleNamespace(max_position_embeddings=1024, eos_token_id=[])

    @classmethod
    def from_pretrained(cls, *args, **kw):
        return cls()

    def eval(self):
        return self


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["kill", "ctrl-c", "sigterm"])
def test_kill_and_restart(sig, tmp_path, monkeypatch, toy_dir):
    """Killed, interrupted (Ctrl-C: exit 130 and one line) or stopped by a scheduler (SIGTERM:
    exit 143 and one line) at any moment: the same command finishes the rest."""
    data_path, recs = task(tmp_path, 10)
    out, part = tmp_path / "o.jsonl", tmp_path / "o.rank0-of-1.jsonl"
    args = ["--model", toy_dir, "--data", data_path, "--out", str(out), "--samples", "2",
            "--min-tokens", "0", "--workers", "1", "--chunk", "3"]
    code = f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]; " \
           "import test_polish; test_polish.drive(sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and (not part.exists() or part.read_text().count("\n") < 3):
        assert proc.poll() is None, "polish.py exited before it was killed"
        time.sleep(0.05)
    proc.send_signal(sig)
    err = proc.communicate()[1]
    if sig != signal.SIGKILL:
        how = "interrupted" if sig == signal.SIGINT else "stopped by SIGTERM"
        assert proc.returncode == 128 + sig and "Traceback" not in err
        assert err.splitlines()[-1].startswith(f"polish.py: {how}: the rows finished so far are kept in {part}")
    text = part.read_text()
    lines = text.splitlines()
    assert 3 <= len(lines) < 10 and not out.exists()
    done = [json.loads(x)["polish"]["id"] for x in (lines if text.endswith("\n") else lines[:-1])]
    seen = run(monkeypatch, toy_dir, data_path, out, lambda *a: "explore", "--samples", "2")
    ids = [r["polish"]["id"] for r in rows_of(out)]
    assert ids == [polish.problem_id(i, r["problem"]) for i, r in enumerate(recs)]   # each once, in order
    assert len(seen) == 10 - len(done)


def test_real_model_end_to_end_and_errors(tmp_path, toy_dir, capsys):
    data_path, recs = task(tmp_path, 2)
    out = tmp_path / "o.jsonl"
    polish.main(["--model", toy_dir, "--data", data_path, "--out", str(out), "--samples", "2",
                 "--max-new-tokens", "4", "--workers", "1"])
    rows = rows_of(out)
    assert len(rows) == 2 and all(r["polish"]["samples"] == 2 for r in rows)
    assert "generation" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(recs[0]) + "\n" + json.dumps({"problem": "x"}) + "\n")
    err = exits(capsys, ["--model", toy_dir, "--data", str(bad), "--out", str(tmp_path / "b.jsonl")])
    assert err.startswith("polish.py: error: ") and "bad.jsonl:2: field 'answer'" in err
    assert "--out is required" in exits(capsys, ["--model", toy_dir, "--data", data_path])


# ----------------------------------------------------------------------------- --think

def test_think_flag_decides_chains_without_close_tag(tmp_path, monkeypatch, toy_dir):
    """The toy uses the R1 template: --think auto requires </think>, --think no does not."""
    data_path, recs = task(tmp_path, 2)
    assert len(TOK.encode(NO_THINK.format(c=99))) >= 12                 # over the --min-tokens 12 floor
    for think, polished, correct in (("no", True, 4), ("auto", False, 0)):
        out = tmp_path / f"{think}.jsonl"
        run(monkeypatch, toy_dir, data_path, out, lambda *a: "no_think", "--think", think)
        m = [r["polish"] for r in rows_of(out)]
        assert [(x["polished"], x["correct"]) for x in m] == [(polished, correct)] * 2, think


# ----------------------------------------------------------------------------- failing fast

BAD_FLAGS = [   # (flags, what stderr must say: flag and value)
    (["--samples", "0"], "--samples must be >= 1, not 0"),
    (["--rounds", "0"], "--rounds must be >= 1, not 0"),
    (["--chunk", "0"], "--chunk must be >= 1, not 0"),
    (["--workers", "0"], "--workers must be >= 1, not 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, not 0"),
    (["--prompt-budget", "0"], "--prompt-budget must be >= 1, not 0"),
    (["--min-tokens", "-2"], "--min-tokens must be >= -1, not -2"),
    (["--max-rows", "-1"], "--max-rows must be >= 0, not -1"),
    (["--kv-gib", "-1"], "--kv-gib must be >= 0.0, not -1.0"),
    (["--kv-gib", "inf"], "--kv-gib must be a finite number, not inf"),
    (["--temperature", "nan"], "--temperature must be a finite number, not nan"),
    (["--temperature", "-0.5"], "--temperature must be >= 0.0, not -0.5"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1], not 1.5"),
    (["--top-p", "0"], "--top-p must be in (0, 1], not 0.0"),
    (["--think", "maybe"], "--think must be one of auto, yes, no, not 'maybe'"),
    (["--template", "llama3"], "--template must be one of deepseek-r1, chatml"),
    (["--min-tokens", "60", "--max-new-tokens", "50"], "--min-tokens 60 is over --max-new-tokens 50"),
    (["--temperature", "0"], "--temperature 0 is greedy decoding: --samples 8 and --rounds 1"),
    (["--temperature", "0", "--samples", "1", "--rounds", "2"], "--samples 1 and --rounds 2 would repeat"),
    (["--model", "MISSING"], "--model MISSING: no such folder"),
    (["--data", "MISSING"], "--data MISSING: no such file or folder"),
    (["--out", "DATA"], "is --data: the merge would overwrite the input"),
    (["--out", "TMP"], "is a folder; name a file in it"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_flags_are_checked_before_anything_is_read(flags, message, tmp_path, monkeypatch, toy_dir, capsys):
    data_path, _ = task(tmp_path, 2)
    monkeypatch.setattr(polish, "Transformer", NoWeights)
    monkeypatch.setattr(polish, "load_problems", NoWeights.from_pretrained)   # nor --data
    monkeypatch.setattr(polish, "load_records", NoWeights.from_pretrained)    # (merge without --model)
    swap = {"MISSING": str(tmp_path / "missing"), "DATA": data_path, "TMP": str(tmp_path)}
    flags = [swap.get(f, f) for f in flags]
    err = exits(capsys, ["--model", toy_dir, "--data", data_path, "--out", str(tmp_path / "o.jsonl"), *flags])
    line = err.splitlines()[-1]                                  # argparse's usage, then one error line
    assert line.startswith("polish.py: error: --") and message.replace("MISSING", str(tmp_path / "missing")) in line
    assert not list(tmp_path.glob("o*.jsonl"))


def test_out_inside_a_data_folder_is_refused(tmp_path, toy_dir, capsys):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps(make_sums(1, seed=1)[0]) + "\n")
    err = exits(capsys, ["--model", toy_dir, "--data", str(folder), "--out", str(folder / "polished.jsonl")])
    assert "is inside the --data folder" in err


def test_model_folder_and_kv_budget_checked_before_the_weights(tmp_path, monkeypatch, toy_dir, capsys):
    data_path, _ = task(tmp_path, 2)
    monkeypatch.setattr(polish, "Transformer", NoWeights)
    args = ["--data", data_path, "--out", str(tmp_path / "o.jsonl"), "--max-new-tokens", "64"]
    err = exits(capsys, ["--model", toy_dir, *args, "--kv-gib", "1e-6"])
    assert "--kv-gib 1e-06 is too small for the longest prompt (31 tokens) + --max-new-tokens 64: " in err
    assert "holds no sequence of 95 tokens, which needs" in err and err.count("\n") == 1
    broken = tmp_path / "broken"
    shutil.copytree(toy_dir, broken)
    (broken / "config.json").write_text('{"model_type": "qwen2"')
    err = exits(capsys, ["--model", str(broken), *args])
    assert err.count("\n") == 1 and f"polish.py: error: {broken / 'config.json'}:1:" in err and "not valid JSON" in err
    (broken / "tokenizer.json").unlink()
    assert "no tokenizer.json" in exits(capsys, ["--model", str(broken), *args])


# ----------------------------------------------------------------------------- --prompt-budget

def test_prompts_over_the_budget_are_dropped_listed_and_counted(tmp_path, monkeypatch, toy_dir, capsys):
    recs = make_sums(4, seed=3)
    recs[1]["problem"] += " Explain carefully." * 5           # 31 tokens of prompt -> 126
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out, long_id = tmp_path / "o.jsonl", polish.problem_id(1, recs[1]["problem"])
    n = len(data.prompt_ids(TOK, recs[1]["problem"]))
    assert all(len(data.prompt_ids(TOK, r["problem"])) <= 64 < n for r in recs[:1] + recs[2:])
    seen = run(monkeypatch, toy_dir, str(path), out, lambda *a: "explore", "--prompt-budget", "64")
    assert len(seen) == 3 and [r["problem"] for r in rows_of(out)] == [recs[i]["problem"] for i in (0, 2, 3)]
    cap = capsys.readouterr()
    assert f"1 of 4 problems dropped, their prompt is over --prompt-budget 64 tokens:\n  {long_id} ({n} tokens)" \
        in cap.err
    assert "1 problems dropped: prompt over --prompt-budget 64 tokens" in cap.out
    # merge by hand: with --model the dropped problem is expected to have no row; without, it is missing
    polish.main(["merge", "--model", toy_dir, "--data", str(path), "--out", str(out), "--prompt-budget", "64"])
    assert "1 problems dropped" in capsys.readouterr().out
    assert "only when merge is given --model" in exits(capsys, ["merge", "--data", str(path), "--out", str(out)])
    # a larger budget later: only the dropped problem is sampled, and it joins the output in its place
    seen = run(monkeypatch, toy_dir, str(path), out, lambda *a: "explore", "--prompt-budget", "1024")
    assert len(seen) == 1 and [r["problem"] for r in rows_of(out)] == [r["problem"] for r in recs]
    monkeypatch.setattr(polish, "Transformer", NoWeights)     # every prompt over: refused before the weights
    err = exits(capsys, ["--model", toy_dir, "--data", str(path), "--out", str(tmp_path / "x.jsonl"),
                         "--prompt-budget", "8"])
    assert err.splitlines()[-1] == (f"polish.py: error: {path}: no problem fits the 8-token prompt budget "
                                    "(--prompt-budget); the shortest prompt has 31 tokens")   # data.load_problems


# ----------------------------------------------------------------------------- NaN and Ctrl-C

def nan_model(toy_dir, folder) -> str:
    """A copy of the toy checkpoint whose weights are all NaN."""
    import torch
    from model import Transformer
    shutil.copytree(toy_dir, folder)
    m = Transformer.from_pretrained(str(folder))
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(float("nan"))
    m.save_pretrained(str(folder))
    return str(folder)


def test_non_finite_logits_end_with_one_line_naming_the_model(tmp_path, monkeypatch, toy_dir, capsys):
    """sample.generate raises FloatingPointError on non-finite logits: polish.py must not turn
    that into an exit 0 with empty chains and a 0% pass rate."""
    data_path, _ = task(tmp_path, 2)
    folder = nan_model(toy_dir, tmp_path / "nan")

    def non_finite(model, prompts, **kw):
        raise FloatingPointError("generate: the model's logits are not finite (log-prob nan) at the prefill")
    monkeypatch.setattr(polish, "generate", non_finite)
    err = exits(capsys, ["--model", folder, "--data", data_path, "--out", str(tmp_path / "o.jsonl"), "--workers", "1"])
    assert err.splitlines()[-1] == (f"polish.py: error: --model {folder}: generate: the model's logits are not "
                                    "finite (log-prob nan) at the prefill (rows finished so far are kept in "
                                    f"{tmp_path / 'o.rank0-of-1.jsonl'})")
    assert not (tmp_path / "o.jsonl").exists() and (tmp_path / "o.rank0-of-1.jsonl").read_text() == ""


def test_nan_weights_with_the_real_sampler(tmp_path, toy_dir, capsys):
    """The same through sample.generate itself, once it checks the logits."""
    import torch
    from model import Transformer
    from sample import generate
    folder = nan_model(toy_dir, tmp_path / "nan")
    try:
        generate(Transformer.from_pretrained(folder), [[1, 2, 3]], max_new_tokens=2, temperature=0.6, seed=0)
    except FloatingPointError:
        pass
    else:
        pytest.skip("sample.generate does not raise FloatingPointError on NaN logits yet")
    data_path, _ = task(tmp_path, 2)
    torch.manual_seed(0)
    err = exits(capsys, ["--model", folder, "--data", data_path, "--out", str(tmp_path / "o.jsonl"),
                         "--workers", "1", "--max-new-tokens", "4"])
    assert err.splitlines()[-1].startswith(f"polish.py: error: --model {folder}: ")
    assert "not finite" in err.splitlines()[-1] and "rows finished so far are kept in" in err


def test_ctrl_c_keeps_a_resumable_part(tmp_path, monkeypatch, toy_dir, capsys):
    data_path, recs = task(tmp_path, 5)
    clean = tmp_path / "clean.jsonl"
    run(monkeypatch, toy_dir, data_path, clean, lambda *a: "explore")
    fake = scripted(lambda *a: "explore")
    calls = []

    def interrupted(model, prompts, **kw):           # Ctrl-C during the second generate call
        calls.append(len(prompts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake(model, prompts, **kw)
    monkeypatch.setattr(polish, "generate", interrupted)
    out, part = tmp_path / "o.jsonl", tmp_path / "o.rank0-of-1.jsonl"
    argv = ["--model", toy_dir, "--data", data_path, "--out", str(out), "--samples", "4",
            "--min-tokens", "12", "--workers", "1", "--chunk", "2"]
    capsys.readouterr()
    err = exits(capsys, argv, code=130)
    assert err.splitlines()[-1] == (f"polish.py: interrupted: the rows finished so far are kept in {part}; "
                                    "run the same command again to continue from them")
    assert len(rows_of(part)) == 2 and not out.exists()
    seen = run(monkeypatch, toy_dir, data_path, out, lambda *a: "explore")    # the same command again
    assert len(seen) == 3 and out.read_text() == clean.read_text()
