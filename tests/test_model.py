"""model.py against transformers (an independent implementation) on tiny random configs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import ModelConfig, ModelFileError, Transformer

REPO = Path(__file__).resolve().parents[1]

QWEN2 = dict(model_type="qwen2", vocab_size=300, hidden_size=64, intermediate_size=128,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             tie_word_embeddings=False, rope_theta=10000.0, max_position_embeddings=512)
LLAMA = dict(model_type="llama", vocab_size=300, hidden_size=64, intermediate_size=96,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=24,
             tie_word_embeddings=True, rope_theta=50000.0, max_position_embeddings=512)


def hf_model(cfg: dict, seed=0):
    """A transformers model with random weights large enough to make every term matter."""
    transformers = pytest.importorskip("transformers")
    cls = transformers.Qwen2Config if cfg["model_type"] == "qwen2" else transformers.LlamaConfig
    hf = transformers.AutoModelForCausalLM.from_config(cls(**cfg), dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.ndim == 1 and p.shape[0] == 64 else 0))
    return hf.eval()


@pytest.fixture(params=[QWEN2, LLAMA], ids=["qwen2", "llama"])
def pair(request, tmp_path):
    hf = hf_model(request.param)
    hf.save_pretrained(tmp_path)
    return hf, Transformer.from_pretrained(tmp_path).eval(), tmp_path


def test_logits_match_transformers(pair):
    hf, m, _ = pair
    x = torch.randint(0, 300, (3, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = hf(x).logits, m(x)
    assert out.shape == (3, 37, 300)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_structure_of_both_families(pair):
    hf, m, _ = pair
    c = m.config
    attn = m.layers[0].self_attn
    assert (attn.q_proj.bias is not None) == (c.model_type == "qwen2")
    assert attn.o_proj.bias is None
    assert attn.k_proj.out_features == c.num_key_value_heads * c.head_dim  # K/V kept at GQA width
    assert (m.lm_head.weight is m.embed_tokens.weight) == c.tie_word_embeddings
    assert m.num_params() == sum(p.numel() for p in hf.parameters())


def test_save_pretrained_loads_in_transformers(pair, tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors import safe_open
    _, m, hf_dir = pair
    out = tmp_path / "saved"
    m.save_pretrained(out)
    # the tensor names transformers itself writes (its loader forgives some misnamed keys; other readers may not)
    names = [set(safe_open(d / "model.safetensors", framework="pt").keys()) for d in (out, hf_dir)]
    assert names[0] == names[1]
    hf2 = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, 300, (2, 21))
    with torch.no_grad():
        torch.testing.assert_close(hf2(x).logits, m(x), rtol=0, atol=0)
    assert not list(out.glob("*.tmp"))


def test_sharded_round_trip(pair, tmp_path):
    _, m, _ = pair
    out = tmp_path / "sharded"
    m.save_pretrained(out, max_shard_bytes=40_000)
    shards = sorted(p.name for p in out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    m2 = Transformer.from_pretrained(out)
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def test_dtype_defaults_to_checkpoint_and_can_be_overridden(pair, tmp_path):
    _, m, _ = pair
    m.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16/config.json").read_text())["torch_dtype"] == "bfloat16"
    assert Transformer.from_pretrained(tmp_path / "bf16").lm_head.weight.dtype == torch.bfloat16
    assert Transformer.from_pretrained(tmp_path / "bf16", dtype=torch.float32).lm_head.weight.dtype == torch.float32


@pytest.mark.parametrize("lens", [(5, 11, 3), (30, 2, 1), (7,)], ids=["grid", "per-sequence", "single"])
def test_packed_rows_equal_separate_sequences(lens):
    from model import Packing
    assert Packing(lens, "cpu").grid == (lens != (30, 2, 1))       # both attention paths are covered
    torch.manual_seed(0)
    m = Transformer(ModelConfig(**QWEN2)).eval()
    seqs = [torch.randint(0, 300, (n,)) for n in lens]
    packed = torch.cat(seqs)[None]
    pos = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    with torch.no_grad():
        out = m(packed, positions=pos, seq_lens=list(lens))
        ref = torch.cat([m(s[None]) for s in seqs], dim=1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # and gradients flow through the packed path as through separate sequences
    g1 = torch.autograd.grad(m(packed, positions=pos, seq_lens=list(lens)).square().sum(), m.layers[0].self_attn.q_proj.weight)[0]
    g2 = torch.autograd.grad(sum(m(s[None]).square().sum() for s in seqs), m.layers[0].self_attn.q_proj.weight)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)


def test_packed_rows_reject_bad_lengths():
    m = Transformer(ModelConfig(**QWEN2))
    packed, pos = torch.zeros(1, 19, dtype=torch.long), torch.arange(19)[None]
    with pytest.raises(ValueError, match=r"seq_lens \[5, 11\] must sum to T=19"):
        m(packed, positions=pos, seq_lens=[5, 11])


def test_token_logprobs_chunked_equals_full_log_softmax():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(**LLAMA))
    x = torch.randint(0, 300, (2, 13))
    tgt = torch.randint(0, 300, (2, 13))
    h = m(x, return_hidden=True)
    logp, ent = m.token_logprobs(h, tgt, temperature=0.7, chunk_size=5, with_entropy=True)
    full = torch.log_softmax(m(x).float() / 0.7, -1)
    torch.testing.assert_close(logp, full.gather(-1, tgt[..., None])[..., 0])
    torch.testing.assert_close(ent, -(full.exp() * full).sum(-1))
    # Gradients through the recomputed chunks equal those of the unchunked expression.
    g1 = torch.autograd.grad(logp.sum() + ent.sum(), m.lm_head.weight)[0]
    g2 = torch.autograd.grad((full.gather(-1, tgt[..., None]).sum() - (full.exp() * full).sum()),
                             m.lm_head.weight)[0]
    torch.testing.assert_close(g1, g2)


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    """Same gradients with and without checkpointing, and the checkpointed run really goes
    through torch.utils.checkpoint once per layer (else the comparison proves nothing)."""
    import model
    calls = []

    def counted(fn, *args, **kw):
        calls.append(fn)
        return real(fn, *args, **kw)

    real = model.checkpoint
    monkeypatch.setattr(model, "checkpoint", counted)
    torch.manual_seed(0)
    m = Transformer(ModelConfig(**QWEN2)).train()
    x = torch.randint(0, 300, (2, 16))
    grads, layer_calls = [], []
    for ckpt in (False, True):
        m.gradient_checkpointing = ckpt
        m.zero_grad()
        calls.clear()
        m(x).float().logsumexp(-1).mean().backward()
        layer_calls.append(sum(isinstance(fn, model.DecoderLayer) for fn in calls))
        grads.append([p.grad.clone() for p in m.parameters()])
    assert layer_calls == [0, QWEN2["num_hidden_layers"]]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- config and errors

def write_ckpt(path, cfg: dict, state=None):
    from safetensors.torch import save_file
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    if state is not None:
        save_file(state, path / "model.safetensors")
    return path


def test_config_reads_transformers_4_and_5_layouts():
    v4 = dict(QWEN2, rope_theta=1e6, torch_dtype="bfloat16", eos_token_id=[7, 8])
    v5 = {k: v for k, v in QWEN2.items() if k != "rope_theta"}
    v5.update(rope_parameters={"rope_type": "default", "rope_theta": 1e6}, dtype="bfloat16", eos_token_id=7)
    a, b = ModelConfig.from_hf(v4), ModelConfig.from_hf(v5)
    assert a.rope_theta == b.rope_theta == 1e6 and a.torch_dtype == b.torch_dtype == "bfloat16"
    assert a.eos_token_id == [7, 8] and b.eos_token_id == [7]
    assert ModelConfig.from_hf(dict(LLAMA)).head_dim == 24
    assert ModelConfig.from_hf({k: v for k, v in QWEN2.items() if k != "head_dim"}).head_dim == 16


@pytest.mark.parametrize("change,message", [
    ({"model_type": "mistral"}, "model_type 'mistral' is not implemented"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling type 'yarn' is not implemented"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope_scaling type 'llama3'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not implemented"),
    ({"use_sliding_window": True}, "use_sliding_window=true is not implemented"),
    ({"torch_dtype": "float64"}, "dtype 'float64' is not one of"),
    ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads=3"),
])
def test_refused_configs_are_named(tmp_path, change, message):
    write_ckpt(tmp_path, dict(QWEN2, **change))
    with pytest.raises(ModelFileError, match=message):
        Transformer.from_pretrained(tmp_path)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    torch.manual_seed(0)
    state = {"model." + k: v for k, v in Transformer(ModelConfig(**QWEN2)).state_dict().items()
             if k != "lm_head.weight"}
    state.pop("model.layers.1.mlp.up_proj.weight")
    state["model.layers.0.self_attn.rotary.inv_freq"] = torch.zeros(4)
    write_ckpt(tmp_path, QWEN2, state)
    with pytest.raises(ModelFileError) as e:
        Transformer.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "missing keys ['layers.1.mlp.up_proj.weight', 'lm_head.weight']" in msg
    assert "unexpected keys ['layers.0.self_attn.rotary.inv_freq']" in msg


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ModelFileError, match="no config.json"):
        Transformer.from_pretrained(tmp_path)
    write_ckpt(tmp_path, QWEN2)
    with pytest.raises(ModelFileError, match="neither model.safetensors nor"):
        Transformer.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(ModelFileError, match="names shards that are not there"):
        Transformer.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- a checkpoint of the real size
# (real pretrained checkpoints against transformers: tests/test_real_models.py)

@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_loading_a_1p5b_checkpoint_holds_the_weights_once(tmp_path_factory, dtype):
    """Peak host memory of from_pretrained, weights touched, < 1.3x their bytes (-m slow)."""
    ckpt = tmp_path_factory.getbasetemp() / "r1_1p5b"
    if not (ckpt / "config.json").exists():
        cfg = json.loads((REPO / "tests" / "r1_distill_1p5b_config.json").read_text())
        with torch.device("meta"):
            m = Transformer(ModelConfig.from_hf(cfg))
        m.to_empty(device="cpu").to(torch.bfloat16).save_pretrained(ckpt)
        del m
    # VmHWM (not ru_maxrss, which survives exec) is this process's own peak resident size.
    script = f"""
import sys, torch
sys.path.insert(0, {str(REPO)!r})
from model import Transformer
hwm = lambda: [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
base = hwm()
m = Transformer.from_pretrained({str(ckpt)!r}, dtype=torch.{dtype})
with torch.no_grad():
    [p.sum() for p in m.parameters()]  # fault every page in
print(sum(p.numel() * p.element_size() for p in m.parameters()), hwm() - base)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    weights, peak = map(int, out.split())
    print(f"{dtype}: weights {weights / 2**30:.2f} GiB, peak {peak / 2**30:.2f} GiB, ratio {peak / weights:.3f}")
    assert peak / weights < 1.3


def test_cpu_bf16_linear_route_matches_bf16_matmul(monkeypatch):
    """On CPUs with emulated bf16 (model._SLOW_BF16_CPU), inference Linear multiplies in fp32 in
    weight slices: the fp32 product rounded to bf16, which is the bf16 matmul's result up to
    summation order (one bf16 unit); with autograd on it is the plain path."""
    import model
    monkeypatch.setattr(model, "_SLOW_BF16_CPU", True)
    torch.manual_seed(0)
    lin = model.Linear(3000, 700, bias=True).to(torch.bfloat16)     # 3000 inputs: slices of 349 rows
    x = torch.randn(5, 3, 3000).to(torch.bfloat16)
    real_linear, seen = model.F.linear, []

    def linear(inp, w, b=None):
        seen.append((inp.dtype, w.shape[0]))
        return real_linear(inp, w, b)

    monkeypatch.setattr(model.F, "linear", linear)
    with torch.no_grad():
        got = lin(x)
    monkeypatch.setattr(model.F, "linear", real_linear)
    assert seen == [(torch.float32, 349), (torch.float32, 349), (torch.float32, 2)]   # the fp32 route, sliced
    with torch.no_grad():
        ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
        exact = (x.float() @ lin.weight.float().T + lin.bias.float()).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and got.shape == (5, 3, 700)
    for want in (exact, ref):
        torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=1e-2)
    x.requires_grad_(True)
    lin(x).sum().backward()                                          # training: F.linear, grads flow
    assert x.grad is not None and x.grad.dtype == torch.bfloat16
