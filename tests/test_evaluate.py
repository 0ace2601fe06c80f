"""evaluate.py on a toy model and canned completions (CPU, seconds): the reward of each sample,
pass@k and the CI against hand-computed numbers, rows in file order, the CLI's flag checks and
prompt budget, torchrun sharding against one process, and `sample.py --data` still running it."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate
import toy
from data import Tokenizer, load_records
from model import Transformer
from sample import Completion
from test_sample_checks import model_dir  # noqa: F401  (a fixture: toy model m/, d.jsonl with a 200 KB problem)


REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def test_pass_at_k_and_summary():
    pass_at_k = evaluate.pass_at_k
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)                 # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0
    rows = [dict(correct=[True, False, False, False], lengths=[10, 20, 30, 40],
                 finish=["stop", "stop", "length", "stop"]),
            dict(correct=[True, True, True, False], lengths=[5, 5, 5, 5], finish=["stop"] * 4)]
    s = evaluate.summarize(rows, 4)
    assert s["pass@1"] == pytest.approx(0.5)
    assert s["pass@1_ci95"] == pytest.approx(1.96 * math.sqrt(0.125) / math.sqrt(2))  # sd of .25, .75
    assert s["pass@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["pass@4"] == pytest.approx(1.0)
    assert s["mean_length"] == pytest.approx(15.0) and s["truncated"] == pytest.approx(1 / 8)


def test_evaluate_grades_rows_in_problem_order(tmp_path, monkeypatch):
    """evaluate() with canned completions: the stop token is dropped before grading, a record's
    `answers` list counts, the problem's text reads a bare choice letter, require_think needs
    </think>, and rows/summary come back per problem."""
    toy.write_tokenizer(str(tmp_path))
    tok = Tokenizer.from_pretrained(str(tmp_path))
    eos = tok.eos_ids[0]
    replies = {  # per problem: n = 2 replies, (text, finished with the stop token)
        "p0": [("so </think> \\boxed{12}", True), ("\\boxed{12}", False)],   # 2nd lacks </think>
        "p1": [("</think> \\boxed{0.5}", True), ("</think> \\boxed{3}", True)],
        "p2": [("</think> \\boxed{7}", False), ("</think> nothing", False)],
        "Pick one. (A) 5 (B) 12": [("</think> \\boxed{B}", True), ("</think> \\boxed{A}", True)]}
    recs = [dict(problem="p0", answer="12"), dict(problem="p1", answer="1/2", answers=["1/2", "3"]),
            dict(problem="p2", answer="8"), dict(problem="Pick one. (A) 5 (B) 12", answer="12")]
    seen = {}

    def fake_generate(model, prompts, n, callback=None, **kw):
        seen.update(kw, n=n, prompts=prompts)
        outs = []
        for p in prompts:
            for text, stopped in replies[tok.decode(p)]:
                ids = tok.encode(text) + ([eos] if stopped else [])
                outs.append(Completion(ids, [0.0] * len(ids), "stop" if stopped else "length"))
        return outs
    monkeypatch.setattr(evaluate, "generate", fake_generate)
    recs = [dict(r, prompt_ids=tok.encode(r["problem"])) for r in recs]
    rows, s = evaluate.evaluate(None, tok, recs, n=2, require_think=True, workers=1, max_new_tokens=9,
                                temperature=0.6)
    assert seen["n"] == 2 and seen["max_new_tokens"] == 9 and seen["temperature"] == 0.6
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert [r["correct"] for r in rows] == [[True, False], [True, True], [False, False], [True, False]]
    assert rows[0]["responses"][0] == "so </think> \\boxed{12}"              # no stop token text
    assert rows[2]["finish"] == ["length", "length"] and rows[1]["pass@1"] == 1.0
    assert list(rows[0]) == ["index", "problem", "answer", "pass@1", "correct", "lengths", "finish", "responses"]
    assert s["pass@1"] == pytest.approx((0.5 + 1 + 0 + 0.5) / 4) and s["truncated"] == pytest.approx(3 / 8)
    _, s = evaluate.evaluate(None, tok, recs[:1], n=2, require_think=False, workers=1)
    assert s["pass@1"] == 1.0                                               # </think> not asked for


# ----------------------------------------------------------------------------- the CLI

BAD_FLAGS = [
    (["--temperature", "nan"], "--temperature must be a finite number, not nan"),
    (["--temperature", "-1"], "--temperature must be >= 0.0, not -1.0"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1], not 1.5"),
    (["--top-k", "-2"], "--top-k must be >= 0, not -2"),
    (["--samples", "0"], "--samples must be >= 1, not 0"),
    (["--n", "0"], "--samples must be >= 1, not 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, not 0"),
    (["--max-rows", "0"], "--max-rows must be >= 1, not 0"),
    (["--kv-gib", "-0.5"], "--kv-gib must be >= 0.0, not -0.5"),
    (["--kv-gib", "nan"], "--kv-gib must be a finite number, not nan"),
    (["--prompt-budget", "0"], "--prompt-budget must be >= 1, not 0"),
    (["--workers", "0"], f"--workers must be between 1 and {2 * (os.cpu_count() or 1)} (twice this machine's "
                         "CPUs), not 0"),
    (["--out", "no/such/dir/r.jsonl"], "--out no/such/dir/r.jsonl: its folder does not exist"),
    (["--data", "nope.jsonl"], "--data nope.jsonl: no such file or folder"),
    (["--model", "nope"], "--model nope: no such folder"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_cli_checks_flags_before_loading_anything(flags, message, model_dir, monkeypatch, capsys):  # noqa: F811
    monkeypatch.chdir(model_dir)
    monkeypatch.setattr(Tokenizer, "from_pretrained", pytest.fail)
    monkeypatch.setattr(Transformer, "from_pretrained", pytest.fail)
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--model", "m", "--data", "d.jsonl", *flags])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "evaluate.py: error: " + message


def test_cli_drops_prompts_over_the_budget_before_generating(model_dir, monkeypatch, capsys):  # noqa: F811
    """A 200 KB problem used to be prefilled in full (~100K tokens of quadratic attention, minutes
    on CPU); it is dropped at load time, counted, and the rows keep their file index. --kv-gib 0
    is generate()'s default budget."""
    monkeypatch.chdir(model_dir)
    seen, budgets = [], []
    real = evaluate.generate

    def spy(model, prompts, **kw):
        seen.extend(map(len, prompts))
        budgets.append(kw["kv_budget"])
        assert max(seen) <= 1024, "a prompt over the budget reached generate()"   # fail fast, not after minutes
        return real(model, prompts, **kw)
    monkeypatch.setattr(evaluate, "generate", spy)
    evaluate.main(["--model", "m", "--data", "d.jsonl", "--max-new-tokens", "4", "--workers", "1",
                   "--out", "r.jsonl", "--kv-gib", "0"])
    out, err = capsys.readouterr()
    assert len(seen) == 2 and max(seen) <= 1024 and budgets == [None]
    assert json.loads(out.splitlines()[-1])["over_prompt_budget"] == 1
    assert "evaluate.py: d.jsonl: dropped 1 of 3 problems, over the 1024-token prompt budget" in err
    assert [json.loads(line)["index"] for line in open(model_dir / "r.jsonl")] == [0, 2]


def test_problems_are_not_deduplicated_so_rows_keep_their_file_index(tmp_path, capsys):
    toy.write_tokenizer(str(tmp_path))
    tok = Tokenizer.from_pretrained(str(tmp_path))
    rows = [{"problem": "What is 1 + 1?", "answer": "2"}, {"problem": "What is 1 + 1?", "answer": "2"},
            {"problem": "What is " + " + ".join(["5"] * 600) + "?", "answer": "3000"},
            {"problem": "What is 2 + 2?", "answer": "4"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = evaluate.parse_flags(["--model", str(tmp_path), "--data", str(tmp_path / "d.jsonl"), "--prompt-budget", "300"])
    problems = evaluate.read_problems(a, tok)
    assert len(problems.records) == 4 and problems.where == [0, 1, 3]
    assert [r["prompt_ids"] for r in problems.kept] == [problems.prompts[i] for i in (0, 1, 3)]
    assert "dropped 1 of 4 problems, over the 300-token prompt budget" in capsys.readouterr().err


def test_cli_too_small_kv_budget_fails_before_loading(model_dir, monkeypatch, capsys):  # noqa: F811
    monkeypatch.chdir(model_dir)
    monkeypatch.setattr(Transformer, "from_pretrained", pytest.fail)
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--model", "m", "--data", "d.jsonl", "--max-new-tokens", "4", "--kv-gib", "1e-6"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2
    assert err[-1].startswith("evaluate.py: error: --kv-gib 1e-06: the KV budget of 1.0 KiB holds no sequence of")


def test_cli_interrupt_and_bad_rows_are_one_line(model_dir, monkeypatch, capsys):  # noqa: F811
    monkeypatch.chdir(model_dir)

    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluate, "evaluate", interrupted)
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--model", "m", "--data", "d.jsonl"])
    assert e.value.code == 130
    assert capsys.readouterr().err.splitlines()[-1] == ("evaluate.py: interrupted: no results were written (an "
                                                        "evaluation does not resume: run the same command again)")
    (model_dir / "bad.jsonl").write_text('{"problem": "1 + 1?", "answer": "2"}\n{"answer": "3"}\n')
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--model", "m", "--data", "bad.jsonl"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().startswith("evaluate.py: error: bad.jsonl:2: ")


def test_cli_under_torchrun_equals_one_process_and_sample_py_data_still_runs(tmp_path):
    """`evaluate.py` on 2 gloo ranks (greedy, toy model): per-problem JSONL and a summary line
    equal to evaluate() in this process; `python sample.py --data` gives the same rows after a
    one-line notice on stderr."""
    toy.build_model_dir(str(tmp_path / "m"), layers=1, hidden=32)
    with open(tmp_path / "d.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in toy.make_task(5, seed=0))
    flags = ["--model", "m", "--data", "d.jsonl", "--samples", "2", "--temperature", "0", "--max-new-tokens", "8",
             "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                        str(REPO / "evaluate.py"), *flags, "--out", "res.jsonl"], cwd=tmp_path,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in open(tmp_path / "res.jsonl")]
    m = Transformer.from_pretrained(str(tmp_path / "m")).eval()
    want, s = evaluate.evaluate(m, Tokenizer.from_pretrained(str(tmp_path / "m")),
                                load_records(str(tmp_path / "d.jsonl")), n=2, require_think=True, workers=1,
                                temperature=0, max_new_tokens=8)
    assert rows == want and summary["require_think"] is True
    assert {k: summary[k] for k in s if k != "tokens_per_s"} == {k: v for k, v in s.items() if k != "tokens_per_s"}
    old = subprocess.run([sys.executable, str(REPO / "sample.py"), *flags, "--out", "old.jsonl"], cwd=tmp_path,
                         capture_output=True, text=True, env=env)
    assert old.returncode == 0, old.stderr[-2000:]
    assert old.stderr.splitlines()[0] == ("sample.py --data is now evaluate.py: running python evaluate.py "
                                          + " ".join(flags) + " --out old.jsonl")
    assert [json.loads(line) for line in open(tmp_path / "old.jsonl")] == want


def test_cli_help_documents_flags(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--model", "--data", "--samples", "--n", "--out", "--workers", "--think", "--temperature",
                 "--top-p", "--max-new-tokens", "--kv-gib", "--prompt-budget"):
        assert flag in out


def test_every_flag_has_help_text():
    actions = [a for a in evaluate.flag_parser()._actions if a.option_strings]
    assert {o for a in actions for o in a.option_strings} >= {
        "--model", "--data", "--out", "--samples", "--n", "--workers", "--think", "--temperature", "--top-p",
        "--top-k", "--max-new-tokens", "--prompt-budget", "--seed", "--template", "--max-rows", "--kv-gib",
        "--dtype", "--cuda-graphs"}
    assert all(a.help and len(a.help) > 8 for a in actions)
