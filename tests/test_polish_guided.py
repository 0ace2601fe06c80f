"""polish.py's guided pass (guided.py): the prompt's exact text per chat template, the leak check,
the copy check, coverage by method, free pass rates untouched by guided samples, the line that
ends each pass, and resuming the guided rounds after a kill. A scripted stand-in for sample.generate (as in test_polish.py) tells a guided prompt from
a free one by its text and answers each problem by a fixed plan.
"""
import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import data
import guided
import parts
import polish
import test_polish
from sample import Completion
from test_polish import EXPLORE, chain, exits, rows_of, task

toy_dir = test_polish.toy_dir    # the toy model folder: test_polish's fixture (it also sets test_polish.TOK)

REPO = Path(__file__).resolve().parents[1]
LEAKY = "Let me add. Wait, the given answer is {c}; let me check: {c}.\n</think>\n\nThe answer is \\boxed{{{c}}}."
# A reference solution long enough to copy, and a guided chain that is that solution with its
# headings and delimiters restyled (what the issue saw a real model do)
LONG_SOLUTION = "**Step 1.** Add the tens: ${t} + {u} = {s}$.\n**Step 2.** Check the units: nothing to carry, so the sum is ${s}$."
COPIED = "Step 1: add the tens \\({t}+{u}={s}\\). Step 2: check the units - nothing to carry, so the sum is " \
         "\\({s}\\).\n</think>\n\nThe answer is \\boxed{{{s}}}."
FLAGS = ["--samples", "4", "--min-tokens", "12", "--workers", "1", "--chunk", "2"]


def guided_scripted(plan, delay: float = 0.0):
    """A stand-in for sample.generate: plan(a, b, guided) -> a chain kind for every sample of the
    problem ("leak": an exploratory chain that names the given answer). seen counts the problem's
    calls per pass: (a, b, guided) -> calls."""
    seen = Counter()

    def gen(model, prompts, n=1, callback=None, **kw):
        outs = []
        for p in prompts:
            text = test_polish.TOK.decode(p)
            a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", text).groups())
            guided = "The correct final answer is" in text
            assert not guided or f"The correct final answer is {a + b}." in text
            seen[(a, b, guided)] += 1
            kind = plan(a, b, guided)
            gen.prompts.append(text)
            if kind in ("leak", "copy"):
                reply, fin = (LEAKY.format(c=a + b) if kind == "leak" else COPIED.format(t=a, u=b, s=a + b)), "stop"
            else:
                reply, fin = chain(kind, a + b)
            for _ in range(n):
                ids = test_polish.TOK.encode(reply) + ([test_polish.TOK.eos_id] if fin == "stop" else [])
                outs.append(Completion(ids, [0.0] * len(ids), fin))
                callback(len(outs) - 1, ids, fin)
            time.sleep(delay)
        return outs
    gen.seen, gen.prompts = seen, []
    return gen


def run(monkeypatch, toy_dir, data_path, out, plan, *flags) -> Counter:
    fake = guided_scripted(plan)
    monkeypatch.setattr(polish, "generate", fake)
    polish.main(["--model", toy_dir, "--data", data_path, "--out", str(out), *FLAGS, *flags])
    return fake.seen


def sums(recs) -> list:
    """(a, b) of each "What is a + b?" record."""
    return [tuple(map(int, re.search(r"(\d+) \+ (\d+)", r["problem"]).groups())) for r in recs]


# ----------------------------------------------------------------------------- the prompt

REC = {"problem": "What is 12 + 30?", "answer": "42", "solution": "12 + 30 = 42"}
GUIDED_USER = ("What is 12 + 30?\n\nThe correct final answer is 42.\n\nA reference solution, for you alone:\n"
               "12 + 30 = 42\n\nSolve the problem from scratch, as if you had not been told the answer: explore, "
               "try approaches, check each step and reconsider where you are unsure, until your own complete "
               "derivation reaches this answer. Never mention that the answer or a solution was given to you. "
               "Let's think step by step and output the final answer within \\boxed{}.")


def test_guided_prompt_exact_text_per_template(toy_dir):
    tok = test_polish.TOK
    r1 = "<｜begin▁of▁sentence｜><｜User｜>" + GUIDED_USER + "<｜Assistant｜><think>\n"
    chatml = "<|im_start|>user\n" + GUIDED_USER + "<|im_end|>\n<|im_start|>assistant\n"
    assert tok.render_chat(guided.guided_text(REC), "deepseek-r1") == r1
    assert tok.render_chat(guided.guided_text(REC), "chatml") == chatml
    assert guided.guided_ids(tok, REC, "deepseek-r1", 10_000) == tok.encode(r1)
    assert guided.guided_ids(tok, REC, "chatml", 10_000) == tok.encode(chatml)
    # no solution (82% of DeepScaleR): the answer alone; an earlier output's original_solution wins
    bare = GUIDED_USER.replace("\n\nA reference solution, for you alone:\n12 + 30 = 42", "")
    assert guided.guided_text(dict(REC, solution="  ")) == bare
    assert guided.guided_text(dict(REC, solution="<think>a chain", original_solution="12 + 30 = 42")) == GUIDED_USER
    # over --prompt-budget: the solution goes first, then the guided pass
    n_bare = len(tok.encode(tok.render_chat(bare, "deepseek-r1")))
    assert guided.guided_ids(tok, REC, "deepseek-r1", n_bare) == tok.encode(tok.render_chat(bare, "deepseek-r1"))
    assert guided.guided_ids(tok, REC, "deepseek-r1", n_bare - 1) is None
    # the answer alone, asked for: no solution even where it would fit
    assert guided.guided_ids(tok, REC, "deepseek-r1", 10_000, with_solution=False) == \
        tok.encode(tok.render_chat(bare, "deepseek-r1"))


# ----------------------------------------------------------------------------- the leak check

LEAK_POSITIVE = [      # each matched by exactly one of LEAK_PHRASES, in their order
    ("The given answer is 42, so the sum must work out.", 0),
    ("This matches the expected answer.", 0),
    ("Following the reference solution, we add the tens first.", 0),
    ("As in the provided solution, carry the one.", 0),
    ("The original solution adds the units first.", 1),
    ("The answer we were given is 42, so let me see why.", 2),
    ("We are told the answer is 42.", 3),
    ("I'm told that the correct answer is 42.", 3),
    ("Since the answer is provided in the prompt, I'll check it.", 4),
    ("Let me work backwards from the answer.", 5),
]
LEAK_NEGATIVE = [      # what a derivation from scratch says
    "Given that x + y = 5, the answer is 7.",
    "The given equation has two real roots, so we are told nothing new.",
    "Which of the given answer choices is largest? The provided options are A to E.",
    "We are given the answer choices (A) 3 and (B) 4.",
    "So the answer is \\boxed{42}. Let me verify the answer by substitution.",
    "The solution given by the quadratic formula is x = 2.",
    "The reference angle is 30 degrees; the original equation is linear.",
    "We are told that the sum is 10, and the expected value is 3.",
]


@pytest.mark.parametrize("text,phrase", LEAK_POSITIVE, ids=[t for t, _ in LEAK_POSITIVE])
def test_leak_check_rejects_chains_that_were_handed_the_answer(text, phrase):
    assert guided.leaks(text) and guided.leaks(text.lower())
    hits = [i for i, p in enumerate(guided.LEAK_PHRASES) if re.search(p, text, re.IGNORECASE)]
    assert hits == [phrase]             # every phrase of the constant is pinned by an example of its own


@pytest.mark.parametrize("text", LEAK_NEGATIVE)
def test_leak_check_passes_ordinary_derivations(text):
    assert not guided.leaks(text)


def test_every_leak_phrase_has_a_positive_example():
    assert {i for _, i in LEAK_POSITIVE} == set(range(len(guided.LEAK_PHRASES)))


# ----------------------------------------------------------------------------- the copy check

def words(n: int, start: int = 0) -> str:
    """n distinct words w<start> .. w<start + n - 1>: no 6-gram of one run occurs in another."""
    return " ".join(f"w{i}" for i in range(start, start + n))


def test_copy_measure_by_hand():
    solution = "**Step 1.** Let $x^2 + 1 = 5$, so $x = 2$ and the area is $4\\pi$."
    assert guided.ngrams("A b, c d e\\(f\\) g_h") == [("a", "b", "c", "d", "e", "f"), ("b", "c", "d", "e", "f", "g"),
                                                      ("c", "d", "e", "f", "g", "h")]
    # restyled delimiters and headings are still a copy; what follows </think> is not reasoning
    assert guided.copied_share("Step 1: let \\(x^2+1=5\\) so x=2 and the area is 4\\pi.\n</think>\n" + words(50),
                               solution) == 1.0
    assert guided.copied_share(words(5), words(5)) == 0.0                # no 6-gram: nothing to measure
    # 8 words shared, then 7 of its own: 3 of the chain's 10 6-grams occur in the solution
    assert guided.copied_share(words(15), words(8) + " other words") == pytest.approx(3 / 10)
    # 6-grams of the problem count on neither side: restating the problem is no copy
    problem = words(10)
    assert guided.copied_share(words(12), words(12), problem) == 1.0
    assert guided.copied_share(words(10) + " " + words(5, 100), words(10), problem) == 0.0
    # the threshold: a share of exactly COPY_MAX is a copy, one 6-gram fewer is not
    m = round(100 * guided.COPY_MAX)
    rec = {"problem": "p", "solution": words(m + 5)}
    assert guided.copied_share(words(105), rec["solution"]) == guided.COPY_MAX
    assert guided.copies(words(105), rec) and not guided.copies(words(105), {**rec, "solution": words(m + 4)})
    assert guided.copies(words(105), {"problem": "p", "solution": "", "original_solution": words(m + 5)})


def long_task(tmp_path, n: int) -> tuple[str, list]:
    """task(), with solutions long enough to copy."""
    _, recs = task(tmp_path, n)
    for r, (a, b) in zip(recs, sums(recs)):
        r["solution"] = LONG_SOLUTION.format(t=a, u=b, s=a + b)
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path), recs


def test_copy_check_rejects_a_restyled_solution_and_counts_it(tmp_path, monkeypatch, toy_dir, capsys):
    """Problem 0 is solved freely; 1 only by guided chains that copy the solution; 2 by guided
    chains of its own. With --guided-solution the prompt carries the solution; by default not."""
    data_path, recs = long_task(tmp_path, 3)
    ab = sums(recs)
    kinds = {ab[0]: ("explore", "explore"), ab[1]: ("wrong", "copy"), ab[2]: ("wrong", "explore")}
    assert guided.copied_share(COPIED.format(t=ab[1][0], u=ab[1][1], s=sum(ab[1])), recs[1]["solution"],
                               recs[1]["problem"]) == 1.0
    assert guided.copied_share(EXPLORE.format(c=sum(ab[2])), recs[2]["solution"], recs[2]["problem"]) == 0.0

    def plan(a, b, is_guided):
        return kinds[(a, b)][is_guided]
    fake = guided_scripted(plan)
    monkeypatch.setattr(polish, "generate", fake)
    polish.main(["--model", toy_dir, "--data", data_path, "--out", str(tmp_path / "o.jsonl"), *FLAGS,
                 "--guided-solution"])
    m = [r["polish"] for r in rows_of(tmp_path / "o.jsonl")]
    assert [(x["method"], x["leaked"], x["copied"], x["guided_correct"]) for x in m] == \
        [("free", 0, 0, 0), ("none", 0, 4, 4), ("guided", 0, 0, 4)]
    out = capsys.readouterr()
    assert "leak check rejected 0 chains (0.0%), copy check 4 (50.0%), that were otherwise acceptable" in out.out
    assert "polish: guided pass done: 1 of 2 accepted; leak check rejected 0 chains, copy check 4" in out.err
    prompt = [t for t in fake.prompts if "What is {} + {}?".format(*ab[1]) in t and "correct final answer" in t]
    assert len(prompt) == 1 and recs[1]["solution"] in prompt[0]
    data.main(["stats", str(tmp_path / "o.jsonl"), "--model", toy_dir])
    assert "copy check 4 (50.0%)" in capsys.readouterr().out
    # the default guided prompt gives the answer alone
    assert not polish.Config().guided_solution
    fake = guided_scripted(plan)
    monkeypatch.setattr(polish, "generate", fake)
    polish.main(["--model", toy_dir, "--data", data_path, "--out", str(tmp_path / "d.jsonl"), *FLAGS])
    assert sum("correct final answer" in t for t in fake.prompts) == 2
    assert not any("reference solution" in t or "Step 1" in t for t in fake.prompts)


def test_rows_without_the_copy_count_still_read(tmp_path, toy_dir, capsys):
    """A guided row of the version before the copy check (no `copied`) loads in data.py stats,
    which says the check did not run on it."""
    _, recs = task(tmp_path, 1)
    meta = {"id": "0-x", "polished": False, "samples": 4, "correct": 0, "pass_rate": 0.0, "tokens": 0,
            "accepted": 0, "method": "none", "guided_rounds": 1, "guided_samples": 4, "guided_correct": 2,
            "leaked": 1, "min_tokens": 12}
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(dict(recs[0], polish=meta)) + "\n")
    data.main(["stats", str(path), "--model", toy_dir])
    out = capsys.readouterr().out
    assert "leak check rejected 1 chains (25.0%), copy check 0 (0.0%), that were otherwise acceptable; " \
           "1 problems predate the copy check" in out


# ----------------------------------------------------------------------------- the pass

def test_guided_pass_covers_the_rest_and_never_changes_pass_rate(tmp_path, monkeypatch, toy_dir, capsys):
    """Problem 0 is solved freely; 1 only with the answer; 2 only with a chain that leaks; 3 never.
    Every free field (samples, correct, pass_rate, rounds) equals a --no-guided run's."""
    data_path, recs = task(tmp_path, 4)
    ab = sums(recs)
    kinds = {ab[0]: ("explore", "explore"), ab[1]: ("wrong", "explore"), ab[2]: ("short", "leak"),
             ab[3]: ("wrong", "wrong")}

    def plan(a, b, guided):
        return kinds[(a, b)][guided]
    seen = run(monkeypatch, toy_dir, data_path, tmp_path / "g.jsonl", plan)
    run(monkeypatch, toy_dir, data_path, tmp_path / "f.jsonl", plan, "--no-guided")
    guided, free = rows_of(tmp_path / "g.jsonl"), rows_of(tmp_path / "f.jsonl")
    m = [r["polish"] for r in guided]
    assert [x["method"] for x in m] == ["free", "guided", "none", "none"]
    assert [x["polished"] for x in m] == [True, True, False, False]
    assert [(x["guided_rounds"], x["guided_samples"], x["guided_correct"], x["leaked"]) for x in m] == \
        [(0, 0, 0, 0), (1, 4, 4, 0), (1, 4, 4, 4), (1, 4, 0, 0)]
    assert guided[1]["solution"] == EXPLORE.format(c=sum(ab[1])) and guided[1]["original_solution"] == recs[1]["solution"]
    assert m[1]["tokens"] == len(test_polish.TOK.encode(guided[1]["solution"])) and m[1]["accepted"] == 4
    assert guided[2]["solution"] == recs[2]["solution"]                     # the leaking chain is not kept
    for g, f in zip(guided, free):
        assert {k: g["polish"][k] for k in ("samples", "correct", "pass_rate", "rounds")} == \
            {k: f["polish"][k] for k in ("samples", "correct", "pass_rate", "rounds")}
    assert [x["pass_rate"] for x in m] == [1.0, 0.0, 1.0, 0.0]
    assert sum(seen[(a, b, True)] for a, b in ab) == 3 and seen[(*ab[0], True)] == 0
    out = capsys.readouterr().out
    assert "by method: free 1 (25.0%), guided 1 (25.0%), none 2 (50.0%)" in out
    n = m[1]["tokens"]
    assert f"guided chains: 1, tokens min {n}, mean {n}, p50 {n}, p90 {n}; floor 12: shortest {n / 12:.2f}x its " \
        "floor, 0 under it" in out
    assert "guided pass: 3 problems, 12 chains, 8 correct, 1 problems covered; leak check rejected 4 chains" in out
    data.main(["stats", str(tmp_path / "g.jsonl"), "--model", toy_dir])
    text = capsys.readouterr().out
    assert "by method: free 1 (25.0%), guided 1 (25.0%), none 2 (50.0%)" in text and "leak check rejected 4" in text
    assert "pass rate (free pass): 0.0:2" in text and "1.0:2" in text


def test_a_line_ends_each_pass(tmp_path, monkeypatch, toy_dir, capsys):
    """The end of the free pass is said when it comes, before the guided pass samples (a long
    guided pass once left the progress line standing still for minutes), and the end of the
    guided pass once every problem has its row; each once, also when the passes interleave."""
    data_path, recs = task(tmp_path, 4)
    ab = sums(recs)
    kinds = {ab[0]: ("explore", "explore"), ab[1]: ("wrong", "explore"), ab[2]: ("wrong", "wrong"),
             ab[3]: ("wrong", "explore")}

    def plan(a, b, is_guided):
        return kinds[(a, b)][is_guided]
    fake, said = guided_scripted(plan), []

    def gen(model, prompts, **kw):
        said.append(capsys.readouterr().err)           # stderr before this call
        return fake(model, prompts, **kw)
    monkeypatch.setattr(polish, "generate", gen)
    argv = ["--model", toy_dir, "--data", data_path, *FLAGS]
    polish.main(argv + ["--out", str(tmp_path / "a.jsonl"), "--chunk", "8"])
    said.append(capsys.readouterr().err)
    free = "polish: free pass done: 1 of 4 accepted; 3 problems enter the guided pass\n"
    done = "polish: guided pass done: 2 of 3 accepted; leak check rejected 0 chains, copy check 0\n"
    assert len(said) == 3 and free not in said[0] and free in said[1] and done in said[2]
    polish.main(argv + ["--out", str(tmp_path / "b.jsonl"), "--chunk", "1"])
    err = "".join(said[3:]) + capsys.readouterr().err
    assert err.count("free pass done") == err.count("guided pass done") == 1 and err.index(free) < err.index(done)
    polish.main(argv + ["--out", str(tmp_path / "c.jsonl"), "--no-guided"])
    err = capsys.readouterr().err
    assert "polish: free pass done: 1 of 4 accepted; 0 problems enter the guided pass, 3 keep their solution " \
           "(--no-guided)\n" in err and "guided pass done" not in err


def test_guided_rounds_and_the_flags(tmp_path, monkeypatch, toy_dir, capsys):
    """--guided-rounds 2 gives a problem a second guided round; greedy decoding refuses a second."""
    data_path, recs = task(tmp_path, 2)
    seen = run(monkeypatch, toy_dir, data_path, tmp_path / "o.jsonl", lambda *a: "wrong", "--guided-rounds", "2")
    m = [r["polish"] for r in rows_of(tmp_path / "o.jsonl")]
    assert [(x["method"], x["rounds"], x["samples"], x["guided_rounds"], x["guided_samples"]) for x in m] == \
        [("none", 1, 4, 2, 8)] * 2
    assert sorted(seen.values()) == [1, 1, 2, 2]
    argv = ["--model", toy_dir, "--data", data_path, "--out", str(tmp_path / "x.jsonl")]
    assert "--guided-rounds must be >= 1, not 0" in exits(capsys, argv + ["--guided-rounds", "0"])
    err = exits(capsys, argv + ["--temperature", "0", "--samples", "1", "--guided-rounds", "2"])
    assert "--guided-rounds 2 would repeat one chain" in err
    polish.parse_config(argv + ["--temperature", "0", "--samples", "1", "--guided-rounds", "2", "--no-guided"])


def test_old_rows_and_pending_lines_are_read_on_resume(tmp_path, monkeypatch, toy_dir, capsys):
    """A row of the version before the guided pass (no method) is done; a pending line left by
    another world size resumes its problem at the next guided round with its counts."""
    data_path, recs = task(tmp_path, 3)
    ids = [polish.problem_id(i, r["problem"]) for i, r in enumerate(recs)]
    old = dict(recs[0], original_solution=recs[0]["solution"], polish={
        "id": ids[0], "polished": True, "samples": 8, "correct": 2, "pass_rate": 0.25, "tokens": 30, "accepted": 1,
        "score": 0.0, "accepted_score": 0.0, "accepted_tokens": 30.0, "rounds": 1, "min_tokens": 12,
        "max_new_tokens": 8192, "temperature": 0.6, "top_p": 0.95, "model": "m", "seed": 0})
    pending = {"pending": {"id": ids[1], "samples": 8, "correct": 2, "rounds": 2, "guided_rounds": 1,
                           "guided_samples": 4, "guided_correct": 4, "leaked": 4}}
    (tmp_path / "o.rank1-of-2.jsonl").write_text(json.dumps(old) + "\n" + json.dumps(pending) + "\n")
    seen = run(monkeypatch, toy_dir, data_path, tmp_path / "o.jsonl", lambda a, b, g: "explore" if g else "wrong",
               "--guided-rounds", "2")
    rows = rows_of(tmp_path / "o.jsonl")
    assert rows[0] == old                                                  # kept as it was
    assert seen == Counter({(*sums(recs)[1], True): 1, (*sums(recs)[2], False): 1, (*sums(recs)[2], True): 1})
    m = rows[1]["polish"]
    assert (m["method"], m["samples"], m["correct"], m["pass_rate"], m["rounds"]) == ("guided", 8, 2, 0.25, 2)
    assert (m["guided_rounds"], m["guided_samples"], m["guided_correct"], m["leaked"]) == (2, 8, 8, 4)
    out = capsys.readouterr().out                                       # the old row: free, as it was polished
    assert "by method: free 1 (33.3%), guided 2 (66.7%), none 0 (0.0%)" in out and "free chains: 1, tokens min 30" in out


# ----------------------------------------------------------------------------- kill and restart

def guided_plan(a: int, b: int, guided: bool) -> str:
    """Free chains are all wrong; guided ones leak, stay wrong or succeed, by the sum."""
    return "wrong" if not guided else ("leak", "wrong", "explore")[(a + b) % 3]


def drive(argv):
    """Subprocess entry for the kill test: polish.main with a slow scripted sampler."""
    test_polish.TOK = data.Tokenizer.from_pretrained(argv[argv.index("--model") + 1])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    polish.generate = guided_scripted(guided_plan, delay=0.2)
    polish.Transformer = test_polish.StubModel
    polish.main(argv)


def test_kill_during_the_guided_pass_and_restart(tmp_path, monkeypatch, toy_dir):
    """Killed after some problem finished guided round 1 of 3: the same command finishes with the
    output of a run never killed; problems between guided rounds sample only the rounds left."""
    data_path, recs = task(tmp_path, 10)
    out, part = tmp_path / "o.jsonl", tmp_path / "o.rank0-of-1.jsonl"
    args = ["--model", toy_dir, "--data", data_path, "--out", str(out), *FLAGS[:4], "--workers", "1",
            "--chunk", "3", "--guided-rounds", "3"]
    code = f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]; " \
           "import test_polish_guided; test_polish_guided.drive(sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    resumable = re.compile(r'"pending": \{[^}]*"guided_rounds": 1')     # a problem between guided rounds 1 and 2
    while time.time() < deadline and (not part.exists() or not resumable.search(part.read_text())):
        assert proc.poll() is None, "polish.py exited before it was killed: " + proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not out.exists()
    last = {}                                   # problem id -> its last whole line in the part
    for line in part.read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            last[parts.line_id(json.loads(line))] = json.loads(line)
    between = {i: v["pending"]["guided_rounds"] for i, v in last.items() if "pending" in v}
    assert 1 in between.values()
    seen = run(monkeypatch, toy_dir, data_path, out, guided_plan, "--chunk", "3", "--guided-rounds", "3")
    run(monkeypatch, toy_dir, data_path, tmp_path / "clean.jsonl", guided_plan, "--chunk", "3", "--guided-rounds", "3")
    assert out.read_text() == (tmp_path / "clean.jsonl").read_text()     # nothing lost, nothing twice
    for i, (r, (a, b)) in enumerate(zip(recs, sums(recs))):
        pid = polish.problem_id(i, r["problem"])
        if pid in between:                      # resumed at the guided round after the last one written
            assert seen[(a, b, False)] == 0
            assert seen[(a, b, True)] == (1 if guided_plan(a, b, True) == "explore" else 3 - between[pid])
        elif pid in last:                       # finished before the kill
            assert seen[(a, b, False)] == seen[(a, b, True)] == 0


def test_a_restart_with_many_problems_between_rounds_keeps_calls_to_chunk(tmp_path, monkeypatch, toy_dir):
    data_path, recs = task(tmp_path, 5)
    lines = [{"pending": {"id": polish.problem_id(i, r["problem"]), "samples": 4, "correct": 0, "rounds": 1,
                          "guided_rounds": 0, "guided_samples": 0, "guided_correct": 0, "leaked": 0}}
             for i, r in enumerate(recs)]
    (tmp_path / "o.rank0-of-1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    fake, sizes = guided_scripted(lambda *a: "explore"), []

    def counted(model, prompts, **kw):
        sizes.append(len(prompts))
        return fake(model, prompts, **kw)
    monkeypatch.setattr(polish, "generate", counted)
    polish.main(["--model", toy_dir, "--data", data_path, "--out", str(tmp_path / "o.jsonl"), *FLAGS])
    assert sizes == [2, 2, 1] and set(fake.seen) == {(a, b, True) for a, b in sums(recs)}
    assert [r["polish"]["method"] for r in rows_of(tmp_path / "o.jsonl")] == ["guided"] * 5
