"""metrics.py: what a GRPO step reports, never part of its objective: the update's per-rank sums
reduced to the logged means, the gap between the sampler's and the trainer's log-probabilities
with the guard that stops a run when it is far too large, and the step's one log line.

    sums = add_sums(sums, train_minibatch(...))         # per mini-batch, on each rank
    means = token_means(sums, world, device)            # collective: entropy, kl, clip_frac, loss
    row |= gap_columns(gap_sums(rollouts), world, device)
    print0(log_line(row))

Every reduction gives the same figures under any world size: sums over every rank's tokens,
divided once. Left out: anything that changes what is trained.
"""
import torch
import torch.distributed as dist

import grpo
from common import all_sum_named

# What train_minibatch sums on each rank: this rank's share of the loss (the shares add up to the
# mini-batch loss, each already divided by the whole batch's tokens or sequences), and the sums of
# per-token KL, entropy and clipped flags with the number of tokens they are over.
METRIC_SUMS = ("loss", "kl", "entropy", "clipped", "tokens")


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


def gap_sums(rollouts: list, clip_low: float = 0.2, clip_high: float = 0.2) -> dict:
    """Not part of the objective: the sampler-trainer gap of this rank's response tokens as sums
    (and a max) that reduce over ranks: |log p_trainer - log p_sampler|, its k3 KL, the tokens
    whose ratio is outside [0.5, 2], and those outside the clip range [1 - clip_low, 1 + clip_high]."""
    trainer = torch.tensor([x for r in rollouts for x in r.old_logp], dtype=torch.float64)
    sampler = torch.tensor([x for r in rollouts for x in r.logprobs], dtype=torch.float64)
    g = grpo.logp_gap(trainer, sampler, clip_low, clip_high)
    return dict(gap_abs=float(g["abs"].sum()), gap_k3=float(g["k3"].sum()), gap_outside=float(g["outside"].sum()),
                gap_clip=float(g["clip"].sum()), gap_tokens=float(trainer.numel()),
                gap_max=float(g["abs"].max()) if trainer.numel() else 0.0)


def gap_columns(gap: dict | None, world: int, device) -> dict:
    """The gap's metrics columns over every rank's response tokens: gap_mean and gap_max of
    |log p_trainer - log p_sampler| (nats), gap_kl (k3 KL(sampler || trainer) per token) and
    gap_outside (the fraction of tokens whose ratio is outside [0.5, 2]) and gap_clip (outside
    PPO's clip range: clipped before any update); none without a gap."""
    if gap is None:
        return {}
    tot = all_sum_named({k: v for k, v in gap.items() if k != "gap_max"}, world, device)
    most = torch.tensor([gap["gap_max"]], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
    n = max(1.0, tot["gap_tokens"])
    return dict(gap_mean=tot["gap_abs"] / n, gap_max=float(most), gap_kl=tot["gap_k3"] / n,
                gap_outside=tot["gap_outside"] / n, gap_clip=tot["gap_clip"] / n)


def refuse_gap(row: dict, limit: float):
    """Stop the run when the sampler's log-probs are far from the trainer's: bf16 rounding is
    expected to give some hundredths of a nat per token on average, while a sampling copy left
    unsynced after an update or a temperature applied on one side only gives more (tests/test_gap.py
    plants both). Every rank sees the same row."""
    if not limit or row.get("gap_mean", 0.0) <= limit:
        return
    raise SystemExit(f"train.py: error: step {row['step']}: the sampler's and the trainer's log-probs differ by "
                     f"{row['gap_mean']:.4g} nats per token on average (max {row['gap_max']:.4g}, k3 KL "
                     f"{row['gap_kl']:.4g}, {100 * row['gap_outside']:.1f}% of tokens with a ratio outside [0.5, 2]), "
                     f"over --max-logp-gap {limit:g}: a sampling copy not synced after an update or a temperature "
                     f"applied on one side only look like this")


def log_line(row: dict) -> str:
    """The step's one line on stdout."""
    return (f"step {row['step']:>5} stage {row['stage']} | reward {row['reward']:.3f} acc {row['accuracy']:.3f} | len "
            f"{row['len_mean']:.0f}/{row['len_max']} trunc {100 * row['truncated']:.0f}% zero-var "
            f"{100 * row['zero_var']:.0f}% | ent {row['entropy']:.3f} kl {row['kl']:.4f} clip "
            f"{row['clip_frac']:.3f} gnorm {row['grad_norm']:.3f} | {row['tok_per_s']:.0f} tok/s | "
            f"sample {row['sample_s']:.1f}s grade {row['grade_s']:.1f}s train {row['train_s']:.1f}s"
            + (f" | gap {row['gap_mean']:.2e}/{row['gap_max']:.2e}" if "gap_mean" in row else "")
            + (f" | fp16 scale {row['loss_scale']:g} overflow {row['overflow']}" if "loss_scale" in row else ""))
