"""common.SamplingEta: the time left in a sampling call under continuous batching, on scripted
runs (a fake clock, one tick per decode step, callbacks every 16 steps as generate makes them)."""
import random

import pytest

from common import SamplingEta, minutes

BUDGET = 2048
CHUNK = 16         # generate's check_every: a live row reports its tokens every 16 steps


def lengths(kind: str, n: int, seed: int) -> list[int]:
    """Reply lengths shaped like real runs: mostly cut off at the budget (an early RL step at a
    short context), a lognormal body with a share at the budget, or uniform."""
    r = random.Random(seed)
    draw = {"truncated": lambda: BUDGET if r.random() < 0.7 else r.randint(BUDGET // 2, BUDGET),
            "mixed": lambda: BUDGET if r.random() < 0.3 else min(BUDGET, int(r.lognormvariate(6, 0.8)) + 1),
            "lognormal": lambda: min(BUDGET, int(r.lognormvariate(6.5, 0.5)) + 1),
            "uniform": lambda: r.randint(1, BUDGET)}[kind]
    return [draw() for _ in range(n)]


def scripted_run(lens: list[int], rows: int, at: float):
    """Decode `lens` with `rows` rows, one clock tick per step, the waiting sequences taking
    free rows in order. Returns, at fraction `at` of the run: the estimate, the true time left,
    the row-count estimate the progress lines used before (elapsed x rows left / done), and
    the steps run so far."""
    def replay(stop_at=None):
        clock = [0.0]
        eta = SamplingEta(len(lens), BUDGET, clock=lambda: clock[0])
        waiting, live, done, reported = list(range(len(lens))), {}, 0, {}
        while waiting or live:
            while waiting and len(live) < rows:
                live[waiting.pop(0)] = 0
            for _ in range(CHUNK):                       # one chunk of decode steps
                clock[0] += 1
                for s in list(live):
                    if live[s] < lens[s]:
                        live[s] += 1
            for s in list(live):                         # the chunk's tokens come back
                finished = live[s] >= lens[s]
                eta(s, [0] * (live[s] - reported.get(s, 0)), "stop" if finished else None)
                reported[s] = live[s]
                if finished:
                    del live[s]
                    done += 1
            if stop_at is not None and clock[0] >= stop_at:
                return eta.seconds_left(), clock[0], clock[0] * (len(lens) - done) / max(done, 1)
        return None, clock[0], None
    _, total, _ = replay()
    estimate, now, by_rows = replay(stop_at=int(total * at))
    return estimate, total - now, by_rows, now


KINDS = ["truncated", "mixed", "lognormal", "uniform"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("count,rows", [(300, 64), (1024, 128)])
def test_estimate_within_1p5x_of_the_time_left_at_half_the_run(kind, count, rows):
    """More sequences than rows (a training step, an evaluation): within 1.5x at half the run."""
    for seed in range(2):
        estimate, truth, _, _ = scripted_run(lengths(kind, count, seed), rows, at=0.5)
        assert truth / 1.5 <= estimate <= truth * 1.5, (kind, count, rows, seed, estimate, truth)


@pytest.mark.parametrize("kind", KINDS)
def test_one_wave_is_never_underestimated_and_never_past_the_budget(kind):
    """Every sequence decoded at once: the end is the longest reply's, which nothing finished
    yet can tell, so a row that has not stopped is expected to run to the budget. The estimate
    is then at most the time to the budget, and never below 1/1.5 of the truth."""
    for seed in range(2):
        estimate, truth, _, now = scripted_run(lengths(kind, 64, seed), 64, at=0.5)
        assert truth / 1.5 <= estimate, (kind, seed, estimate, truth)
        assert estimate <= (BUDGET - now) * 1.02, (kind, seed, estimate, now)   # a step's time: from tokens that come back in chunks


def test_counting_finished_rows_was_far_off_where_replies_run_to_the_budget():
    """The estimate the progress lines gave before: 30x and more too long at half the run."""
    estimate, truth, by_rows, _ = scripted_run(lengths("truncated", 64, 0), 64, at=0.5)
    assert by_rows > 10 * truth
    assert truth / 1.5 <= estimate <= truth * 1.5


def test_no_estimate_before_the_first_tokens_and_none_left_at_the_end():
    eta = SamplingEta(2, BUDGET, clock=lambda: 5.0)
    assert eta.seconds_left() is None and minutes(None) == "?"
    eta(0, [1, 2], "stop")
    eta(1, [3], "length")
    assert eta.seconds_left() == 0.0 and minutes(90) == "1.5 min"
