"""One GRPO mini-batch update on fixed sequences, under torchrun or alone (used by test_train.py).

    python tests/ddp_step.py DIR                          # one process, all sequences: DIR/one.pt
    torchrun --nproc_per_node=2 tests/ddp_step.py DIR     # four two-rank cases: DIR/SPLIT-HOW.pt

The two-rank cases, each from the same initial weights in the same processes:
    halves-ddp     DDP, each rank half of the sequences
    empty-ddp      DDP, rank 0 all of them, rank 1 none (it only joins the all-reduce)
    halves-shard   the model sharded as train.py --shard shards it (fsdp.shard), fp16 under
    empty-shard    ShardedGradScaler; the weights written are gathered whole from the slices

Rank 0 writes the parameters after the optimizer step and the update's logged metrics
(train.token_means: entropy, KL, clip fraction, loss), in fp32 and (the file's "bf16") under
bf16 autocast. Rank 0 gets more tokens than rank 1, so
the ranks pack different numbers of micro-batches (4 and 2): under DDP only the last backward of
each synchronises; sharded, the rank with fewer runs idle passes until it has run as many.

Then the same in fp16 with a loss scaler, twice, from the same initial weights: the first update
with the loss of sequences 4-7 planted 1e6 times larger (its scaled fp16 gradients overflow on
the rank that holds them), the second plain. Every rank writes what it saw (the file's "fp16",
and SPLIT-HOW.pt.rank1 from rank 1): whether each step was taken, the scale after it, the
weights after both.
"""
import datetime
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fsdp  # noqa: E402
import precision  # noqa: E402
import train  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402

rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
if world > 1:
    # Before the group exists: torch.distributed.nn binds the default group into its functions'
    # defaults when first imported (DDP pulls it in through torch._dynamo), which kept the gloo
    # group's worker threads alive past destroy_process_group into interpreter exit, where one still
    # freeing the last all-reduce aborted the rank ("terminate called without an active exception").
    import torch.distributed.nn  # noqa: F401
    # a rank that misses a collective (the empty rank not joining the all-reduce) fails in a minute
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
CPU = torch.device("cpu")
CONFIG = ModelConfig(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
cfg = train.Config(micro_tokens=20, kl_coef=0.01, entropy_coef=0.01, temperature=0.7)


def sequences() -> list:
    """Sequences 0-3 are long (rank 0's share when world == 2), 4-7 short."""
    g = torch.Generator().manual_seed(1)
    seqs = []
    for i in range(8):
        n = 12 if i < 4 else 3
        prompt = torch.randint(0, 64, (5,), generator=g).tolist()
        tokens = torch.randint(0, 64, (n,), generator=g).tolist()
        adv = float(torch.randn(1, generator=g))
        old_logp = (torch.randn(n, generator=g) * 0.1 - 4).tolist()
        ref_logp = (torch.randn(n, generator=g) * 0.1 - 4).tolist()
        seqs.append(train.Rollout(prompt=prompt, tokens=tokens, logprobs=old_logp, reward=0.0, correct=False,
                                  advantage=adv, truncated=False, group=i // 2, text="", old_logp=old_logp,
                                  ref_logp=ref_logp))
    return seqs


class Case:
    """One way of running the update: which sequences this rank holds, and how the model is wrapped."""

    def __init__(self, split: str, how: str, seqs: list):
        self.sharded = how == "shard"
        self.mesh = fsdp.make_mesh(CPU, world) if self.sharded else None
        if split == "empty":   # rank 1 holds no sequence: it only joins the all-reduce
            self.mine = seqs if rank == 0 else []
        else:
            self.mine = seqs if world == 1 else (seqs[:4] if rank == 0 else seqs[4:])

    def model(self) -> tuple:
        """The initial weights (seed 0), and the module that runs forward and backward."""
        torch.manual_seed(0)
        model = Transformer(CONFIG)
        if self.sharded:
            return model, fsdp.shard(model, self.mesh)
        return model, torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    def whole(self, model) -> dict:
        """The model's weights, whole (gathered tensor by tensor from a sharded model's slices)."""
        return {k: (v.full_tensor() if self.sharded else v).detach().clone() for k, v in model.state_dict().items()}


def one_step(case: Case, amp=False) -> dict:
    """The update and its metrics, in fp32 or under autocast in amp (bf16)."""
    model, ddp = case.model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sums = train.train_minibatch(ddp, model, case.mine, loss_fn=train.grpo_loss, temperature=cfg.temperature,
                                 cfg=cfg, device=CPU, world=world, amp=amp)
    metrics = train.token_means(sums, world, CPU)     # collective: every rank calls it
    train.optimizer_step(model, opt, cfg.grad_clip)
    return dict(params=case.whole(model), metrics=metrics)


def fp16_steps(case: Case, seqs: list) -> dict:
    """Two fp16 updates from the initial weights, the first with an overflow planted in sequences 4-7."""
    model16, ddp16 = case.model()
    opt16 = torch.optim.AdamW(model16.parameters(), lr=1e-2)
    scaler = precision.loss_scaler("fp16", "cpu", sharded=case.sharded)
    planted = {id(s) for s in seqs[4:]}

    def overflowing(logp, ent, mb, cfg, batch):
        loss, parts = train.grpo_loss(logp, ent, mb, cfg, batch)
        return (loss * 1e6 if any(id(s) in planted for s in mb) else loss), parts
    seen = dict(taken=[], scale=[])
    for loss_fn in (overflowing, train.grpo_loss):
        train.train_minibatch(ddp16, model16, case.mine, loss_fn=loss_fn, temperature=cfg.temperature, cfg=cfg,
                              device=CPU, world=world, amp=torch.float16, scaler=scaler)
        seen["taken"].append(train.optimizer_step(model16, opt16, cfg.grad_clip, scaler) is not None)
        seen["scale"].append(scaler.get_scale())
    seen["params"] = case.whole(model16)
    return seen


def run_case(split: str, how: str, out: str):
    """One case's results into out (rank 0) and out + ".rank1" (rank 1's fp16 view)."""
    seqs = sequences()
    case = Case(split, how, seqs)
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in Transformer(CONFIG).state_dict().items()}
    result = one_step(case) | {"bf16": one_step(case, amp=torch.bfloat16)}
    fp16 = fp16_steps(case, seqs) | {"initial": initial}
    if rank == 0:
        torch.save(result | {"fp16": fp16}, out)
    elif rank == 1:
        torch.save({"fp16": fp16}, out + ".rank1")


if world == 1:
    run_case("halves", "one", os.path.join(sys.argv[1], "one.pt"))
else:
    for split in ("halves", "empty"):
        for how in ("ddp", "shard"):
            run_case(split, how, os.path.join(sys.argv[1], f"{split}-{how}.pt"))
    dist.destroy_process_group()
