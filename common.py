"""common.py: the plumbing that train.py, polish.py, sample.py and evaluate.py share.

    from common import print0, start_distributed, stop_distributed, add_config_flags, bound_problem
    rank, world, device = start_distributed(timeout_s=3600)   # torchrun, or one process
    ...
    stop_distributed()

Written once here so that each entry point reads as its own job: one process-group set-up and
teardown, rank-0 printing, one builder that turns a config dataclass into argparse flags (the
field comments are the help), one lower-bound check for numeric flags, and the phase
reporting that turns a lost rank, SIGTERM or non-finite logits into one line naming where the
run was. Nothing here knows about models, data or GRPO.
"""
import argparse
import contextlib
import datetime
import fcntl
import inspect
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist

from model import one_line


def print0(*args, **kw):
    """print() on rank 0 only (RANK from torchrun; a single process is rank 0)."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kw, flush=True)


# ----------------------------------------------------------------------------- process group

def start_distributed(timeout_s: float | None = None, backend: str | None = None) -> tuple[int, int, torch.device]:
    """(rank, world, device). torchrun sets RANK, WORLD_SIZE and LOCAL_RANK: each rank takes
    its own GPU (or the CPU) and joins the process group, NCCL on GPUs and gloo on CPU unless
    `backend` says. Without torchrun: one process, no group. timeout_s bounds every collective,
    so a rank that stops answering ends the run (None: torch's default)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)       # before NCCL starts, so it binds to this GPU
    if world > 1:
        # Before the group exists: torch.distributed.nn binds the default group into its functions'
        # defaults when first imported (torch._dynamo pulls it in when DDP or the meta-device model
        # build runs). Imported later, that reference kept the gloo group and its worker threads
        # alive past destroy_process_group, and a worker still freeing the last collective's
        # tensors at interpreter exit aborted the rank ("terminate called without an active
        # exception").
        import torch.distributed.nn as _dist_nn  # noqa: F401
        timeout = None if timeout_s is None else datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"), timeout=timeout)
    return rank, world, device


def stop_distributed():
    """Leave the process group, joining gloo's threads while the interpreter is whole (on any exit
    path: call it from a finally). Whatever still holds the group (a DDP module) must be dropped
    first."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def refuse_diverged_ranks(values: dict, world: int, program: str):
    """Every rank must have been started with the same values (flags, input digests): ranks with
    different --lr or --seed would otherwise run on as silently diverged replicas. Collective:
    every rank calls it, and every rank stops with the same line naming what differs."""
    if world == 1:
        return
    seen = [None] * world
    dist.all_gather_object(seen, values)
    differ = [k for k in values if any(other.get(k) != values[k] for other in seen)]
    if differ:
        k = differ[0]
        rank = next(r for r, other in enumerate(seen) if other.get(k) != seen[0].get(k))
        raise SystemExit(f"{program}: error: the ranks were started differently ({', '.join(differ)}): rank 0 has "
                         f"{k} {seen[0].get(k)!r}, rank {rank} has {seen[rank].get(k)!r}; start every rank with "
                         f"the same command")


# ----------------------------------------------------------------------------- one writer

def lock_output(path: str, program: str):
    """Hold an exclusive lock on `path` (created if missing) for the rest of this process, so that
    a second program started on the same output (a scheduler restarting a job whose first process
    still lives, two commands with one --out) stops at once instead of interleaving rows and
    replacing files. Creating the lock file also proves, before any model loads, that the
    output's folder is writable. Returns the open file: the lock lasts while it is open (the
    operating system drops it when the process ends, however it ends)."""
    try:
        f = open(path, "a+")
    except OSError as e:
        raise SystemExit(f"{program}: error: cannot write beside the output: {path}: {e.strerror}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise SystemExit(f"{program}: error: {path} is held by another process (pid {holder}) writing the same "
                         f"output; wait for it to end or stop it, or choose another output") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


# ----------------------------------------------------------------------------- flags

def field_notes(cls) -> dict[str, str]:
    """The comment after each field of a config dataclass: `name: type = default  # note`."""
    return dict(re.findall(r"^\s+(\w+): [^=\n]+= .*?#\s*(.*)$", inspect.getsource(cls), re.M))


def add_config_flags(ap: argparse.ArgumentParser, cls, suppress: bool = False):
    """One flag per field of the config dataclass cls (--max-new-tokens for max_new_tokens), its
    comment as the help; bools get --x / --no-x. suppress=True leaves a flag that was not given
    out of the parsed namespace, so that the caller can tell given values from defaults."""
    notes = field_notes(cls)
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        note = f"{notes.get(f.name, '')} (default {f.default!r})".replace("%", "%%")
        default = argparse.SUPPRESS if suppress else f.default
        if f.type is bool or f.type == "bool":
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=note)
        else:
            ap.add_argument(flag, type=_type_of(f.type), default=default, help=note)


def _type_of(annotation):
    """The callable argparse converts a flag with: the field's type, also when annotations are strings."""
    if isinstance(annotation, str):
        return {"int": int, "float": float, "str": str, "str | None": str}[annotation]
    if annotation == (str | None):    # a text flag whose default, None, means "not given"
        return str
    return annotation


def bound_problem(cfg, bounds: dict) -> str:
    """The first field of cfg outside its lower bound, as a message naming the flag and value;
    "" if none. bounds maps a field name to (lowest value, whether the lowest is allowed).
    nan and inf come in through float() and are refused too."""
    for name, (low, inclusive) in bounds.items():
        value = getattr(cfg, name)
        flag = "--" + name.replace("_", "-")
        if not math.isfinite(value):
            return f"{flag} must be a finite number, not {value}"
        if value < low or (value == low and not inclusive):
            relation = ">=" if inclusive else ">"
            return f"{flag} must be {relation} {low}, not {value}"
    return ""


# ----------------------------------------------------------------------------- failing fast

@dataclass
class Progress:
    """Where this rank is, named in the one line that ends a run when a rank stops answering, a
    signal arrives or the model's numbers go non-finite. One per process (PROGRESS): the SIGTERM
    handler has no other way to learn it."""
    phase: str = "start-up"    # then warm-up, sampling, grading, old/ref log-probs, update, metrics, eval, checkpoint
    step: int = 0              # the step under way, counted from 1; 0 before the loop
    weights: str = ""          # the checkpoint the policy came from (and the warm-up, if one ran)
    program: str = "train.py"  # the entry point, first word of every line it prints
    kept: str = ""             # what a stop keeps and the command that continues, for the SIGTERM line

    def where(self) -> str:
        return f"{self.phase} of step {self.step}" if self.step else self.phase


PROGRESS = Progress()


def enter(phase: str):
    """Record that this rank now runs `phase` (a Progress.phase name)."""
    PROGRESS.phase = phase


def lost_contact(e: RuntimeError) -> bool:
    """Whether a collective failed because another rank stopped answering or went away. NCCL
    raises torch's DistError types; gloo a plain RuntimeError whose text names gloo's source."""
    return isinstance(e, dist.DistError) or "gloo" in str(e)


def stopped_by_signal(signum, frame):
    """SIGTERM (torchrun stopping the other ranks once one failed, or a job scheduler): one line
    naming this rank's phase and what is kept, then exit at once. os._exit skips the process
    group's teardown, which could wait on a rank that is gone; files are flushed row by row and
    checkpoints renamed into place whole, so nothing written is lost."""
    rank = os.environ.get("RANK", "0")
    kept = f": {PROGRESS.kept}" if PROGRESS.kept else ""
    print(f"{PROGRESS.program}: rank {rank} stopped by {signal.Signals(signum).name} during {PROGRESS.where()}{kept}",
          file=sys.stderr, flush=True)
    os._exit(128 + signum)


@contextlib.contextmanager
def fail_fast(program: str, timeout_flag: str, kept: str = ""):
    """Around a run: a lost rank, SIGTERM or non-finite logits end it with one line naming the
    phase (and the weights, when the numbers are to blame) instead of a hang or a traceback.
    timeout_flag names the flag and value that bound a collective, for the lost-rank line;
    kept says what a stop keeps and the command that continues, for the SIGTERM line."""
    PROGRESS.__init__(program=program, kept=kept)   # main may run more than once in a process (tests, bench.py)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stopped_by_signal) if in_main_thread else None
    try:
        yield
    except FloatingPointError as e:   # sample.generate: the policy's logits are not finite
        raise SystemExit(f"{program}: error: non-finite logits during {PROGRESS.where()} from the weights of "
                         f"{PROGRESS.weights}: {one_line(e)}") from None
    except RuntimeError as e:
        if int(os.environ.get("WORLD_SIZE", 1)) == 1 or not lost_contact(e):
            raise
        raise SystemExit(f"{program}: error: rank {os.environ.get('RANK')} lost the other ranks during "
                         f"{PROGRESS.where()} (no answer within {timeout_flag}, or a rank exited; its own "
                         f"line names its phase): {one_line(e)}") from None
    finally:
        if previous is not None:   # None: not ours to restore (not the main thread, or set outside Python)
            signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- time left

class SamplingEta:
    """Time left in one sample.generate call, fed by its callback (seq, new tokens, finish).

    Counting finished rows does not work under continuous batching: every row advances at
    once, the short ones finish first, and elapsed x rows left / rows done was 64x too long
    halfway through a scripted run where most replies run to the budget. Here the unit is a
    decode step (every live row gains a token; its time is about constant on a GPU):
      - a row's expected length given that it is already c tokens long is the mean of the
        finished rows longer than c and the live rows at least that long, each of those counted
        at the budget (it may run that far);
      - the steps left are the live rows' expected remainders and the waiting rows' expected
        lengths over the rows decoded together, plus half a row's length for the last wave; or,
        with nothing waiting, the largest remainder of a live row;
      - a step's time is measured on the live row that has run longest.
    tests/test_eta.py scripts runs of real-run-like length mixes: with more sequences than rows,
    the estimate at half the run is within 1.5x of the true time left; with every sequence
    decoded at once (the end is the longest reply's, which nothing finished can tell), it is
    never below 1/1.5 of the truth and never past the time to the budget."""

    def __init__(self, sequences: int, budget: int, clock=time.perf_counter):
        self.sequences, self.budget, self.clock = sequences, budget, clock
        self.live = {}       # seq -> [tokens so far, time of its first tokens]
        self.done = []       # lengths of the finished rows
        self.width = 1       # the most rows seen live at once

    def __call__(self, seq: int, new: list, finish) -> None:
        row = self.live.setdefault(seq, [0, self.clock()])
        row[0] += len(new)
        if finish is not None:
            self.done.append(self.live.pop(seq)[0])
        self.width = max(self.width, len(self.live))

    def expected_length(self, c: int) -> float:
        """Mean length of a row already c tokens long (the budget when nothing says otherwise)."""
        longer = [n for n in self.done if n > c]
        running = sum(1 for n, _ in self.live.values() if n >= c)
        if not longer and not running:
            return float(self.budget)
        return (sum(longer) + self.budget * running) / (len(longer) + running)

    def seconds_left(self) -> float | None:
        """Estimated seconds until the call ends; None before any row has a token."""
        if not self.live:
            return 0.0 if self.done else None
        n, since = max(self.live.values())
        step_s = (self.clock() - since) / max(n, 1)
        left = [max(self.expected_length(c) - c, 0.0) for c, _ in self.live.values()]
        waiting = self.sequences - len(self.done) - len(self.live)
        if waiting <= 0:
            return max(left) * step_s
        first = self.expected_length(0)
        return ((sum(left) + waiting * first) / self.width + first / 2) * step_s


def minutes(seconds: float | None) -> str:
    """An ETA for a progress line: '12.3 min', or '?' when there is no estimate yet."""
    return "?" if seconds is None else f"{seconds / 60:.1f} min"


# ----------------------------------------------------------------------------- metrics over ranks

def all_sum_named(values: dict, world: int, device) -> dict:
    """Each named scalar summed over all ranks, in one all_reduce.

    Every rank must call it with the same names in the same order (dicts keep insertion order)."""
    if world == 1:
        return dict(values)
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, t.tolist()))
