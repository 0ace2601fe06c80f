"""train.py with and without --shard on the toy, several runs in the same torchrun processes (used
by tests/test_fsdp.py).

    torchrun --nproc_per_node=2 tests/fsdp_run.py DIR

Every run takes the same flags (FLAGS: a stage switch after step 1 that keeps AdamW's state, so
that step 2 depends on the optimizer state, the KL reference the switch made, and the stage):

    DIR/shard      --shard, 2 steps
    DIR/ddp        DDP, 2 steps
    DIR/resumed    --shard from shard's step-1 checkpoint to step 2
    DIR/crossed    --shard from ddp's step-1 checkpoint (a DDP checkpoint resumed sharded)
    DIR/back       DDP from shard's step-1 checkpoint (a sharded checkpoint resumed under DDP)

The runs share one process group: train.main's start and stop of it are replaced by one start
here (re-creating a gloo group in the same processes hung now and then in its rendezvous).
During DIR/shard, after every update (train.update_policy) each rank checks that the sampling
copy equals the policy gathered whole, and that no weight of the policy or the reference is
left gathered; rank 0 writes what it saw to DIR/checks.json. Before the runs, a model with tied
embeddings and rows that two ranks cannot split evenly (vocabulary 67) goes through fsdp.load,
fsdp.whole_copy and fsdp.full_state_dict: checks.json's "uneven" says whether it came back whole.
"""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
import fsdp  # noqa: E402
from common import start_distributed  # noqa: E402
from fsdp import DTensor  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402

FLAGS = ["--prompts-per-step", "8", "--temperature", "0.7", "--sft-steps", "4", "--sft-batch", "16",
         "--sft-lr", "3e-3", "--lr", "1e-3", "--weight-decay", "0", "--updates-per-step", "2", "--kl-coef", "0.05",
         "--entropy-coef", "0.01", "--old-logp", "recompute", "--micro-tokens", "160", "--grad-ckpt", "--eval-every", "0",
         "--save-every", "1", "--show-every", "100", "--schedule", "0:16:4,1:12:4", "--keep-optimizer"]
DIR = sys.argv[1]
rank = int(os.environ.get("RANK", 0))
checks = []
real_update = train.update_policy


def checked_update(run, models, *args, **kwargs):
    """train.update_policy, then the sampling copy against the policy gathered tensor by tensor
    (collective), and whether every weight of the policy and the reference is a slice."""
    update = real_update(run, models, *args, **kwargs)
    whole = [p.full_tensor() for p in models.policy.parameters()]
    checks.append(dict(
        sampler_equals_policy=all(torch.equal(a, b) for a, b in zip(models.sampler.parameters(), whole)),
        released=all(isinstance(p, DTensor) for m in (models.policy, models.ref) for p in m.parameters())))
    return update


def run(out: str, *args):
    train.main(FLAGS + ["--out", os.path.join(DIR, out), *args])


group = start_distributed(timeout_s=120)
train.start_distributed = lambda timeout_s=None: group
train.stop_distributed = lambda: None
def uneven_round_trip() -> bool:
    """A tied model with odd row counts, saved, loaded sharded, copied whole and gathered again."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(model_type="qwen2", vocab_size=67, hidden_size=32, intermediate_size=48,
                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    tie_word_embeddings=True))
    folder = os.path.join(DIR, "uneven")
    if rank == 0:
        model.save_pretrained(folder)
    dist.barrier()
    cpu = torch.device("cpu")
    sharded = fsdp.load(folder, cpu, torch.float32, fsdp.make_mesh(cpu, dist.get_world_size()))
    copy = fsdp.whole_copy(sharded, torch.float32, cpu)
    gathered = fsdp.full_state_dict(sharded, rank)
    ids = torch.arange(60).view(2, 30) % 67
    same_copy = copy.lm_head.weight is copy.embed_tokens.weight and torch.equal(copy(ids), model(ids))
    want = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    return same_copy and (rank != 0 or (gathered.keys() == want.keys()
                                        and all(torch.equal(gathered[k], want[k]) for k in want)))


train.update_policy = checked_update
uneven = uneven_round_trip()
run("shard", "--steps", "2", "--shard")
train.update_policy = real_update
if rank == 0:
    with open(os.path.join(DIR, "checks.json"), "w") as f:
        json.dump(dict(updates=checks, uneven=uneven), f)
run("ddp", "--steps", "2")
run("resumed", "--steps", "2", "--shard", "--resume", os.path.join(DIR, "shard/checkpoints/step_000001"))
run("crossed", "--steps", "2", "--shard", "--resume", os.path.join(DIR, "ddp/checkpoints/step_000001"))
run("back", "--steps", "2", "--resume", os.path.join(DIR, "shard/checkpoints/step_000001"))
dist.destroy_process_group()
