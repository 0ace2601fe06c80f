"""One GRPO mini-batch update on fixed sequences, under torchrun or alone (used by test_train.py).

    python tests/ddp_step.py OUT.pt                               # one process, all sequences
    torchrun --nproc_per_node=2 tests/ddp_step.py OUT.pt          # each rank half of them
    torchrun --nproc_per_node=2 tests/ddp_step.py OUT.pt empty    # rank 0 all of them, rank 1 none

Rank 0 writes the parameters after the optimizer step and the update's logged metrics
(train.token_means: entropy, KL, clip fraction, loss) to OUT.pt. Rank 0 gets more tokens than
rank 1, so the ranks pack different numbers of micro-batches (4 and 2): only the last backward of each
synchronises.

Then the same in fp16 with a loss scaler, twice, from the same initial weights: the first update
with the loss of sequences 4-7 planted 1e6 times larger (its scaled fp16 gradients overflow on
the rank that holds them), the second plain. Every rank writes what it saw (OUT.pt's "fp16", and
OUT.pt.rank1 from rank 1): whether each step was taken, the scale after it, the weights after both.
"""
import datetime
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
torch.manual_seed(0)
model = Transformer(ModelConfig(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
g = torch.Generator().manual_seed(1)
seqs = []
for i in range(8):  # sequences 0-3 are long (rank 0's share when world == 2), 4-7 short
    n = 12 if i < 4 else 3
    prompt = torch.randint(0, 64, (5,), generator=g).tolist()
    tokens = torch.randint(0, 64, (n,), generator=g).tolist()
    adv = float(torch.randn(1, generator=g))
    old_logp = (torch.randn(n, generator=g) * 0.1 - 4).tolist()
    ref_logp = (torch.randn(n, generator=g) * 0.1 - 4).tolist()
    seqs.append(train.Rollout(prompt=prompt, tokens=tokens, logprobs=old_logp, reward=0.0, correct=False,
                              advantage=adv, truncated=False, group=i // 2, text="", old_logp=old_logp,
                              ref_logp=ref_logp))
cfg = train.Config(micro_tokens=20, kl_coef=0.01, entropy_coef=0.01, temperature=0.7)
if len(sys.argv) > 2 and sys.argv[2] == "empty":   # rank 1 holds no sequence: it only joins the all-reduce
    mine = seqs if rank == 0 else []
else:
    mine = seqs if world == 1 else (seqs[:4] if rank == 0 else seqs[4:])
ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
sums = train.train_minibatch(ddp, model, mine, loss_fn=train.grpo_loss, temperature=cfg.temperature, cfg=cfg,
                             device=torch.device("cpu"), world=world, amp=False)
metrics = train.token_means(sums, world, torch.device("cpu"))     # collective: every rank calls it
train.optimizer_step(model, opt, cfg.grad_clip)


def fp16_steps() -> dict:
    """Two fp16 updates from the initial weights, the first with an overflow planted in sequences 4-7."""
    torch.manual_seed(0)
    model16 = Transformer(model.config)
    ddp16 = torch.nn.parallel.DistributedDataParallel(model16) if world > 1 else model16
    opt16 = torch.optim.AdamW(model16.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    planted = {id(s) for s in seqs[4:]}

    def overflowing(logp, ent, mb, cfg, batch):
        loss, parts = train.grpo_loss(logp, ent, mb, cfg, batch)
        return (loss * 1e6 if any(id(s) in planted for s in mb) else loss), parts
    seen = dict(taken=[], scale=[])
    for loss_fn in (overflowing, train.grpo_loss):
        train.train_minibatch(ddp16, model16, mine, loss_fn=loss_fn, temperature=cfg.temperature, cfg=cfg,
                              device=torch.device("cpu"), world=world, amp=torch.float16, scaler=scaler)
        seen["taken"].append(train.optimizer_step(model16, opt16, cfg.grad_clip, scaler) is not None)
        seen["scale"].append(scaler.get_scale())
    seen["params"] = {k: v.clone() for k, v in model16.state_dict().items()}
    return seen


torch.manual_seed(0)
initial = {k: v.clone() for k, v in Transformer(model.config).state_dict().items()}
fp16 = fp16_steps() | {"initial": initial}
if rank == 0:
    torch.save({"params": {k: v.clone() for k, v in model.state_dict().items()}, "metrics": metrics, "fp16": fp16},
               sys.argv[1])
elif rank == 1:
    torch.save({"fp16": fp16}, sys.argv[1] + ".rank1")
if world > 1:
    del ddp     # it holds the group too: drop it so destroy_process_group joins gloo's threads
    dist.destroy_process_group()
