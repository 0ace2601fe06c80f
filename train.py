"""GRPO on math problems, DeepScaleR's recipe by default, under torchrun DDP or in one process.

    python train.py                                           # the embedded toy, CPU, minutes
    torchrun --nproc_per_node=8 train.py --model DIR --data polished.jsonl --ctx 8192   # one stage
    torchrun --nproc_per_node=8 train.py --model DIR --data polished.jsonl --steps 1750 \\
        --schedule 0:8192:8,1040:16384:16,1520:24576:16           # DeepScaleR's three stages
    torchrun --nproc_per_node=8 train.py ... --resume auto        # continue a run, even at a switch
    python train.py plot runs/grpo                            # curves to runs/grpo/curves.png

One step: every rank takes its share of the global prompt batch (whole groups, so advantages
need no communication), samples `--samples` completions per prompt from the live weights with
sample.generate, grades them with verify.grade_batch, and turns rewards into group-relative
advantages. The batch is then split into `--updates-per-step` mini-batches, each one
optimizer step: micro-batches packed by token budget (padding-free: sequences side by side in
one row, each attending only to itself), log-probs through model.token_logprobs, the loss of
grpo.py, backward under DDP with no_sync until the last micro-batch.

Stages: --schedule FIRST_STEP:CTX:SAMPLES,... changes the response budget and the group size
after FIRST_STEP steps. At each switch the policy so far becomes the KL reference and AdamW
restarts, as in DeepScaleR's hand-launched stages (--keep-initial-ref, --keep-optimizer
otherwise); checkpoints hold what the stage needs, so a resume anywhere is exact. The sampler's
KV budget is fixed at the first step and kept on resume, because the rows it holds decide
which random numbers each sample draws.

Failing fast: a rank that waits `--collective-timeout-s` for another ends the run with one
line naming the phase it was in (torchrun then stops the others, which name theirs; that line
is tested on gloo; on NCCL torch's watchdog may abort the waiting rank first, with its own
message, still within the timeout); a
non-finite first step or non-finite logits name the checkpoint; Ctrl-C ends with one line,
and a checkpoint is only ever renamed into place whole, so `--resume auto` continues from the
last one.

Without --model, `python train.py` builds the toy of toy.py (a 1M-parameter Qwen2, an R1-style
tokenizer, two-digit addition), warms it up with a few supervised steps and runs GRPO, printing
held-out accuracy before and after. Left out: FSDP/tensor parallelism (the 1.5B policy with
AdamW fits one 80 GB GPU under DDP), a value model, multi-turn or tool rollouts.
"""
import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace

import torch
import torch.distributed as dist

import grpo
from data import (THINK_CHOICES, Tokenizer, clean_exit, dedupe, epoch_order, load_records, polish_method,
                  prompt_ids, reference_answers, requires_think, shard)
from model import Transformer, one_line
from sample import KVCache, default_kv_budget, evaluate, generate, grade_completions


@dataclass
class Config:
    # --- inputs and outputs
    model: str = ""                  # HF folder of the policy; empty: build and train the toy
    data: str = ""                   # training records (polish.py output or any problem file)
    eval_data: str = ""              # held-out records for periodic evaluation; empty: none
    out: str = "runs/grpo"           # run folder: config.json, metrics.jsonl, checkpoints/
    resume: str = ""                 # a checkpoint folder, or "auto" for the newest in out/
    # --- rollouts (DeepScaleR's 8K stage)
    ctx: int = 8192                  # response budget in tokens (max new tokens per sample)
    prompt_budget: int = 1024        # longer prompts are dropped at load time (and counted)
    prompts_per_step: int = 128      # prompts per step over all ranks
    samples: int = 8                 # completions per prompt (the GRPO group)
    schedule: str = ""               # FIRST_STEP:CTX:SAMPLES,... (a stage runs from step FIRST_STEP + 1) e.g. 0:8192:8,1040:16384:16; empty: --ctx, --samples
    temperature: float = 0.6
    top_p: float = 1.0
    think: str = "auto"              # require </think> for reward 1: yes | no | auto (R1 template)
    dynamic_sampling: bool = False   # drop groups whose rewards are all equal and sample more
    max_refill_rounds: int = 4       # at most this many extra sampling rounds per step
    pass_rate_min: float = 0.0       # keep problems with pass_rate_min < polish pass rate ...
    pass_rate_max: float = 1.0       # ... < pass_rate_max (always/never solved carry no signal)
    kv_gib: float = 0.0              # KV cache memory for sampling in GiB; 0: the sampler's default
    cuda_graphs: bool = True         # replay the sampler's decode steps as CUDA graphs (GPU only)
    # --- optimisation
    lr: float = 1e-6                 # AdamW, constant
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    updates_per_step: int = 2        # optimizer steps per rollout batch (mini-batches)
    clip_low: float = 0.2            # PPO clip below 1
    clip_high: float = 0.2           # PPO clip above 1 (DAPO's clip-higher: 0.28)
    kl_coef: float = 0.001           # k3 KL to the reference (the stage's first weights); 0 skips the reference
    keep_initial_ref: bool = False   # at a stage switch keep --model as KL reference (DeepScaleR: the switch's policy)
    keep_optimizer: bool = False     # at a stage switch keep AdamW's state (DeepScaleR: a fresh optimizer)
    entropy_coef: float = 0.001      # entropy bonus
    loss_agg: str = "token-mean"     # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm
    scale_adv: bool = True           # divide advantages by the group std (off: Dr. GRPO)
    old_logp: str = "recompute"      # recompute: a no-grad forward before updating; sampler: reuse
    micro_tokens: int = 16384        # tokens per packed micro-batch
    grad_ckpt: bool = True           # activation checkpointing per layer
    amp: bool = True                 # bf16 autocast for training and a bf16 sampling copy (CUDA)
    sft_steps: int = 0               # supervised warm-up steps on the records' solutions first
    sft_lr: float = 1e-5             # warm-up learning rate, decaying linearly to 0
    sft_batch: int = 64              # sequences per warm-up step
    sft_guided: bool = True          # warm up on polish.py's answer-guided chains too (not only free ones)
    steps: int = 1000                # GRPO steps
    seed: int = 0
    # --- logging, evaluation, checkpoints
    save_every: int = 50             # checkpoint every this many steps and at the end; 0: never
    keep: int = 3                    # checkpoints kept (the newest)
    eval_every: int = 50             # 0: no evaluation
    eval_samples: int = 4            # samples per held-out problem
    eval_temperature: float = 0.6    # 0: greedy
    eval_top_p: float = 0.95
    show_every: int = 10             # print a few decoded rollouts every this many steps
    max_bad_steps: int = 3           # consecutive non-finite steps before the run stops
    # --- failing fast under torchrun
    # The longest a live rank can wait at a collective is the longest stretch another spends
    # alone: a step's sampling (each rank decodes its own groups, the slowest sets the pace).
    # BENCHMARKS.md: 24 s on one H200 for 32 prompts x 8 samples x 2K tokens (21K tok/s).
    # DeepScaleR's 24K stage gives each of 8 ranks 16 prompts x 16 samples of up to 24K tokens:
    # 12x those tokens at up to 12x the context, 5 to 30 minutes. An hour never cuts a slow but
    # live step short, yet a hung rank (a stuck GPU, a dead node, a grader that never returns)
    # ends the run within the hour instead of never. torch's NCCL default (10 minutes) would
    # kill such a step; raise this too when an eval pass (--eval-samples x the held-out set,
    # --ctx tokens each) takes longer than an hour.
    collective_timeout_s: float = 3600.0  # seconds a rank waits for the others at a collective before the run stops
    wandb: str = ""                  # a wandb project to log to (needs `pip install wandb`)


# The embedded default: what `python train.py` runs when no --model is given (toy.py says
# what the task is and what GRPO has to learn there).
TOY = dict(
    # rollouts: 32 prompts x 8 samples at temperature 1; a chain and its answer fit in 40 tokens
    prompts_per_step=32, samples=8, ctx=40, prompt_budget=64, temperature=1.0,
    # a tiny model takes a large constant rate; no KL or entropy term, one update per batch
    lr=3e-4, weight_decay=0.0, updates_per_step=1, kl_coef=0.0, entropy_coef=0.0, old_logp="sampler",
    micro_tokens=8192, grad_ckpt=False, steps=30,
    # supervised warm-up on the records' solutions: 600 steps of 32
    sft_steps=600, sft_lr=3e-3, sft_batch=32,
    # held-out accuracy as training samples: 4 samples per problem at temperature 1, top_p 1
    eval_every=10, eval_samples=4, eval_temperature=1.0, eval_top_p=1.0,
    save_every=10, show_every=30, out="runs/toy")


def parse_config(argv) -> tuple[Config, set]:
    """Flags generated from Config; returns the config and the names given on the command line."""
    ap = argparse.ArgumentParser(description="GRPO training (DeepScaleR recipe by default). "
                                 "`python train.py plot RUN_DIR` draws a run's curves. Without --model: "
                                 "the embedded toy, with its own defaults (TOY in train.py).")
    # Each flag's help is the comment on its Config field, read from this file.
    with open(__file__, encoding="utf-8") as src:
        notes = dict(re.findall(r"^    (\w+): [\w|]+ = .*?# (.*)$", src.read(), re.M))
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                            help=f"{notes.get(f.name, '')} (default {f.default})")
        else:
            ap.add_argument(flag, type=f.type, default=argparse.SUPPRESS,
                            help=f"{notes.get(f.name, '')} (default {f.default!r})")
    given = vars(ap.parse_args(argv))
    values = {} if given.get("model") else dict(TOY)  # the toy's defaults, under explicit flags
    values.update(given)
    cfg = Config(**values)
    if cfg.think not in THINK_CHOICES:
        ap.error(f"--think must be yes, no or auto, not {cfg.think!r}")
    if cfg.old_logp not in ("recompute", "sampler"):
        ap.error(f"--old-logp must be recompute or sampler, not {cfg.old_logp!r}")
    if cfg.loss_agg not in grpo.AGGREGATIONS:
        ap.error(f"--loss-agg must be one of {grpo.AGGREGATIONS}, not {cfg.loss_agg!r}")
    if cfg.model and not cfg.data:
        ap.error("--model needs --data (a records file; see data.py)")
    problem = range_problem(cfg)
    if problem:
        ap.error(problem)
    if cfg.schedule:
        try:
            first = parse_schedule(cfg.schedule)[0]
        except ValueError as e:
            ap.error(str(e))
        if {"ctx", "samples"} & set(given):
            ap.error("--schedule sets ctx and samples per stage: drop --ctx and --samples")
        cfg.ctx, cfg.samples = first.ctx, first.samples   # config.json then shows the first stage's
    return cfg, set(given)


# The smallest value each numeric flag may take, and whether that bound is itself allowed.
# Anything outside is refused before a model is loaded: these mistakes otherwise surface late
# (--lr -1 after the whole warm-up) or never (--temperature 0 makes every GRPO step NaN).
LOWER_BOUNDS = {
    "ctx": (1, True), "prompt_budget": (1, True), "prompts_per_step": (1, True),
    "samples": (2, True),              # a group of one has no spread: its advantage is always 0
    "temperature": (0.0, False),       # the log-probs divide by it; 0 would be greedy, not sampling
    "top_p": (0.0, False), "max_refill_rounds": (0, True), "kv_gib": (0.0, True),
    "lr": (0.0, True), "weight_decay": (0.0, True), "grad_clip": (0.0, False),
    "updates_per_step": (1, True), "clip_low": (0.0, True), "clip_high": (0.0, True),
    "kl_coef": (0.0, True), "entropy_coef": (0.0, True), "micro_tokens": (1, True),
    "sft_steps": (0, True), "sft_lr": (0.0, True), "sft_batch": (1, True), "steps": (0, True),
    "save_every": (0, True), "keep": (1, True), "eval_every": (0, True), "eval_samples": (1, True),
    "eval_temperature": (0.0, True), "eval_top_p": (0.0, False), "show_every": (1, True),
    "max_bad_steps": (1, True), "collective_timeout_s": (0.0, False),
}


def range_problem(cfg: Config) -> str:
    """The first flag whose value is out of range, as a message naming flag and value; "" if none."""
    for name, (low, inclusive) in LOWER_BOUNDS.items():
        value = getattr(cfg, name)
        flag = "--" + name.replace("_", "-")
        if not math.isfinite(value):
            return f"{flag} must be a finite number, not {value}"
        if value < low or (value == low and not inclusive):
            relation = ">=" if inclusive else ">"
            return f"{flag} must be {relation} {low}, not {value}"
    for name in ("top_p", "eval_top_p", "clip_low"):
        if getattr(cfg, name) > 1:
            return f"--{name.replace('_', '-')} must be <= 1, not {getattr(cfg, name)}"
    if not 0 <= cfg.pass_rate_min < cfg.pass_rate_max <= 1:
        return (f"--pass-rate-min and --pass-rate-max must satisfy 0 <= min < max <= 1, "
                f"not {cfg.pass_rate_min} and {cfg.pass_rate_max}")
    return ""


# ----------------------------------------------------------------------------- context stages

@dataclass(frozen=True)
class Stage:
    """One stage of --schedule. DeepScaleR launched each by hand from the last one's checkpoint,
    which became both the policy and the KL reference, with a fresh optimizer."""
    first: int                 # completed GRPO steps before the stage begins (it runs step first + 1 on)
    ctx: int                   # response budget in tokens within the stage
    samples: int               # completions per prompt within the stage

    def __str__(self):
        return f"{self.first}:{self.ctx}:{self.samples}"


def parse_schedule(text: str) -> list[Stage]:
    """--schedule "0:8192:8,1040:16384:16" as Stages; a ValueError naming the first bad entry."""
    stages = []
    for i, entry in enumerate(text.split(","), 1):
        where = f"--schedule entry {i} {entry.strip()!r}"
        parts = [p.strip() for p in entry.split(":")]
        if len(parts) != 3 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
            raise ValueError(f"{where} must be FIRST_STEP:CTX:SAMPLES, three integers")
        stage = Stage(*map(int, parts))
        if stage.ctx < 1:
            raise ValueError(f"{where}: ctx must be >= 1, not {stage.ctx}")
        if stage.samples < 2:   # as --samples: a group of one has no spread, its advantage is always 0
            raise ValueError(f"{where}: samples must be >= 2, not {stage.samples}")
        if not stages and stage.first != 0:
            raise ValueError(f"{where}: the first stage must start at step 0, not {stage.first}")
        if stages and stage.first <= stages[-1].first:
            raise ValueError(f"{where}: steps must increase, and {stage.first} is not after {stages[-1].first}")
        stages.append(stage)
    return stages


def schedule_of(cfg) -> list[Stage]:
    """The run's stages: --schedule, or one stage of --ctx and --samples."""
    return parse_schedule(cfg.schedule) if cfg.schedule else [Stage(0, cfg.ctx, cfg.samples)]


def stage_at(stages: list[Stage], done: int) -> int:
    """The index of the stage that runs the step after `done` completed steps."""
    return max(k for k, s in enumerate(stages) if s.first <= done)


def fmt_stages(stages: list[Stage]) -> str:
    """Stages as --schedule spells them."""
    return ",".join(map(str, stages)) or "none"


def describe_stages(stages: list[Stage], steps: int) -> str:
    """The schedule in one line: the steps each stage runs, or that --steps ends before it."""
    parts = []
    for k, s in enumerate(stages):
        end = min(stages[k + 1].first if k + 1 < len(stages) else steps, steps)
        span = f"steps {s.first + 1}-{end}" if s.first < steps else f"after --steps {steps}, not reached"
        parts.append(f"{k}) {s.ctx} tokens x {s.samples} samples, {span}")
    return "stages: " + "; ".join(parts)


# Without CUDA the policy samples itself (amp is off, so there is no bf16 copy to keep in sync).
# True keeps the separate bf16 sampling copy on any device, so that its re-sync after every
# update runs, and is tested, on CPU too.
SAMPLER_COPY = False


def print0(*args, **kw):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kw, flush=True)


# ----------------------------------------------------------------------------- data order

def take(recs: list, seed: int, pos: int, count: int) -> list:
    """The records at global positions pos .. pos + count - 1 of the training stream (GRPO's prompt
    batches and the warm-up's batches both read it).

    Position p is index p % n of epoch p // n, whose order is epoch_order(n, seed, p // n). A
    batch that crosses an epoch boundary finishes the old epoch's permutation and continues
    with the new one, so every record is seen exactly once per epoch. The order depends only on
    (seed, pos), so every rank draws the same batch and a resumed run continues where it left off.
    """
    n = len(recs)
    orders = {}   # one permutation per epoch the batch touches (a batch may span several)
    picked = []
    for p in range(pos, pos + count):
        epoch = p // n
        if epoch not in orders:
            orders[epoch] = epoch_order(n, seed, epoch)
        picked.append(recs[orders[epoch][p % n]])
    return picked


# ----------------------------------------------------------------------------- failing fast

@dataclass
class Progress:
    """Where this rank is, named in the one line that ends a run when a rank stops answering, a
    signal arrives or the model's numbers go non-finite. One per process (PROGRESS): the SIGTERM
    handler has no other way to learn it."""
    phase: str = "start-up"    # then warm-up, sampling, grading, old/ref log-probs, update, metrics, eval, checkpoint
    step: int = 0              # the GRPO step under way, counted from 1; 0 before the loop
    weights: str = ""          # the checkpoint the policy came from (and the warm-up, if one ran)

    def where(self) -> str:
        return f"{self.phase} of step {self.step}" if self.step else self.phase


PROGRESS = Progress()


def enter(phase: str):
    """Record that this rank now runs `phase` (a Progress.phase name)."""
    PROGRESS.phase = phase


# Test hook, read only in collect_rollouts: TRAIN_TEST_STALL_RANK=R makes rank R stop answering
# when it starts sampling, as a hung GPU or a grader that never returns would
# (tests/test_train_fail_fast.py). Unset in any real run.
STALL_ENV = "TRAIN_TEST_STALL_RANK"


def lost_contact(e: RuntimeError) -> bool:
    """Whether a collective failed because another rank stopped answering or went away. NCCL
    raises torch's DistError types; gloo a plain RuntimeError whose text names gloo's source."""
    return isinstance(e, dist.DistError) or "gloo" in str(e)


def stopped_by_signal(signum, frame):
    """SIGTERM (torchrun stopping the other ranks once one failed, or a job scheduler): one line
    naming this rank's phase, then exit at once. os._exit skips the process group's teardown,
    which could wait on a rank that is gone; metrics.jsonl is flushed after every row, and a
    checkpoint still being written is a .tmp folder that --resume never picks."""
    rank = os.environ.get("RANK", "0")
    print(f"train.py: rank {rank} stopped by {signal.Signals(signum).name} during {PROGRESS.where()}",
          file=sys.stderr, flush=True)
    os._exit(128 + signum)


@contextlib.contextmanager
def fail_fast(cfg):
    """Around a run: a lost rank, SIGTERM or non-finite logits end it with one line naming the
    phase (and the checkpoint, when the numbers are to blame) instead of a hang or a traceback."""
    PROGRESS.__init__()   # main may run more than once in a process (tests, bench.py)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stopped_by_signal) if in_main_thread else None
    try:
        yield
    except FloatingPointError as e:   # sample.generate: the policy's logits are not finite
        raise SystemExit(f"train.py: error: non-finite logits during {PROGRESS.where()} from the weights of "
                         f"{PROGRESS.weights}: {one_line(e)}") from None
    except RuntimeError as e:
        if int(os.environ.get("WORLD_SIZE", 1)) == 1 or not lost_contact(e):
            raise
        raise SystemExit(f"train.py: error: rank {os.environ.get('RANK')} lost the other ranks during "
                         f"{PROGRESS.where()} (no answer within --collective-timeout-s "
                         f"{cfg.collective_timeout_s:g}, or a rank exited; its own line names its phase): "
                         f"{one_line(e)}") from None
    finally:
        if previous is not None:   # None: not ours to restore (not the main thread, or set outside Python)
            signal.signal(signal.SIGTERM, previous)


def refuse_broken_first_step(row: dict, skipped: int):
    """The first GRPO step of a run with a non-finite loss or gradient means the weights it
    started from (or the warm-up) are broken: stop and say so rather than skip steps until
    --max-bad-steps. Every rank sees the same summed loss and synchronised gradient, so every
    rank stops here together."""
    if math.isfinite(row["loss"]) and not skipped:
        return
    raise SystemExit(f"train.py: error: the first GRPO step gave a non-finite loss ({row['loss']}) or gradient "
                     f"(norm {row['grad_norm']}) with the weights of {PROGRESS.weights}: check that checkpoint "
                     f"(python sample.py --model ... samples from it) or lower --lr / --sft-lr")


# ----------------------------------------------------------------------------- records

@dataclass
class Sequence:
    """A prompt and a completion: what the trainer scores. The warm-up's demonstrations are
    only this; a sampled completion is a Rollout."""
    prompt: list[int]          # prompt token ids, chat template applied
    tokens: list[int]          # completion token ids (a stopped sample ends with its stop token)


@dataclass
class Rollout(Sequence):
    """One sampled completion, carried from sampling to the update (GRPO-Zero's Episode)."""
    logprobs: list[float]      # the sampler's log p of each token, at the sampling temperature
    reward: float              # verify's reward: 1.0 for a right final answer (with </think> if asked), else 0.0
    correct: bool              # the final answer alone was right
    advantage: float           # (reward - group mean) / (group std + eps): grpo.group_advantages
    truncated: bool            # stopped by --ctx, not by a stop token
    group: int                 # which prompt of this rank's batch (refill round r adds r * 1_000_000)
    text: str                  # the decoded reply, for the log's examples
    old_logp: list[float] | None = None   # log p before the update (PPO's old policy): store_old_and_ref_logprobs
    ref_logp: list[float] | None = None   # log p under the stage's reference (the KL's), if --kl-coef


@dataclass
class Update:
    """What update_policy reports of one step's optimizer steps."""
    sums: dict                 # this rank's METRIC_SUMS over every mini-batch (token_means makes them means)
    grad_norms: list           # the pre-clip gradient norm of each optimizer step; nan for a skipped one
    skipped: int               # optimizer steps skipped because the gradient was not finite


@dataclass
class StepTimes:
    """Wall-clock seconds of one GRPO step's parts (logged, never used for decisions)."""
    start: float = field(default_factory=time.time)   # when the step began
    sample_s: float = 0.0      # generation, over every refill round
    grade_s: float = 0.0       # decoding and grading, over every refill round
    train_s: float = 0.0       # old/ref log-probs, the optimizer steps and the sampler's re-sync


@dataclass
class Run:
    """What every step needs besides the models: the config, this rank's place, the tokenizer,
    the stage."""
    cfg: Config                # the config as the current stage sees it (its ctx and samples)
    rank: int                  # this process's index among the ranks (0 without torchrun)
    world: int                 # how many ranks (1 without torchrun)
    device: torch.device
    amp: bool                  # bf16 autocast and a bf16 sampling copy (CUDA and --amp)
    tok: Tokenizer
    require_think: bool        # reward 1 needs </think> before the answer (R1 chat template)
    stages: list = field(default_factory=list)   # the Stages of --schedule (one without it)
    stage: int = 0             # the index of the stage now running
    kv_budget: int = 0         # the sampler's KV bytes, fixed at the run's first step; 0: not yet


@dataclass
class Models:
    """The networks of a run. Only `policy` is optimised; the others follow it or never move."""
    policy: Transformer        # fp32 weights AdamW updates; saved in checkpoints
    ddp: torch.nn.Module       # the policy under DDP (the policy itself in one process): forward + backward
    sampler: Transformer       # what generates: the policy itself, or a bf16 copy re-synced after each update
    ref: Transformer | None    # the stage's first weights, for the KL term; None when --kl-coef is 0
    ref_step: int = 0          # the reference is the policy after this many steps (a stage switch); 0: --model
    ref_dir: str = ""          # a folder already holding the reference's weights (hard-linked into checkpoints)


# ----------------------------------------------------------------------------- rollouts

def rollout(sampler, tok, recs, cfg, seed, require_think, kv_budget=None) -> tuple[list[Rollout], float]:
    """GRPO's samples and advantages for one batch of prompts: cfg.samples completions o_1..o_G of
    each prompt from the live weights, their rewards R_i, and A_i = (R_i - mean_G R) / (std_G R + eps)
    (R_i - mean_G R with --no-scale-adv).

    Returns the rollouts, prompt-major (group g is rollouts[g * G:(g + 1) * G]), and the seconds
    spent grading."""
    enter("sampling")
    prompts = [r["prompt_ids"] for r in recs]
    outs = generate(sampler, prompts, n=cfg.samples, max_new_tokens=cfg.ctx, temperature=cfg.temperature,
                    top_p=cfg.top_p, seed=seed, kv_budget=kv_budget, cuda_graphs=cfg.cuda_graphs)
    enter("grading")
    t0 = time.time()
    refs = [reference_answers(r) for r in recs for _ in range(cfg.samples)]
    problems = [r["problem"] for r in recs for _ in range(cfg.samples)]
    texts, correct, rewards = grade_completions(tok, outs, refs, require_think, problems=problems)
    grade_s = time.time() - t0
    rewards = torch.tensor(rewards)                                         # (prompts * G,) float32
    adv = grpo.group_advantages(rewards, cfg.samples, scale=cfg.scale_adv)  # (prompts * G,)
    rollouts = []
    for i, o in enumerate(outs):
        rollouts.append(Rollout(prompt=prompts[i // cfg.samples], tokens=o.tokens, logprobs=o.logprobs,
                                reward=float(rewards[i]), correct=bool(correct[i]), advantage=float(adv[i]),
                                truncated=o.finish_reason == "length", group=i // cfg.samples, text=texts[i]))
    return rollouts, grade_s


def rollout_seed(seed: int, step: int, round_: int, rank: int) -> int:
    """The sampler's seed for one rank's sampling round of one step. It depends only on these four,
    so a resumed run samples what the uninterrupted one would have; the prime factors keep
    (step, round, rank) apart while rank < 97 and round <= 9."""
    return seed * 1_000_003 + step * 1009 + round_ * 97 + rank


def groups_with_signal(rollouts: list[Rollout]) -> set[int]:
    """The groups whose rewards are not all equal. Only they carry a gradient: a group with one
    reward has every advantage 0 (DAPO's dynamic sampling drops the others)."""
    rewards = {}
    for r in rollouts:
        rewards.setdefault(r.group, set()).add(r.reward)
    return {g for g, seen in rewards.items() if len(seen) > 1}


def collect_rollouts(run: Run, models: Models, recs: list, data_pos: int, step: int,
                     times: StepTimes) -> tuple[list[Rollout], int]:
    """The step's samples (the expectation in GRPO's objective), drawn from the live weights.

    Every rank draws the same global batch of cfg.prompts_per_step prompts at data_pos and rolls
    out its share. With --dynamic-sampling, groups without signal are dropped and further
    batches sampled until the ranks together hold cfg.prompts_per_step groups or
    --max-refill-rounds extra rounds ran. Returns this rank's rollouts and the new data_pos."""
    cfg = run.cfg
    rollouts = []
    rounds = 0
    while True:
        batch = take(recs, cfg.seed, data_pos, cfg.prompts_per_step)
        data_pos += cfg.prompts_per_step
        models.policy.eval()
        enter("sampling")
        if os.environ.get(STALL_ENV) == str(run.rank):   # the test hook (see STALL_ENV)
            time.sleep(24 * 3600)
        t0 = time.time()
        got, grade_s = rollout(models.sampler, run.tok, shard(batch, run.rank, run.world), cfg,
                               seed=rollout_seed(cfg.seed, step, rounds, run.rank), require_think=run.require_think,
                               kv_budget=run.kv_budget or None)
        times.sample_s += time.time() - t0 - grade_s
        times.grade_s += grade_s
        if cfg.dynamic_sampling:
            keep = groups_with_signal(got)
            got = [r for r in got if r.group in keep]
            for r in got:
                r.group += 1_000_000 * rounds   # groups of different rounds stay apart
        rollouts += got
        rounds += 1
        # a collective on every round: all ranks must agree on whether to sample again (the
        # sampling phase ends when the slowest rank's rollouts are in)
        enter("sampling")
        groups = all_sum_named(dict(groups=len({r.group for r in rollouts})), run.world, run.device)["groups"]
        if not cfg.dynamic_sampling or int(groups) >= cfg.prompts_per_step or rounds > cfg.max_refill_rounds:
            return rollouts, data_pos


# ----------------------------------------------------------------------------- training

def pack(seqs: list[Sequence], micro_tokens: int) -> list[list[Sequence]]:
    """Greedy packing into micro-batches of at most micro_tokens (a longer sequence goes alone).

    Sequences are taken shortest first, so each micro-batch holds similar lengths (the model
    then attends to them as one padded grid; see model.Packing)."""
    batches, cur, n = [], [], 0
    for s in sorted(seqs, key=lambda s: len(s.prompt) + len(s.tokens)):
        L = len(s.prompt) + len(s.tokens)
        if cur and n + L > micro_tokens:
            batches.append(cur)
            cur, n = [], 0
        cur.append(s)
        n += L
    return batches + ([cur] if cur else [])


def forward_logprobs(ddp_model, model, mb: list[Sequence], temperature, device, amp, with_entropy=True):
    """Per-token log-probs (and entropy) of every completion token of a packed micro-batch.

    Sequences prompt+completion sit side by side in one row; the hidden state at position t
    predicts token t+1, so completion token j of a sequence with prompt length P is scored
    at P - 1 + j. Returns flat (N,) tensors over the micro-batch's completion tokens.
    """
    ids, pos, lens, pick, tgt = [], [], [], [], []
    start = 0
    for s in mb:
        full = s.prompt + s.tokens
        ids += full
        pos += range(len(full))
        lens.append(len(full))
        P = len(s.prompt)
        pick += range(start + P - 1, start + P - 1 + len(s.tokens))
        tgt += s.tokens
        start += len(full)
    ids = torch.tensor([ids], device=device)
    pos = torch.tensor([pos], device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        h = ddp_model(ids, positions=pos, seq_lens=lens, return_hidden=True)[0]      # (T, C)
        h = h[torch.tensor(pick, device=device)]                                     # (N, C)
        return model.token_logprobs(h, torch.tensor(tgt, device=device), temperature,
                                    with_entropy=with_entropy)


def all_sum_named(values: dict, world: int, device) -> dict:
    """Metric bookkeeping: each named scalar summed over all ranks, in one all_reduce.

    Every rank must call it with the same names in the same order (dicts keep insertion order)."""
    if world == 1:
        return dict(values)
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, t.tolist()))


def add_sums(a: dict, b: dict) -> dict:
    """Metric bookkeeping: the element-wise sum of two dicts of named sums (a missing name is 0)."""
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in {**a, **b}}


def token_means(sums: dict, world: int, device) -> dict:
    """The GRPO update's logged metrics from train_minibatch's per-rank sums, the same under any
    world size: entropy, KL (k3 to the reference) and clip fraction are per-token means over every
    rank's completion tokens; loss is the whole batch's (the sum of the ranks' shares)."""
    tot = all_sum_named({k: sums.get(k, 0.0) for k in METRIC_SUMS}, world, device)
    n_tok = max(1.0, tot["tokens"])
    return dict(entropy=tot["entropy"] / n_tok, kl=tot["kl"] / n_tok, clip_frac=tot["clipped"] / n_tok,
                loss=tot["loss"])


# What train_minibatch sums on each rank: this rank's share of the loss (the shares add up to the
# mini-batch loss, each already divided by the whole batch's tokens or sequences), and the sums of
# per-token KL, entropy and clipped flags with the number of tokens they are over.
METRIC_SUMS = ("loss", "kl", "entropy", "clipped", "tokens")


def train_minibatch(ddp_model, model, seqs: list[Sequence], cfg, device, world, amp, sft=False):
    """Accumulate gradients of one mini-batch over packed micro-batches (no optimizer step).

    seqs are Rollouts with old_logp (and ref_logp with --kl-coef) stored, or with sft=True plain
    Sequences whose loss is their negative log-likelihood. Every rank runs the same number of
    micro-batches (padding with empty ones) because DDP synchronises on each backward that is
    not under no_sync. Returns this rank's metric sums (METRIC_SUMS by name; token_means turns
    them into the logged values).
    """
    mbs = pack(seqs, cfg.micro_tokens)
    # the whole mini-batch's completion tokens and sequences, over every rank: token-mean divides by them
    counts = torch.tensor([sum(len(s.tokens) for s in seqs), len(seqs)], dtype=torch.float64, device=device)
    if world > 1:
        n = torch.tensor([len(mbs)], device=device)
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        dist.all_reduce(counts)
        mbs += [[]] * (int(n) - len(mbs))
    batch_tokens, batch_seqs = int(counts[0]), int(counts[1])
    m = dict.fromkeys(METRIC_SUMS, 0.0)
    for k, mb in enumerate(mbs):
        sync = k == len(mbs) - 1
        ctx = ddp_model.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
        with ctx:
            if not mb:  # padding: touch every parameter with zero weight so DDP's reduction matches
                logp = forward_logprobs(ddp_model, model, [Sequence(prompt=[0], tokens=[0])], 1.0, device, amp, False)
                (logp.sum() * 0.0).backward()
                continue
            logp, ent = forward_logprobs(ddp_model, model, mb, 1.0 if sft else cfg.temperature, device, amp)
            lens = torch.tensor([len(s.tokens) for s in mb], device=device)
            idx = torch.repeat_interleave(torch.arange(len(mb), device=device), lens)   # (N,) sequence of each token
            if sft:
                tok_loss, parts = -logp, {}
                loss = tok_loss.sum() / max(1, batch_tokens)
            else:
                old = torch.tensor([x for s in mb for x in s.old_logp], device=device)
                refp = torch.tensor([x for s in mb for x in s.ref_logp], device=device) if cfg.kl_coef else None
                adv = torch.tensor([s.advantage for s in mb], device=device)[idx]
                tok_loss, parts = grpo.grpo_token_loss(logp, old, refp, ent, adv, cfg.clip_low, cfg.clip_high,
                                                       cfg.kl_coef, cfg.entropy_coef)
                loss = grpo.aggregate(tok_loss, idx, lens, cfg.loss_agg, cfg.ctx, batch_tokens, batch_seqs)
            (loss * world).backward()  # DDP averages gradients over ranks; the loss already divides by all
            m["loss"] += float(loss.detach())   # this rank's share: the ranks' shares add up to the loss
            m["kl"] += float(parts.get("kl", torch.zeros(1)).sum())
            m["entropy"] += float(ent.detach().sum())
            m["clipped"] += float(parts.get("clipped", torch.zeros(1)).float().sum())
            m["tokens"] += len(logp)
    return m


@torch.no_grad()
def store_logprobs(model, rollouts: list[Rollout], field_name: str, cfg, device, amp):
    """Store no-grad per-token log-probs of each rollout's tokens under `model`, at the sampling
    temperature, as rollout.<field_name> ("old_logp" or "ref_logp")."""
    for mb in pack(rollouts, cfg.micro_tokens):
        logp = forward_logprobs(model, model, mb, cfg.temperature, device, amp, with_entropy=False)   # (N,)
        for r, part in zip(mb, logp.split([len(r.tokens) for r in mb])):
            setattr(r, field_name, part.float().tolist())


def store_old_and_ref_logprobs(run: Run, models: Models, rollouts: list[Rollout]):
    """The fixed terms of GRPO's objective: log pi_old(o_t), the denominator of the importance
    ratio, and log pi_ref(o_t) for the KL penalty, both of every sampled token before any update.

    --old-logp sampler reuses the sampler's own log-probs for pi_old (exact when the sampler is
    the fp32 policy; a bf16 copy's differ slightly); recompute runs a no-grad forward of the policy."""
    cfg = run.cfg
    enter("old/ref log-probs")
    models.policy.train()
    if cfg.old_logp == "sampler":
        for r in rollouts:
            r.old_logp = r.logprobs
    else:
        store_logprobs(models.policy, rollouts, "old_logp", cfg, run.device, run.amp)
    if models.ref is not None:
        store_logprobs(models.ref, rollouts, "ref_logp", cfg, run.device, run.amp)


def optimizer_step(model, opt, grad_clip: float):
    """Clip and step; returns the pre-clip grad norm, or None (and no step) if it is not finite."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        return None
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)


def update_policy(run: Run, models: Models, opt, rollouts: list[Rollout]) -> Update:
    """The maximisation: cfg.updates_per_step optimizer steps on GRPO's loss (the clipped surrogate
    -min(ratio * A, clip(ratio) * A), + kl_coef * KL, - entropy_coef * entropy), each on a slice
    of whole groups, then the sampling copy takes the new weights."""
    cfg = run.cfg
    enter("update")
    groups = sorted({r.group for r in rollouts})
    sums, norms, skipped = {}, [], 0
    for u in range(cfg.updates_per_step):   # each mini-batch is a slice of whole groups
        part = set(groups[u::cfg.updates_per_step])
        mini = [r for r in rollouts if r.group in part]
        sums = add_sums(sums, train_minibatch(models.ddp, models.policy, mini, cfg, run.device, run.world, run.amp))
        norm = optimizer_step(models.policy, opt, cfg.grad_clip)
        norms.append(norm if norm is not None else float("nan"))
        skipped += norm is None
    sync_sampler(models)
    return Update(sums=sums, grad_norms=norms, skipped=skipped)


def sync_sampler(models: Models):
    """Copy the policy's weights into the sampling copy (nothing to do when they are one module)."""
    if models.sampler is models.policy:
        return
    with torch.no_grad():
        for a, b in zip(models.sampler.parameters(), models.policy.parameters()):
            a.copy_(b)


# ----------------------------------------------------------------------------- metrics

def step_metrics(run: Run, rollouts: list[Rollout], update: Update, times: StepTimes, step: int,
                 data_pos: int) -> dict:
    """Not part of the objective: the step's metrics row, reward and lengths summed over every
    rank, the update's means over every rank's tokens. Collective: every rank calls it."""
    enter("metrics")
    lens = [len(r.tokens) for r in rollouts]
    n_groups = len({r.group for r in rollouts})
    tot = all_sum_named(dict(reward=sum(r.reward for r in rollouts), correct=sum(r.correct for r in rollouts),
                             samples=len(rollouts), tokens=sum(lens), truncated=sum(r.truncated for r in rollouts),
                             zero_var=n_groups - len(groups_with_signal(rollouts)), groups=n_groups),
                        run.world, run.device)
    longest = torch.tensor([max(lens, default=0)], device=run.device)
    if run.world > 1:
        dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    means = token_means(update.sums, run.world, run.device)   # over every rank's tokens, not rank 0's alone
    n = max(1, tot["samples"])   # 0 only when dynamic sampling kept no group at all
    return dict(step=step + 1, reward=tot["reward"] / n, accuracy=tot["correct"] / n,
                len_mean=tot["tokens"] / n, len_max=int(longest), truncated=tot["truncated"] / n,
                zero_var=tot["zero_var"] / max(1, tot["groups"]), entropy=means["entropy"], kl=means["kl"],
                clip_frac=means["clip_frac"], grad_norm=sum(update.grad_norms) / len(update.grad_norms),
                loss=means["loss"], tok_per_s=tot["tokens"] / max(1e-9, times.sample_s), sample_s=times.sample_s,
                grade_s=times.grade_s, train_s=times.train_s, step_s=time.time() - times.start,
                skipped=update.skipped, data_pos=data_pos, stage=run.stage, ctx=run.cfg.ctx,
                samples=run.cfg.samples)


def log_line(row: dict) -> str:
    """The step's one line on stdout."""
    return (f"step {row['step']:>5} stage {row['stage']} | reward {row['reward']:.3f} acc {row['accuracy']:.3f} | len "
            f"{row['len_mean']:.0f}/{row['len_max']} trunc {100 * row['truncated']:.0f}% zero-var "
            f"{100 * row['zero_var']:.0f}% | ent {row['entropy']:.3f} kl {row['kl']:.4f} clip "
            f"{row['clip_frac']:.3f} gnorm {row['grad_norm']:.3f} | {row['tok_per_s']:.0f} tok/s | "
            f"sample {row['sample_s']:.1f}s grade {row['grade_s']:.1f}s train {row['train_s']:.1f}s")


def show_rollouts(tok, rollouts: list[Rollout]):
    """Two decoded rollouts of this step (from the start and the middle of rank 0's batch)."""
    for r in rollouts[:: max(1, len(rollouts) // 2)][:2]:
        print0(f"  [reward {r.reward:.0f}] {tok.decode(r.prompt)[-80:]!r} -> {r.text[:300]!r}")


def write_row(metrics_f, wandb_run, row: dict):
    """Rank 0: the row to metrics.jsonl (flushed, so a killed run keeps every finished step) and wandb."""
    metrics_f.write(json.dumps(row) + "\n")
    metrics_f.flush()
    if wandb_run:
        wandb_run.log(row, step=row["step"])


def open_wandb(cfg: Config, rank: int):
    """A wandb run on rank 0 when --wandb names a project; None otherwise."""
    if not cfg.wandb or rank != 0:
        return None
    try:
        import wandb
    except ImportError:
        raise SystemExit("--wandb needs wandb: pip install wandb") from None
    return wandb.init(project=cfg.wandb, config=asdict(cfg))


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def run_eval(sampler, tok, recs, cfg, require_think, rank, world, kv_budget=None) -> dict:
    """sample.evaluate on the held-out set (every rank gets the summary): pass@1 with its 95% CI,
    mean length, truncation rate."""
    _, s = evaluate(sampler, tok, recs, n=cfg.eval_samples, require_think=require_think, rank=rank,
                    world=world, max_new_tokens=cfg.ctx, temperature=cfg.eval_temperature,
                    top_p=cfg.eval_top_p, seed=cfg.seed, kv_budget=kv_budget)
    return s


def eval_line(s: dict) -> str:
    return (f"{100 * s['pass@1']:.1f}% +- {100 * s['pass@1_ci95']:.1f} (pass@1 over {s['samples']} samples of "
            f"{s['problems']} problems; mean length {s['mean_length']:.0f}, truncated {100 * s['truncated']:.0f}%)")


def evaluate_heldout(run: Run, sampler, recs: list, when: str, row: dict | None = None) -> float:
    """Not part of the objective: held-out pass@1 of the live weights, printed (and added to the
    step's row when given). Collective: every rank calls it. Returns pass@1."""
    enter("eval")
    s = run_eval(sampler, run.tok, recs, run.cfg, run.require_think, run.rank, run.world, run.kv_budget or None)
    if row is not None:
        row.update(eval_accuracy=s["pass@1"], eval_ci95=s["pass@1_ci95"], eval_len_mean=s["mean_length"],
                   eval_truncated=s["truncated"])
    print0(f"held-out accuracy {when}: {eval_line(s)}")
    return s["pass@1"]


# ----------------------------------------------------------------------------- checkpoints

def complete_checkpoints(root: str) -> list[str]:
    """The names of the whole checkpoints in root, oldest first. Only a finished checkpoint is
    ever named step_N (see save_checkpoint): step_N.tmp is a write and step_N.old a deletion that
    was cut short, and neither is ever resumed from."""
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root) if re.fullmatch(r"step_\d+", d))


def retire(path: str):
    """Delete a checkpoint folder without ever leaving it half there under its own name: rename
    it to .old (one atomic step), then delete."""
    trash = path + ".old"
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(model, opt, cfg, step, data_pos, tok_dir, extra=None, ref=None, ref_dir="") -> str:
    """checkpoints/step_N: the policy in HF format + tokenizer + trainer_state.pt (with `extra`),
    and reference/ with `ref`'s weights when given (see save_reference).

    Ctrl-C or a crash at any line leaves every complete checkpoint complete: the new one is
    written as step_N.tmp and renamed into place whole, and the ones pruned beyond --keep (or an
    older step_N being replaced) are retired: renamed, then deleted. The newest step_N is always
    whole, which is what `--resume auto` takes."""
    root = os.path.join(cfg.out, "checkpoints")
    final = os.path.join(root, f"step_{step:06d}")
    tmp = final + ".tmp"
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):   # what an interrupted save or prune left behind
        if name.endswith((".tmp", ".old")):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    model.save_pretrained(tmp)
    if ref is not None:
        save_reference(ref, ref_dir, os.path.join(tmp, "reference"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.isfile(os.path.join(tok_dir, name)):
            shutil.copy(os.path.join(tok_dir, name), tmp)
    torch.save({"step": step, "data_pos": data_pos, "optimizer": opt.state_dict(), "config": asdict(cfg),
                "rng": torch.get_rng_state(), **(extra or {})}, os.path.join(tmp, "trainer_state.pt"))
    for name in complete_checkpoints(root):
        if int(name.removeprefix("step_")) >= step:   # saved before a resume from an earlier checkpoint:
            print(f"replacing {os.path.join(root, name)}, left by the run before the resume")   # another history
            retire(os.path.join(root, name))
    os.replace(tmp, final)     # the only way a checkpoint appears, whole
    for old in complete_checkpoints(root)[:-cfg.keep]:
        retire(os.path.join(root, old))
    return final


def save_reference(ref, have: str, dest: str):
    """A later stage's KL reference (the policy at its switch) into a checkpoint, which is the only
    place a resumed run can find it once the switch's own checkpoint is pruned. Hard links to a
    folder that already holds it (the stage's previous checkpoint) keep one copy on disk however
    many checkpoints share it; without one, or where links fail, it is written."""
    if have and os.path.isdir(have):
        try:
            os.makedirs(dest)
            for name in os.listdir(have):
                os.link(os.path.join(have, name), os.path.join(dest, name))
            return
        except OSError:   # another filesystem, or no hard links there: write a copy instead
            shutil.rmtree(dest, ignore_errors=True)
    ref.save_pretrained(dest)


def find_resume(cfg) -> str:
    """--resume as given, or with "auto" the newest complete checkpoint in <out>/checkpoints."""
    if cfg.resume != "auto":
        return cfg.resume
    root = os.path.join(cfg.out, "checkpoints")
    steps = complete_checkpoints(root)
    if not steps:
        raise SystemExit(f"--resume auto: no checkpoint in {root}")
    return os.path.join(root, steps[-1])


def refuse_used_out(cfg):
    """Run-folder bookkeeping: a fresh run (no --resume) must not write into another run's folder.

    Appending to another run's metrics.jsonl would mix two runs' curves, and its checkpoints
    would be taken for this run's by --resume auto. The toy's own set-up files (toy_model/,
    train.jsonl, heldout.jsonl, config.json) are reusable, so a run killed before its first
    GRPO step can simply be started again. An empty metrics.jsonl holds no run's rows.
    """
    metrics = os.path.join(cfg.out, "metrics.jsonl")
    checkpoints = os.path.join(cfg.out, "checkpoints")
    used = []
    if os.path.isfile(metrics) and os.path.getsize(metrics) > 0:
        used.append(metrics)
    if os.path.isdir(checkpoints):
        used.append(checkpoints)
    if used:
        raise SystemExit(f"{cfg.out} already holds another run ({', '.join(used)}): continue it with "
                         f"--resume auto, or start a new run with a fresh --out")


def truncate_metrics(out: str, step: int):
    """Run-folder bookkeeping on resume: keep only metrics.jsonl's rows up to the resumed step.

    The rows past the checkpoint were written by steps the resumed run repeats; dropping them
    keeps exactly one row per step. Written to a temporary file and swapped in with os.replace,
    so a crash here leaves the old file whole. A torn last line (a run killed mid-write) goes too.
    """
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.isfile(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- set-up

def init_distributed(cfg: Config) -> tuple[int, int, torch.device]:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them, one process. Returns (rank, world, device)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)       # before NCCL starts, so it binds to this GPU
        # Before the group exists: torch.distributed.nn binds the default group into its functions'
        # defaults when first imported (torch._dynamo pulls it in when DDP or the meta-device model
        # build runs). That reference kept the gloo group and its worker threads alive past
        # destroy_process_group, and a worker still freeing the last gradient all-reduce at
        # interpreter exit aborted the rank ("terminate called without an active exception").
        import torch.distributed.nn as _dist_nn  # noqa: F401
        # The timeout bounds every collective, so a rank that stops answering ends the run (see
        # --collective-timeout-s for why an hour by default).
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=cfg.collective_timeout_s))
    return rank, world, device


def check_batch_split(cfg: Config, world: int):
    """The global batch must split into whole prompt groups per rank, enough for every update."""
    if cfg.prompts_per_step % world:
        raise SystemExit(f"--prompts-per-step {cfg.prompts_per_step} must divide evenly over {world} ranks")
    if cfg.updates_per_step > cfg.prompts_per_step // world:   # each update takes a slice of a rank's groups
        raise SystemExit(f"--updates-per-step {cfg.updates_per_step} exceeds the {cfg.prompts_per_step // world} "
                         f"prompt groups each of {world} ranks holds per step")


def use_toy(cfg: Config, rank: int, world: int):
    """No --model: build the toy's model, tokenizer and task under --out (once), and point
    --model, --data and --eval-data at them."""
    import toy
    if rank == 0:
        toy.prepare(cfg.out, seed=cfg.seed)     # builds what is missing, atomically
    if world > 1:
        dist.barrier()
    model_dir, train_path, heldout_path = toy.paths(cfg.out)
    cfg.model = model_dir
    cfg.data = cfg.data or train_path
    cfg.eval_data = cfg.eval_data or heldout_path


def load_problems(path: str, cfg: Config, tok) -> tuple[list[dict], list[dict]]:
    """The usable records of a problem file, each with its prompt_ids: duplicates, prompts over
    --prompt-budget and (in the training file) problems whose polish pass rate is outside
    (--pass-rate-min, --pass-rate-max) are dropped and counted. Returns (kept, within_budget):
    GRPO's problems, and every problem within the prompt budget before the pass-rate filter.
    The second is the warm-up's pool: a problem only an answer-guided chain solved has pass
    rate 0, which the filter drops from GRPO, yet its chain is a demonstration."""
    try:
        recs = dedupe(load_records(path))
    except (FileNotFoundError, ImportError) as e:   # DataError: clean_exit prints it
        raise SystemExit(f"train.py: error: {e}") from None
    kept, within_budget, long = [], [], 0
    for r in recs:
        r["prompt_ids"] = prompt_ids(tok, r["problem"])
        if len(r["prompt_ids"]) > cfg.prompt_budget:
            long += 1
            continue
        within_budget.append(r)
        pr = (r.get("polish") or {}).get("pass_rate")
        if pr is not None and not (cfg.pass_rate_min < pr < cfg.pass_rate_max) and path == cfg.data:
            continue
        kept.append(r)
    print0(f"{path}: {len(recs)} problems, {len(kept)} kept ({long} over the {cfg.prompt_budget}-token "
           f"prompt budget, {len(recs) - len(kept) - long} filtered by pass rate)")
    if not kept:
        raise SystemExit(f"{path}: no usable problems")
    return kept, within_budget


def demonstration_source(rec: dict) -> str:
    """Where a record's solution comes from: "input" (no polish.py pass: the data's own), or
    polish.py's method: "free", "guided" or "none" (no accepted chain; the input's solution,
    which the dataset card calls unfit: empty or a short summary)."""
    meta = rec.get("polish")
    if not isinstance(meta, dict):
        return "input"
    return polish_method(meta)


def warm_up_pool(recs: list[dict], sft_guided: bool) -> list[dict]:
    """The records the warm-up imitates: those with a solution, from the input or an accepted
    polish.py chain; answer-guided chains only with --sft-guided."""
    allowed = {"input", "free"} | ({"guided"} if sft_guided else set())
    return [r for r in recs if r.get("solution") and demonstration_source(r) in allowed]


def resume_point(cfg: Config, rank: int) -> tuple[str, dict | None]:
    """Where the policy's weights come from (--model, or the --resume checkpoint) and the trainer
    state saved beside a checkpoint (None for a fresh run). Resuming restores the RNG and drops
    metrics.jsonl's rows past the checkpoint."""
    if not cfg.resume:
        return cfg.model, None
    src = find_resume(cfg)
    if not os.path.isfile(os.path.join(src, "trainer_state.pt")):
        raise SystemExit(f"train.py: error: --resume {src}: not a checkpoint of train.py (no trainer_state.pt)")
    state = torch.load(os.path.join(src, "trainer_state.pt"), map_location="cpu", weights_only=False)
    changes, refusal = resume_changes(state, src, cfg)
    if refusal:   # before metrics.jsonl is touched
        raise SystemExit(f"train.py: error: cannot resume from {src}: {refusal}")
    torch.set_rng_state(state["rng"])
    if rank == 0:
        truncate_metrics(cfg.out, state["step"])
    print0(f"resuming from {src} at step {state['step']}" + "".join(f"\n  changed: {c}" for c in changes))
    return src, state


# Flags a resumed run may change without a word: how long, how often and where it runs. ctx,
# samples and schedule are compared as stages, kv_gib on its own (resume_changes).
RUN_CONTROL = {"out", "resume", "steps", "save_every", "keep", "eval_every", "eval_samples", "eval_temperature",
               "eval_top_p", "show_every", "max_bad_steps", "collective_timeout_s", "wandb", "sft_steps",
               "sft_lr", "sft_batch", "ctx", "samples", "schedule", "kv_gib"}


def resume_changes(state: dict, src: str, cfg: Config) -> tuple[list[str], str]:
    """What a resumed run changes of the run it continues ("--flag old -> new"), and why it cannot
    continue ("" when it can). Stages that have begun are history: their ctx, samples and KL
    reference stay as they ran. Stages still to come, and the other flags, may change (a run
    without --schedule may still change --ctx and --samples, the manual staging of old)."""
    names = {f.name for f in fields(Config)}
    old = replace(Config(), **{k: v for k, v in state["config"].items() if k in names})
    changed = [f"--{k.replace('_', '-')} {getattr(old, k)!r} -> {getattr(cfg, k)!r}"
               for k in sorted(names - RUN_CONTROL) if getattr(old, k) != getattr(cfg, k)]
    old_stages, new_stages = schedule_of(old), schedule_of(cfg)
    if old_stages != new_stages:
        changed.append(f"stages {fmt_stages(old_stages)} -> {fmt_stages(new_stages)}")
    step = state["step"]
    old_begun = [s for s in old_stages if s.first < step]
    new_begun = [s for s in new_stages if s.first < step]
    if old_begun != new_begun and (old.schedule or cfg.schedule):
        return changed, (f"by step {step} it had begun the stages {fmt_stages(old_begun)}, and --schedule now says "
                         f"{fmt_stages(new_begun)}: only stages still to come can change")
    k = state.get("stage", 0)
    need = 0 if k == 0 or cfg.keep_initial_ref else new_stages[k].first
    held = os.path.isdir(os.path.join(src, "reference"))
    if cfg.kl_coef and need and (state.get("ref_step", 0) != need or not held):
        return changed, (f"stage {k}'s KL reference is the policy after step {need}, and the checkpoint holds no "
                         f"copy of it (its run had --kl-coef 0 or --keep-initial-ref): resume with "
                         f"--keep-initial-ref or --kl-coef 0")
    if state.get("kv_budget") and cfg.kv_gib != old.kv_gib:
        changed.append(f"--kv-gib {old.kv_gib:g} -> {cfg.kv_gib:g} ignored: sampling keeps the run's KV budget of "
                       f"{state['kv_budget'] / 2**30:.3g} GiB, so that rollouts repeat exactly")
    return changed, ""


def load_models(run: Run, src: str, ref_step: int = 0) -> Models:
    """The policy from src in fp32 (AdamW needs it), the reference (bf16 on GPU) when the KL term
    is on: --model, or src's reference/ when a stage switch after ref_step steps made it; a bf16
    sampling copy on GPU, and the DDP wrapper under torchrun."""
    cfg, device = run.cfg, run.device
    policy = Transformer.from_pretrained(src, device=device, dtype=torch.float32)
    policy.gradient_checkpointing = cfg.grad_ckpt
    ref = None
    ref_src = os.path.join(src, "reference") if ref_step else cfg.model
    if cfg.kl_coef:
        ref = Transformer.from_pretrained(ref_src, device=device, dtype=torch.bfloat16 if run.amp else torch.float32)
        ref.requires_grad_(False)
    sampler = policy
    if run.amp or SAMPLER_COPY:
        sampler = copy.deepcopy(policy).to(torch.bfloat16).requires_grad_(False)
    ddp = policy
    if run.world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(policy, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    print0(f"policy {policy.num_params() / 1e6:.1f}M params on {device} x {run.world}; sampling in "
           f"{'bf16' if sampler is not policy else 'fp32'}; reward requires </think>: {run.require_think}")
    return Models(policy=policy, ddp=ddp, sampler=sampler, ref=ref, ref_step=ref_step,
                  ref_dir=ref_src if ref is not None and ref_step else "")


def warm_up(run: Run, models: Models, pool: list):
    """Supervised steps on the records' solutions before GRPO (not part of its objective: they
    teach the toy's random policy the answer format, so that some rewards are 1 from the start).
    Learning rate --sft-lr decaying linearly to 0; its AdamW state is dropped afterwards."""
    cfg = run.cfg
    enter("warm-up")
    sft_recs = warm_up_pool(pool, cfg.sft_guided)
    if not sft_recs:
        raise SystemExit(f"--sft-steps {cfg.sft_steps}: no record of {cfg.data} has a solution to imitate")
    used = Counter()   # demonstrations by source over all ranks' batches (every rank draws the same batch)
    opt = torch.optim.AdamW(models.policy.parameters(), lr=cfg.sft_lr, weight_decay=0.0)
    eos = run.tok.eos_ids[:1]
    models.policy.train()
    for k in range(cfg.sft_steps):
        batch = take(sft_recs, cfg.seed, k * cfg.sft_batch, cfg.sft_batch)
        used.update(demonstration_source(r) for r in batch)
        pick = shard(batch, run.rank, run.world)
        seqs = [Sequence(prompt=r["prompt_ids"], tokens=run.tok.encode(r["solution"]) + eos) for r in pick]
        m = train_minibatch(models.ddp, models.policy, seqs, cfg, run.device, run.world, run.amp, sft=True)
        for group in opt.param_groups:   # linear decay to 0: the last steps settle instead of bouncing
            group["lr"] = cfg.sft_lr * (1 - k / cfg.sft_steps)
        optimizer_step(models.policy, opt, cfg.grad_clip)
        if k % 20 == 0 or k == cfg.sft_steps - 1:   # every rank reaches here: the sum is collective
            print0(f"warm-up {k + 1}/{cfg.sft_steps}: loss {token_means(m, run.world, run.device)['loss']:.3f}")
    print0("warm-up demonstrations by source: " + ", ".join(f"{src} {n:,}" for src, n in sorted(used.items())))
    sync_sampler(models)


def save_step(run: Run, models: Models, opt, step: int, data_pos: int):
    """Rank 0 writes checkpoints/step_N; the others wait for it (collective). Beside the policy: the
    stage and where its reference came from, and a switch's reference weights (--model's are not
    copied), so that a resume rebuilds the stage exactly."""
    enter("checkpoint")
    if run.rank == 0:
        holds_ref = models.ref is not None and models.ref_step > 0
        extra = dict(stage=run.stage, ref_step=models.ref_step, kv_budget=run.kv_budget)
        path = save_checkpoint(models.policy, opt, run.cfg, step, data_pos, run.cfg.model, extra=extra,
                               ref=models.ref if holds_ref else None, ref_dir=models.ref_dir)
        if holds_ref:
            models.ref_dir = os.path.join(path, "reference")
        print0(f"saved {path}")
    if run.world > 1:
        dist.barrier()


def enter_stage(run: Run, models: Models, opt, base: Config, done: int):
    """Before each step: the stage that runs it (base is the run's config). At a switch, as
    DeepScaleR's hand-launched stages did, the policy so far becomes the KL reference (unless
    --keep-initial-ref) and AdamW starts afresh (unless --keep-optimizer); ctx and samples
    change. Returns the optimizer to use from now on."""
    k = stage_at(run.stages, done)
    if k == run.stage:
        return opt
    old, new = run.stages[run.stage], run.stages[k]
    run.stage = k
    run.cfg = replace(base, ctx=new.ctx, samples=new.samples)
    said = [f"ctx {old.ctx} -> {new.ctx}", f"samples {old.samples} -> {new.samples}"]
    if not base.keep_initial_ref:
        models.ref_step = done
        models.ref_dir = ""   # the new reference is on no disk yet
        if models.ref is not None:   # in place: the same dtype and device, no second copy in memory
            models.ref.load_state_dict(models.policy.state_dict())
        said.append(f"KL reference = the policy after step {done}")
    if not base.keep_optimizer:
        opt = torch.optim.AdamW(models.policy.parameters(), lr=base.lr, weight_decay=base.weight_decay)
        said.append("fresh AdamW")
    print0(f"stage {k} from step {done + 1}: " + ", ".join(said))
    return opt


def fix_kv_budget(run: Run, models: Models, opt, state: dict | None) -> int:
    """The sampler's KV bytes for the whole run. The rows decoded together follow from it and the
    sampled tokens from the rows (uniforms are drawn per chunk of rows), so a resumed run takes the
    budget its run fixed at the first step, whatever --kv-gib or free memory it finds now: its
    rollouts then repeat exactly. A fresh run takes --kv-gib, or sample.py's default (60% of free
    GPU memory) less 60% of what AdamW's first step will still allocate; the least over ranks."""
    if state is not None and state.get("kv_budget"):
        refuse_budget_below_one_row(run, models, state["kv_budget"])
        return state["kv_budget"]
    if run.cfg.kv_gib:
        budget = int(run.cfg.kv_gib * 2**30)
    else:
        budget = default_kv_budget(run.device)
        if run.device.type == "cuda" and not opt.state:   # AdamW's two fp32 moments per parameter, still to come
            budget -= int(0.6 * 2 * sum(p.numel() * p.element_size() for p in models.policy.parameters()))
    least = torch.tensor([budget], dtype=torch.int64, device=run.device)
    if run.world > 1:
        dist.all_reduce(least, op=dist.ReduceOp.MIN)
    refuse_budget_below_one_row(run, models, int(least))
    print0(f"sampling KV budget {int(least) / 2**30:.3g} GiB, fixed for the run (rollouts depend on it)")
    return int(least)


def refuse_budget_below_one_row(run: Run, models: Models, budget: int):
    """The fixed budget must hold one row of the longest stage (prompt budget + its ctx tokens):
    found at start-up, not hours in at the switch to a longer stage, where a resume could not
    raise it (the budget is part of the run's state)."""
    longest = max(stage.ctx for stage in run.stages)
    row = KVCache.bytes_per_row(models.policy.config, run.cfg.prompt_budget + longest,
                                 next(models.sampler.parameters()).dtype)
    if budget < row:
        raise SystemExit(f"train.py: error: the sampling KV budget of {budget / 2**30:.3g} GiB holds no sequence of "
                         f"the longest stage (prompt {run.cfg.prompt_budget} + ctx {longest} tokens need "
                         f"{row / 2**30:.3g} GiB): raise --kv-gib, or lower --prompt-budget or the stage's ctx")


def finish(run: Run, models: Models, metrics_f, before, after):
    """Close the metrics file, print the held-out change, and leave the process group."""
    if metrics_f is not None:
        metrics_f.close()
    if before is not None and after is not None:
        print0(f"held-out accuracy: before GRPO {100 * before:.1f}%, after GRPO {100 * after:.1f}%")
    if run.world > 1:
        models.ddp = None   # DDP holds the group too: drop it so destroy_process_group joins gloo's threads
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- main

def main(argv=None):
    """config -> distributed -> data -> models -> warm-up -> the GRPO loop -> save."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plot"]:
        return plot(argv[1] if len(argv) > 1 else "runs/grpo")
    cfg, _ = parse_config(argv)
    interrupted = (f"the last checkpoint in {os.path.join(cfg.out, 'checkpoints')} is intact; "
                   "the same command with --resume auto continues from it")
    with clean_exit("train.py", on_interrupt=interrupted), fail_fast(cfg):
        # --- distributed: one process per GPU under torchrun, else one process
        rank, world, device = init_distributed(cfg)
        check_batch_split(cfg, world)
        if not cfg.resume:
            refuse_used_out(cfg)   # before any model is loaded: a mistake costs nothing
        torch.manual_seed(cfg.seed)
        os.makedirs(cfg.out, exist_ok=True)
        if not cfg.model:
            use_toy(cfg, rank, world)

        # --- data: each problem's prompt tokenized once
        tok = Tokenizer.from_pretrained(cfg.model)
        run = Run(cfg=cfg, rank=rank, world=world, device=device, amp=cfg.amp and device.type == "cuda",
                  tok=tok, require_think=requires_think(cfg.think, tok.chat_template), stages=schedule_of(cfg))
        if len(run.stages) > 1:
            print0(describe_stages(run.stages, cfg.steps))
        train_recs, sft_pool = load_problems(cfg.data, cfg, tok)
        eval_recs = load_problems(cfg.eval_data, cfg, tok)[0] if cfg.eval_data and cfg.eval_every > 0 else []

        # --- models: the policy, its sampling copy and the reference, from --model or a checkpoint
        src, state = resume_point(cfg, rank)
        if rank == 0:   # after resume_point: a refused resume leaves the run folder as it was
            with open(os.path.join(cfg.out, "config.json"), "w") as f:
                json.dump(asdict(cfg), f, indent=2)
        start_step, data_pos = (state["step"], state["data_pos"]) if state else (0, 0)
        # the stage of the last step done (a switch right at the resume point happens in the loop)
        run.stage = state.get("stage", 0) if state else 0
        run.cfg = replace(cfg, ctx=run.stages[run.stage].ctx, samples=run.stages[run.stage].samples)
        ref_step = 0 if state is None or cfg.keep_initial_ref else state.get("ref_step", 0)
        models = load_models(run, src, ref_step=ref_step)
        PROGRESS.weights = src

        # --- supervised warm-up (a fresh run only), then GRPO's optimizer
        if cfg.sft_steps and state is None:
            warm_up(run, models, sft_pool)
            PROGRESS.weights = f"{src} after the {cfg.sft_steps}-step warm-up"
        opt = torch.optim.AdamW(models.policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if state is not None:
            opt.load_state_dict(state["optimizer"])
        run.kv_budget = fix_kv_budget(run, models, opt, state)
        before = after = None
        if eval_recs and start_step == 0:
            before = evaluate_heldout(run, models.sampler, eval_recs, "before GRPO")
        wandb_run = open_wandb(cfg, rank)
        metrics_f = open(os.path.join(cfg.out, "metrics.jsonl"), "a") if rank == 0 else None

        # --- the GRPO loop
        bad = 0   # consecutive steps with an optimizer step skipped for a non-finite gradient
        for step in range(start_step, cfg.steps):
            PROGRESS.step = step + 1
            # 0) the step's stage: at a switch, new ctx and samples, the reference and AdamW afresh
            opt = enter_stage(run, models, opt, cfg, step)
            times = StepTimes()
            # 1) rollouts: cfg.samples completions per prompt from the live weights, graded, advantages per group
            rollouts, data_pos = collect_rollouts(run, models, train_recs, data_pos, step, times)
            # 2) log p of each sampled token before the update (PPO's old policy) and under the reference
            t0 = time.time()
            store_old_and_ref_logprobs(run, models, rollouts)
            # 3) cfg.updates_per_step optimizer steps, each on a slice of whole groups
            update = update_policy(run, models, opt, rollouts)
            times.train_s = time.time() - t0
            bad = bad + 1 if update.skipped else 0
            # 4) metrics over all ranks, one line; a non-finite first step means broken weights: stop
            row = step_metrics(run, rollouts, update, times, step, data_pos)
            print0(log_line(row))
            if step == start_step:
                refuse_broken_first_step(row, update.skipped)
            PROGRESS.weights = f"the policy after step {step + 1} (from {src})"
            if (step + 1) % cfg.show_every == 0:
                show_rollouts(tok, rollouts)
            # 5) held-out accuracy on its schedule and at the end, then the row is written
            if eval_recs and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
                after = evaluate_heldout(run, models.sampler, eval_recs, f"at step {step + 1}", row)
            if rank == 0:
                write_row(metrics_f, wandb_run, row)
            if bad >= cfg.max_bad_steps:
                raise SystemExit(f"stopping: {bad} steps in a row had a non-finite gradient (last step {step + 1}); "
                                 "lower --lr or check the data")
            # 6) a checkpoint on its schedule and at the end
            if cfg.save_every and ((step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps):
                save_step(run, models, opt, step + 1, data_pos)
        finish(run, models, metrics_f, before, after)


def stage_switches(rows: list[dict]) -> list[tuple[int, str]]:
    """Where a metrics.jsonl's stage changes: (completed steps before the new stage, its label).
    Rows written before stages were logged have none."""
    marks = []
    for prev, row in zip(rows, rows[1:]):
        if "stage" in prev and row.get("stage") != prev["stage"]:
            marks.append((row["step"] - 1, f"stage {row['stage']}: {row['ctx']} x {row['samples']}"))
    return marks


def plot(run_dir: str):
    """Draw reward, accuracy, length, entropy and KL from RUN_DIR/metrics.jsonl to curves.png, with
    a dashed line at each stage switch."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no metrics (is {run_dir} a run folder?)")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plotting needs matplotlib: pip install matplotlib") from None
    rows = [json.loads(line) for line in open(path)]
    keys = ["reward", "accuracy", "len_mean", "entropy", "kl"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    for ax, k in zip(axes, keys):
        ax.plot([r["step"] for r in rows], [r[k] for r in rows])
        for x, label in stage_switches(rows):
            ax.axvline(x + 0.5, color="gray", linestyle="--", linewidth=0.8, label=label)
        ax.set_title(k)
        ax.set_xlabel("step")
    fig.tight_layout()
    out = os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
