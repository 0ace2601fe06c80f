"""fsdp.py: the policy and its KL reference sharded over the ranks with PyTorch's own FSDP2
(torch.distributed.fsdp.fully_shard), for policies whose AdamW state one GPU cannot hold.

    torchrun --nproc_per_node=8 train.py --model DeepSeek-R1-Distill-Qwen-7B --data polished.jsonl --shard

Under DDP every GPU holds the whole fp32 policy, its fp32 gradient and AdamW's two fp32
moments: 16 bytes per parameter, 28 GB for the 1.5B policy and 122 GB for a 7B one, which no
80 GB GPU holds. With --shard each of N ranks keeps 1/N of each (README, "Sharding": the table
per GPU). What sharding changes, and where this file handles it:

- Units. Each decoder layer is one FSDP unit, and the root (embed_tokens, norm, lm_head, a tied
  lm_head with its embedding) another. A forward all-gathers a unit's fp32 weights just before
  it runs and frees them after; a backward gathers them again and reduce-scatters the gradient,
  averaged over the ranks as DDP's all-reduce averages it, so a rank only ever holds its slice.
- Every forward is collective, so every rank must run as many forwards and backwards as the
  others: a rank that packed fewer micro-batches runs idle one-token passes (most_passes; used
  by update.py). DDP only needed the one all-reduce of the last backward.
- FSDP2 keeps the root's weights gathered after a forward, for the backward it expects. After
  forwards without one (the old and reference log-probs) release() frees them: else every rank
  would keep the whole embedding and lm_head, the reference for good.
- Whole weights: the sampler decodes with whole weights, so after each update gather_into()
  copies the policy into the sampling copy one unit at a time: one all-gather of that unit's
  fp32 weights, cast into the copy's dtype, freed before the next. No rank ever holds the
  whole policy in fp32. At the 7B shape (R1-Distill-Qwen-7B: 7.6B parameters, 28 layers) the
  bf16 copy is 15.2 GB on every GPU, the largest unit gathered is the root's 4.4 GB (embedding
  and lm_head in fp32; a layer is 0.93 GB), and a re-sync all-gathers 30.5 GB of fp32 weights
  into every rank, 7/8 of it from the others at 8 GPUs: at B GB/s of all-gather bandwidth
  about 30.5 / B seconds per update (worked out from the config; not measured here).
- Checkpoints stay what they are without --shard: full_state_dict() gathers the weights unit by
  unit into rank 0's memory, which writes HF safetensors, and full_optimizer_state() gathers
  AdamW's moments into the format an unsharded AdamW saves. A checkpoint does not record how it
  was written, and resumes with or without --shard (shard_optimizer_state cuts it up again).
- Loading (load): each rank builds the model on the meta device, shards it, and copies its slice
  of each tensor as the safetensors files stream past: no rank holds a whole copy.

Mixed precision is the unsharded path's: fp32 weights, autocast in the forward, so --shard
computes what DDP computes up to the order of float sums. FSDP2's MixedPrecisionPolicy
(param_dtype=bf16) would halve the gathered bytes but round the weights before autocast does,
norm weights included, and --shard would then no longer equal DDP. Left out: that policy, CPU
offload, hybrid sharding (HSDP), tensor parallelism, and torch.distributed.checkpoint's
per-rank checkpoint files. Needs torch >= 2.6 (fully_shard's public home).
"""
import torch
import torch.distributed as dist

from model import Transformer, read_config, read_weights

try:
    from torch.distributed.fsdp import FSDPModule, fully_shard
    from torch.distributed.tensor import DTensor
except ImportError:   # torch < 2.6, or a build without torch.distributed
    FSDPModule = fully_shard = DTensor = None


def refusal(world: int) -> str:
    """Why --shard cannot run in this process ("" when it can)."""
    if world < 2:
        return ("--shard splits the policy over torchrun's ranks, and this is one process: start it with "
                "torchrun --nproc_per_node=N (N >= 2), or drop --shard (one process holds the whole model anyway)")
    if fully_shard is None:
        return f"--shard needs torch >= 2.6 (torch.distributed.fsdp.fully_shard); this is torch {torch.__version__}"
    return ""


def is_sharded(model) -> bool:
    """Whether model is an FSDP2 module (load's result), as opposed to a whole model or DDP."""
    return FSDPModule is not None and isinstance(model, FSDPModule)


def make_mesh(device: torch.device, world: int):
    """The one-dimensional device mesh of all ranks that every sharded model of a run shares."""
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh(device.type, (world,))


def shard(model: Transformer, mesh) -> Transformer:
    """fully_shard each decoder layer, then the root, in place (the layers first: a unit takes the
    parameters no inner unit has taken). Returns the model, now also an FSDPModule."""
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def local_slice(full: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank's slice of a whole tensor as FSDP2 shards it: torch.chunk along dim 0, ranks past the
    last chunk holding an empty one."""
    chunks = full.chunk(world, dim=0)
    return chunks[rank] if rank < len(chunks) else full[:0]


@torch.no_grad()
def load(path, device: torch.device, dtype: torch.dtype, mesh) -> Transformer:
    """An HF folder's model, sharded over the mesh's ranks, in dtype on device. Each rank reads
    the tensors one at a time (model.read_weights: names and shapes checked first, ModelFileError
    naming the file) and keeps its slice of each."""
    with torch.device("meta"):
        model = Transformer(read_config(path)).to(dtype)
    shard(model, mesh)
    model.to_empty(device=device)
    rank, world = mesh.get_local_rank(), mesh.size()
    mine = {name: p.to_local() for name, p in model.named_parameters()}   # views of this rank's slices
    for name, full in read_weights(path, model, "cpu", dtype):
        part = local_slice(full, rank, world)
        if mine[name].shape != part.shape:   # FSDP2 changed how it shards: fail, never load misplaced rows
            raise RuntimeError(f"{path}: {name}: this rank holds a slice of shape {list(mine[name].shape)}, "
                               f"not the {list(part.shape)} of torch.chunk along dim 0")
        mine[name].copy_(part)
    return model


def most_passes(mine: int, device: torch.device) -> int:
    """The most micro-batches any rank packed (collective): under FSDP each forward gathers every
    unit from all ranks, so each rank runs that many forwards, idle ones after its own."""
    n = torch.tensor([mine], device=device)
    dist.all_reduce(n, op=dist.ReduceOp.MAX)
    return int(n)


def release(model):
    """Free the root's gathered weights after forwards that have no backward (the layers free
    theirs after each forward). A whole model has nothing to free."""
    if is_sharded(model):
        model.reshard()


def units(model: Transformer) -> list[tuple[str, torch.nn.Module]]:
    """The FSDP units of a sharded model, each with the name prefix of its parameters: the decoder
    layers, then the root (whose own parameters are those outside layers.)."""
    return [(f"layers.{i}", layer) for i, layer in enumerate(model.layers)] + [("", model)]


def own_parameters(prefix: str, unit: torch.nn.Module):
    """(full name, parameter) of the parameters a unit gathers: all of a layer's, the root's
    outside the layers (theirs stay sharded while the root is gathered)."""
    for name, p in unit.named_parameters(prefix=prefix):
        if prefix or not name.startswith("layers."):
            yield name, p


@torch.no_grad()
def gather_into(dest: Transformer, src: Transformer):
    """Copy the sharded src's weights into the whole model dest (the sampling copy, in its own
    dtype), one unit at a time (collective): all-gather the unit, copy, free it again."""
    whole = dict(dest.named_parameters())
    for prefix, unit in units(src):
        unit.unshard()
        for name, p in own_parameters(prefix, unit):
            whole[name].copy_(p)
        unit.reshard()


def whole_copy(model: Transformer, dtype: torch.dtype, device: torch.device) -> Transformer:
    """A whole, unsharded copy of a sharded model in dtype (the sampling copy), gathered unit by
    unit, with no gradient."""
    with torch.device("meta"):
        copy = Transformer(model.config).to(dtype)
    copy.to_empty(device=device)
    if model.config.tie_word_embeddings:   # to_empty gave lm_head a tensor of its own
        copy.lm_head.weight = copy.embed_tokens.weight
    gather_into(copy, model)
    return copy.requires_grad_(False)


@torch.no_grad()
def full_state_dict(model: Transformer, rank: int) -> dict:
    """The whole weights of a sharded model in rank 0's CPU memory, named as state_dict() names
    them (a tied lm_head is left out: save_pretrained writes none); {} on the other ranks.
    Collective, one unit gathered at a time."""
    whole = {}
    for prefix, unit in units(model):
        unit.unshard()
        if rank == 0:
            whole |= {name: p.to("cpu", copy=True) for name, p in own_parameters(prefix, unit)}
        unit.reshard()
    return whole


def full_optimizer_state(opt: torch.optim.Optimizer, rank: int) -> dict:
    """AdamW's state_dict with every sharded moment gathered whole into rank 0's CPU memory: the
    format an unsharded AdamW saves, so the checkpoint resumes either way; {} on the other ranks.
    Collective: one all-gather per moment tensor."""
    saved = opt.state_dict()
    state = {}
    for i, per_param in saved["state"].items():   # the same order on every rank: parameter index
        for key, value in per_param.items():
            whole = value.full_tensor() if isinstance(value, DTensor) else value
            if rank == 0:   # the other ranks only take part in the gather: nothing kept
                state.setdefault(i, {})[key] = whole.to("cpu", copy=True) if torch.is_tensor(whole) else whole
    return {"state": state, "param_groups": saved["param_groups"]} if rank == 0 else {}


def shard_optimizer_state(saved: dict, opt: torch.optim.Optimizer) -> dict:
    """A checkpoint's whole-tensor AdamW state_dict (written with or without --shard) cut into
    this rank's slices of opt's sharded parameters, for opt.load_state_dict."""
    params = [p for group in opt.param_groups for p in group["params"]]
    state = {}
    for i, per_param in saved["state"].items():
        p = params[i]
        state[i] = dict(per_param)
        for key, value in per_param.items():
            if isinstance(p, DTensor) and torch.is_tensor(value) and value.shape == p.shape:   # a moment, not the step
                mesh = p.device_mesh
                part = local_slice(value, mesh.get_local_rank(), mesh.size()).to(p.to_local().device)
                state[i][key] = DTensor.from_local(part, mesh, p.placements, shape=p.shape, stride=p.stride())
    return {"state": state, "param_groups": saved["param_groups"]}


def whole_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_'s result as a plain tensor: over sharded gradients it is a DTensor whose
    value is the norm over every rank's slices."""
    return norm.full_tensor() if DTensor is not None and isinstance(norm, DTensor) else norm
