"""The policy update: packing sequences into micro-batches, their log-probs under autocast,
GRPO's and the warm-up's losses, one optimizer step with loss scaling.

    mbs = pack(rollouts, cfg.micro_tokens)        # micro-batches of at most that many tokens
    m = train_minibatch(ddp, policy, rollouts, loss_fn=grpo_loss, temperature=cfg.temperature, cfg=cfg,
                        device=device, world=world, amp=amp, scaler=scaler)   # gradients; metric sums
    norm = optimizer_step(policy, opt, cfg.grad_clip, scaler)   # None: not finite, no step taken

Also the records a sequence travels in: Sequence (a warm-up demonstration) and Rollout (a
sampled completion, from sampling to the loss). train.py decides what an update sees (which
groups form a mini-batch, the warm-up's demonstrations, when the sampler re-syncs) and imports
all of this back, so `train.pack`, `train.Rollout` and the rest still work.

A module of its own because it is the one part of a run that computes gradients, and it knows
nothing of the run folder, sampling, grading or stages: the tests drive it directly on
hand-made sequences (tests/test_train_loop.py, tests/ddp_step.py). Floor 4: it imports grpo,
precision, metrics and fsdp, never train. Under --shard the model is FSDP2's (fsdp.py): every
forward is then collective, so each rank runs as many as the others, and gradients are
reduce-scattered in every backward instead of all-reduced in the last.
"""
import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

import fsdp
import grpo
import precision
from metrics import METRIC_SUMS


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


# ----------------------------------------------------------------------------- log-probs and losses

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
    with precision.autocast(device, amp):      # amp: the autocast dtype, or None / False for fp32
        h = ddp_model(ids, positions=pos, seq_lens=lens, return_hidden=True)[0]      # (T, C)
        h = h[torch.tensor(pick, device=device)]                                     # (N, C)
        return model.token_logprobs(h, torch.tensor(tgt, device=device), temperature,
                                    with_entropy=with_entropy)


def grpo_loss(logp, ent, mb: list[Rollout], cfg, batch: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """GRPO's loss on a micro-batch (grpo.py states every convention): the clipped surrogate
    -min(ratio * A, clip(ratio) * A) (per token, or per response with --policy-loss gspo), times
    the TIS weight with --tis-cap, + kl_coef * k3 KL to the reference - entropy_coef * entropy,
    aggregated by --loss-agg over the whole mini-batch, whose completion tokens and sequences over
    every rank are `batch`. logp, ent: (N,) over the micro-batch's completion tokens. Returns the
    loss and the per-token parts the metrics sum (kl, clipped)."""
    device = logp.device
    lens = torch.tensor([len(s.tokens) for s in mb], device=device)
    idx = torch.repeat_interleave(torch.arange(len(mb), device=device), lens)   # (N,) sequence of each token
    old = torch.tensor([x for s in mb for x in s.old_logp], device=device)
    refp = torch.tensor([x for s in mb for x in s.ref_logp], device=device) if cfg.kl_coef else None
    adv = torch.tensor([s.advantage for s in mb], device=device)[idx]
    weights = None
    if cfg.tis_cap:   # the sampler drew each token with s.logprobs; the old policy gives it `old`
        sampled = torch.tensor([x for s in mb for x in s.logprobs], device=device)
        weights = grpo.tis_weights(old, sampled, cfg.tis_cap, cfg.tis_level, idx, len(mb))
    tok_loss, parts = grpo.grpo_token_loss(logp, old, refp, ent, adv, cfg.clip_low, cfg.clip_high,
                                           cfg.kl_coef, cfg.entropy_coef, policy_loss=cfg.policy_loss,
                                           seq_index=idx, seq_lens=lens, is_weights=weights)
    return grpo.aggregate(tok_loss, idx, lens, cfg.loss_agg, cfg.ctx, *batch), parts


def sft_loss(logp, ent, mb: list[Sequence], cfg, batch: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """The warm-up's loss: the demonstrations' negative log-likelihood, a mean over the whole
    mini-batch's tokens (`batch`: its completion tokens and sequences over every rank)."""
    return (-logp).sum() / max(1, batch[0]), {}


def train_minibatch(ddp_model, model, seqs: list[Sequence], *, loss_fn, temperature: float, cfg, device,
                    world: int, amp, scaler=None) -> dict:
    """Accumulate gradients of loss_fn (grpo_loss or sft_loss) over one mini-batch, micro-batch by
    micro-batch (no optimizer step); log-probs at `temperature`, the forward under autocast in
    `amp` (a dtype; None or False: fp32), the backward of loss * the scaler's scale with fp16's
    loss scaler. Returns this rank's metric sums (METRIC_SUMS by name, unscaled; token_means
    turns them into the logged values).

    DDP: only the last backward of a rank all-reduces the gradients (the others run under
    no_sync), and the model holds no buffers, so its forwards exchange nothing: ranks may pack
    different numbers of micro-batches. A rank with no sequence at all still joins that one
    all-reduce. FSDP (ddp_model sharded by fsdp.py): every backward reduce-scatters, so a rank
    never holds more than its slice of the gradient, and every forward gathers: a rank with fewer
    micro-batches than another runs idle passes until it has run as many."""
    mbs = pack(seqs, cfg.micro_tokens)
    sharded = fsdp.is_sharded(ddp_model)
    # the whole mini-batch's completion tokens and sequences, over every rank: token-mean divides by them
    counts = torch.tensor([sum(len(s.tokens) for s in seqs), len(seqs)], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(counts)
    batch = (int(counts[0]), int(counts[1]))
    m = dict.fromkeys(METRIC_SUMS, 0.0)
    if world > 1 and not mbs and not sharded:
        join_gradient_all_reduce(ddp_model, device, amp, scaler)
    idle = fsdp.most_passes(len(mbs), device) - len(mbs) if sharded else 0
    for k, mb in enumerate(mbs):
        last = k == len(mbs) - 1
        with ddp_model.no_sync() if world > 1 and not last and not sharded else contextlib.nullcontext():
            logp, ent = forward_logprobs(ddp_model, model, mb, temperature, device, amp)
            loss, parts = loss_fn(logp, ent, mb, cfg, batch)
            scaled = loss * world      # DDP and FSDP average gradients over ranks; the loss already divides by all
            (scaled if scaler is None else scaler.scale(scaled)).backward()
        m["loss"] += float(loss.detach())   # this rank's share: the ranks' shares add up to the loss
        m["kl"] += float(parts.get("kl", torch.zeros(1)).sum())
        m["entropy"] += float(ent.detach().sum())
        m["clipped"] += float(parts.get("clipped", torch.zeros(1)).float().sum())
        m["tokens"] += len(logp)
    for _ in range(idle):
        join_gradient_all_reduce(ddp_model, device, amp, scaler)
    return m


@torch.no_grad()
def store_logprobs(model, rollouts: list[Rollout], field_name: str, cfg, device, amp):
    """Store no-grad per-token log-probs of each rollout's tokens under `model`, at the sampling
    temperature, as rollout.<field_name> ("old_logp" or "ref_logp"). A sharded model runs as
    many forwards on every rank (idle ones after this rank's own), then frees its gathered root."""
    mbs = pack(rollouts, cfg.micro_tokens)
    for mb in mbs:
        logp = forward_logprobs(model, model, mb, cfg.temperature, device, amp, with_entropy=False)   # (N,)
        for r, part in zip(mb, logp.split([len(r.tokens) for r in mb])):
            setattr(r, field_name, part.float().tolist())
    if fsdp.is_sharded(model):
        for _ in range(fsdp.most_passes(len(mbs), device) - len(mbs)):
            model(torch.zeros((1, 1), dtype=torch.long, device=device))
        fsdp.release(model)


def join_gradient_all_reduce(ddp_model, device, amp, scaler=None):
    """The one gradient all-reduce of a mini-batch, from a rank that holds none of its sequences
    (dynamic sampling can leave a rank without a group); under FSDP, one idle forward and backward
    (its gathers and its reduce-scatter). DDP arms the all-reduce in a forward and runs it in the
    backward, so this rank runs the model on one token and back-propagates zero times its output:
    the others' gradients are averaged with zeros, as the loss's world-scaling expects. The zero
    goes through fp16's loss scaler too: unscale_ needs a scale() first."""
    with precision.autocast(device, amp):
        out = ddp_model(torch.zeros((1, 1), dtype=torch.long, device=device))
    zero = out.float().sum() * 0.0
    (zero if scaler is None else scaler.scale(zero)).backward()


# ----------------------------------------------------------------------------- one optimizer step

def optimizer_step(model, opt, grad_clip: float, scaler=None):
    """Clip and step; returns the pre-clip grad norm, or None (and no step) if it is not finite.

    With fp16's loss scaler the gradients were computed from loss * scale: they are divided by
    the scale first, so that the norm, the clip and AdamW see the true gradient, and the scaler
    then halves its scale if they were not finite (or doubles it after 2,000 clean steps). Under
    FSDP the norm is over every rank's slices, and fp16's ShardedGradScaler finds an overflow in
    any of them: every rank takes the same verdict."""
    if scaler is not None:
        scaler.unscale_(opt)
        scaler.update()
    norm = fsdp.whole_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))   # over every rank's slices
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        return None
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)
