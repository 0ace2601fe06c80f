"""GRPO on math problems, DeepScaleR's recipe by default, under torchrun DDP or in one process.

    python train.py                                           # the embedded toy, CPU, minutes
    torchrun --nproc_per_node=8 train.py --model DIR --data polished.jsonl --ctx 8192   # one stage
    torchrun --nproc_per_node=8 train.py --model DIR --data polished.jsonl --steps 1750 \\
        --schedule 0:8192:8,1040:16384:16,1520:24576:16           # DeepScaleR's three stages
    torchrun --nproc_per_node=8 train.py ... --resume auto        # continue a run, even at a switch
    python train.py plot runs/grpo                            # curves to runs/grpo/curves.png

One step, read top to bottom below the records: every rank takes its share of the global
prompt batch (whole groups, so advantages need no communication), samples `--samples`
completions per prompt from the live weights (sample.generate), decodes and grades them
(verify.grade_batch, DeepScaleR's reward rule) and turns rewards into group-relative
advantages (grpo.py). The batch is then split into `--updates-per-step` mini-batches, each one
optimizer step: micro-batches packed by token budget (padding-free: sequences side by side in
one row, each attending only to itself), log-probs through model.token_logprobs, the loss of
grpo.py, backward under DDP with no_sync until the last micro-batch. That machinery, and the
records a sample travels in (Sequence, Rollout), is update.py's; train.py imports it back and
keeps what decides which sequences an update sees (update_policy, warm_up).

Stages: --schedule FIRST_STEP:CTX:SAMPLES,... changes the response budget and the group size
after FIRST_STEP steps. At each switch the policy so far becomes the KL reference and AdamW
restarts, as in DeepScaleR's hand-launched stages (--keep-initial-ref, --keep-optimizer
otherwise). The run folder (stages, checkpoints renamed into place whole, exact resume, the
metrics file, curves) is runfolder.py's; the torchrun plumbing (process group, flags from
Config, one-line failures naming the phase) is common.py's. The sampler's KV budget is fixed
at the first step and kept on resume, because the rows it holds decide which random numbers
each sample draws.

Failing fast: a rank that waits `--collective-timeout-s` for another ends the run with one
line naming the phase it was in (torchrun then stops the others, which name theirs; that line
is tested on gloo; on NCCL torch's watchdog may abort the waiting rank first, with its own
message, still within the timeout); a non-finite first step or non-finite logits name the
checkpoint; Ctrl-C ends with one line, and `--resume auto` continues from the last checkpoint.

Precision (precision.py): --precision bf16 (the GPU default, DeepScaleR's) samples from a bf16 copy
of the fp32 policy and trains under bf16 autocast; fp16 does both in fp16, with dynamic loss
scaling (an overflowing step is skipped, counted in the `overflow` column, and the scale halved);
fp32 (the CPU default) samples from the policy itself. AdamW always updates fp32 weights.

Sharding: --shard (torchrun, 2+ processes) replaces DDP with FSDP2 for policies whose AdamW
state one GPU cannot hold (7B and up): policy, gradients, AdamW's moments and the reference are
sharded over the ranks, the sampling copy stays whole and is gathered after each update, and
checkpoints are the same whole HF folders (fsdp.py says what changes and where; the 1.5B
policy fits one 80 GB GPU under DDP, which stays the default).

Without --model, `python train.py` builds the toy of toy.py (a 1M-parameter Qwen2, an R1-style
tokenizer, two-digit addition), warms it up with a few supervised steps and runs GRPO, printing
held-out accuracy before and after. Left out: tensor and pipeline parallelism, a value model,
multi-turn or tool rollouts.
"""
import argparse
import contextlib
import copy
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.distributed as dist

import fsdp
import grpo
import precision
import runfolder
import toy
from common import (PROGRESS, add_config_flags, all_sum_named, bound_problem, enter, fail_fast, print0,
                    refuse_diverged_ranks, start_distributed, stop_distributed)
from data import (TEMPLATES, THINK_CHOICES, Tokenizer, clean_exit, load_problems, polish_method,
                  reference_answers, requires_think, shard, take)
from evaluate import evaluate
from metrics import add_sums, gap_columns, gap_sums, log_line, refuse_gap, token_means
from model import Transformer, read_config
from runfolder import enter_stage, save_step
from sample import generate, read_tokenizer, stop_ids
from update import forward_logprobs, pack  # noqa: F401 (train.pack and train.forward_logprobs, as before update.py)
from update import Rollout, Sequence, grpo_loss, optimizer_step, sft_loss, store_logprobs, train_minibatch
from verify import STATS as GRADER_STATS
from verify import grade_batch, reward_of


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
    template: str = ""               # chat template, deepseek-r1 or chatml; empty: the one the checkpoint's tokenizer_config.json names
    system: str | None = None        # system text of the chat template; default: the checkpoint's own (Qwen2.5's "You are Qwen, ..."); "" for none
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
    old_logp: str = "recompute"      # recompute: a no-grad forward before updating (logs the sampler-trainer gap); sampler: reuse the sampler's log-probs (no gap can be seen)
    max_logp_gap: float = 0.1        # stop when the sampler's and the trainer's log-probs differ by more than this per token on average (bf16 rounding: hundredths); 0: never; needs recompute
    policy_loss: str = "grpo"        # grpo: a PPO ratio per token (DeepScaleR) | gspo: one length-normalised ratio per response (use clips ~3e-4)
    tis_cap: float = 0.0             # truncated importance sampling of the sampler-trainer gap: policy gradient x min(p_old / p_sampler, cap); 0: off (DeepScaleR); ~2
    tis_level: str = "token"         # token | sequence: a TIS weight per token, or one per response (its tokens' ratios multiplied)
    mask_truncated: bool = False     # overlong filtering (DAPO): leave responses cut off at --ctx out of the loss
    micro_tokens: int = 16384        # tokens per packed micro-batch
    grad_ckpt: bool = True           # activation checkpointing per layer
    shard: bool = False              # FSDP2: shard the policy, its gradients, AdamW's state and the reference over the ranks (torchrun, 2+ processes); for policies whose AdamW state one GPU cannot hold (fsdp.py)
    precision: str = "auto"          # bf16 | fp16 (loss-scaled) | fp32: the sampling copy's dtype and the training autocast's; auto: bf16 on GPU, fp32 on CPU
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


# ----------------------------------------------------------------------------- records

@dataclass
class Update:
    """What update_policy reports of one step's optimizer steps."""
    sums: dict                 # this rank's METRIC_SUMS over every mini-batch (token_means makes them means)
    grad_norms: list           # the pre-clip gradient norm of each optimizer step; nan for a skipped one
    skipped: int               # optimizer steps skipped because the gradient was not finite
    overflows: int = 0         # of those, fp16 steps whose loss was finite: the scaled gradient overflowed (scale halved)


@dataclass
class StepTimes:
    """Wall-clock seconds of one GRPO step's parts, and the grader's give-ups (logged, never used
    for decisions)."""
    start: float = field(default_factory=time.time)   # when the step began
    sample_s: float = 0.0      # generation, over every refill round
    grade_s: float = 0.0       # decoding and grading, over every refill round
    train_s: float = 0.0       # old/ref log-probs, the optimizer steps and the sampler's re-sync
    grade_timeouts: int = 0    # answers graded "not correct" because sympy ran out of time (job or batch budget)


@dataclass
class Run:
    """What every step needs besides the models: the config, this rank's place, the tokenizer,
    the stage."""
    cfg: Config                # the config as the current stage sees it (its ctx and samples)
    rank: int                  # this process's index among the ranks (0 without torchrun)
    world: int                 # how many ranks (1 without torchrun)
    device: torch.device
    amp: torch.dtype | None    # the training forward's autocast dtype (bf16 or fp16); None in fp32
    tok: Tokenizer
    require_think: bool        # reward 1 needs </think> before the answer (R1 chat template)
    stages: list = field(default_factory=list)   # the Stages of --schedule (one without it)
    stage: int = 0             # the index of the stage now running
    kv_budget: int = 0         # the sampler's KV bytes, fixed at the run's first step; 0: not yet
    precision: str = "fp32"    # --precision resolved for the device: bf16, fp16 or fp32
    stop_ids: list | None = None   # what ends a reply (sample.stop_ids); None: config.json's eos ids


@dataclass
class Models:
    """The networks of a run. Only `policy` is optimised; the others follow it or never move."""
    policy: Transformer        # fp32 weights AdamW updates (each rank's slices with --shard); saved in checkpoints
    ddp: torch.nn.Module       # the policy under DDP (the policy itself in one process or sharded): forward + backward
    sampler: Transformer       # what generates: the policy itself (fp32), or a bf16/fp16 copy re-synced after each update
    ref: Transformer | None    # the stage's first weights, for the KL term (sharded with --shard); None when --kl-coef is 0
    ref_step: int = 0          # the reference is the policy after this many steps (a stage switch); 0: --model
    ref_dir: str = ""          # a folder already holding the reference's weights (hard-linked into checkpoints)


# ----------------------------------------------------------------------------- one GRPO step

def rollout(sampler, tok, recs, cfg, seed, require_think, kv_budget=None, stop_ids=None) -> tuple[list[Rollout], float]:
    """GRPO's samples and advantages for one batch of prompts: cfg.samples completions o_1..o_G of
    each prompt from the live weights, their rewards R_i, and A_i = (R_i - mean_G R) / (std_G R + eps)
    (R_i - mean_G R with --no-scale-adv).

    Returns the rollouts, prompt-major (group g is rollouts[g * G:(g + 1) * G]), and the seconds
    spent grading."""
    enter("sampling")
    prompts = [r["prompt_ids"] for r in recs]
    outs = generate(sampler, prompts, n=cfg.samples, max_new_tokens=cfg.ctx, temperature=cfg.temperature,
                    top_p=cfg.top_p, seed=seed, kv_budget=kv_budget, cuda_graphs=cfg.cuda_graphs, stop_ids=stop_ids)
    enter("grading")
    t0 = time.time()
    texts, correct, rewards = grade_samples(tok, outs, [r for r in recs for _ in range(cfg.samples)], require_think)
    grade_s = time.time() - t0
    rewards = torch.tensor(rewards)                                         # (prompts * G,) float32
    adv = grpo.group_advantages(rewards, cfg.samples, scale=cfg.scale_adv)  # (prompts * G,)
    rollouts = []
    for i, o in enumerate(outs):
        rollouts.append(Rollout(prompt=prompts[i // cfg.samples], tokens=o.tokens, logprobs=o.logprobs,
                                reward=float(rewards[i]), correct=bool(correct[i]), advantage=float(adv[i]),
                                truncated=o.finish_reason == "length", group=i // cfg.samples, text=texts[i]))
    return rollouts, grade_s


def grade_samples(tok, outs: list, recs: list, require_think: bool) -> tuple[list[str], list[bool], list[float]]:
    """The reward, DeepScaleR's rule: 1.0 when the last \\boxed{} answer of the reply equals the
    record's reference answer (any of its equivalent forms) and, with require_think (R1 models),
    the reply closed its reasoning with </think>; else 0.0. recs holds each sample's record.
    Returns the decoded replies, whether each answer alone was right, and the rewards."""
    texts = [tok.decode(o.tokens[:-1] if o.finish_reason == "stop" else o.tokens) for o in outs]   # no stop token
    # the problem's text lets a bare choice letter ("C") be graded by the value it names there
    correct = [bool(ok) for ok in grade_batch([(t, reference_answers(r), r["problem"]) for t, r in zip(texts, recs)],
                                               workers=4)]
    rewards = [reward_of(ok, t, require_think) for ok, t in zip(correct, texts)]
    return texts, correct, rewards


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
        gave_up = GRADER_STATS["timeout"] + GRADER_STATS["deadline"]
        got, grade_s = rollout(models.sampler, run.tok, shard(batch, run.rank, run.world), cfg,
                               seed=rollout_seed(cfg.seed, step, rounds, run.rank), require_think=run.require_think,
                               kv_budget=run.kv_budget or None, stop_ids=run.stop_ids)
        times.sample_s += time.time() - t0 - grade_s
        times.grade_s += grade_s
        times.grade_timeouts += GRADER_STATS["timeout"] + GRADER_STATS["deadline"] - gave_up
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


def store_old_and_ref_logprobs(run: Run, models: Models, rollouts: list[Rollout]):
    """The fixed terms of GRPO's objective: log pi_old(o_t), the denominator of the importance
    ratio, and log pi_ref(o_t) for the KL penalty, both of every sampled token before any update.

    --old-logp sampler reuses the sampler's own log-probs for pi_old (exact when the sampler is
    the fp32 policy; a bf16 copy's differ slightly); recompute runs a no-grad forward of the policy
    and returns this rank's sums of the gap between the two (grpo.logp_gap; None under sampler)."""
    cfg = run.cfg
    enter("old/ref log-probs")
    models.policy.train()
    gap = None
    if cfg.old_logp == "sampler":
        for r in rollouts:
            r.old_logp = r.logprobs
    else:
        store_logprobs(models.policy, rollouts, "old_logp", cfg, run.device, run.amp)
        gap = gap_sums(rollouts, cfg.clip_low, cfg.clip_high)
    if models.ref is not None:
        store_logprobs(models.ref, rollouts, "ref_logp", cfg, run.device, run.amp)
    return gap


def update_policy(run: Run, models: Models, opt, rollouts: list[Rollout], scaler=None) -> Update:
    """The maximisation: cfg.updates_per_step optimizer steps on GRPO's loss (the clipped surrogate
    -min(ratio * A, clip(ratio) * A), + kl_coef * KL, - entropy_coef * entropy), each on a slice
    of whole groups, then the sampling copy takes the new weights. With fp16's loss scaler, a
    step whose loss is finite but whose gradient is not overflowed in the scaling: it is skipped
    and counted as an overflow (the scaler halved its scale), not as a bad step."""
    cfg = run.cfg
    enter("update")
    groups = sorted({r.group for r in rollouts})
    sums, norms, skipped, overflows = {}, [], 0, 0
    for u in range(cfg.updates_per_step):   # each mini-batch is a slice of whole groups
        part = set(groups[u::cfg.updates_per_step])
        # --mask-truncated: a response cut off at --ctx takes no part in the loss (its group's
        # advantages were computed with it: its reward still counts against the others')
        mini = [r for r in rollouts if r.group in part and not (cfg.mask_truncated and r.truncated)]
        m = train_minibatch(models.ddp, models.policy, mini, loss_fn=grpo_loss, temperature=cfg.temperature,
                            cfg=cfg, device=run.device, world=run.world, amp=run.amp, scaler=scaler)
        sums = add_sums(sums, m)
        norm = optimizer_step(models.policy, opt, cfg.grad_clip, scaler)
        norms.append(norm if norm is not None else float("nan"))
        skipped += norm is None
        if norm is None and scaler is not None:   # every rank holds the same gradient and loss: one verdict
            overflows += math.isfinite(token_means(m, run.world, run.device)["loss"])
    sync_sampler(models)
    return Update(sums=sums, grad_norms=norms, skipped=skipped, overflows=overflows)


def sync_sampler(models: Models):
    """Copy the policy's weights into the sampling copy (nothing to do when they are one module);
    a sharded policy's are gathered unit by unit (collective)."""
    if models.sampler is models.policy:
        return
    if fsdp.is_sharded(models.policy):
        fsdp.gather_into(models.sampler, models.policy)
        return
    with torch.no_grad():
        for a, b in zip(models.sampler.parameters(), models.policy.parameters()):
            a.copy_(b)


# ----------------------------------------------------------------------------- metrics

def step_metrics(run: Run, rollouts: list[Rollout], update: Update, times: StepTimes, step: int,
                 data_pos: int, gap: dict | None = None, scaler=None) -> dict:
    """Not part of the objective: the step's metrics row, reward and lengths summed over every
    rank, the update's means over every rank's tokens, the sampler-trainer gap (gap_sums) when it
    was measured, and fp16's loss scale and overflows. grad_norm is the mean over the optimizer
    steps taken (nan when all were skipped). Collective: every rank calls it."""
    enter("metrics")
    lens = [len(r.tokens) for r in rollouts]
    n_groups = len({r.group for r in rollouts})
    tot = all_sum_named(dict(reward=sum(r.reward for r in rollouts), correct=sum(r.correct for r in rollouts),
                             samples=len(rollouts), tokens=sum(lens), truncated=sum(r.truncated for r in rollouts),
                             zero_var=n_groups - len(groups_with_signal(rollouts)), groups=n_groups,
                             grade_timeouts=times.grade_timeouts),
                        run.world, run.device)
    longest = torch.tensor([max(lens, default=0)], device=run.device)
    if run.world > 1:
        dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    means = token_means(update.sums, run.world, run.device)   # over every rank's tokens, not rank 0's alone
    n = max(1, tot["samples"])   # 0 only when dynamic sampling kept no group at all
    taken = [g for g in update.grad_norms if math.isfinite(g)]
    scaling = dict(overflow=update.overflows, loss_scale=precision.scale_of(scaler)) if scaler is not None else {}
    return dict(step=step + 1, reward=tot["reward"] / n, accuracy=tot["correct"] / n,
                len_mean=tot["tokens"] / n, len_max=int(longest), truncated=tot["truncated"] / n,
                zero_var=tot["zero_var"] / max(1, tot["groups"]), entropy=means["entropy"], kl=means["kl"],
                clip_frac=means["clip_frac"], grad_norm=sum(taken) / len(taken) if taken else float("nan"),
                loss=means["loss"], tok_per_s=tot["tokens"] / max(1e-9, times.sample_s), sample_s=times.sample_s,
                grade_s=times.grade_s, train_s=times.train_s, step_s=time.time() - times.start,
                skipped=update.skipped, grade_timeouts=int(tot["grade_timeouts"]), data_pos=data_pos,
                stage=run.stage, ctx=run.cfg.ctx, samples=run.cfg.samples) | scaling | gap_columns(gap, run.world, run.device)


def show_rollouts(tok, rollouts: list[Rollout]):
    """Two decoded rollouts of this step (from the start and the middle of rank 0's batch)."""
    for r in rollouts[:: max(1, len(rollouts) // 2)][:2]:
        print0(f"  [reward {r.reward:.0f}] {tok.decode(r.prompt)[-80:]!r} -> {r.text[:300]!r}")


# ----------------------------------------------------------------------------- held-out evaluation

def eval_line(s: dict) -> str:
    """evaluate()'s summary in one line."""
    return (f"{100 * s['pass@1']:.1f}% +- {100 * s['pass@1_ci95']:.1f} (pass@1 over {s['samples']} samples of "
            f"{s['problems']} problems; mean length {s['mean_length']:.0f}, truncated {100 * s['truncated']:.0f}%)")


@torch.no_grad()
def evaluate_heldout(run: Run, sampler, recs: list, when: str, row: dict | None = None) -> float:
    """Not part of the objective: held-out pass@1 of the live weights (evaluate.py's protocol with
    --eval-samples, --eval-temperature, --eval-top-p, at the stage's ctx), printed (and added to
    the step's row when given). Collective: every rank calls it. Returns pass@1."""
    enter("eval")
    cfg = run.cfg
    _, s = evaluate(sampler, run.tok, recs, n=cfg.eval_samples, require_think=run.require_think, rank=run.rank,
                    world=run.world, max_new_tokens=cfg.ctx, temperature=cfg.eval_temperature,
                    top_p=cfg.eval_top_p, seed=cfg.seed, kv_budget=run.kv_budget or None, stop_ids=run.stop_ids)
    if row is not None:
        row.update(eval_accuracy=s["pass@1"], eval_ci95=s["pass@1_ci95"], eval_len_mean=s["mean_length"],
                   eval_truncated=s["truncated"])
    print0(f"held-out accuracy {when}: {eval_line(s)}")
    return s["pass@1"]


# ----------------------------------------------------------------------------- supervised warm-up

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
    scaler = precision.loss_scaler(run.precision, run.device, cfg.shard)   # fp16: the warm-up's own, dropped with its AdamW
    end = run.tok.end_of_turn(cfg.template or None)   # a demonstration ends as a reply must: the turn's end
    eos = [end] if end is not None else run.tok.eos_ids[:1]
    models.policy.train()
    for k in range(cfg.sft_steps):
        batch = take(sft_recs, cfg.seed, k * cfg.sft_batch, cfg.sft_batch)
        used.update(demonstration_source(r) for r in batch)
        pick = shard(batch, run.rank, run.world)
        seqs = [Sequence(prompt=r["prompt_ids"], tokens=run.tok.encode(r["solution"]) + eos) for r in pick]
        m = train_minibatch(models.ddp, models.policy, seqs, loss_fn=sft_loss, temperature=1.0, cfg=cfg,
                            device=run.device, world=run.world, amp=run.amp, scaler=scaler)
        for group in opt.param_groups:   # linear decay to 0: the last steps settle instead of bouncing
            group["lr"] = cfg.sft_lr * (1 - k / cfg.sft_steps)
        optimizer_step(models.policy, opt, cfg.grad_clip, scaler)
        if k % 20 == 0 or k == cfg.sft_steps - 1:   # every rank reaches here: the sum is collective
            print0(f"warm-up {k + 1}/{cfg.sft_steps}: loss {token_means(m, run.world, run.device)['loss']:.3f}")
    print0("warm-up demonstrations by source: " + ", ".join(f"{src} {n:,}" for src, n in sorted(used.items())))
    sync_sampler(models)


# ----------------------------------------------------------------------------- flags and set-up

def parse_config(argv) -> tuple[Config, set]:
    """Flags generated from Config; returns the config and the names given on the command line."""
    ap = argparse.ArgumentParser(description="GRPO training (DeepScaleR recipe by default). "
                                 "`python train.py plot RUN_DIR` draws a run's curves. Without --model: "
                                 "the embedded toy, with its own defaults (TRAIN_DEFAULTS in toy.py).")
    add_config_flags(ap, Config, suppress=True)   # flags not given stay out: the toy's defaults fill them
    for old, new in (("--amp", "bf16"), ("--no-amp", "fp32")):   # the flag --precision replaced
        if old in argv:
            ap.error(f"{old} is gone: use --precision {new} (bf16 | fp16 | fp32; auto: bf16 on GPU, fp32 on CPU)")
    given = vars(ap.parse_args(argv))
    values = {} if given.get("model") else dict(toy.TRAIN_DEFAULTS)  # the toy's defaults, under explicit flags
    values.update(given)
    cfg = Config(**values)
    if cfg.think not in THINK_CHOICES:
        ap.error(f"--think must be yes, no or auto, not {cfg.think!r}")
    if cfg.template and cfg.template not in TEMPLATES:
        ap.error(f"--template must be one of {', '.join(TEMPLATES)} (or empty: the checkpoint's), not {cfg.template!r}")
    if cfg.precision not in precision.PRECISIONS:
        ap.error(f"--precision must be one of {precision.PRECISIONS}, not {cfg.precision!r}")
    if cfg.old_logp not in ("recompute", "sampler"):
        ap.error(f"--old-logp must be recompute or sampler, not {cfg.old_logp!r}")
    for name, choices in (("loss_agg", grpo.AGGREGATIONS), ("policy_loss", grpo.POLICY_LOSSES),
                          ("tis_level", grpo.TIS_LEVELS)):
        if getattr(cfg, name) not in choices:
            ap.error(f"--{name.replace('_', '-')} must be one of {choices}, not {getattr(cfg, name)!r}")
    if cfg.tis_cap and cfg.old_logp == "sampler":
        ap.error("--tis-cap corrects the gap between --old-logp recompute's log-probs and the sampler's: "
                 "with --old-logp sampler they are one, so it would change nothing")
    if cfg.model and not cfg.data:
        ap.error("--model needs --data (a records file; see data.py)")
    problem = range_problem(cfg)
    if problem:
        ap.error(problem)
    if cfg.schedule:
        try:
            first = runfolder.parse_schedule(cfg.schedule)[0]
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
    "max_bad_steps": (1, True), "collective_timeout_s": (0.0, False), "max_logp_gap": (0.0, True),
    "tis_cap": (0.0, True),
}


def range_problem(cfg: Config) -> str:
    """The first flag whose value is out of range, as a message naming flag and value; "" if none."""
    problem = bound_problem(cfg, LOWER_BOUNDS)
    if problem:
        return problem
    if not -2**43 < cfg.seed < 2**43:   # rollout_seed multiplies it by ~10^6 into generate()'s 64-bit seed
        return f"--seed must be between -2^43 and 2^43, not {cfg.seed}"
    if 0 < cfg.tis_cap < 1:
        return f"--tis-cap must be 0 (off) or >= 1 (a cap below 1 would shrink every token's weight), not {cfg.tis_cap}"
    for name in ("top_p", "eval_top_p", "clip_low"):
        if getattr(cfg, name) > 1:
            return f"--{name.replace('_', '-')} must be <= 1, not {getattr(cfg, name)}"
    if not 0 <= cfg.pass_rate_min < cfg.pass_rate_max <= 1:
        return (f"--pass-rate-min and --pass-rate-max must satisfy 0 <= min < max <= 1, "
                f"not {cfg.pass_rate_min} and {cfg.pass_rate_max}")
    return ""


def check_batch_split(cfg: Config, world: int):
    """The global batch must split into whole prompt groups per rank, enough for every update."""
    if cfg.prompts_per_step % world:
        raise SystemExit(f"--prompts-per-step {cfg.prompts_per_step} must divide evenly over {world} ranks")
    if cfg.updates_per_step > cfg.prompts_per_step // world:   # each update takes a slice of a rank's groups
        raise SystemExit(f"--updates-per-step {cfg.updates_per_step} exceeds the {cfg.prompts_per_step // world} "
                         f"prompt groups each of {world} ranks holds per step")


def usable_problems(path: str, cfg: Config, tok) -> tuple[list[dict], list[dict]]:
    """The usable problems of a file (data.load_problems: duplicates and prompts over
    --prompt-budget dropped), and in the training file (--data) those whose polish pass rate is
    outside (--pass-rate-min, --pass-rate-max) dropped too; each count printed.
    Returns (kept, within_budget): GRPO's problems, and every problem within the prompt budget
    before the pass-rate filter. The second is the warm-up's pool: a problem only an
    answer-guided chain solved has pass rate 0, which the filter drops from GRPO, yet its chain
    is a demonstration."""
    # DataError (clean_exit prints it) when none fits
    found = load_problems(path, tok, cfg.prompt_budget, cfg.template or None, system=cfg.system)
    within_budget = found.kept
    kept = []
    for r in within_budget:
        pr = (r.get("polish") or {}).get("pass_rate")
        if path == cfg.data and pr is not None and not (cfg.pass_rate_min < pr < cfg.pass_rate_max):
            continue
        kept.append(r)
    long = len(found.records) - len(within_budget)
    print0(f"{path}: {len(found.records)} problems, {len(kept)} kept ({long} over the {cfg.prompt_budget}-token "
           f"prompt budget, {len(within_budget) - len(kept)} filtered by pass rate)")
    if not kept:
        raise SystemExit(f"{path}: no usable problems")
    return kept, within_budget


def load_models(run: Run, src: str, ref_step: int = 0) -> Models:
    """The policy from src in fp32 (AdamW needs it), the reference (in --precision's dtype) when
    the KL term is on: --model, or src's reference/ when a stage switch after ref_step steps made
    it; a sampling copy in bf16 or fp16 (none in fp32), and the DDP wrapper under torchrun. With
    --shard, policy and reference are sharded over the ranks (fsdp.py) and there is always a
    sampling copy: the sampler needs whole weights."""
    cfg, device = run.cfg, run.device
    mesh = fsdp.make_mesh(device, run.world) if cfg.shard else None

    def load(path, dtype):
        if cfg.shard:
            return fsdp.load(path, device, dtype, mesh)
        return Transformer.from_pretrained(path, device=device, dtype=dtype)
    policy = load(src, torch.float32)
    policy.gradient_checkpointing = cfg.grad_ckpt
    ref = None
    ref_src = os.path.join(src, "reference") if ref_step else cfg.model
    if cfg.kl_coef:
        ref = load(ref_src, run.amp or torch.float32)
        ref.requires_grad_(False)
    sampler = policy
    if cfg.shard:
        sampler = fsdp.whole_copy(policy, run.amp or torch.float32, device)
    elif run.amp or SAMPLER_COPY:
        sampler = copy.deepcopy(policy).to(run.amp or torch.bfloat16).requires_grad_(False)
    ddp = policy
    if run.world > 1 and not cfg.shard:
        ddp = torch.nn.parallel.DistributedDataParallel(policy, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    print0(f"policy {policy.num_params() / 1e6:.1f}M params on {device} x {run.world}"
           f"{', sharded' if cfg.shard else ''}; sampling in "
           f"{str(next(sampler.parameters()).dtype).removeprefix('torch.')}, training in {run.precision}"
           f"{' with loss scaling' if run.precision == 'fp16' else ''}; reward requires </think>: {run.require_think}")
    return Models(policy=policy, ddp=ddp, sampler=sampler, ref=ref, ref_step=ref_step,
                  ref_dir=ref_src if ref is not None and ref_step else "")


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


def finish(run: Run, models: Models, before, after):
    """Print the held-out change, and leave the process group."""
    if before is not None and after is not None:
        print0(f"held-out accuracy: before GRPO {100 * before:.1f}%, after GRPO {100 * after:.1f}%")
    if run.world > 1:
        # DDP and FSDP modules hold the group too: drop them so destroy_process_group joins gloo's threads
        models.ddp = models.policy = models.ref = None
        stop_distributed()


# In fp32 the policy samples itself (there is no copy to keep in sync). True keeps a separate
# bf16 sampling copy while training in fp32, so that its re-sync after every update is tested
# against exact fp32 log-probs (tests/test_train_loop.py).
SAMPLER_COPY = False


# Test hook, read only in collect_rollouts: TRAIN_TEST_STALL_RANK=R makes rank R stop answering
# when it starts sampling, as a hung GPU or a grader that never returns would
# (tests/test_train_fail_fast.py). Unset in any real run.
STALL_ENV = "TRAIN_TEST_STALL_RANK"


# ----------------------------------------------------------------------------- main

@dataclass
class Start:
    """Where the GRPO loop begins: set_up's result, for a fresh run or a resumed one."""
    train_recs: list           # GRPO's problems (usable_problems of --data)
    eval_recs: list            # the held-out problems; [] without --eval-data
    opt: torch.optim.Optimizer # AdamW over the policy (its state restored on resume)
    scaler: torch.amp.GradScaler | None   # fp16's loss scaler (its state restored on resume); None otherwise
    step: int                  # completed GRPO steps: 0, or the checkpoint's
    data_pos: int              # the training stream's position of the next prompt batch
    src: str                   # where the policy's weights came from (--model or a checkpoint)
    before: float | None       # held-out pass@1 before GRPO (a fresh run with --eval-data), else None


def set_up(cfg: Config, held: contextlib.ExitStack) -> tuple[Run, Models, Start]:
    """distributed -> the run folder -> data -> models -> warm-up -> optimizer, every refusal made
    before the weights load where it can be. `held` keeps the run folder's lock to the end."""
    # --- distributed: one process per GPU under torchrun, else one process
    rank, world, device = start_distributed(timeout_s=cfg.collective_timeout_s)
    check_batch_split(cfg, world)
    if cfg.shard and fsdp.refusal(world):
        raise SystemExit(f"train.py: error: {fsdp.refusal(world)}")
    if rank == 0:   # one writer per run folder: <out>/.lock, held until main returns or raises
        held.enter_context(runfolder.claim(cfg.out))
    if not cfg.resume:
        runfolder.refuse_used_out(cfg.out)   # before any model is loaded: a mistake costs nothing
    torch.manual_seed(cfg.seed)
    if not cfg.model:
        toy.use_in(cfg, rank, world)
    refuse_diverged_ranks(runfolder.rank_signature(cfg), world, "train.py")

    # --- data: each problem's prompt tokenized once
    tok = read_tokenizer(cfg.model, "train.py")
    template = cfg.template or tok.chat_template
    dtypes = precision.resolve(cfg.precision, device)
    run = Run(cfg=cfg, rank=rank, world=world, device=device, amp=precision.autocast_dtype(dtypes), precision=dtypes,
              tok=tok, require_think=requires_think(cfg.think, template), stages=runfolder.schedule_of(cfg),
              stop_ids=stop_ids(tok, read_config(cfg.model).eos_token_id, cfg.model, template))
    if len(run.stages) > 1:
        print0(runfolder.describe_stages(run.stages, cfg.steps))
    train_recs, sft_pool = usable_problems(cfg.data, cfg, tok)
    if len(train_recs) < cfg.prompts_per_step:
        print0(f"train.py: note: {len(train_recs)} usable problems, fewer than --prompts-per-step "
               f"{cfg.prompts_per_step}: every step samples some of them more than once; lower --prompts-per-step "
               f"to at most {len(train_recs)} to avoid it", file=sys.stderr)
    eval_recs = usable_problems(cfg.eval_data, cfg, tok)[0] if cfg.eval_data and cfg.eval_every > 0 else []

    # --- models: the policy, its sampling copy and the reference, from --model or a checkpoint
    src, state = runfolder.resume_point(cfg, rank)
    if rank == 0:   # after resume_point: a refused resume leaves the run folder as it was
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=2)
    # the stage of the last step done (a switch right at the resume point happens in the loop)
    run.stage = state.stage if state else 0
    run.cfg = replace(cfg, ctx=run.stages[run.stage].ctx, samples=run.stages[run.stage].samples)
    models = load_models(run, src, ref_step=0 if state is None or cfg.keep_initial_ref else state.ref_step)
    PROGRESS.weights = src

    # --- supervised warm-up (a fresh run only), then GRPO's optimizer and the sampler's KV budget
    if cfg.sft_steps and state is None:
        warm_up(run, models, sft_pool)
        PROGRESS.weights = f"{src} after the {cfg.sft_steps}-step warm-up"
    opt = torch.optim.AdamW(models.policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = precision.loss_scaler(run.precision, device, sharded=cfg.shard)
    if state is not None:   # a checkpoint holds whole tensors, however it was written: --shard takes its slices
        opt.load_state_dict(fsdp.shard_optimizer_state(state.optimizer, opt) if cfg.shard else state.optimizer)
        if scaler is not None and state.loss_scaler:   # a checkpoint of another precision has none: a fresh scale
            scaler.load_state_dict(state.loss_scaler)
    run.kv_budget = runfolder.fix_kv_budget(run, models, opt, state)
    before = evaluate_heldout(run, models.sampler, eval_recs, "before GRPO") if eval_recs and not state else None
    return run, models, Start(train_recs=train_recs, eval_recs=eval_recs, opt=opt, scaler=scaler,
                              step=state.step if state else 0,
                              data_pos=state.data_pos if state else 0, src=src, before=before)


def grpo_loop(run: Run, models: Models, start: Start, held: contextlib.ExitStack) -> float | None:
    """GRPO's steps from start.step to --steps; returns the last held-out pass@1 (None without
    --eval-data). Rank 0 appends each step's row to metrics.jsonl (held open by `held`)."""
    # the run's flags: run.cfg follows the stage's ctx and samples, and nothing else ever changes
    base, opt, data_pos, after = run.cfg, start.opt, start.data_pos, None
    metrics_f = held.enter_context(open(os.path.join(base.out, "metrics.jsonl"), "a")) if run.rank == 0 else None
    wandb_run = runfolder.open_wandb(base, run.rank)
    bad = 0   # consecutive steps with an optimizer step skipped for a non-finite gradient (fp16 overflows aside)
    for step in range(start.step, base.steps):
        PROGRESS.step = step + 1
        # 0) the step's stage: at a switch, new ctx and samples, the reference and AdamW afresh
        opt = enter_stage(run, models, opt, base, step)
        times = StepTimes()
        # 1) rollouts: --samples completions per prompt from the live weights, graded, advantages per group
        rollouts, data_pos = collect_rollouts(run, models, start.train_recs, data_pos, step, times)
        # 2) log p of each sampled token before the update (PPO's old policy) and under the reference
        t0 = time.time()
        gap = store_old_and_ref_logprobs(run, models, rollouts)
        # 3) --updates-per-step optimizer steps, each on a slice of whole groups
        update = update_policy(run, models, opt, rollouts, start.scaler)
        times.train_s = time.time() - t0
        bad = bad + 1 if update.skipped > update.overflows else 0
        # 4) metrics over all ranks, one line; a non-finite first step means broken weights: stop
        row = step_metrics(run, rollouts, update, times, step, data_pos, gap, start.scaler)
        print0(log_line(row))
        if step == start.step:
            refuse_broken_first_step(row, update.skipped - update.overflows)
        PROGRESS.weights = f"the policy after step {step + 1} (from {start.src})"
        if (step + 1) % base.show_every == 0:
            show_rollouts(run.tok, rollouts)
        # 5) held-out accuracy on its schedule and at the end, then the row is written
        if start.eval_recs and ((step + 1) % base.eval_every == 0 or step + 1 == base.steps):
            after = evaluate_heldout(run, models.sampler, start.eval_recs, f"at step {step + 1}", row)
        if run.rank == 0:
            runfolder.write_row(metrics_f, wandb_run, row)
        refuse_gap(row, base.max_logp_gap)   # after the row is written: it holds the figures
        if bad >= base.max_bad_steps:
            raise SystemExit(f"stopping: {bad} steps in a row had a non-finite gradient (last step {step + 1}); "
                             "lower --lr or check the data")
        if precision.scale_of(start.scaler) < precision.MIN_LOSS_SCALE:
            raise SystemExit(f"stopping: step {step + 1}: fp16's gradients overflow even unscaled (loss scale "
                             f"{precision.scale_of(start.scaler):g}): this model needs --precision bf16")
        # 6) a checkpoint on its schedule and at the end
        if base.save_every and ((step + 1) % base.save_every == 0 or step + 1 == base.steps):
            save_step(run, models, opt, step + 1, data_pos, start.scaler)
    return after


def main(argv=None):
    """config -> set-up (distributed, data, models, warm-up) -> the GRPO loop -> finish."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plot"]:
        return runfolder.plot(argv[1] if len(argv) > 1 else "runs/grpo")
    cfg, _ = parse_config(argv)
    interrupted = (f"the last checkpoint in {os.path.join(cfg.out, 'checkpoints')} is intact; "
                   "the same command with --resume auto continues from it")
    timeout_flag = f"--collective-timeout-s {cfg.collective_timeout_s:g}"
    with clean_exit("train.py", on_interrupt=interrupted), fail_fast("train.py", timeout_flag, interrupted), \
            contextlib.ExitStack() as held:
        run, models, start = set_up(cfg, held)
        after = grpo_loop(run, models, start, held)
        finish(run, models, start.before, after)


if __name__ == "__main__":
    main()
