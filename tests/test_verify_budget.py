"""grade_batch's budget: answers that each run sympy to its timeout cannot stretch a GRPO step.

    python -m pytest -q tests/test_verify_budget.py

The jobs are the workers' test hook (["sleep", s]: a job that overruns any timeout), put in
place of what _prepare would send, so the timing does not depend on sympy's speed here.
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import verify as V  # noqa: E402


def slow_jobs(monkeypatch, seconds: float):
    """Every pair becomes its own worker job that sleeps `seconds` (jobs differ by a tiny offset)."""
    def prepare(response, answer, problem=None):
        job = json.dumps(["sleep", seconds + int(response) * 1e-6])
        return dict(extracted=response, reference=[answer], answer=response, correct=False, job=job,
                    why="needs sympy")
    monkeypatch.setattr(V, "_prepare", prepare)


def test_a_batch_of_slow_answers_ends_within_its_budget_and_counts_them(monkeypatch):
    slow_jobs(monkeypatch, 30)
    before = dict(V.STATS)
    t0 = time.monotonic()
    got = V.grade_batch([(str(i), "1") for i in range(8)], workers=2, timeout=0.5, budget=1.0)
    took = time.monotonic() - t0
    assert got == [False] * 8
    timeouts = V.STATS["timeout"] - before.get("timeout", 0)
    deadline = V.STATS["deadline"] - before.get("deadline", 0)
    assert timeouts >= 2 and deadline >= 1 and timeouts + deadline == 8
    # the budget bounds the sympy work; replacing the killed workers (a process start each) comes on top
    assert took < 1.0 + 0.5 + 10, took


def test_an_answer_that_ran_out_its_timeout_is_cached_as_wrong_and_one_cut_short_is_not(monkeypatch):
    """_prepare looks a job up in _cache before sending it: a hostile answer sampled again costs
    nothing. A job stopped early by the batch budget never had its full timeout: not cached."""
    slow_jobs(monkeypatch, 30)
    infos = V._grade_all([("101", "1")], 1, 0.3, budget=60)      # jobs no other test sends
    assert infos[0]["why"] == "timeout after 0.3s"
    assert V._cache[json.dumps(["sleep", 30 + 101e-6])] == (False, "timeout after 0.3s")
    infos = V._grade_all([("102", "1")], 1, 5.0, budget=0.3)
    assert infos[0]["correct"] is False
    assert json.dumps(["sleep", 30 + 102e-6]) not in V._cache
