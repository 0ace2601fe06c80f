"""polish.py: the selection rule, the length floor, the output schema, rounds, resume after a
kill and after a torn line, merging rank parts, and one real run on the toy model.

Bookkeeping tests replace polish.generate by a scripted stand-in that answers the toy's
addition problems with chosen chains (exploratory, summary-style, wrong, truncated, ...).
"""
import json
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

import data
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
    for f in polish.fields(polish.Config):
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
    assert m[1]["pass_rate"] == 0.5 and sorted(seen.values()) == [1, 2, 3]
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
    assert polish.read_rows(str(part), repair=True) == [json.loads(x) for x in full[:2]]
    assert part.read_text() == "".join(full[:2])
    part.write_text(full[0] + "{broken\n" + full[1])                    # not the last line: an error
    with pytest.raises(data.DataError, match=r"o.rank0-of-1.jsonl:2"):
        polish.read_rows(str(part))


def test_merge_parts_and_world_size_change(tmp_path, monkeypatch, toy_dir, capsys):
    data_path, recs = task(tmp_path, 5)
    out = tmp_path / "o.jsonl"
    run(monkeypatch, toy_dir, data_path, out, lambda *a: "summary")
    full = out.read_text().splitlines(keepends=True)
    out.unlink()
    for r in range(2):                                                  # what two ranks leave
        (tmp_path / f"o.rank{r}-of-2.jsonl").write_text("".join(reversed(full[r::2])))
    polish.main(["merge", "--data", data_path, "--out", str(out)])
    assert out.read_text().splitlines(keepends=True) == full and not polish.part_files(str(out))
    assert "5 problems: 5 polished" in capsys.readouterr().out
    out.unlink()
    (tmp_path / "o.rank0-of-2.jsonl").write_text("".join(full[0::2]))   # rank 1 never finished
    with pytest.raises(SystemExit, match="2 of 5 problems have no row yet"):
        polish.main(["merge", "--data", data_path, "--out", str(out)])
    seen = run(monkeypatch, toy_dir, data_path, out, lambda *a: "summary")   # resumed on 1 GPU
    assert len(seen) == 2 and out.read_text().splitlines(keepends=True) == full
    other = tmp_path / "other.jsonl"                                    # another input, same --out
    other.write_text("".join(json.dumps(r) + "\n" for r in make_sums(3, seed=99)))
    with pytest.raises(SystemExit, match="matches no problem"):
        run(monkeypatch, toy_dir, str(other), out, lambda *a: "summary")


def drive(argv):
    """Subprocess entry for the kill test: polish.main with a slow scripted sampler."""
    global TOK
    TOK = data.Tokenizer.from_pretrained(argv[argv.index("--model") + 1])
    polish.generate = scripted(lambda *a: "explore", delay=0.25)
    polish.Transformer = StubModel              # the stand-in sampler needs no weights
    polish.main(argv)


class StubModel:
    config = SimpleNamespace(max_position_embeddings=1024)

    @classmethod
    def from_pretrained(cls, *args, **kw):
        return cls()

    def eval(self):
        return self


def test_kill_and_restart(tmp_path, monkeypatch, toy_dir):
    data_path, recs = task(tmp_path, 10)
    out, part = tmp_path / "o.jsonl", tmp_path / "o.rank0-of-1.jsonl"
    args = ["--model", toy_dir, "--data", data_path, "--out", str(out), "--samples", "2",
            "--min-tokens", "0", "--workers", "1", "--chunk", "3"]
    code = f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]; " \
           "import test_polish; test_polish.drive(sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and (not part.exists() or part.read_text().count("\n") < 3):
        assert proc.poll() is None, "polish.py exited before it was killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
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
    with pytest.raises(SystemExit, match="no such folder"):
        polish.main(["--model", str(tmp_path / "nope"), "--data", data_path, "--out", str(out)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(recs[0]) + "\n" + json.dumps({"problem": "x"}) + "\n")
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: field 'answer'"):
        polish.main(["--model", toy_dir, "--data", str(bad), "--out", str(tmp_path / "b.jsonl")])
    with pytest.raises(SystemExit):
        polish.main(["--model", toy_dir, "--data", data_path])          # --out is required
