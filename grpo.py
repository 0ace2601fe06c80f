"""GRPO's arithmetic as pure functions: advantages, the clipped objective, KL, loss aggregation.

No I/O, no model, no distributed code: train.py feeds these tensors and backpropagates the
result. Every numeric convention (which std, where epsilon goes, what a mean is over) is
stated here and pinned by hand-computed numbers in tests/test_grpo.py.

Per-token quantities are flat tensors over the tokens a micro-batch holds, (N,), with
`seq_index` (N,) saying which sequence of the whole rollout batch each token belongs to.
Aggregation divides by whole-batch counts, so the micro-batches' losses add up to the loss
of the full batch however the batch is split. DeepScaleR's defaults: advantages
(r - mean) / (std + 1e-6) per group, clip 0.2 both sides, k3 KL with coefficient 0.001,
entropy bonus 0.001, token-mean aggregation.

Options beside DeepScaleR's recipe (it used none of them): GSPO's sequence-level ratio,
truncated importance sampling (TIS) of the gap between the sampler's and the trainer's
log-probs, and the measure of that gap itself (logp_gap). Masking truncated responses out of
the loss (DAPO's overlong filtering) needs no formula: train.py leaves them out of the batch.

Left out: value functions (GRPO has none), reward shaping.
"""
import math

import torch

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
POLICY_LOSSES = ("grpo", "gspo")
TIS_LEVELS = ("token", "sequence")


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6,
                     scale: bool = True) -> torch.Tensor:
    """One advantage per response, from rewards (G * group_size,) laid out group by group.

        A_i = (r_i - mean_g) / (std_g + eps)    scale=True  (GRPO; std with Bessel's n-1, as verl)
        A_i =  r_i - mean_g                     scale=False (Dr. GRPO: no std, no difficulty bias)

    A group whose rewards are all equal gets A = 0 for every member: it carries no signal.
    A group of one response has no spread to compare against and also gets 0.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)                             # (G, n)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale and group_size > 1:
        centred = centred / (r.std(dim=1, unbiased=True, keepdim=True) + eps)
    return (centred if group_size > 1 else torch.zeros_like(r)).view(-1)


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        clip_low: float = 0.2, clip_high: float = 0.2):
    """PPO's clipped surrogate per token, as a loss to minimise, and where clipping was active.

        ratio = exp(logp - old_logp)
        loss  = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)

    clip_high > clip_low is DAPO's clip-higher: unlikely tokens may gain more before clipping.
    logp, old_logp, advantages (N,) (advantages broadcast per token). Returns loss (N,) and a
    bool (N,) that is True where the clipped branch was the smaller (no gradient flows).
    """
    return clipped_surrogate(torch.exp(logp - old_logp), advantages, clip_low, clip_high)


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float):
    """-min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) per token, and whether the
    clipped branch was the smaller: the one formula PPO's and GSPO's ratios go through."""
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def per_sequence_sum(values: torch.Tensor, seq_index: torch.Tensor, num_seqs: int) -> torch.Tensor:
    """(num_seqs,) sums of per-token values (N,) over the tokens of each sequence."""
    return torch.zeros(num_seqs, dtype=values.dtype, device=values.device).index_add_(0, seq_index, values)


def gspo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                     seq_index: torch.Tensor, seq_lens: torch.Tensor, clip_low: float, clip_high: float):
    """GSPO's clipped objective (Zheng et al. 2025, "Group Sequence Policy Optimization"; verl's
    loss_mode "gspo"): one ratio per response, the length-normalised sequence likelihood ratio

        s_i = exp(mean_t (logp_it - old_logp_it))         clipped per response to [1 - low, 1 + high]

    written per token as GSPO-token does, s_it = exp(logp_it - sg(logp_it) + sg(log s_i)): every
    token carries the value s_i and the gradient s_i * grad logp_it, so that averaging each
    response's tokens (seq-mean-token-mean) gives GSPO's objective exactly. The paper's clip
    ranges are ~3e-4 / 4e-4, far below PPO's 0.2. Returns loss (N,) and clipped flags (N,)."""
    log_s = per_sequence_sum(logp.detach() - old_logp, seq_index, seq_lens.numel()) / seq_lens.clamp(min=1)
    log_ratio = logp - logp.detach() + log_s[seq_index]
    ratio = torch.exp(torch.clamp(log_ratio, max=10.0))   # verl's cap on the log-ratio: no overflow
    return clipped_surrogate(ratio, advantages, clip_low, clip_high)


def tis_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, cap: float, level: str = "token",
                seq_index: torch.Tensor | None = None, num_seqs: int = 0) -> torch.Tensor:
    """Truncated importance sampling weights (N,), no gradient, for the policy-gradient term when
    the tokens were drawn by a sampler whose log-probs differ from the trainer's old policy
    (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training";
    verl's tis_imp_ratio_cap, TRL's vllm_importance_sampling_cap):

        token     w_it = min(exp(old_logp_it - sampler_logp_it), cap)
        sequence  w_i  = min(exp(sum_t (old_logp_it - sampler_logp_it)), cap), one for all its tokens

    The sequence product is computed in log space and capped before exp (no overflow)."""
    d = (old_logp - sampler_logp).detach()
    if level == "token":
        return torch.exp(torch.clamp(d, max=math.log(cap)))
    if level == "sequence":
        log_w = per_sequence_sum(d, seq_index, num_seqs).clamp(max=math.log(cap))
        return torch.exp(log_w)[seq_index]
    raise ValueError(f"unknown TIS level {level!r}; choose one of {TIS_LEVELS}")


def logp_gap(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, clip_low: float = 0.2,
             clip_high: float = 0.2) -> dict:
    """How far the log-probs the sampler drew each token with are from the trainer's for the
    same token, d = trainer - sampler (N,): |d|, the k3 estimate of KL(sampler || trainer) for
    tokens the sampler drew (exp(d) - d - 1 >= 0), whether the ratio exp(d) is outside [0.5, 2]
    (|d| > ln 2), and whether it is outside PPO's clip range [1 - clip_low, 1 + clip_high] (such a
    token is clipped before any update). On CPU in fp32 d is ~1e-6; on SmolLM2-135M a bf16
    sampling copy gave 0.028 per token, an fp16 one 0.0036 (README, "What has been measured");
    a stale copy or a temperature applied on one side only, more."""
    d = (trainer_logp - sampler_logp).double()
    ratio = torch.exp(d)
    return {"abs": d.abs(), "k3": ratio - d - 1.0, "clip": (ratio < 1.0 - clip_low) | (ratio > 1.0 + clip_high),
            "outside": d.abs() > math.log(2.0)}


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || reference) per token, for tokens drawn from the policy.

        d  = ref_logp - logp            (clamped to [-20, 20] so exp cannot overflow)
        k3 = exp(d) - d - 1             (>= 0, unbiased, low variance; clamped to <= 10)

    The clamps are those of verl's "low_var_kl", the variant DeepScaleR trained with.
    """
    d = torch.clamp(ref_logp - logp, -20.0, 20.0)
    return torch.clamp(torch.exp(d) - d - 1.0, max=10.0)


def aggregate(values: torch.Tensor, seq_index: torch.Tensor, seq_lens: torch.Tensor,
              mode: str = "token-mean", max_tokens: int | None = None,
              batch_tokens: int | None = None, batch_seqs: int | None = None) -> torch.Tensor:
    """Reduce per-token values (N,) to this micro-batch's share of the whole-batch loss.

    seq_index (N,) long: the sequence each token belongs to, an index into seq_lens;
    seq_lens (S,): the number of response tokens of those sequences. The whole batch's token
    and sequence counts default to sum(seq_lens) and S; under DDP pass the all-ranks totals.

        token-mean               sum(v) / batch_tokens                    (DAPO, DeepScaleR)
        seq-mean-token-mean      sum(v / seq_lens[seq_index]) / batch_seqs  (original GRPO)
        seq-mean-token-sum-norm  sum(v) / (batch_seqs * max_tokens)       (Dr. GRPO: a constant)

    Summed over micro-batches covering the batch once, each mode gives its full-batch value.
    """
    S = seq_lens.numel() if batch_seqs is None else batch_seqs
    if mode == "token-mean":
        return values.sum() / max(1, int(seq_lens.sum()) if batch_tokens is None else batch_tokens)
    if mode == "seq-mean-token-mean":
        return (values / seq_lens[seq_index].clamp(min=1)).sum() / S
    if mode == "seq-mean-token-sum-norm":
        if not max_tokens:
            raise ValueError("seq-mean-token-sum-norm needs max_tokens (the response budget)")
        return values.sum() / (S * max_tokens)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {AGGREGATIONS}")


def grpo_token_loss(logp, old_logp, ref_logp, entropy, advantages, clip_low=0.2, clip_high=0.2,
                    kl_coef=0.001, entropy_coef=0.001, policy_loss="grpo", seq_index=None, seq_lens=None,
                    is_weights=None):
    """The full per-token loss and its parts.

        loss = w * policy_loss + kl_coef * k3(logp, ref_logp) - entropy_coef * entropy

    policy_loss is "grpo" (clipped_policy_loss, per token) or "gspo" (gspo_policy_loss, per
    response: needs seq_index and seq_lens); w is is_weights (tis_weights) or 1. ref_logp may be
    None when kl_coef == 0 (no reference model is needed then); entropy may be None when
    entropy_coef == 0. Returns (loss (N,), parts) where parts holds the detached per-token
    pieces for logging: pg, kl, entropy, clipped.
    """
    if policy_loss == "grpo":
        pg, clipped = clipped_policy_loss(logp, old_logp, advantages, clip_low, clip_high)
    elif policy_loss == "gspo":
        pg, clipped = gspo_policy_loss(logp, old_logp, advantages, seq_index, seq_lens, clip_low, clip_high)
    else:
        raise ValueError(f"unknown policy loss {policy_loss!r}; choose one of {POLICY_LOSSES}")
    if is_weights is not None:
        pg = pg * is_weights
    loss, parts = pg, {"pg": pg.detach(), "clipped": clipped}
    if kl_coef:
        kl = kl_k3(logp, ref_logp)
        loss, parts["kl"] = loss + kl_coef * kl, kl.detach()
    if entropy_coef:
        loss, parts["entropy"] = loss - entropy_coef * entropy, entropy.detach()
    return loss, parts
