"""Batched sampling with a KV cache and continuous batching, and DeepScaleR's evaluation CLI.

    from sample import generate
    outs = generate(model, prompts, n=8, max_new_tokens=8192, temperature=0.6, seed=0)
    outs[i * 8 + j].tokens, .logprobs, .finish_reason      # prompt-major, len(prompts) * n

    python sample.py --model DIR --prompt "What is 7 * 8?"          # one chat reply, streamed
    python sample.py --model DIR --data aime.jsonl --samples 16 --temperature 0.6 --top-p 0.95 \\
        --max-new-tokens 32768 --out results.jsonl                  # pass@1 with a 95% CI, pass@k
    torchrun --nproc_per_node=8 sample.py --model DIR --data aime.jsonl ...   # problems sharded

How generate() works. A KVCache of (layers, rows, kv_heads, capacity, head_dim) is allocated
once from a memory budget; capacity is the longest prompt + max_new_tokens, rows is what the
budget holds (capped by the number of sequences). Sequences (prompt p, sample j) wait in a
prompt-major queue. Whenever rows are free, the next sequences take them: their prompts are
prefilled once (right-padded, length-sorted groups; positions start at 0 for every prompt)
and the prompt's K/V is copied into each of its sample rows. Decoding runs all rows one token
per step; each row writes at its own length and attends to the filled slots only (a mask
built once per step). Nothing on the hot path waits for the device: finished rows are found
every `check_every` steps, when the chunk's tokens come back in one transfer; tokens sampled
after a stop are discarded and the row takes the next waiting sequence. Once the queue is
empty and half the rows are idle, the live rows are compacted so idle rows stop costing.
On GPU, cuda_graphs=True replays the decode step (forward + sampling + bookkeeping, all in
fixed buffers) as one CUDA graph per (rows, window) shape, which removes per-op launch cost.

Log-probs. `.logprobs[t]` is log softmax(logits / temperature) at the sampled token: the
distribution the token was drawn from *before* top-k/top-p truncation, which is the old-policy
log-prob GRPO's importance ratio needs and what model.token_logprobs(h, tokens, temperature)
recomputes (pinned by tests/test_sample.py). With temperature 0 (greedy) it is under T = 1.
A completion that stopped ends with its stop token (it is in .tokens and .logprobs).

Left out: paged KV (every row reserves its full capacity), prefix sharing across prompts,
speculative decoding, beam search, repetition penalties, tensor parallelism.
"""
import argparse
import itertools
import json
import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist

from data import THINK_CHOICES, DataError, Tokenizer, load_records, prompt_ids, reference_answers, requires_think
from model import Transformer
from verify import grade_batch, reward_of

WINDOW_ROUND = 64   # attention windows are rounded up to this many slots (fewer distinct shapes)


@dataclass
class Completion:
    tokens: list        # new tokens only; ends with the stop token when finish_reason == 'stop'
    logprobs: list      # log softmax(logits / T) of each token, before top-k/top-p (T=1 if greedy)
    finish_reason: str  # 'stop' (sampled a stop id) or 'length' (reached max_new_tokens)


# ----------------------------------------------------------------------------- KV cache

class KVCache:
    """Every layer's K/V for `rows` sequences of up to `capacity` tokens, allocated once.

    k, v: (L, rows, Hkv, capacity, D) in the model's dtype; KV heads stay at their own count
    (SDPA's enable_gqa shares them, nothing is expanded). Slot i of a row holds position i,
    already rotated. lengths (rows,) counts the tokens stored per row; rows [0, active) decode.
    """

    def __init__(self, cfg, rows: int, capacity: int, device, dtype):
        L, H, D = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
        # zeros, not empty: masked slots still enter SDPA's matmuls, and 0 * NaN would be NaN.
        self.k = torch.zeros(L, rows, H, capacity, D, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.rows, self.capacity, self.active, self.window = rows, capacity, rows, capacity
        self.slots = torch.arange(capacity, device=device)
        # flat index of slot 0 of (row, head) in k[layer].view(-1, D): (rows, Hkv)
        self.base = (torch.arange(rows, device=device)[:, None] * H
                     + torch.arange(H, device=device)) * capacity
        self.mask = self.flat = None

    @staticmethod
    def bytes_per_row(cfg, capacity: int, dtype) -> int:
        return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * capacity * \
            torch.empty((), dtype=dtype).element_size()

    def begin_step(self, window: int):
        """Once per decode step, shared by all layers: where each row writes, what it sees."""
        n, lens = self.active, self.lengths[:self.active]
        self.window = window
        self.mask = (self.slots[:window] <= lens[:, None]).view(n, 1, 1, window)  # (n, 1, 1, W)
        self.flat = (self.base[:n] + lens[:, None]).view(-1)                       # (n * Hkv,)

    def update(self, layer: int, k, v):
        """k, v (n, Hkv, 1, D) for the token at slot lengths[r] -> K/V (n, Hkv, W, D), mask."""
        kc, vc = self.k[layer], self.v[layer]                          # (rows, Hkv, C, D)
        D = kc.shape[-1]
        kc.view(-1, D).index_copy_(0, self.flat, k.reshape(-1, D))     # one scatter per tensor
        vc.view(-1, D).index_copy_(0, self.flat, v.reshape(-1, D))
        n, W = self.active, self.window
        return kc[:n, :, :W], vc[:n, :, :W], self.mask

    def compact(self, keep: list, width: int):
        """Move rows `keep` to rows [0, len(keep)) (slots [0, width)) and decode only those."""
        m, src = len(keep), torch.tensor(keep, device=self.k.device)
        self.k[:, :m, :, :width] = self.k[:, src, :, :width]   # the gather copies before writing
        self.v[:, :m, :, :width] = self.v[:, src, :, :width]
        self.lengths[:m] = self.lengths[src]
        self.active = m


class _PrefillCache:
    """Collects one prefill forward's K/V per layer (G, Hkv, T, D); attention is plain causal.

    Prompts are right-padded: padding follows each prompt's last token, so no real query
    attends to it, and positions start at 0 for every prompt (no left-padding shift). No mask
    is returned (None = causal), so SDPA can take a fused kernel that never builds (T, T).
    """

    def __init__(self):
        self.k, self.v = [], []

    def update(self, layer, k, v):
        self.k.append(k)
        self.v.append(v)
        return k, v, None


# ----------------------------------------------------------------------------- sampling

def sample_tokens(logits, u, temperature: float, top_p: float, top_k: int):
    """logits (B, V) fp32, u (B, 1) fp64 uniforms in [0, 1) -> token (B,), logprob (B,).

    logprob is log softmax(logits / T) at the token, before truncation. Top-k is applied
    first, then top-p on the renormalised top-k distribution (as HF and vLLM do). The token is
    the inverse CDF at u: only B random numbers per step (drawn ahead for a whole chunk), no
    device-to-host sync, and the same u gives the same token with or without CUDA graphs.
    """
    if temperature == 0:
        tok = logits.argmax(-1)
        return tok, logits.log_softmax(-1).gather(-1, tok[:, None])[:, 0]
    logp = (logits / temperature).log_softmax(-1)                      # (B, V)
    filt = logp
    if 0 < top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[:, -1:]
        filt = filt.masked_fill(filt < kth, -math.inf)
    if top_p < 1.0:
        srt = filt.sort(dim=-1, descending=True).values                # (B, V)
        probs = srt.softmax(-1)
        before = probs.cumsum(-1) - probs         # mass strictly above each sorted token
        n_keep = (before < top_p).sum(-1, keepdim=True).clamp(min=1)   # the top token always stays
        filt = filt.masked_fill(filt < srt.gather(-1, n_keep - 1), -math.inf)
    # (B, V); summed in fp64 so that far-tail tokens keep their mass (an fp32 running sum near
    # 1 drops every p < 3e-8); the total is < 1 after truncation, hence u * cdf[:, -1:]
    cdf = filt.exp().cumsum(-1, dtype=torch.float64)
    tok = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=logp.shape[-1] - 1)[:, 0]
    return tok, logp.gather(-1, tok[:, None])[:, 0]


def _default_budget(device) -> int:
    """KV bytes when none is given: 60% of the free GPU memory, or 4 GiB on CPU. Blocks PyTorch's
    allocator holds unoccupied (a training step's activations, a previous call's cache) count as
    taken to the driver; they are handed back first, so inside a training loop the budget does
    not shrink after the first step, and the KV cache gets contiguous memory."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return int(0.6 * torch.cuda.mem_get_info(device)[0])
    return 4 * 2**30


def _window(need: int, capacity: int) -> int:
    """Slots a chunk attends to: `need` rounded up by 1/8-1/4 of its size (at least WINDOW_ROUND),
    so a growing context takes a handful of distinct shapes (and CUDA graphs) per doubling."""
    step = max(WINDOW_ROUND, 1 << max(need.bit_length() - 3, 0))
    return min(capacity, -(-need // step) * step)


class _Decoder:
    """The decode step over rows [0, active), with all its state in fixed device buffers, so
    the same code runs eagerly or replays as a CUDA graph (one per (active rows, window))."""

    def __init__(self, model, cache, chunk: int, samp: dict, cuda_graphs: bool):
        R, dev = cache.rows, cache.k.device
        self.model, self.cache, self.samp = model, cache, samp
        self.cur = torch.zeros(R, dtype=torch.long, device=dev)       # next input token per row
        self.u = torch.zeros(R, chunk, dtype=torch.float64, device=dev)  # the chunk's uniforms
        self.tok = torch.zeros(R, chunk, dtype=torch.long, device=dev)  # the chunk's samples
        self.lp = torch.zeros(R, chunk, device=dev)
        self.i = torch.zeros(1, dtype=torch.long, device=dev)          # step within the chunk
        self.graphs, self.pool, self.capture_s = {}, None, 0.0
        self.cuda_graphs = cuda_graphs and dev.type == "cuda"

    def step(self):
        c, n, i = self.cache, self.cache.active, self.i
        c.begin_step(c.window)
        lens = c.lengths[:n]
        logits = self.model(self.cur[:n, None], positions=lens[:, None], cache=c)[:, 0].float()
        tok, lp = sample_tokens(logits, self.u[:n].index_select(1, i), **self.samp)   # (n,)
        self.tok[:n].index_copy_(1, i, tok[:, None])
        self.lp[:n].index_copy_(1, i, lp[:, None])
        self.cur[:n].copy_(tok)
        lens += 1
        i += 1

    def run(self, steps: int, gen):
        """`steps` decode steps; returns the chunk's tokens and log-probs as host lists."""
        n = self.cache.active
        self.u.uniform_(generator=gen)
        self.i.zero_()
        key = (n, self.cache.window)
        if self.cuda_graphs and key not in self.graphs:
            t0 = time.perf_counter()
            try:
                self.graphs[key] = self._capture()
            except RuntimeError as e:     # e.g. a kernel that cannot be captured: stay eager
                print(f"sample.py: CUDA graph capture failed, decoding eagerly: {e}", file=sys.stderr)
                self.cuda_graphs = False
            self.capture_s += time.perf_counter() - t0
        if self.cuda_graphs:
            for _ in range(steps):
                self.graphs[key].replay()
        else:
            for _ in range(steps):
                self.step()
        # the one host-device synchronisation of the chunk
        return self.tok[:n, :steps].tolist(), self.lp[:n, :steps].tolist()

    def _capture(self):
        saved = [t.clone() for t in (self.cache.lengths, self.cur, self.i)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):     # one eager step initialises lazy kernels/workspaces
            self.step()
        torch.cuda.current_stream().wait_stream(side)
        for t, s in zip((self.cache.lengths, self.cur, self.i), saved):
            t.copy_(s)                    # its K/V writes land in slots the real step rewrites
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self.pool):   # graphs share one pool: they never overlap
            self.step()
        self.pool = g.pool()
        for t, s in zip((self.cache.lengths, self.cur, self.i), saved):
            t.copy_(s)
        return g


# ----------------------------------------------------------------------------- generate

@torch.no_grad()
def generate(model, prompts, n: int = 1, max_new_tokens: int = 256, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, stop_ids=None, seed=None, max_rows=None,
             kv_budget=None, check_every: int = 16, prefill_tokens: int = 8192,
             cuda_graphs: bool = False, callback=None, stats=None) -> list:
    """Sample n completions of each prompt (lists of token ids); returns len(prompts) * n
    Completions, prompt-major. stop_ids=None stops on model.config.eos_token_id, [] never
    stops early. max_rows / kv_budget (bytes) bound the rows decoded together; check_every is
    how many steps run between looks at the device; prefill_tokens bounds one prefill batch
    (rows x padded length); cuda_graphs replays the decode step as CUDA graphs (GPU only).
    callback(seq, new_tokens, finish_reason or None) is called as tokens come back
    (seq = prompt * n + sample). stats, a dict, receives timings and counts.
    """
    cfg = model.config
    p0 = next(model.parameters())
    device, dtype = p0.device, p0.dtype
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
    bad = [t for p in prompts for t in p if not 0 <= t < cfg.vocab_size]
    if bad:
        raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {cfg.vocab_size})")
    if n < 1 or max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1 or top_k < 0 \
            or check_every < 1:
        raise ValueError(f"need n, max_new_tokens, check_every >= 1, temperature >= 0, 0 < top_p <= 1, "
                         f"top_k >= 0; got {n}, {max_new_tokens}, {check_every}, {temperature}, "
                         f"{top_p}, {top_k}")
    stops = set(cfg.eos_token_id if stop_ids is None else stop_ids)
    total, longest = len(prompts) * n, max(map(len, prompts))
    capacity = longest + max_new_tokens
    budget = _default_budget(device) if kv_budget is None else kv_budget
    per_row = KVCache.bytes_per_row(cfg, capacity, dtype)
    rows = min(total, max_rows or total, budget // per_row)
    if rows < 1:
        raise ValueError(f"the longest prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) "
                         f"needs {per_row / 2**20:.1f} MiB of KV cache per row, over the budget of "
                         f"{budget / 2**20:.1f} MiB: shorten the prompt or raise kv_budget")
    cache = KVCache(cfg, rows, capacity, device, dtype)
    gen = torch.Generator(device)
    gen.manual_seed(seed) if seed is not None else gen.seed()
    samp = dict(temperature=temperature, top_p=top_p, top_k=top_k)
    dec = _Decoder(model, cache, check_every, samp, cuda_graphs)

    queue = deque(range(total))        # waiting sequences; seq s samples prompt s // n
    row_seq = [-1] * rows              # host bookkeeping, so the hot path never asks the device
    row_len = [0] * rows               # == cache.lengths for live rows
    row_left = [0] * rows              # new tokens a live row may still produce
    toks, lps = [[] for _ in range(total)], [[] for _ in range(total)]
    reason = [None] * total
    pending = {}                       # prompt -> (k, v, last logits) while samples still wait
    st = dict(prefill_s=0.0, decode_s=0.0, steps=0, decode_tokens=0, kv_token_reads=0, rows=rows)
    t_start = time.perf_counter()

    def record(r, new_t, new_lp):
        """Append a row's new tokens up to a stop or its length limit; free the row if done."""
        s = row_seq[r]
        take = min(len(new_t), row_left[r])
        for i, t in enumerate(new_t[:take]):
            if t in stops:
                take, reason[s] = i + 1, "stop"
                break
        toks[s] += new_t[:take]
        lps[s] += new_lp[:take]
        row_left[r] -= take
        if reason[s] is None and row_left[r] == 0:
            reason[s] = "length"
        if callback:
            callback(s, new_t[:take], reason[s])
        if reason[s] is not None:
            row_seq[r] = -1

    def prefill(ps):
        """Prefill prompts ps in length-sorted, right-padded groups of <= prefill_tokens padded
        tokens; yields (group, k, v, logits): k, v (L, G, Hkv, T, D), logits (G, V) fp32."""
        order = sorted(ps, key=lambda p: len(prompts[p]))
        while order:
            T, g = len(prompts[order[0]]), 1
            while g < len(order) and (g + 1) * len(prompts[order[g]]) <= prefill_tokens:
                T, g = len(prompts[order[g]]), g + 1      # sorted: the last one is the longest
            group, order = order[:g], order[g:]
            lens = torch.tensor([len(prompts[p]) for p in group], device=device)
            ids = torch.zeros(len(group), T, dtype=torch.long)
            for i, p in enumerate(group):
                ids[i, :len(prompts[p])] = torch.tensor(prompts[p])
            pc = _PrefillCache()
            pos = torch.arange(T, device=device).expand(len(group), T)
            h = model(ids.to(device), positions=pos, cache=pc, return_hidden=True)   # (G, T, C)
            # logits of each prompt's last token only, never of every prompt position
            logits = model.lm_head(h[torch.arange(len(group), device=device), lens - 1]).float()
            yield group, torch.stack(pc.k), torch.stack(pc.v), logits

    def admit():
        """Give free rows to waiting sequences: prefill each prompt once, copy its K/V to each
        of its sample rows, sample each row's first token."""
        while queue:
            free = [r for r in range(cache.active) if row_seq[r] < 0]
            if not free:
                return
            t0 = time.perf_counter()
            rows_of = {}                                  # prompt -> [(row, seq)]
            for r in free[:len(queue)]:
                s = queue.popleft()
                rows_of.setdefault(s // n, []).append((r, s))
            wait = queue[0] // n if queue and queue[0] % n else None   # samples still queued
            old = [([p], *pending.pop(p)) for p in list(pending)]
            fresh = prefill([p for p in rows_of if all(p != o[0][0] for o in old)])
            for group, k, v, logits in itertools.chain(old, fresh):   # one group in memory at a time
                T = k.shape[3]
                for g, p in enumerate(group):
                    ri = torch.tensor([r for r, _ in rows_of[p]], device=device)
                    cache.k[:, ri, :, :T] = k[:, g:g + 1]             # (L, rows, Hkv, T, D)
                    cache.v[:, ri, :, :T] = v[:, g:g + 1]
                    if p == wait:
                        pending[p] = (k[:, g:g + 1].clone(), v[:, g:g + 1].clone(), logits[g:g + 1])
                rs = [(r, s) for p in group for r, s in rows_of[p]]
                ri = torch.tensor([r for r, _ in rs], device=device)
                plen = [len(prompts[s // n]) for _, s in rs]
                cache.lengths[ri] = torch.tensor(plen, device=device)
                src = torch.tensor([g for g, p in enumerate(group) for _ in rows_of[p]], device=device)
                u = torch.rand(len(rs), 1, generator=gen, device=device, dtype=torch.float64)
                tok, lp = sample_tokens(logits[src], u, **samp)
                dec.cur[ri] = tok
                for (r, s), P, t, logp in zip(rs, plen, tok.tolist(), lp.tolist()):
                    row_seq[r], row_len[r], row_left[r] = s, P, max_new_tokens
                    record(r, [t], [logp])
            st["prefill_s"] += time.perf_counter() - t0

    while True:
        admit()
        live = [r for r in range(cache.active) if row_seq[r] >= 0]
        if not live:
            break
        if not queue and len(live) <= cache.active // 2:
            # the tail: long completions run on; stop paying for idle rows
            cache.compact(live, max(row_len[r] for r in live))
            dec.cur[:len(live)] = dec.cur[torch.tensor(live, device=device)]
            row_seq, row_len, row_left = ([a[r] for r in live] + [fill] * (rows - len(live))
                                          for a, fill in ((row_seq, -1), (row_len, 0), (row_left, 0)))
            live = list(range(len(live)))
        na = cache.active
        steps = min(check_every, min(row_left[r] for r in live))
        # one window for the chunk: the longest row after `steps` writes, rounded up
        cache.window = _window(max(row_len[:na]) + steps, capacity)
        t0 = time.perf_counter()
        chunk_t, chunk_lp = dec.run(steps, gen)                        # (na, steps) each
        st["decode_s"] += time.perf_counter() - t0
        st["steps"] += steps
        st["decode_tokens"] += steps * len(live)
        st["kv_token_reads"] += sum(steps * row_len[r] + steps * (steps + 1) // 2 for r in live)
        for r in range(na):
            row_len[r] += steps
            if row_seq[r] >= 0:
                record(r, chunk_t[r], chunk_lp[r])
        idle = [r for r in range(na) if row_seq[r] < 0]
        if idle:   # idle rows restart at slot 0 so they never run past their capacity
            cache.lengths[torch.tensor(idle, device=device)] = 0
            for r in idle:
                row_len[r] = 0
    st["total_s"] = time.perf_counter() - t_start
    st["graphs"], st["capture_s"] = len(dec.graphs), dec.capture_s
    if stats is not None:
        stats.update(st)
    return [Completion(toks[s], lps[s], reason[s]) for s in range(total)]


# ----------------------------------------------------------------------------- evaluation

def grade_completions(tok, outs: list, refs: list, require_think: bool = False, workers: int = 4,
          problems: list | None = None):
    """DeepScaleR's reward for each completion against its reference (an answer, or a list of
    equivalent forms): 1.0 when the last \\boxed{} answer equals the reference, and, with
    require_think (R1 models), the reply also closed its reasoning with </think>; else 0.0.
    problems, one per completion when given, lets a bare choice letter ("C") be graded by
    the choice it names in the problem text.
    Returns (texts, right, rewards): the decoded replies (stop token dropped), whether the
    answer alone was right, and the rewards."""
    texts = [tok.decode(o.tokens[:-1] if o.finish_reason == "stop" else o.tokens) for o in outs]
    if problems is None:
        pairs = list(zip(texts, refs))
    else:
        pairs = list(zip(texts, refs, problems))
    right = [bool(x) for x in grade_batch(pairs, workers=workers)]
    rewards = [reward_of(ok, t, require_think) for ok, t in zip(right, texts)]
    return texts, right, rewards


def evaluate(model, tok, recs: list, n: int = 1, require_think: bool = False, template=None,
             workers: int = 4, rank: int = 0, world: int = 1, progress: bool = False,
             **gen_kw) -> tuple[list, dict]:
    """DeepScaleR's evaluation protocol on records {problem, answer[, answers][, prompt_ids]}:
    n samples per problem (gen_kw go to generate), each scored by grade(). Under a process
    group each rank samples every world-th problem and the rows are gathered on every rank.

    Returns (rows, summary): one row per problem, in recs order (its responses, correct flags,
    lengths, finish reasons, pass@1), and summarize() of them plus tokens/s over all ranks.
    progress prints a line with tokens/s and ETA to stderr every 10 s (rank 0)."""
    if not recs:
        raise ValueError("evaluate: no records")
    mine = list(range(rank, len(recs), world))                  # data.shard's split
    prompts = [recs[i].get("prompt_ids") or prompt_ids(tok, recs[i]["problem"], template) for i in mine]
    total, done, ntok, t0 = len(prompts) * n, 0, 0, time.time()
    last = t0

    def report(s, new, fin):
        nonlocal done, ntok, last
        ntok += len(new)
        done += fin is not None
        now = time.time()
        if progress and rank == 0 and now - last > 10:
            print(f"[rank 0] {done}/{total} samples, {ntok:,} tokens, {ntok / (now - t0):,.0f} tok/s, "
                  f"ETA {(now - t0) * (total - done) / max(done, 1) / 60:.1f} min", file=sys.stderr, flush=True)
            last = now
    outs = generate(model, prompts, n=n, callback=report, **gen_kw) if prompts else []
    refs = [reference_answers(recs[i]) for i in mine for _ in range(n)]
    problems = [recs[i]["problem"] for i in mine for _ in range(n)]
    texts, _, rewards = grade_completions(tok, outs, refs, require_think, workers, problems)
    rows = []
    for j, i in enumerate(mine):
        sl = slice(j * n, (j + 1) * n)
        rows.append({"index": i, "problem": recs[i]["problem"], "answer": recs[i]["answer"],
                     "pass@1": sum(rewards[sl]) / n, "correct": [r > 0 for r in rewards[sl]],
                     "lengths": [len(o.tokens) for o in outs[sl]],
                     "finish": [o.finish_reason for o in outs[sl]], "responses": texts[sl]})
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, rows)
        rows = sorted((r for part in parts for r in part), key=lambda r: r["index"])
    summary = summarize(rows, n)
    summary["tokens_per_s"] = sum(sum(r["lengths"]) for r in rows) / max(1e-9, time.time() - t0)
    return rows, summary


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def summarize(rows: list, n: int) -> dict:
    """Per-problem results -> pass@1 (mean over the n samples) with a 95% CI over problems,
    pass@k for k = 1, 2, 4 ... n, mean response length, truncation rate."""
    P = len(rows)
    p1 = [sum(r["correct"]) / n for r in rows]
    mean = sum(p1) / P
    sd = math.sqrt(sum((x - mean) ** 2 for x in p1) / (P - 1)) if P > 1 else 0.0
    lens = [x for r in rows for x in r["lengths"]]
    out = {"problems": P, "samples": n, "pass@1": mean, "pass@1_ci95": 1.96 * sd / math.sqrt(P)}
    k = 2
    while k <= n:
        out[f"pass@{k}"] = sum(pass_at_k(n, sum(r["correct"]), k) for r in rows) / P
        k *= 2
    out["mean_length"] = sum(lens) / len(lens)
    out["truncated"] = sum(f == "length" for r in rows for f in r["finish"]) / len(lens)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("How generate() works")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF model folder (config.json, safetensors, tokenizer.json)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one user message: render the chat template, stream the reply")
    src.add_argument("--data", help="json/jsonl/parquet of {problem, answer}: DeepScaleR evaluation")
    ap.add_argument("--out", help="per-problem JSONL (with --data); a summary line goes to stdout")
    ap.add_argument("--samples", "--n", dest="n", type=int, default=1,
                    help="samples per problem; pass@1 averages over them (under torchrun spell it --samples: "
                         "torchrun takes --n for an abbreviation of its own flags)")
    ap.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    ap.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    ap.add_argument("--max-new-tokens", type=int, default=4096, help="response budget per sample")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (each rank adds its rank)")
    ap.add_argument("--template", default=None,
                    help="chat template: deepseek-r1 or chatml (default: the checkpoint's)")
    ap.add_argument("--max-rows", type=int, default=None, help="cap on rows decoded together")
    ap.add_argument("--kv-gib", type=float, default=None,
                    help="KV cache budget in GiB (default 60%% of unused GPU memory, 4 on CPU)")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                    help="default bfloat16 on GPU, float32 on CPU")
    ap.add_argument("--workers", type=int, default=4, help="grading processes (verify.grade_batch)")
    ap.add_argument("--think", choices=THINK_CHOICES, default="auto",
                    help="count a reply correct only if it closed </think> (auto: for the deepseek-r1 template)")
    ap.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                    help="replay decode steps as CUDA graphs (GPU only; 2.8x eager at batch 256 on an H200)")
    a = ap.parse_args(argv)

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        # Before the group exists: torch.distributed.nn binds the default group into its functions'
        # defaults when first imported (torch._dynamo pulls it in when the model is built on the meta
        # device). That reference kept the gloo group and its worker threads alive past
        # destroy_process_group, and a worker still freeing the last collective's tensors at
        # interpreter exit aborted the rank ("terminate called without an active exception").
        import torch.distributed.nn as _dist_nn  # noqa: F401
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    dtype = getattr(torch, a.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    tok = Tokenizer.from_pretrained(a.model)
    model = Transformer.from_pretrained(a.model, device=device, dtype=dtype).eval()
    kw = dict(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, max_rows=a.max_rows,
              cuda_graphs=a.cuda_graphs,
              max_new_tokens=a.max_new_tokens, seed=a.seed + rank,
              kv_budget=None if a.kv_gib is None else int(a.kv_gib * 2**30))

    if a.prompt is not None:
        got, shown = [], ""

        def stream(s, new, fin):
            nonlocal shown
            got.extend(new[:-1] if fin == "stop" else new)    # the stop token is not printed
            text = tok.decode(got)
            print(text[len(shown):], end="", flush=True)
            shown = text
        generate(model, [tok.encode_chat(a.prompt, a.template)], n=1, check_every=4,
                 callback=stream, **kw)
        print()
        if world > 1:
            dist.destroy_process_group()    # join gloo's threads while the interpreter is whole
        return

    try:
        recs = load_records(a.data)
    except (DataError, FileNotFoundError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None
    think = requires_think(a.think, a.template or tok.chat_template)
    rows, summ = evaluate(model, tok, recs, n=a.n, require_think=think, template=a.template,
                          workers=a.workers, rank=rank, world=world, progress=True, **kw)
    if rank == 0:
        if a.out:
            tmp = a.out + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            os.replace(tmp, a.out)                          # never a half-written results file
        summ.update(model=a.model, data=a.data, require_think=think)
        print(json.dumps(summ))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
