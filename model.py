"""The decoder-only transformer of the Qwen2 and Llama families, with HF checkpoints in and out.

    from model import Transformer
    m = Transformer.from_pretrained("DeepSeek-R1-Distill-Qwen-1.5B", device="cuda")
    logits = m(input_ids)                       # (B, T, vocab)
    m.save_pretrained("out/")                   # transformers' AutoModelForCausalLM loads it

One forward serves training, prefill and decode:

    m(ids, positions=pos, cache=kv)             # sample.py owns the KV cache object
    m(ids, positions=pos, seq_lens=[5, 9, 2])   # padding-free packing: 3 sequences in one row
    h = m(ids, return_hidden=True)              # final-normed hidden states, no lm_head
    logp, ent = m.token_logprobs(h, targets)    # vocab-chunked, never a [T, vocab] fp32 tensor

Parameter names mirror transformers' (embed_tokens, layers.N.self_attn.q_proj, mlp.gate_proj,
input_layernorm, norm, lm_head), so loading a checkpoint is "strip the `model.` prefix and
load_state_dict(strict, assign) on the meta device". Deliberately left out: rope scaling
(llama3, yarn, linear, dynamic), sliding-window attention, dropout, MoE, multimodal towers.
Each of these is refused by name when a config asks for it. A folder that cannot be loaded
(no folder, a missing, malformed or mistyped config.json, a truncated safetensors file, a
missing shard, tensors that do not fit the config) is a ModelFileError: one line naming the
file and what is wrong.
"""
import codecs
import json
import math
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class ModelFileError(ValueError):
    """A model folder that cannot be loaded: the message is one line naming the file and what
    is wrong with it. Entry points print it as it is, without a traceback."""


def one_line(e: BaseException) -> str:
    """An exception's text on one line: library errors (safetensors, pyarrow) may span several."""
    return " ".join(str(e).split()) or type(e).__name__


def model_folder(path) -> str:
    """path as a string when it is a folder, else ModelFileError saying what it is instead."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such folder (expected an HF model folder)")
    if not os.path.isdir(path):
        raise ModelFileError(f"{path}: is a file, not a folder (expected an HF model folder)")
    return path


def read_json(path: str) -> dict:
    """A model folder's JSON file as a dict, or ModelFileError naming the file and, for bad
    syntax, the line and column as an editor counts them."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        # utf-8-sig: a byte-order mark some Windows editors add is not an error
        obj = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        start = e.start + (3 if raw.startswith(codecs.BOM_UTF8) else 0)   # e counts after the BOM
        line = raw.count(b"\n", 0, start) + 1
        raise ModelFileError(f"{path}:{line}: not UTF-8 text (byte offset {start}: {e.reason})") from None
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path}: expected a JSON object {{...}}, found a {type(obj).__name__}")
    return obj


# ----------------------------------------------------------------------------- config

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)   # JSON true is not a layer count


def _is_size(v) -> bool:
    return _is_int(v) and v >= 1


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_bool(v) -> bool:
    return isinstance(v, bool)


def _is_str(v) -> bool:
    return isinstance(v, str)


def _is_dict(v) -> bool:
    return isinstance(v, dict)


def _is_ids(v) -> bool:
    return _is_int(v) or (isinstance(v, list) and all(_is_int(i) for i in v))


# config.json keys that from_hf reads, and what each must hold when present and not null. A
# wrong type is refused here by name; past this point it would surface as a TypeError or a
# tensor-shape error deep inside model construction, far from the file that caused it.
_CONFIG_TYPES = {
    "vocab_size": ("a positive integer", _is_size),
    "hidden_size": ("a positive integer", _is_size),
    "intermediate_size": ("a positive integer", _is_size),
    "num_hidden_layers": ("a positive integer", _is_size),
    "num_attention_heads": ("a positive integer", _is_size),
    "num_key_value_heads": ("a positive integer", _is_size),
    "head_dim": ("a positive integer", _is_size),
    "max_position_embeddings": ("a positive integer", _is_size),
    "rms_norm_eps": ("a number", _is_number),
    "rope_theta": ("a number", _is_number),
    "tie_word_embeddings": ("true or false", _is_bool),
    "attention_bias": ("true or false", _is_bool),
    "mlp_bias": ("true or false", _is_bool),
    "torch_dtype": ("a string", _is_str),
    "dtype": ("a string", _is_str),
    "rope_scaling": ("an object", _is_dict),
    "rope_parameters": ("an object", _is_dict),
    "bos_token_id": ("an integer", _is_int),
    "eos_token_id": ("an integer or a list of integers", _is_ids),
}
_REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def _shown(value) -> str:
    """A config value as config.json writes it (JSON), cut short for a one-line message."""
    return json.dumps(value, default=repr)[:80]


def _check_config_types(d: dict, where: str) -> None:
    """Refuse a missing required key or a value of the wrong type, naming the key and value."""
    for key in _REQUIRED_KEYS:
        if d.get(key) is None:
            raise ModelFileError(f"{where}: {key} is missing (it must be {_CONFIG_TYPES[key][0]})")
    for key, (kind, ok) in _CONFIG_TYPES.items():
        value = d.get(key)
        if value is not None and not ok(value):
            raise ModelFileError(f"{where}: {key} must be {kind}, found {_shown(value)}")


@dataclass
class ModelConfig:
    model_type: str = "qwen2"            # "qwen2" or "llama"
    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960        # SwiGLU inner width
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2         # GQA: each KV head serves heads / kv_heads query heads
    head_dim: int = 0                    # 0 -> hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = False    # lm_head shares embed_tokens' weight
    attention_bias: bool = True          # q/k/v (Qwen2) or q/k/v/o (Llama) carry a bias
    mlp_bias: bool = False               # Llama only
    torch_dtype: str = "bfloat16"        # the checkpoint's dtype, the default when loading
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)  # the ids that end a generation

    def __post_init__(self):
        if self.head_dim == 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")

    @classmethod
    def from_hf(cls, d: dict, where: str = "config.json") -> "ModelConfig":
        """Read the keys we use from an HF config dict (transformers 4.x or 5.x layout). What is
        missing, mistyped or not implemented is a ModelFileError naming `where` and the key."""
        mt = d.get("model_type")
        if mt not in ("qwen2", "llama"):
            raise ModelFileError(f"{where}: model_type {mt!r} is not implemented (qwen2 and llama are)")
        _check_config_types(d, where)
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ModelFileError(f"{where}: hidden_act {act!r} is not implemented (silu is)")
        if mt == "qwen2" and d.get("use_sliding_window"):
            raise ModelFileError(f"{where}: use_sliding_window=true is not implemented")
        # transformers 5 folds rope_theta and rope_scaling into rope_parameters.
        rope = dict(d.get("rope_parameters") or {})
        scaling = d.get("rope_scaling") or rope
        kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
        if kind != "default":
            raise ModelFileError(f"{where}: rope_scaling type {kind!r} is not implemented "
                                 "(only plain RoPE with rope_theta is)")
        theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
        eos = _id_list(d.get("eos_token_id"))
        dtype = d.get("torch_dtype") or d.get("dtype") or "float32"
        if dtype not in _DTYPES:
            raise ModelFileError(f"{where}: dtype {dtype!r} is not one of {sorted(_DTYPES)}")
        if not _is_number(theta):
            raise ModelFileError(f"{where}: rope_theta must be a number, found {_shown(theta)}")
        try:
            return cls(
                model_type=mt, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
                num_attention_heads=d["num_attention_heads"],
                num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
                head_dim=d.get("head_dim") or 0, rms_norm_eps=d.get("rms_norm_eps", 1e-6),
                rope_theta=float(theta), max_position_embeddings=d.get("max_position_embeddings", 4096),
                tie_word_embeddings=d.get("tie_word_embeddings", mt == "llama"),
                attention_bias=True if mt == "qwen2" else d.get("attention_bias", False),
                mlp_bias=False if mt == "qwen2" else d.get("mlp_bias", False),
                torch_dtype=dtype, bos_token_id=d.get("bos_token_id"), eos_token_id=eos)
        except ValueError as e:   # __post_init__'s checks across keys (heads vs kv heads)
            raise ModelFileError(f"{where}: {e}") from None

    def to_hf(self) -> dict:
        """The config.json transformers expects for this architecture."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        eos = d.pop("eos_token_id")
        d["eos_token_id"] = eos[0] if len(eos) == 1 else (eos or None)
        d["architectures"] = ["Qwen2ForCausalLM" if self.model_type == "qwen2" else "LlamaForCausalLM"]
        d.update(hidden_act="silu", rope_scaling=None, attention_dropout=0.0)
        if self.model_type == "qwen2":
            d.pop("attention_bias"), d.pop("mlp_bias")
            d.update(use_sliding_window=False, sliding_window=None)
        return d


# ----------------------------------------------------------------------------- layers

# x86 CPUs without bf16 dot-product instructions (AVX512-BF16 or AMX) run a bf16 matmul through
# an emulation that was 4x slower, on a 2-core AVX2 EPYC, than upcasting both operands to fp32
# and multiplying there. The arithmetic is the same (a bf16 matmul accumulates in fp32 and
# rounds its output to bf16 either way; 99.99% of outputs were bit-identical, the rest one bf16
# unit apart from summation order), so Linear takes the fp32 route on such CPUs.
_SLOW_BF16_CPU = platform.machine().lower() in ("x86_64", "amd64") and not (
    getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)()
    or getattr(torch.cpu, "_is_amx_tile_supported", lambda: True)())


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state-dict names) with the CPU bf16 route above, taken
    without autograd only: in training its fp32 weight copies would be kept for backward."""

    def forward(self, x):
        if not (_SLOW_BF16_CPU and x.dtype == torch.bfloat16 and x.device.type == "cpu") or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        xf = x.float()
        # Upcast ~1M weights (4 MiB) at a time, so each slice is multiplied while still in cache.
        rows = max(1, 2**20 // self.in_features)
        y = torch.cat([F.linear(xf, w.float()) for w in self.weight.split(rows)], dim=-1)
        return (y if self.bias is None else y + self.bias.float()).to(torch.bfloat16)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # Normalise in fp32, cast back, then scale: the order the released checkpoints assume.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(positions, head_dim: int, theta: float, dtype):
    """cos, sin of shape (B, T, head_dim) for integer positions (B, T); halves repeated (HF layout)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device,
                                            dtype=torch.float32) / head_dim)
    ang = positions.float()[..., None] * inv_freq                      # (B, T, D/2)
    ang = torch.cat([ang, ang], dim=-1)                                 # (B, T, D)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x (B, H, T, D); rotates pairs (i, i + D/2), as transformers' rotate_half does."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class Packing:
    """How the sequences of a packed row (1, T) are laid out, worked out once per forward.

    Attention must stay inside each sequence (a block-diagonal causal mask). When lengths are
    similar, the row is scattered into a right-padded (S, L) grid and attended in one causal
    call (padding sits after each sequence, so no real query sees it); when they are ragged
    enough that the grid would be over twice the row, one causal call per sequence is cheaper.
    """

    def __init__(self, seq_lens, device):
        self.seq_lens, self.S, self.L = list(seq_lens), len(seq_lens), max(seq_lens)
        self.grid = self.S * self.L <= 2 * sum(self.seq_lens)
        if self.grid:  # index of each row token in the flattened (S * L) grid
            self.index = torch.cat([torch.arange(n, device=device) + i * self.L
                                    for i, n in enumerate(self.seq_lens)])


def packed_attention(q, k, v, pack: Packing, gqa: bool):
    """q (1, H, T, D), k/v (1, Hkv, T, D) of a packed row -> (1, H, T, D)."""
    if not pack.grid:
        return torch.cat([F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=gqa)
                          for qs, ks, vs in zip(q.split(pack.seq_lens, 2), k.split(pack.seq_lens, 2),
                                                v.split(pack.seq_lens, 2))], dim=2)

    def to_grid(x):                                                    # (1, h, T, D) -> (S, h, L, D)
        g = x.new_zeros(x.shape[1], pack.S * pack.L, x.shape[3])
        g[:, pack.index] = x[0]
        return g.view(x.shape[1], pack.S, pack.L, x.shape[3]).transpose(0, 1)

    y = F.scaled_dot_product_attention(to_grid(q), to_grid(k), to_grid(v), is_causal=True, enable_gqa=gqa)
    return y.transpose(0, 1).reshape(q.shape[1], pack.S * pack.L, q.shape[3])[:, pack.index][None]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        qkv_bias, o_bias = cfg.attention_bias, cfg.attention_bias and cfg.model_type == "llama"
        self.q_proj = Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=qkv_bias)
        self.v_proj = Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=qkv_bias)
        self.o_proj = Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=o_bias)

    def forward(self, x, cos, sin, cache=None, pack=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)     # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        # Under autocast with fp32 weights, cos/sin are fp32 and would promote q, k (bf16 from
        # the projections) to fp32; SDPA casts them back anyway, so do it before the copies.
        q, k = apply_rope(q, cos, sin).to(v.dtype), apply_rope(k, cos, sin).to(v.dtype)
        # enable_gqa lets SDPA share each KV head across its query heads without copying K/V.
        gqa = self.n_kv != self.n_heads
        if cache is not None:
            # The cache stores the new K/V and returns what this step attends to, (B, Hkv, S, D),
            # with a boolean mask (B, 1, T, S) (True = attend) that encodes causality and lengths,
            # or None for plain causal attention over them (T == S: a prefill).
            k, v, mask = cache.update(self.layer_idx, k, v)
            if gqa and T == 1 and not x.is_cuda:
                # CPU decode: fold each KV head's query heads into the query axis, (B, Hkv, H/Hkv, D).
                # Same result as enable_gqa, and each KV head is read once: on a 2-core EPYC the
                # R1-1.5B shape's attention at batch 64, context 1,024 took 7.0 ms folded against
                # 11.1 with enable_gqa. On an H200 the masked enable_gqa call (cuDNN) was the
                # faster one: 0.28 against 0.38 ms per layer at batch 256, context 4,352.
                y = F.scaled_dot_product_attention(q.reshape(B, self.n_kv, -1, self.head_dim), k, v,
                                                   attn_mask=mask).reshape(B, self.n_heads, 1, self.head_dim)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                   enable_gqa=gqa)
        elif pack is not None:
            y = packed_attention(q, k, v, pack, gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        b = cfg.mlp_bias
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=b)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=b)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=b)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None, pack=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, pack)
        return x + self.mlp(self.post_attention_layernorm(x))


# ----------------------------------------------------------------------------- model

class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.gradient_checkpointing = False  # recompute each layer in backward (training only)
        if not self.embed_tokens.weight.is_meta:  # from_pretrained builds on meta: nothing to fill
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        # Random weights for benchmarks and toy models; real runs load a checkpoint.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, input_ids, positions=None, cache=None, seq_lens=None, return_hidden=False):
        """input_ids (B, T) -> logits (B, T, vocab), or final-normed hidden (B, T, C).

        positions (B, T): each token's position (default 0..T-1); packed rows and cached
        decoding pass their own. cache: a KV cache object with update(layer_idx, k, v) (see
        sample.py). seq_lens: lengths of the sequences packed into a single row (B == 1).
        """
        B, T = input_ids.shape
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        if seq_lens is not None and (B != 1 or sum(seq_lens) != T):
            raise ValueError(f"seq_lens {list(seq_lens)} must sum to T={T} in a single row (B={B})")
        pack = Packing(seq_lens, input_ids.device) if seq_lens is not None else None
        x = self.embed_tokens(input_ids)                                   # (B, T, C)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, cache, pack, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cache, pack)
        x = self.norm(x)
        return x if return_hidden else self.lm_head(x)

    def token_logprobs(self, hidden, targets, temperature: float = 1.0, chunk_size: int = 4096,
                       with_entropy: bool = False):
        """log p(targets) under softmax(lm_head(hidden) / temperature), and optionally entropy.

        hidden (..., C) from forward(return_hidden=True), targets (...) int -> (...) fp32 each.
        The vocab projection runs chunk_size tokens at a time and each chunk is recomputed in
        backward, so at most one (chunk_size, vocab) fp32 block exists at once, not (T, vocab).
        """
        shape = targets.shape
        h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)

        def chunk(hc, tc):
            logits = self.lm_head(hc).float() / temperature                # (N, V)
            lse = torch.logsumexp(logits, dim=-1)
            logp = logits.gather(-1, tc[:, None]).squeeze(-1) - lse
            if not with_entropy:
                return logp, logp
            p = torch.softmax(logits, dim=-1)
            return logp, lse - (p * logits).sum(-1)                        # H = lse - E_p[logit]

        outs = []
        for hc, tc in zip(h.split(chunk_size), t.split(chunk_size)):
            if torch.is_grad_enabled() and hc.requires_grad:
                outs.append(checkpoint(chunk, hc, tc, use_reentrant=False))
            else:
                outs.append(chunk(hc, tc))
        logp = torch.cat([o[0] for o in outs]).view(shape)
        return (logp, torch.cat([o[1] for o in outs]).view(shape)) if with_entropy else logp

    # ------------------------------------------------------------------------- checkpoint IO

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None) -> "Transformer":
        """Load an HF folder: config.json + model.safetensors, or sharded safetensors + index.

        Parameters are created on the meta device and the loaded tensors assigned in place,
        so the weights exist once in memory. dtype defaults to the checkpoint's torch_dtype.
        A folder that cannot be loaded is a one-line ModelFileError naming the file at fault.
        """
        cfg = read_config(path)
        dtype = dtype or _DTYPES[cfg.torch_dtype]
        with torch.device("meta"):
            model = cls(cfg)
        state = dict(read_weights(path, model, torch.device(device or "cpu"), dtype))
        if cfg.tie_word_embeddings:
            state["lm_head.weight"] = state["embed_tokens.weight"]
        model.load_state_dict(state, strict=True, assign=True)
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.embed_tokens.weight  # assign replaced the shared Parameter
        return model

    def save_pretrained(self, path, max_shard_bytes: int = 5 * 2**30, state_dict: dict | None = None):
        """Write config.json and safetensors (sharded with an index above max_shard_bytes).

        state_dict: the weights to write, named as this model's state_dict() names them; by
        default its own. A model sharded over ranks (fsdp.py) passes the whole tensors gathered
        from them, as transformers' save_pretrained(state_dict=...) takes them. Each file is
        written under a temporary name and renamed, so a crash never leaves a half-written file
        under a real name.
        """
        from safetensors.torch import save_file
        os.makedirs(path, exist_ok=True)
        own = self.state_dict() if state_dict is None else state_dict
        cfg = self.config.to_hf()
        cfg["torch_dtype"] = {v: k for k, v in _DTYPES.items()}[own["embed_tokens.weight"].dtype]
        state = {("" if k == "lm_head.weight" else "model.") + k: v.detach().contiguous().cpu()
                 for k, v in own.items()
                 if not (k == "lm_head.weight" and self.config.tie_word_embeddings)}
        shards, cur, size = [], {}, 0
        for k, v in state.items():
            nbytes = v.numel() * v.element_size()
            if cur and size + nbytes > max_shard_bytes:
                shards.append(cur)
                cur, size = {}, 0
            cur[k], size = v, size + nbytes
        shards.append(cur)
        names = (["model.safetensors"] if len(shards) == 1 else
                 [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
        for name, shard in zip(names, shards):
            _atomic(os.path.join(path, name), lambda tmp: save_file(shard, tmp, metadata={"format": "pt"}))
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
                     "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
            _atomic(os.path.join(path, "model.safetensors.index.json"), lambda tmp: _dump(index, tmp))
        _atomic(os.path.join(path, "config.json"), lambda tmp: _dump(cfg, tmp))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _id_list(value) -> list[int]:
    """eos_token_id as a list: null is none, an int is one (checked by _is_ids beforehand)."""
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def read_generation_eos(path) -> list[int]:
    """The eos ids of a model folder's generation_config.json (what transformers' generate() stops
    at; an int or a list), [] without the file; a malformed value is ModelFileError naming it."""
    where = os.path.join(model_folder(path), "generation_config.json")
    if not os.path.isfile(where):
        return []
    eos = read_json(where).get("eos_token_id")
    if eos is not None and not _is_ids(eos):
        raise ModelFileError(f"{where}: eos_token_id must be {_CONFIG_TYPES['eos_token_id'][0]}, found {_shown(eos)}")
    return _id_list(eos)


def read_config(path) -> ModelConfig:
    """The ModelConfig of a model folder's config.json, or ModelFileError naming what is wrong."""
    where = os.path.join(model_folder(path), "config.json")
    if not os.path.isfile(where):
        raise ModelFileError(f"{where}: no config.json (expected an HF model folder)")
    return ModelConfig.from_hf(read_json(where), where=where)


def _weight_files(path: str) -> tuple[list[str], str]:
    """The safetensors files of a folder, and the file to name when their contents are wrong
    (model.safetensors, or the index of a sharded checkpoint)."""
    single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return [single], single
    if not os.path.isfile(index):
        raise ModelFileError(f"{path}: neither model.safetensors nor model.safetensors.index.json "
                             "(only safetensors checkpoints are read)")
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(s, str) for s in weight_map.values()):
        raise ModelFileError(f"{index}: no \"weight_map\" object mapping tensor names to shard files")
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not os.path.isfile(os.path.join(path, s))]
    if missing:
        raise ModelFileError(f"{index}: names shards that are not there: {missing[:5]} "
                             f"({len(missing)} of {len(shards)} missing)")
    return [os.path.join(path, s) for s in shards], index


def read_weights(path, model: nn.Module, device, dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) of an HF folder's weights for `model` (built from its config.json, on
    any device, the meta device included), one tensor at a time: names as model.state_dict()
    gives them (no `model.` prefix), each tensor in dtype on device. Names and shapes are checked
    against the model's from the files' headers before any tensor is read, a ModelFileError
    naming the file. A tied checkpoint's stored lm_head copy is skipped (the tie uses
    embed_tokens), so a tied model gets no lm_head.weight."""
    files, weights = _weight_files(os.fspath(path))
    tied = model.config.tie_word_embeddings

    def ours(hf_key):
        key = hf_key.removeprefix("model.")
        return None if key == "lm_head.weight" and tied else key
    shapes = {ours(k): shape for k, shape in _header_shapes(files) if ours(k)}
    _check_state(shapes, model, weights)
    for hf_key, tensor in _read_safetensors(files, device):
        if ours(hf_key):
            yield ours(hf_key), tensor.to(dtype)


def _check_state(shapes: dict, model: nn.Module, weights: str) -> None:
    """Refuse tensors whose names or shapes ({name: shape}) do not fit the architecture
    config.json describes, naming them (load_state_dict would say it in a multi-line
    RuntimeError)."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        want.pop("lm_head.weight")
    missing, unexpected = sorted(set(want) - set(shapes)), sorted(set(shapes) - set(want))
    if missing or unexpected:
        raise ModelFileError(f"{weights}: checkpoint does not match the {model.config.model_type} "
                             f"architecture: missing keys {missing[:10]}{'...' if len(missing) > 10 else ''}, "
                             f"unexpected keys {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}")
    wrong = [k for k in sorted(want) if tuple(shapes[k]) != want[k]]
    if wrong:
        k = wrong[0]
        raise ModelFileError(f"{weights}: tensor {k} has shape {list(shapes[k])} but config.json "
                             f"implies {list(want[k])}" + (f" ({len(wrong) - 1} more differ)" if len(wrong) > 1 else ""))


def _header_shapes(files) -> Iterator[tuple[str, tuple]]:
    """(name, shape) of every tensor of safetensors files, from their headers alone."""
    from safetensors import SafetensorError, safe_open
    for fn in files:
        try:
            with safe_open(fn, framework="pt") as f:
                for k in f.keys():
                    yield k, tuple(f.get_slice(k).get_shape())
        except (SafetensorError, OSError) as e:
            raise ModelFileError(f"{fn}: not a readable safetensors file ({one_line(e)})") from None


def _read_safetensors(files, device, batch_bytes=2**28):
    """Yield (name, tensor) from safetensors files, reopening every ~batch_bytes.

    Tensors come from a private memory map. When they are converted to another dtype the
    source pages stay resident until the map is closed, so the files are reopened in batches:
    the peak stays near one copy of the weights instead of the checkpoint plus the result.
    A truncated or corrupt file is a ModelFileError naming it (safetensors' own error names
    no file).
    """
    from safetensors import SafetensorError, safe_open
    for fn in files:
        try:
            with safe_open(fn, framework="pt", device=str(device)) as f:
                keys, batches, size = list(f.keys()), [[]], 0
                for k in keys:
                    if size > batch_bytes:
                        batches.append([])
                        size = 0
                    batches[-1].append(k)
                    size += math.prod(f.get_slice(k).get_shape()) * 4  # an upper bound per element
            for batch in batches:
                with safe_open(fn, framework="pt", device=str(device)) as f:
                    for k in batch:
                        yield k, f.get_tensor(k)
        except (SafetensorError, OSError) as e:
            raise ModelFileError(f"{fn}: not a readable safetensors file ({one_line(e)})") from None


def _dump(obj, fn):
    with open(fn, "w") as f:
        json.dump(obj, f, indent=2)


def _atomic(fn, write):
    tmp = fn + ".tmp"
    write(tmp)
    os.replace(tmp, fn)
