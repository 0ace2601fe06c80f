"""GRPO on math problems, DeepScaleR's recipe by default, under torchrun DDP or in one process.

    python train.py                                           # the embedded toy, CPU, minutes
    torchrun --nproc_per_node=8 train.py --model DIR --data polished.jsonl --ctx 8192
    torchrun --nproc_per_node=8 train.py --model DIR --data polished.jsonl --ctx 16384 \\
        --samples 16 --resume runs/grpo/checkpoints/step_000500     # the next context stage
    python train.py plot runs/grpo                            # curves to runs/grpo/curves.png

One step: every rank takes its share of the global prompt batch (whole groups, so advantages
need no communication), samples `--samples` completions per prompt from the live weights with
sample.generate, grades them with verify.grade_batch, and turns rewards into group-relative
advantages. The batch is then split into `--updates-per-step` mini-batches, each one
optimizer step: micro-batches packed by token budget (padding-free: sequences side by side in
one row, each attending only to itself), log-probs through model.token_logprobs, the loss of
grpo.py, backward under DDP with no_sync until the last micro-batch.

Without --model, `python train.py` builds the toy of toy.py (a 1M-parameter Qwen2, an R1-style
tokenizer, two-digit addition), warms it up with a few supervised steps and runs GRPO, printing
held-out accuracy before and after. Left out: FSDP/tensor parallelism (the 1.5B policy with
AdamW fits one 80 GB GPU under DDP), a value model, multi-turn or tool rollouts.
"""
import argparse
import contextlib
import copy
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist

import grpo
from data import (THINK_CHOICES, DataError, Tokenizer, dedupe, epoch_order, load_records, prompt_ids,
                  reference_answers, requires_think, shard)
from model import Transformer
from sample import evaluate, generate, grade_completions


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
    kl_coef: float = 0.001           # k3 KL to the initial policy; 0 also skips the reference model
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
    "max_bad_steps": (1, True),
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


# ----------------------------------------------------------------------------- rollouts

def rollout(sampler, tok, recs, cfg, seed, require_think):
    """Sample a group per record, grade it, and compute advantages. Returns one dict per sample."""
    prompts = [r["prompt_ids"] for r in recs]
    outs = generate(sampler, prompts, n=cfg.samples, max_new_tokens=cfg.ctx, temperature=cfg.temperature,
                    top_p=cfg.top_p, seed=seed, kv_budget=int(cfg.kv_gib * 2**30) or None,
                    cuda_graphs=cfg.cuda_graphs)
    t0 = time.time()
    refs = [reference_answers(r) for r in recs for _ in range(cfg.samples)]
    problems = [r["problem"] for r in recs for _ in range(cfg.samples)]
    texts, correct, rewards = grade_completions(tok, outs, refs, require_think, problems=problems)
    grade_s = time.time() - t0
    rewards = torch.tensor(rewards)
    adv = grpo.group_advantages(rewards, cfg.samples, scale=cfg.scale_adv)
    seqs = [dict(prompt=prompts[i // cfg.samples], tokens=o.tokens, logprobs=o.logprobs, reward=float(rewards[i]),
                 correct=bool(correct[i]), adv=float(adv[i]), truncated=o.finish_reason == "length", text=texts[i],
                 group=i // cfg.samples) for i, o in enumerate(outs)]
    return seqs, grade_s


# ----------------------------------------------------------------------------- training

def pack(seqs, micro_tokens):
    """Greedy packing into micro-batches of at most micro_tokens (a longer sequence goes alone).

    Sequences are taken shortest first, so each micro-batch holds similar lengths (the model
    then attends to them as one padded grid; see model.Packing)."""
    batches, cur, n = [], [], 0
    for s in sorted(seqs, key=lambda s: len(s["prompt"]) + len(s["tokens"])):
        L = len(s["prompt"]) + len(s["tokens"])
        if cur and n + L > micro_tokens:
            batches.append(cur)
            cur, n = [], 0
        cur.append(s)
        n += L
    return batches + ([cur] if cur else [])


def forward_logprobs(ddp_model, model, mb, temperature, device, amp, with_entropy=True):
    """Per-token log-probs (and entropy) of every completion token of a packed micro-batch.

    Sequences prompt+completion sit side by side in one row; the hidden state at position t
    predicts token t+1, so completion token j of a sequence with prompt length P is scored
    at P - 1 + j. Returns flat (N,) tensors over the micro-batch's completion tokens.
    """
    ids, pos, lens, pick, tgt = [], [], [], [], []
    start = 0
    for s in mb:
        full = s["prompt"] + s["tokens"]
        ids += full
        pos += range(len(full))
        lens.append(len(full))
        P = len(s["prompt"])
        pick += range(start + P - 1, start + P - 1 + len(s["tokens"]))
        tgt += s["tokens"]
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


def train_minibatch(ddp_model, model, seqs, cfg, device, world, amp, sft=False):
    """Accumulate gradients of one mini-batch over packed micro-batches (no optimizer step).

    Every rank runs the same number of micro-batches (padding with empty ones) because DDP
    synchronises on each backward that is not under no_sync. Returns this rank's metric sums
    (METRIC_SUMS by name; token_means turns them into the logged values).
    """
    mbs = pack(seqs, cfg.micro_tokens)
    counts = torch.tensor([0, sum(len(s["tokens"]) for s in seqs), len(seqs)], dtype=torch.float64, device=device)
    if world > 1:
        n = torch.tensor([len(mbs)], device=device)
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        dist.all_reduce(counts)
        mbs += [[]] * (int(n) - len(mbs))
    batch_tokens, batch_seqs = int(counts[1]), int(counts[2])
    m = dict.fromkeys(METRIC_SUMS, 0.0)
    for k, mb in enumerate(mbs):
        sync = k == len(mbs) - 1
        ctx = ddp_model.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
        with ctx:
            if not mb:  # padding: touch every parameter with zero weight so DDP's reduction matches
                logp = forward_logprobs(ddp_model, model, [dict(prompt=[0], tokens=[0])], 1.0, device, amp, False)
                (logp.sum() * 0.0).backward()
                continue
            logp, ent = forward_logprobs(ddp_model, model, mb, 1.0 if sft else cfg.temperature, device, amp)
            lens = torch.tensor([len(s["tokens"]) for s in mb], device=device)
            idx = torch.repeat_interleave(torch.arange(len(mb), device=device), lens)
            if sft:
                tok_loss, parts = -logp, {}
                loss = tok_loss.sum() / max(1, batch_tokens)
            else:
                old = torch.tensor([x for s in mb for x in s["old_logp"]], device=device)
                refp = torch.tensor([x for s in mb for x in s["ref_logp"]], device=device) if cfg.kl_coef else None
                adv = torch.tensor([s["adv"] for s in mb], device=device)[idx]
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
def score(model, seqs, cfg, device, amp, key):
    """Store no-grad per-token log-probs of each sequence's tokens under `model` as s[key]."""
    for mb in pack(seqs, cfg.micro_tokens):
        logp = forward_logprobs(model, model, mb, cfg.temperature, device, amp, with_entropy=False)
        for s, part in zip(mb, logp.split([len(s["tokens"]) for s in mb])):
            s[key] = part.float().tolist()


def optimizer_step(model, opt, grad_clip: float):
    """Clip and step; returns the pre-clip grad norm, or None (and no step) if it is not finite."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        return None
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def run_eval(sampler, tok, recs, cfg, require_think, rank, world) -> dict:
    """sample.evaluate on the held-out set (every rank gets the summary): pass@1 with its 95% CI,
    mean length, truncation rate."""
    _, s = evaluate(sampler, tok, recs, n=cfg.eval_samples, require_think=require_think, rank=rank,
                    world=world, max_new_tokens=cfg.ctx, temperature=cfg.eval_temperature,
                    top_p=cfg.eval_top_p, seed=cfg.seed, kv_budget=int(cfg.kv_gib * 2**30) or None)
    return s


def eval_line(s: dict) -> str:
    return (f"{100 * s['pass@1']:.1f}% +- {100 * s['pass@1_ci95']:.1f} (pass@1 over {s['samples']} samples of "
            f"{s['problems']} problems; mean length {s['mean_length']:.0f}, truncated {100 * s['truncated']:.0f}%)")


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(model, opt, cfg, step, data_pos, tok_dir, tag=None):
    """checkpoints/step_N: the policy in HF format + tokenizer + trainer_state.pt, written atomically."""
    root = os.path.join(cfg.out, "checkpoints")
    final = os.path.join(root, tag or f"step_{step:06d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.isfile(os.path.join(tok_dir, name)):
            shutil.copy(os.path.join(tok_dir, name), tmp)
    torch.save({"step": step, "data_pos": data_pos, "optimizer": opt.state_dict(), "config": asdict(cfg),
                "rng": torch.get_rng_state()}, os.path.join(tmp, "trainer_state.pt"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a crash before this line leaves the previous checkpoints intact
    steps = sorted(d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp"))
    for old in steps[:-cfg.keep]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


def find_resume(cfg) -> str:
    if cfg.resume != "auto":
        return cfg.resume
    root = os.path.join(cfg.out, "checkpoints")
    steps = sorted(d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp")) \
        if os.path.isdir(root) else []
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


# ----------------------------------------------------------------------------- main

def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["plot"]:
        return plot(argv[1] if len(argv) > 1 else "runs/grpo")
    cfg, _ = parse_config(argv)

    # --- distributed: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them, one process
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
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.prompts_per_step % world:
        raise SystemExit(f"--prompts-per-step {cfg.prompts_per_step} must divide evenly over {world} ranks")
    if cfg.updates_per_step > cfg.prompts_per_step // world:   # each update takes a slice of a rank's groups
        raise SystemExit(f"--updates-per-step {cfg.updates_per_step} exceeds the {cfg.prompts_per_step // world} "
                         f"prompt groups each of {world} ranks holds per step")
    if not cfg.resume:
        refuse_used_out(cfg)   # before any model is loaded: a mistake costs nothing
    amp = cfg.amp and device.type == "cuda"
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.out, exist_ok=True)

    # --- toy: build the model, tokenizer and task on the first run
    if not cfg.model:
        import toy
        if rank == 0:
            toy.prepare(cfg.out, seed=cfg.seed)     # builds what is missing, atomically
        if world > 1:
            dist.barrier()
        model_dir, train_path, heldout_path = toy.paths(cfg.out)
        cfg.model = model_dir
        cfg.data = cfg.data or train_path
        cfg.eval_data = cfg.eval_data or heldout_path
    if rank == 0:
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=2)

    # --- data
    tok = Tokenizer.from_pretrained(cfg.model)
    require_think = requires_think(cfg.think, tok.chat_template)

    def prepare(path):
        try:
            recs, kept, long = dedupe(load_records(path)), [], 0
        except (DataError, FileNotFoundError, ImportError) as e:
            raise SystemExit(f"error: {e}") from None
        for r in recs:
            pr = (r.get("polish") or {}).get("pass_rate")
            if pr is not None and not (cfg.pass_rate_min < pr < cfg.pass_rate_max) and path == cfg.data:
                continue
            r["prompt_ids"] = prompt_ids(tok, r["problem"])
            if len(r["prompt_ids"]) > cfg.prompt_budget:
                long += 1
                continue
            kept.append(r)
        print0(f"{path}: {len(recs)} problems, {len(kept)} kept ({long} over the {cfg.prompt_budget}-token "
               f"prompt budget, {len(recs) - len(kept) - long} filtered by pass rate)")
        if not kept:
            raise SystemExit(f"{path}: no usable problems")
        return kept

    train_recs = prepare(cfg.data)
    eval_recs = prepare(cfg.eval_data) if cfg.eval_data and cfg.eval_every > 0 else []

    # --- model: the policy in fp32 (AdamW needs it); bf16 copies for sampling and reference on GPU
    start_step, data_pos, state = 0, 0, None
    src = cfg.model
    if cfg.resume:
        src = find_resume(cfg)
        state = torch.load(os.path.join(src, "trainer_state.pt"), map_location="cpu", weights_only=False)
        start_step, data_pos = state["step"], state["data_pos"]
        torch.set_rng_state(state["rng"])
        if rank == 0:
            truncate_metrics(cfg.out, start_step)
        print0(f"resuming from {src} at step {start_step} (ctx {state['config']['ctx']} -> {cfg.ctx})")
    model = Transformer.from_pretrained(src, device=device, dtype=torch.float32)
    model.gradient_checkpointing = cfg.grad_ckpt
    ref = None
    if cfg.kl_coef:
        ref = Transformer.from_pretrained(cfg.model, device=device, dtype=torch.bfloat16 if amp else torch.float32)
        ref.requires_grad_(False)
    sampler = copy.deepcopy(model).to(torch.bfloat16).requires_grad_(False) if amp or SAMPLER_COPY else model
    ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device.type == "cuda"
                                                          else None) if world > 1 else model
    print0(f"policy {model.num_params() / 1e6:.1f}M params on {device} x {world}; sampling in "
           f"{'bf16' if sampler is not model else 'fp32'}; reward requires </think>: {require_think}")

    def sync_sampler():
        if sampler is not model:
            with torch.no_grad():
                for a, b in zip(sampler.parameters(), model.parameters()):
                    a.copy_(b)

    # --- supervised warm-up on the records' solutions (skipped when resuming)
    if cfg.sft_steps and state is None:
        sft_recs = [r for r in train_recs if r.get("solution")]
        if not sft_recs:
            raise SystemExit(f"--sft-steps {cfg.sft_steps}: no record of {cfg.data} has a solution")
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0)
        eos = tok.eos_ids[:1]
        model.train()
        for k in range(cfg.sft_steps):
            pick = take(sft_recs, cfg.seed, k * cfg.sft_batch, cfg.sft_batch)
            seqs = [dict(prompt=r["prompt_ids"], tokens=tok.encode(r["solution"]) + eos) for r in shard(pick, rank, world)]
            m = train_minibatch(ddp_model, model, seqs, cfg, device, world, amp, sft=True)
            for group in opt.param_groups:   # linear decay to 0: the last steps settle instead of bouncing
                group["lr"] = cfg.sft_lr * (1 - k / cfg.sft_steps)
            optimizer_step(model, opt, cfg.grad_clip)
            if k % 20 == 0 or k == cfg.sft_steps - 1:   # every rank reaches here: the sum is collective
                print0(f"warm-up {k + 1}/{cfg.sft_steps}: loss {token_means(m, world, device)['loss']:.3f}")
        del opt
        sync_sampler()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state is not None:
        opt.load_state_dict(state["optimizer"])

    before = after = None
    if eval_recs and start_step == 0:
        s = run_eval(sampler, tok, eval_recs, cfg, require_think, rank, world)
        before = s["pass@1"]
        print0(f"held-out accuracy before GRPO: {eval_line(s)}")

    wandb_run = None
    if cfg.wandb and rank == 0:
        try:
            import wandb
        except ImportError:
            raise SystemExit("--wandb needs wandb: pip install wandb") from None
        wandb_run = wandb.init(project=cfg.wandb, config=asdict(cfg))

    # --- the GRPO loop
    bad = 0
    metrics_f = open(os.path.join(cfg.out, "metrics.jsonl"), "a") if rank == 0 else None
    for step in range(start_step, cfg.steps):
        t_step = time.time()
        seqs, t_sample, t_grade, groups_kept, rounds = [], 0.0, 0.0, 0, 0
        while True:  # one round, plus refills when dynamic sampling drops zero-variance groups
            glob_batch = take(train_recs, cfg.seed, data_pos, cfg.prompts_per_step)
            data_pos += cfg.prompts_per_step
            model.eval()
            t0 = time.time()
            got, g_s = rollout(sampler, tok, shard(glob_batch, rank, world), cfg,
                               seed=cfg.seed * 1_000_003 + step * 1009 + rounds * 97 + rank, require_think=require_think)
            t_sample += time.time() - t0 - g_s
            t_grade += g_s
            if cfg.dynamic_sampling:  # keep groups with some spread in reward; renumber so rounds stay apart
                spread = {g for g in {s["group"] for s in got} if len({s["reward"] for s in got if s["group"] == g}) > 1}
                got = [dict(s, group=s["group"] + 1_000_000 * rounds) for s in got if s["group"] in spread]
            seqs += got
            rounds += 1
            groups_kept = int(all_sum_named(dict(groups=len({s["group"] for s in seqs})), world, device)["groups"])
            if not cfg.dynamic_sampling or groups_kept >= cfg.prompts_per_step or rounds > cfg.max_refill_rounds:
                break
        t0 = time.time()
        model.train()
        if cfg.old_logp == "sampler":
            for s in seqs:
                s["old_logp"] = s["logprobs"]
        else:
            score(model, seqs, cfg, device, amp, "old_logp")
        if ref is not None:
            score(ref, seqs, cfg, device, amp, "ref_logp")
        groups = sorted({s["group"] for s in seqs})
        m = {}
        norms, skipped = [], 0
        for u in range(cfg.updates_per_step):  # each mini-batch is a slice of whole groups
            part = set(groups[u::cfg.updates_per_step])
            m = add_sums(m, train_minibatch(ddp_model, model, [s for s in seqs if s["group"] in part], cfg, device,
                                            world, amp))
            norm = optimizer_step(model, opt, cfg.grad_clip)
            norms.append(norm if norm is not None else float("nan"))
            skipped += norm is None
        sync_sampler()
        t_train = time.time() - t0
        bad = bad + 1 if skipped else 0
        # --- metrics over all ranks
        lens = [len(s["tokens"]) for s in seqs]
        zero_var = sum(1 for g in groups if len({s["reward"] for s in seqs if s["group"] == g}) == 1)
        tot = all_sum_named(dict(reward=sum(s["reward"] for s in seqs), correct=sum(s["correct"] for s in seqs),
                                 samples=len(seqs), tokens=sum(lens), truncated=sum(s["truncated"] for s in seqs),
                                 zero_var=zero_var, groups=len(groups)), world, device)
        mx = torch.tensor([max(lens, default=0)], device=device)
        if world > 1:
            dist.all_reduce(mx, op=dist.ReduceOp.MAX)
        means = token_means(m, world, device)   # over every rank's tokens, not rank 0's alone
        row = dict(step=step + 1, reward=tot["reward"] / tot["samples"], accuracy=tot["correct"] / tot["samples"],
                   len_mean=tot["tokens"] / tot["samples"], len_max=int(mx),
                   truncated=tot["truncated"] / tot["samples"], zero_var=tot["zero_var"] / tot["groups"],
                   entropy=means["entropy"], kl=means["kl"],
                   clip_frac=means["clip_frac"], grad_norm=sum(norms) / len(norms), loss=means["loss"],
                   tok_per_s=tot["tokens"] / max(1e-9, t_sample), sample_s=t_sample, grade_s=t_grade,
                   train_s=t_train, step_s=time.time() - t_step, skipped=skipped, data_pos=data_pos)
        print0(f"step {row['step']:>5} | reward {row['reward']:.3f} acc {row['accuracy']:.3f} | len "
               f"{row['len_mean']:.0f}/{row['len_max']} trunc {100 * row['truncated']:.0f}% zero-var "
               f"{100 * row['zero_var']:.0f}% | ent {row['entropy']:.3f} kl {row['kl']:.4f} clip "
               f"{row['clip_frac']:.3f} gnorm {row['grad_norm']:.3f} | {row['tok_per_s']:.0f} tok/s | "
               f"sample {t_sample:.1f}s grade {t_grade:.1f}s train {t_train:.1f}s")
        if (step + 1) % cfg.show_every == 0:
            for s in seqs[:: max(1, len(seqs) // 2)][:2]:
                print0(f"  [reward {s['reward']:.0f}] {tok.decode(s['prompt'])[-80:]!r} -> {s['text'][:300]!r}")
        if eval_recs and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            s = run_eval(sampler, tok, eval_recs, cfg, require_think, rank, world)
            after = s["pass@1"]
            row.update(eval_accuracy=after, eval_ci95=s["pass@1_ci95"], eval_len_mean=s["mean_length"],
                       eval_truncated=s["truncated"])
            print0(f"held-out accuracy at step {step + 1}: {eval_line(s)}")
        if rank == 0:
            metrics_f.write(json.dumps(row) + "\n")
            metrics_f.flush()
            if wandb_run:
                wandb_run.log(row, step=step + 1)
        if bad >= cfg.max_bad_steps:
            raise SystemExit(f"stopping: {bad} steps in a row had a non-finite gradient (last step {step + 1}); "
                             "lower --lr or check the data")
        if cfg.save_every and ((step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps):
            if rank == 0:
                print0(f"saved {save_checkpoint(model, opt, cfg, step + 1, data_pos, cfg.model)}")
            if world > 1:
                dist.barrier()
    if before is not None and after is not None:
        print0(f"held-out accuracy: before GRPO {100 * before:.1f}%, after GRPO {100 * after:.1f}%")
    if world > 1:
        del ddp_model   # it holds the group too: drop it so destroy_process_group joins gloo's threads
        dist.destroy_process_group()


def plot(run_dir: str):
    """Draw reward, accuracy, length, entropy and KL from RUN_DIR/metrics.jsonl to curves.png."""
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
        ax.set_title(k)
        ax.set_xlabel("step")
    fig.tight_layout()
    out = os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
