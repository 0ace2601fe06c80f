"""Tests for verify.py (and the answers.py, latex.py and workers.py it is built on): the case
table, adversarial inputs, timeouts, the worker pool, the shared data's references, a
differential test against math-verify, and the CLI.

    python -m pytest tests/test_verify.py -q
"""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import answers  # noqa: E402
import verify as V  # noqa: E402
from verify_cases import CASES, B  # noqa: E402

SHARED = ROOT.parent / "shared"

@pytest.fixture(scope="module", autouse=True)
def pool():
    yield
    V.shutdown()

@pytest.fixture(scope="module")
def table_verdicts():
    return V.grade_batch([(resp, ref) for _, ref, resp, _ in CASES], workers=2, timeout=10)

@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_case_table(i, table_verdicts):
    cat, ref, resp, want = CASES[i]
    assert table_verdicts[i] == want, V.explain(resp, ref)

def test_categories_have_true_and_false_cases():
    cats = {c[0] for c in CASES}
    assert len(cats) >= 34
    assert all({c[3] for c in CASES if c[0] == cat} == {True, False} for cat in cats)

def test_grade_matches_batch(table_verdicts):
    for i in range(0, len(CASES), 7):   # the single-call path (in-process, then one worker)
        assert V.grade(CASES[i][2], CASES[i][1]) == table_verdicts[i]

def test_reward_and_think():
    assert V.reward("<think>hmm</think> \\boxed{4}", "4", require_think=True) == 1.0
    assert V.reward("\\boxed{4}", "4", require_think=True) == 0.0
    assert V.reward("\\boxed{4}", "4") == 1.0
    assert V.reward("<think>\\boxed{4}</think> 4", "4") == 0.0
    assert V.grade("x \\boxed{27}", 27.0) and V.grade("\\boxed{18}", "Janet ... \n#### 18")
    assert V.grade("\\boxed{3.89 \\times 10^{-10}}", ["3.89e-10\n", "3.89e-10"])

def test_extract():
    assert V.extract("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert V.extract("$\\boxed{3}$ and $\\boxed{5}$") == "3, 5"
    assert V.extract("\\boxed{3}. Checking again, the answer is \\boxed{5}") == "5"
    assert V.extract("\\boxed{5") is None and V.extract("no box") is None and V.extract("\\boxed{ }") is None
    assert V.extract("\\fbox{2} then \\boxedx") == "2"

ADVERSARIAL = [
    ("\\boxed{10^{10^{10^{10}}}}", "1", False),
    ("\\boxed{10^{10^{10^{10}}}}", "10^{10^{10^{10}}}", True),   # identical, never evaluated
    ("\\boxed{100000!}", "5", False),
    ("\\boxed{(10!)!}", "5", False),
    ("\\boxed{2^{2^{2^{2^{2}}}}}", "4", False),
    ("\\boxed{\\binom{10^{9}}{5 \\cdot 10^{8}}}", "1", False),
    ("\\boxed{" + "{" * 25_000 + "1" + "}" * 25_000 + "}", "1", False),   # 50 KB of nested braces
    ("\\boxed{" + "(" * 300 + "1" + ")" * 300 + "}", "1", False),
    ("x" * 1_000_000 + " \\boxed{5}", "5", True),                          # 1 MB response
    ("\\boxed{" * 100_000, "5", False),
    ("{" * 500_000 + "\\boxed{5}", "5", True),
    ("\\boxed{\U0001F600\u2211\u222b\u00e9}", "5", False),                  # unicode
    ("\\boxed{\u2212\u00bd}", "-1/2", True),
    ("\\boxed{(x+1)^{1000}}", "(1+x)^{1000}", True),
    ("\\boxed{\\sin(10^{1000})}", "0", False),
    ("\\boxed{x^{x^{x^{x^{x}}}}}", "x^{x^{x^{x}}}", False),
    ("\\boxed{" + "+".join(["x"] * 400) + "}", "400x", True),
]

@pytest.mark.parametrize("resp,ref,want", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_inputs_finish(resp, ref, want):
    t = time.perf_counter()
    assert V.grade(resp, ref, timeout=3.0) == want
    assert time.perf_counter() - t < 5.0

def test_timeout_holds_in_any_thread():
    before, out = V.STATS["timeout"], {}

    def run():   # a worker job that overruns, asked from a non-main thread
        w = V._pool.take()
        t = time.perf_counter()
        out["res"], w = V._ask(w, json.dumps(["sleep", 30]), 0.5)
        out["dt"] = time.perf_counter() - t
        V._pool.give(w)
    th = threading.Thread(target=run)
    th.start()
    th.join(20)
    assert out["res"][0] is False and out["dt"] < 3 and V.STATS["timeout"] == before + 1
    assert V.grade("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")   # the replacement worker works

def test_pool_survives_killed_worker():
    pairs = [(f"\\boxed{{\\sqrt{{{k * k * 7}}}}}", f"{k}\\sqrt{{7}}") for k in range(2, 40)]
    assert all(V.grade_batch(pairs[:4], workers=2))
    died = V.STATS["worker_died"]
    for w in list(V._pool.idle):
        os.kill(w.p.pid, signal.SIGKILL)
    assert all(V.grade_batch(pairs[4:], workers=2))
    assert V.STATS["worker_died"] > died

# ----------------------------------------------------------------------------- worker lifetime

# A trainer that starts a grading job and is then killed: its worker must not go on computing.
KILLED_PARENT = """
import json, sys
sys.path.insert(0, {root!r})
import verify as V
w = V._pool.new()
w._line(120)                            # the worker has imported sympy and said "ready"
w.ready = True
print(w.p.pid, flush=True)
w.ask(json.dumps(["sleep", 60]), 120)   # a grading job that runs for a minute
"""

# The fallback where there is no prctl: a process that watches its parent with workers._watch_parent.
WATCHING_CHILD = """
import sys, threading, time
sys.path.insert(0, {root!r})
import workers
threading.Thread(target=workers._watch_parent, args=(int(sys.argv[1]),), daemon=True).start()
time.sleep(60)
"""
FALLBACK_PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {child!r}, str(os.getpid())], start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


def _running(pid: int) -> bool:
    """Whether pid is a live process; a zombie (dead, not yet reaped by its new parent) is not."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:   # no /proc (not Linux): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _kill_parent_then_wait_for(parent_code: str, seconds: float) -> bool:
    """Start parent_code, read the pid it prints, SIGKILL the parent and report whether that
    pid is gone within `seconds`."""
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    pid = None
    try:
        pid = int(parent.stdout.readline())
        time.sleep(0.5)   # the job (or the child's watch thread) is under way
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + seconds
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        return not _running(pid)
    finally:
        parent.kill()
        parent.stdout.close()
        if pid and _running(pid):
            os.kill(pid, signal.SIGKILL)


def test_worker_dies_with_its_killed_parent_mid_job():
    assert _kill_parent_then_wait_for(KILLED_PARENT.format(root=str(ROOT)), 3.0)


def test_fallback_watch_thread_ends_an_orphaned_worker():
    child = WATCHING_CHILD.format(root=str(ROOT))
    assert _kill_parent_then_wait_for(FALLBACK_PARENT.format(child=child), 3.0)


def test_pooled_worker_outlives_the_thread_that_started_it():
    # PR_SET_PDEATHSIG follows the thread that forked: grade_batch's threads end with the batch
    V.shutdown()
    assert V.grade_batch([("\\boxed{\\sqrt{1573}}", "11\\sqrt{13}")], workers=1) == [True]
    (w,) = V._pool.idle
    time.sleep(0.5)
    assert w.p.poll() is None, "the pooled worker died with the batch thread that started it"
    died = V.STATS["worker_died"]
    assert V.grade_batch([("\\boxed{\\sqrt{2197}}", "13\\sqrt{13}")], workers=1) == [True]
    assert V._pool.idle == [w] and V.STATS["worker_died"] == died


def test_bad_reference_is_reported_never_correct():
    before = V.STATS["bad_reference"]
    assert not V.grade("\\boxed{t(0,4]}", "t(0,4]")
    assert not V.grade("\\boxed{}", "")
    assert V.STATS["bad_reference"] > before

# ----------------------------------------------------------------------------- shared data

def _data_refs():
    refs = {}
    for f in sorted(glob.glob(str(SHARED / "data" / "*" / "*.json*"))):
        text = Path(f).read_text()
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        for r in rows:
            a = r.get("answer") if r.get("answer") is not None else r.get("solution")
            for x in (a if isinstance(a, list) else [a]):
                s = repr(x) if isinstance(x, float) else str(x) if x is not None else ""
                s = s.rsplit("####", 1)[1] if "####" in s else s
                if s.strip():
                    refs.setdefault(s.strip(), Path(f).name)
    return refs

# References that are prose or malformed: reported as bad references, so nothing matches them.
KNOWN_BAD_REFS = {
    "$f(x)=a x+b$, where $b$ is an arbitrary integer, and $a$ is an arbitrary positive integer with $\\mho(a)=0$",
    "$t(0,4]$",
}

def _rewrites(s: str):
    yield "\\boxed{%s}" % s
    yield "<think>maybe \\boxed{98765}</think> So the answer is $\\boxed{%s}$." % s
    yield "\\fbox{%s}." % s
    if "\\frac" in s:
        yield "\\boxed{%s}" % s.replace("\\frac", "\\dfrac")
    if re.fullmatch(r"\d+", s):
        yield "\\boxed{%s.0}" % s
        yield "\\boxed{0%s}" % s
        yield "\\boxed{x = %s}" % s
        if len(s) > 3:
            yield "\\boxed{%s}" % "{,}".join(re.findall(r"\d{1,3}(?=(?:\d{3})*$)", s))

@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="../shared/data is absent")
def test_every_data_reference_grades_correct_against_itself():
    refs = _data_refs()
    assert len(refs) > 1000
    pairs = [(resp, s) for s in refs for resp in _rewrites(s)]
    # one sympy-path form per test-set reference: 1*(normal form) is never string-identical
    for s, f in refs.items():
        n = V.normalize(s)
        if "train" not in str(f) and not re.search(r"[,=<>:;_]|\\begin|\\cup", n) and not re.fullmatch(r"\(?[A-E]\)?", n) \
                and not answers.is_text(n) and V._items(n) == [n]:
            pairs.append(("\\boxed{1\\cdot(%s)}" % n, s))
    verdicts = V.grade_batch(pairs, workers=2, timeout=10)
    failed = sorted({ref for (resp, ref), ok in zip(pairs, verdicts) if not ok})
    assert set(failed) == {r for r in KNOWN_BAD_REFS if r in refs}, failed[:20]

# Disagreements with math-verify 0.9.0 that we tolerate, each with its reason (checked below).
TOLERATED = {
    "thousands": "math-verify reads '10,\\!080' after 'x =' as a list; we read 10080",
    "chain": "for 'x = y = 2x + 3' we take the chain's last part; math-verify compares x = y",
}

def _tolerated(ref: str, resp: str, mine: bool, theirs) -> str | None:
    if mine and re.search(r"\d,(\\!)?\s*\d{3}", ref):
        return "thousands"
    if mine and "x = " in resp and "=" in ref:
        return "chain"
    return None

@pytest.mark.skipif(not (SHARED / "data" / "test" / "math500_rllm.json").exists(), reason="no MATH-500")
def test_differential_against_math_verify():
    """MATH-500 references against a neighbour's answer (both should say no) and against themselves
    written as 'x = ...' with \\dfrac (both should say yes); math-verify is slow, so a fixed sample."""
    mv = pytest.importorskip("math_verify")
    refs = [r["answer"] for r in json.loads((SHARED / "data" / "test" / "math500_rllm.json").read_text())]
    pairs = [(ref, "So the answer is $\\boxed{%s}$." % refs[i - 1]) for i, ref in enumerate(refs) if i % 20 == 0]
    pairs += [(ref, "Thus $\\boxed{x = %s}$." % ref.replace("\\frac", "\\dfrac"))
              for i, ref in enumerate(refs) if i % 6 == 0 and not ref.isdigit()]
    mine = V.grade_batch([(p, r) for r, p in pairs], workers=2, timeout=10)
    untolerated = []
    for (ref, resp), m in zip(pairs, mine):
        try:
            theirs = bool(mv.verify(mv.parse("$" + ref + "$"), mv.parse(resp)))
        except Exception:   # math-verify's own failures count as "not correct"
            theirs = False
        if m != theirs and _tolerated(ref, resp, m, theirs) is None:
            untolerated.append((ref, resp, m, theirs))
    assert not untolerated, untolerated[:10]

# ----------------------------------------------------------------------------- CLI

def test_cli(tmp_path):
    cmd = [sys.executable, str(ROOT / "verify.py"), "--answer", "\\frac12", "--response", "so \\boxed{0.5}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("CORRECT") and "exact" in out.stdout, out
    f = tmp_path / "g.jsonl"
    f.write_text("\n".join(json.dumps({"response": B(a), "answer": r}) for r, a in
                           [("1", "1"), ("\\sqrt2", "\\sqrt{2}"), ("3", "4")]))
    out = subprocess.run([sys.executable, str(ROOT / "verify.py"), str(f), "--workers", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("2/3 correct"), out

# ----------------------------------------------------------------------------- choices

AMC = ("How many?\n$\\mathrm{\\textbf{(A)} \\ }226\\qquad \\mathrm{\\textbf{(B)} \\ } 243 \\qquad "
       "\\mathrm{\\textbf{(C)} \\ } 270 \\qquad \\mathrm{\\textbf{(D)} \\ }\\frac{\\sqrt{12}}{2}\\qquad "
       "\\mathrm{\\textbf{(E)} \\ } \\text{none of these}$")


def test_bare_letter_needs_the_problems_choices():
    assert answers.listed_choices(AMC)["C"] == "270" and answers.listed_choices("What is (A)?") is None
    assert not V.grade("\\boxed{C}", "270")                          # no problem: a letter is no value
    assert V.grade("\\boxed{C}", "270", problem=AMC)
    assert V.grade("\\boxed{\\textbf{(C)}}", "270", problem=AMC)
    assert not V.grade("\\boxed{B}", "270", problem=AMC)
    assert not V.grade("\\boxed{C}", "270", problem="How many? No choices here.")
    assert V.grade("\\boxed{D}", "\\sqrt{3}", problem=AMC)           # decided by a worker
    assert V.grade("\\boxed{(B) 243}", "243", problem=AMC)           # the written value decides
    assert V.reward("<think></think>\\boxed{C}", "270", require_think=True, problem=AMC) == 1.0
    assert V.reward_of(True, "\\boxed{C}", problem=AMC) == 1.0
    pairs = [("\\boxed{C}", "270"), ("\\boxed{A}", "270"), ("\\boxed{D}", "\\sqrt3", AMC)]
    assert V.grade_batch(pairs, workers=1, problem=AMC) == [True, False, True]
    assert V.grade_batch(pairs, workers=1) == [False, False, True]
    assert "choice" in V.explain("\\boxed{C}", "270", problem=AMC)["why"]
    # labels out of order are not a list of choices (a figure's points, say): no letter maps
    shuffled = "Which? $\\textbf{(A) } 3 \\qquad \\textbf{(C) } 5 \\qquad \\textbf{(B) } 7$"
    assert answers.listed_choices(shuffled) is None
    assert not V.grade("\\boxed{B}", "7", problem=shuffled)


def test_answer_is_read_after_the_last_think_close():
    """A box between two </think> belongs to the reasoning: only what follows the last counts."""
    assert not V.grade("<think>a</think> draft \\boxed{1}\n</think>\nno box here", "1")
    assert V.grade("<think>a</think> draft \\boxed{1}\n</think>\nso \\boxed{2}", "2")


def test_cli_reports_bad_lines_and_goes_on(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join([json.dumps({"response": B("1"), "answer": "1"}), "{not json",
                            json.dumps({"response": B("2")}), json.dumps([1, 2]),
                            json.dumps({"response": B("3"), "answer": "3"})]))
    out = subprocess.run([sys.executable, str(ROOT / "verify.py"), str(f), "--workers", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("2/2 correct"), out
    assert "3 bad lines" in out.stdout and "line 2" in out.stdout
    assert all(f"bad.jsonl:{n}:" in out.stderr for n in (2, 3, 4)), out.stderr


def test_a_forked_child_never_uses_the_parents_idle_workers():
    """A child forked after grading (a DataLoader worker, say) must start its own grader: the
    parent's idle worker shares its pipes with the parent."""
    import verify
    assert verify.grade("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")   # sympy: a worker now idles in this process
    parent_workers = {w.p.pid for w in verify._pool.idle}
    assert parent_workers
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: report whether its pool still holds the parent's workers, then grade
        os.close(r)
        clean = not {x.p.pid for x in verify._pool.idle} & parent_workers
        ok = verify.grade("\\boxed{\\sqrt{12}}", "2\\sqrt{3}")
        os.write(w, b"1" if clean and ok else b"0")
        os._exit(0)
    os.close(w)
    answer = os.read(r, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"
