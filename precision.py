"""precision.py: the numeric precision a run trains and samples in, and fp16's loss scaling.

    python train.py --precision bf16     # DeepScaleR's recipe (the default on a GPU)
    python train.py --precision fp16     # more mantissa: a smaller sampler-trainer gap; loss scaling
    python train.py --precision fp32     # no autocast, the policy samples itself (the default on CPU)

One name decides two dtypes: the sampling copy's weights (sample.generate runs in them) and the
training forward's autocast. The policy's master weights and AdamW's moments stay fp32 in every
mode, and so do the log-softmax and the loss (model.token_logprobs upcasts the logits).

    name   sampling copy   training autocast   loss scaling
    bf16   bf16            bf16                none (bf16 has fp32's exponent range)
    fp16   fp16            fp16                dynamic (torch.amp.GradScaler)
    fp32   none            none                none

Why fp16 at all: the sampler decodes one token at a time against a KV cache while the trainer
scores the packed sequences in one forward, and in bf16 (8 bits of mantissa) the two round
differently enough that some tokens' ratio p_trainer / p_sampler leaves PPO's clip range before
any update. fp16 has 11 bits, and cut that gap about 8x on SmolLM2-135M (README, "What has been
measured"; Qi et al. 2025, "Defeating the Training-Inference Mismatch via FP16"). Its price is
range: fp16 tops out at 65,504. Gradients are kept in range by scaling the loss up before
backward and the gradients down after (a step whose scaled gradients overflow is skipped and
the scale halved; 2,000 clean steps double it), and activations are not: a model whose hidden
states exceed 65,504 gives non-finite logits in fp16 whatever the scale.

Left out: fp8, static loss scales, and per-layer precision choices.
"""
import contextlib

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Below this scale the scaled-down gradients of an fp16 step still overflow: fp16 cannot hold the
# model's activation gradients at all, and halving further only hides the problem.
MIN_LOSS_SCALE = 1.0


def resolve(name: str, device) -> str:
    """"auto" as bf16 on a GPU and fp32 on a CPU (what train.py did before the flag existed);
    any other name as given."""
    if name == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return name


def autocast_dtype(name: str) -> torch.dtype | None:
    """The training forward's autocast dtype for a resolved precision; None in fp32 (no autocast)."""
    return None if name == "fp32" else DTYPES[name]


def autocast(device, dtype):
    """torch.autocast in dtype on device's type, or nothing when dtype is None, False or fp32."""
    if not dtype or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def loss_scaler(name: str, device, sharded: bool = False) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for fp16 (initial scale 2^16, halved on an overflow, doubled after
    2,000 clean steps: torch's defaults); None for the other precisions, whose range needs none.
    sharded: the model is FSDP's (fsdp.py), each rank holding a slice of every gradient, so an
    overflow in one rank's slice must skip the step on all: ShardedGradScaler all-reduces the
    verdict (its state_dict is GradScaler's, so checkpoints resume either way)."""
    if name != "fp16":
        return None
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
        return ShardedGradScaler(torch.device(device).type)
    return torch.amp.GradScaler(torch.device(device).type)


def scale_of(scaler) -> float:
    """The scaler's current loss scale; 1.0 without one."""
    return float(scaler.get_scale()) if scaler is not None else 1.0
