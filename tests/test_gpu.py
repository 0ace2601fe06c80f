"""The CUDA paths, each against the CPU path it must agree with (run with `pytest -m gpu` on a
machine with a GPU; skipped elsewhere): the decode step on the GPU (masked GQA attention, the
cache's windows, the sampling kernels), training log-probs under bf16 autocast with gradient
checkpointing, and train.py under torchrun on NCCL.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from model import ModelConfig, Transformer
from sample import generate
from test_sample import PROMPTS, tiny

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_cuda_sampler_logprobs_equal_a_cpu_forward(kind):
    """Sampled on the GPU (fp32, top-p, rows refilled and compacted), scored on the CPU by a plain
    forward over the whole sequence: the same log-probs. A wrong position, window or cache slot
    in the GPU decode step moves them by far more than fp32 rounding."""
    m = tiny(kind, seed=3)
    outs = generate(m.cuda(), PROMPTS, n=3, max_new_tokens=24, temperature=0.7, top_p=0.9, seed=0,
                    max_rows=4, check_every=5)
    m = m.cpu()
    for i, o in enumerate(outs):
        p = PROMPTS[i // 3]
        ids = torch.tensor([p + o.tokens])
        with torch.no_grad():
            h = m(ids, return_hidden=True)
            ref = m.token_logprobs(h[:, len(p) - 1:-1], ids[:, len(p):], temperature=0.7)
        torch.testing.assert_close(torch.tensor([o.logprobs]), ref, rtol=0, atol=1e-3)


def test_bf16_autocast_training_logprobs_close_to_fp32_cpu():
    """train.forward_logprobs on the GPU under bf16 autocast, gradient checkpointing and packed
    sequences, against fp32 on the CPU: close log-probs and entropies, finite non-zero gradients."""
    cfg = ModelConfig(model_type="qwen2", vocab_size=512, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, eos_token_id=[3])
    torch.manual_seed(0)
    m = Transformer(cfg).train()
    g = torch.Generator().manual_seed(0)
    mb = [train.Sequence(prompt=torch.randint(0, 512, (P,), generator=g).tolist(),
                          tokens=torch.randint(0, 512, (N,), generator=g).tolist()) for P, N in [(7, 30), (20, 5), (3, 60)]]
    cpu = torch.device("cpu")
    ref_lp, ref_ent = train.forward_logprobs(m, m, mb, 1.0, cpu, amp=False)
    m = m.cuda()
    m.gradient_checkpointing = True
    lp, ent = train.forward_logprobs(m, m, mb, 1.0, torch.device("cuda"), amp=True)
    assert lp.shape == ref_lp.shape == (95,)
    assert (lp.float().cpu() - ref_lp.detach()).abs().max() < 0.05
    assert (ent.float().cpu() - ref_ent.detach()).abs().max() < 0.05
    (-lp.mean() - 0.01 * ent.mean()).backward()
    grads = [p.grad for p in m.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0


def test_train_py_under_torchrun_on_nccl(tmp_path):
    """The toy for 2 GRPO steps in one NCCL process under torchrun: exits 0, one finite metrics
    row per step, a checkpoint that reloads."""
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--standalone",
                        str(REPO / "train.py"), "--out", str(out), "--steps", "2", "--sft-steps", "20",
                        "--eval-every", "0", "--save-every", "2"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [row["step"] for row in rows] == [1, 2]
    assert all(math.isfinite(row["loss"]) and math.isfinite(row["entropy"]) for row in rows)
    Transformer.from_pretrained(str(out / "checkpoints" / "step_000002"), device="cuda")
