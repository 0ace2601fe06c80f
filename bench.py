"""Generation tokens/s of sample.generate against transformers' generate(), in one process,
on the same weights, prompts and settings (sampling at T = 1, no top-k/top-p, fixed lengths:
stops ignored), and the ratio. Results go in BENCHMARKS.md.

    python bench.py --gpu                  # the GPU suite, one device, under 8 minutes, offline
    python bench.py --model /path/to/SmolLM2-135M-Instruct --batch 16 --new 256   # CPU target
    python bench.py --batch 16 --new 64    # CPU, the SmolLM2-135M shape with random weights
    python bench.py --train                # training fwd+bwd, 8,192 tokens, ours vs transformers
    python bench.py --grpo                 # one whole train.py GRPO step: sampling/grading/training

--gpu builds the DeepSeek-R1-Distill-Qwen-1.5B shape (R1_1P5B below, random weights, bf16)
and runs: batch 64 and 256 with prompt 256 + 512 new (transformers, ours eager, ours with
CUDA graphs), then batch 256 with prompt 256 + 4,096 new (ours only: transformers would
take over 5 minutes there; --hf-long adds it). For each run of ours it prints the decode
steps' achieved bytes/s (weights + the KV actually attended, per step / step time) as a
fraction of a device-to-device copy timed in the same run, and which SDPA kernel the decode
attention gets (and its time against the query heads folded per KV head). It first checks
that CUDA-graph and eager greedy outputs agree.
Left out: prefill-only and latency benchmarks, other models, multi-GPU.
"""
import argparse
import datetime
import json
import os
import tempfile
import time

import torch

from model import ModelConfig, Transformer
from sample import KVCache, generate

R1_1P5B = dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
               num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
               rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=131072,
               tie_word_embeddings=False, eos_token_id=[151643], torch_dtype="bfloat16")
SMOL_135M = dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                 num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                 rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
                 tie_word_embeddings=True, attention_bias=False, eos_token_id=[2])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(args, device, dtype):
    """Our model and transformers' model with identical weights (random unless --model)."""
    from transformers import AutoModelForCausalLM
    if args.model:
        ours = Transformer.from_pretrained(args.model, device=device, dtype=dtype).eval()
        hf = None if args.skip_hf else AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    else:
        cfg = ModelConfig(**(R1_1P5B if args.gpu else SMOL_135M))
        torch.manual_seed(0)
        with torch.device(device):
            ours = Transformer(cfg).to(dtype).eval()
        hf = None
        if not args.skip_hf:
            with tempfile.TemporaryDirectory() as tmp:   # transformers reads our HF-format save
                ours.save_pretrained(tmp)
                hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype)
    return ours, hf if hf is None else hf.to(device).eval()


def copy_bandwidth(device) -> float:
    """Bytes/s of a 1 GiB device-to-device copy (read + write counted)."""
    a = torch.empty(2**30, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    t = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    sync(device)
    return 2 * 10 * a.numel() / (time.perf_counter() - t)


def sdpa_kernel_for_decode(m, rows, ctx, device):
    """Which SDPA backend model.py's CUDA decode attention selects: (rows, H, 1, D) queries
    against a (rows, Hkv, ctx, D) cache with a length mask, enable_gqa."""
    c = m.config
    H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    try:
        q = torch.zeros(rows, H, 1, D, device=device, dtype=torch.bfloat16)
        k = torch.zeros(rows, Hkv, ctx, D, device=device, dtype=torch.bfloat16)
        mask = torch.ones(rows, 1, 1, ctx, dtype=torch.bool, device=device)
        choice = torch._fused_sdp_choice(q, k, k, attn_mask=mask, dropout_p=0.0, is_causal=False,
                                         scale=None, enable_gqa=H != Hkv)
        return torch.nn.attention.SDPBackend(choice).name
    except Exception as e:  # a private API: report, never fail the benchmark on it
        return f"unknown ({type(e).__name__})"


def attention_probe(m, rows, ctx, device):
    """ms per layer of one decode step's attention over a (rows, Hkv, ctx, D) cache with a length
    mask: as one enable_gqa call, and with each KV head's query heads folded into the query axis
    (plain attention, same result). model.py decodes with the first on CUDA, the second on CPU."""
    c = m.config
    H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    q = torch.randn(rows, H, 1, D, device=device, dtype=torch.bfloat16)
    k, v = (torch.randn(rows, Hkv, ctx, D, device=device, dtype=torch.bfloat16) for _ in "kv")
    mask = torch.arange(ctx, device=device) < torch.randint(ctx // 2, ctx + 1, (rows, 1, 1, 1), device=device)
    F = torch.nn.functional
    calls = [lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=H != Hkv),
             lambda: F.scaled_dot_product_attention(q.view(rows, Hkv, H // Hkv, D), k, v, attn_mask=mask)]
    out = []
    for f in calls:
        f()
        sync(device)
        t = time.perf_counter()
        for _ in range(20):
            f()
        sync(device)
        out.append(1e3 * (time.perf_counter() - t) / 20)
    return out


def run_hf(hf, prompts, new, device):
    ids = torch.tensor(prompts, device=device)
    sync(device)
    t = time.perf_counter()
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                      top_p=1.0, top_k=0, max_new_tokens=new, min_new_tokens=new,
                      pad_token_id=hf.config.eos_token_id if isinstance(hf.config.eos_token_id, int)
                      else 0)
    sync(device)
    dt = time.perf_counter() - t
    assert out.shape[1] == ids.shape[1] + new, out.shape
    return len(prompts) * new / dt, dt


def run_ours(m, prompts, new, device, graphs=False):
    st = {}
    sync(device)
    t = time.perf_counter()
    outs = generate(m, prompts, max_new_tokens=new, temperature=1.0, stop_ids=[], seed=0,
                    cuda_graphs=graphs, stats=st)
    sync(device)
    dt = time.perf_counter() - t
    assert all(len(o.tokens) == new for o in outs)
    return len(prompts) * new / dt, dt, st


def decode_bandwidth(m, st) -> float:
    """Bytes/s of the decode steps: every weight once per step (the embedding table only where
    tied, as lm_head) + the K/V of every attended token, over the decode time without captures."""
    c, dtype = m.config, next(m.parameters()).dtype
    weights = sum(p.numel() * p.element_size() for p in m.parameters())
    if not c.tie_word_embeddings:
        weights -= m.embed_tokens.weight.numel() * m.embed_tokens.weight.element_size()
    kv = KVCache.bytes_per_row(c, 1, dtype)
    return (st["steps"] * weights + st["kv_token_reads"] * kv) / (st["decode_s"] - st["capture_s"])


def decode_profile(m, prompts, new, device, graphs):
    """Where one decode step's time goes: a torch.profiler trace of a short run (prompts of a
    few tokens, so the prefill is a small share), its kernels grouped into GEMMs, attention,
    sampling and the rest, and the GPU's busy time against the wall clock (the rest of the wall
    clock is Python and kernel launches)."""
    from torch.profiler import ProfilerActivity, profile
    run_ours(m, prompts, new, device, graphs)                 # warm-up (and capture, with graphs)
    gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
        _, wall, st = run_ours(m, prompts, new, device, graphs)
    groups = {"GEMM": ("gemm", "matmul", "mm", "cutlass", "nvjet", "sm90"),
              "attention": ("attention", "fmha", "flash", "sdpa", "softmax"),
              "sampling": ("sort", "cumsum", "topk", "multinomial", "exponential", "uniform", "scan", "radix")}
    busy = dict.fromkeys([*groups, "other"], 0.0)
    rows = []
    for e in prof.key_averages():
        us = e.self_device_time_total if gpu else e.self_cpu_time_total
        if us <= 0:
            continue
        name = e.key.lower()
        group = next((g for g, keys in groups.items() if any(k in name for k in keys)), "other")
        busy[group] += us / 1e6
        rows.append((us / 1e6, e.count, e.key[:90]))
    total = max(sum(busy.values()), 1e-9)
    print(f"decode profile, batch {len(prompts)}, prompt {len(prompts[0])} + {new} new"
          f"{' (CUDA graphs)' if graphs else ''}: wall {wall:.2f} s, GPU busy {total:.2f} s "
          f"({100 * total / wall:.0f}%), {st['steps']} decode steps")
    print("  by kind: " + ", ".join(f"{g} {1e3 * t / st['steps']:.2f} ms/step ({100 * t / total:.0f}%)"
                                    for g, t in busy.items()))
    for sec, count, name in sorted(rows, reverse=True)[:12]:
        print(f"  {1e3 * sec / st['steps']:7.3f} ms/step  x{count:<6} {name}")


def train_bench(device, seq_len: int = 8192, steps: int = 4):
    """Forward + backward tokens/s and peak memory on one seq_len-token sequence, ours against
    transformers, bf16 weights, gradient checkpointing on both, same weights and tokens.

    Ours scores next-token log-probs through model.token_logprobs (vocab in chunks); transformers
    computes its loss from full logits (labels=), as a user of it would."""
    from transformers import AutoModelForCausalLM
    from torch.nn.attention import SDPBackend, sdpa_kernel
    cfg = ModelConfig(**(R1_1P5B if device.type == "cuda" else SMOL_135M))
    torch.manual_seed(0)
    with torch.device(device):
        m = Transformer(cfg).to(torch.bfloat16).train()
    m.gradient_checkpointing = True
    ids = torch.randint(0, cfg.vocab_size, (1, seq_len), device=device)
    backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.MATH]

    try:
        sdpa_kernel(backends, set_priority=True)
        order = dict(set_priority=True)
    except TypeError:                                         # torch < 2.6: no priority order
        order = {}

    def ours():
        # cuDNN first: twice flash on Hopper. backward stays inside: checkpointing re-runs the
        # forward there, and a re-run on another SDPA kernel fails the checkpoint's checks.
        with sdpa_kernel(backends, **order):
            h = m(ids, return_hidden=True)[0]
            loss = -m.token_logprobs(h[:-1], ids[0, 1:]).mean()
            loss.backward()

    def time_it(fn, model):
        fn()                                                   # warm-up: kernels, allocator
        model.zero_grad(set_to_none=True)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        for _ in range(steps):
            fn()
            model.zero_grad(set_to_none=True)
        sync(device)
        dt = (time.perf_counter() - t) / steps
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        return seq_len / dt, peak

    ours_tps, ours_peak = time_it(ours, m)
    with tempfile.TemporaryDirectory() as tmp:
        m.save_pretrained(tmp)
        m = None                                              # free its memory for transformers
        if device.type == "cuda":
            torch.cuda.empty_cache()
        hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.bfloat16, attn_implementation="sdpa").to(device)
    hf.gradient_checkpointing_enable()
    hf.train()

    def theirs():
        hf(ids, labels=ids).loss.backward()

    hf_tps, hf_peak = time_it(theirs, hf)
    print(f"train fwd+bwd, 1 x {seq_len} tokens, bf16, grad checkpointing: transformers {hf_tps:,.0f} tok/s "
          f"(peak {hf_peak:.1f} GiB) | ours {ours_tps:,.0f} tok/s (peak {ours_peak:.1f} GiB) | "
          f"ratio {ours_tps / hf_tps:.2f}x", flush=True)


def grpo_bench(device, prompts: int, samples: int, ctx: int):
    """One whole GRPO step of train.py on one device, DeepScaleR's defaults at a smaller batch
    and context: the R1-1.5B shape (random weights) with toy.py's R1-style tokenizer and digit
    sums on a GPU, toy.py's tiny model on CPU. Random weights almost never sample the
    end-of-sequence token, so every response runs to --grpo-ctx: the longest step this
    setting can take. Prints its split between sampling, grading and training."""
    import toy
    import train
    from data import Tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        mdir, run = os.path.join(tmp, "model"), os.path.join(tmp, "run")
        if device.type == "cuda":
            toy.write_tokenizer(mdir)
            cfg = ModelConfig(**dict(R1_1P5B, eos_token_id=[Tokenizer.from_pretrained(mdir).eos_id]))
            torch.manual_seed(0)
            with torch.device(device):
                Transformer(cfg).to(torch.bfloat16).save_pretrained(mdir)
            torch.cuda.empty_cache()
        else:
            toy.build_model_dir(mdir)
        with open(os.path.join(tmp, "task.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in toy.make_task(4 * prompts, seed=0))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        train.main(["--model", mdir, "--data", os.path.join(tmp, "task.jsonl"), "--out", run, "--steps", "1",
                    "--prompts-per-step", str(prompts), "--samples", str(samples), "--ctx", str(ctx),
                    "--save-every", "0", "--eval-every", "0", "--show-every", "1000"])
        r = json.loads(open(os.path.join(run, "metrics.jsonl")).readline())
    peak = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB allocated" if device.type == "cuda" else ""
    parts = {k: r[k] for k in ("sample_s", "grade_s", "train_s")}
    print(f"GRPO step, {prompts} prompts x {samples} samples, ctx {ctx}: {r['step_s']:.1f} s"
          f" ({r['len_mean'] * prompts * samples:,.0f} response tokens, {r['tok_per_s']:,.0f} tok/s sampling) | "
          + ", ".join(f"{k[:-2]} {v:.1f} s ({100 * v / r['step_s']:.0f}%)" for k, v in parts.items())
          + f", other {r['step_s'] - sum(parts.values()):.1f} s{peak}", flush=True)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="the full GPU suite on the R1-1.5B shape (see above)")
    ap.add_argument("--train", action="store_true", help="training fwd+bwd on one 8,192-token sequence against "
                    "transformers (the R1-1.5B shape on a GPU, SmolLM2-135M's on CPU), then exit")
    ap.add_argument("--train-len", type=int, default=8192, help="with --train: tokens in the sequence")
    ap.add_argument("--grpo", action="store_true", help="one whole GRPO step of train.py (see grpo_bench), then exit")
    ap.add_argument("--grpo-prompts", type=int, default=None, help="with --grpo: prompts (default 32 GPU, 8 CPU)")
    ap.add_argument("--grpo-samples", type=int, default=8, help="with --grpo: samples per prompt")
    ap.add_argument("--grpo-ctx", type=int, default=None, help="with --grpo: response tokens (default 2048 GPU, 32 CPU)")
    ap.add_argument("--model", help="an HF folder to load instead of random weights")
    ap.add_argument("--batch", type=int, default=16, help="sequences decoded together (not with --gpu)")
    ap.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per sequence (not with --gpu)")
    ap.add_argument("--new", type=int, default=256, help="new tokens per sequence (not with --gpu)")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--repeat", type=int, default=1, help="CPU: alternate the two this many times, keep each's best")
    ap.add_argument("--skip-hf", action="store_true", help="time sample.generate only")
    ap.add_argument("--hf-long", action="store_true", help="with --gpu: also time transformers at 4,096 new")
    ap.add_argument("--profile", action="store_true", help="with --gpu: end with a profile of the decode step "
                    "at batch 256 (eager and with CUDA graphs): GEMMs, attention, sampling, other, GPU idle")
    ap.add_argument("--long-budget-s", type=float, default=240,
                    help="with --gpu: shorten the 4,096-token run if it projects past this many seconds")
    return ap.parse_args()


def train_or_grpo(args):
    """--train or --grpo: on the GPU when there is one, else on the CPU."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = dev.type == "cuda"
    print(f"{datetime.date.today()} | {torch.cuda.get_device_name(dev) if gpu else 'CPU'} | "
          f"torch {torch.__version__}")
    if args.grpo:
        return grpo_bench(dev, args.grpo_prompts or (32 if gpu else 8), args.grpo_samples,
                          args.grpo_ctx or (2048 if gpu else 32))
    return train_bench(dev, args.train_len)


def cuda_graphs_agree(m, p8) -> bool:
    """Whether decoding with CUDA graphs gives eager's greedy tokens (8 rows x 64 tokens): the
    graphed runs are timed only if so."""
    a = generate(m, p8, max_new_tokens=64, temperature=0, stop_ids=[])
    try:
        st = {}
        b = generate(m, p8, max_new_tokens=64, temperature=0, stop_ids=[], cuda_graphs=True, stats=st)
    except Exception as e:
        print(f"CUDA graphs failed ({type(e).__name__}: {e}); eager only")
        return False
    same = sum(x.tokens == y.tokens for x, y in zip(a, b))
    # random weights give near-flat logits, so a late flip can be rounding; a bug in the
    # graphed step (positions, cache, state) shows in the first decode steps
    ok = all(x.tokens[:8] == y.tokens[:8] for x, y in zip(a, b)) and st["graphs"] > 0
    print(f"CUDA graphs vs eager, greedy, 8 rows x 64 tokens: {same}/8 rows identical, "
          f"{st['graphs']} graphs captured -> {'using' if ok else 'NOT using'} graphs")
    return ok


def shorten_long_run(m, dtype, B, N, nbytes, sec, budget_s) -> int:
    """Guard the 8-minute budget: project the long run from the 512-token one at the same
    bandwidth (nbytes and sec per decode step there), and halve N (saying so) while it would
    overrun budget_s, as a slow attention path would."""
    kv = KVCache.bytes_per_row(m.config, 1, dtype) * B

    def est(n):
        return n * sec * (nbytes + kv * (n // 2 - 256)) / nbytes

    while est(N) > budget_s and N > 512:
        print(f"(projected {est(N):.0f} s, over --long-budget-s: shortened to {N // 2} new tokens)")
        N //= 2
    return N


def compare_on_cpu(m, hf, ps, N, device, repeat: int, line: str):
    """A shared CPU is noisy: alternate transformers and ours `repeat` times, report each's best."""
    hf_runs, our_runs = [], []
    for _ in range(repeat):
        hf_runs.append(run_hf(hf, ps, N, device))
        our_runs.append(run_ours(m, ps, N, device))
    (base, dt), (tps, dt2, st) = max(hf_runs), max(our_runs, key=lambda r: r[0])
    every = (f"  [tok/s of every run: transformers {[round(r[0], 1) for r in hf_runs]}, "
             f"ours {[round(r[0], 1) for r in our_runs]}]" if repeat > 1 else "")
    print(f"{line} transformers {base:,.1f} tok/s ({dt:.1f} s) | ours {tps:,.1f} tok/s ({dt2:.1f} s; "
          f"prefill {st['prefill_s']:.1f} s, decode {1e3 * st['decode_s'] / st['steps']:.1f} ms/step)"
          f" | ratio {tps / base:.2f}x" + every)


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train or args.grpo:
        return train_or_grpo(args)
    device = torch.device("cuda" if args.gpu else "cpu")
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA")
    dtype = getattr(torch, args.dtype)
    import transformers
    name = torch.cuda.get_device_name(device) if args.gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"{datetime.date.today()} | {name} | torch {torch.__version__} | transformers "
          f"{transformers.__version__} | {args.dtype}")
    t0 = time.perf_counter()
    m, hf = build(args, device, dtype)
    print(f"model: {args.model or ('R1-Distill-Qwen-1.5B shape' if args.gpu else 'SmolLM2-135M shape')}"
          f"{'' if args.model else ', random weights'}, {m.num_params() / 1e9:.3f}B params "
          f"(built in {time.perf_counter() - t0:.0f} s)")
    g = torch.Generator().manual_seed(0)
    V = m.config.vocab_size

    def prompts(B, P):
        return torch.randint(0, V, (B, P), generator=g).tolist()

    # warm-up: kernels, allocators, lazy initialisation, for both
    run_ours(m, prompts(4, 16), 4, device)
    if hf is not None:
        run_hf(hf, prompts(4, 16), 4, device)
    if not args.gpu:
        shapes = [(args.batch, args.prompt_len, args.new, hf is not None)]
    else:
        bw = copy_bandwidth(device)
        print(f"device-to-device copy: {bw / 1e12:.2f} TB/s (read + write)")
        graphs_ok = cuda_graphs_agree(m, prompts(8, 64))
        shapes = [(64, 256, 512, hf is not None), (256, 256, 512, hf is not None),
                  (256, 256, 4096, hf is not None and args.hf_long)]
    per_step = {}                          # (B, P + N / 2) -> decode bytes per step, s per step
    for B, P, N, with_hf in shapes:
        if args.gpu and N > 1024 and (B, P + 256) in per_step:
            N = shorten_long_run(m, dtype, B, N, *per_step[(B, P + 256)], args.long_budget_s)
        ps = prompts(B, P)
        line = f"batch {B}, prompt {P} + {N} new:"
        base = None
        if with_hf and not args.gpu:
            compare_on_cpu(m, hf, ps, N, device, args.repeat, line)
            continue
        if with_hf:
            base, dt = run_hf(hf, ps, N, device)
            line += f" transformers {base:,.0f} tok/s ({dt:.1f} s) |"
        if args.gpu:
            a_gqa, a_fold = attention_probe(m, B, P + N, device)
            print(line + f" decode SDPA kernel: {sdpa_kernel_for_decode(m, B, P + N, device)}; decode attention "
                  f"at context {P + N}: {a_gqa:.3f} ms/layer with enable_gqa (model.py), {a_fold:.3f} with q folded",
                  flush=True)
            line = "   "
            if N > 1024 and hf is not None:
                del hf                     # free its memory for the long run's KV cache
                hf = None
                torch.cuda.empty_cache()
        modes = [False] + ([True] if args.gpu and graphs_ok else [])
        if args.gpu and N > 1024:
            modes = modes[-1:]             # the long run once, with the faster mode
        for graphs in modes:
            tps, dt, st = run_ours(m, ps, N, device, graphs)
            dec_s = st["decode_s"] - st["capture_s"]
            line += (f" ours{' + CUDA graphs' if graphs else ''} {tps:,.0f} tok/s ({dt:.1f} s"
                     f"{'' if base is None else f', {tps / base:.1f}x'}; prefill {st['prefill_s']:.1f} s,"
                     f" decode {1e3 * dec_s / st['steps']:.2f} ms/step"
                     f"{', %d graphs captured in %.1f s' % (st['graphs'], st['capture_s']) if graphs else ''})")
            if args.gpu:
                dbw = decode_bandwidth(m, st)
                line += f", decode {dbw / 1e12:.2f} TB/s = {100 * dbw / bw:.0f}% of copy"
                per_step[(B, P + N // 2)] = (dbw * dec_s / st["steps"], dec_s / st["steps"])
            print(line, flush=True)
            line = "   "
    if args.gpu and args.profile:
        for graphs in [False] + ([True] if graphs_ok else []):
            decode_profile(m, prompts(256, 8), 64, device, graphs)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
