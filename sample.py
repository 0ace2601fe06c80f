"""Batched sampling with a KV cache and continuous batching, and a chat command line.

    from sample import generate
    outs = generate(model, prompts, n=8, max_new_tokens=8192, temperature=0.6, seed=0)
    outs[i * 8 + j].tokens, .logprobs, .finish_reason      # prompt-major, len(prompts) * n

    python sample.py --model DIR --prompt "What is 7 * 8?"          # one chat reply, streamed

Evaluation on a problem file (DeepScaleR's protocol: pass@1 with a 95% CI, pass@k) is
evaluate.py's job: `python evaluate.py --model DIR --data FILE ...`. The older spelling
`python sample.py --model DIR --data FILE ...` still works: it says so on stderr and runs
evaluate.py with the same flags. --kv-gib is GiB of KV cache (0, the default: 60% of the
unused GPU memory, 4 GiB on CPU), read by kv_budget_of as at every entry point.

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
In the code: _Rows is the host's per-row state, _Scheduler's methods are the steps (admit,
compact_tail, decode_chunk), prefill_groups decides which prompts share a prefill forward.
Arguments are checked before anything is allocated; a KV budget too small for one sequence
is kv_budget_problem's one message, here and at every entry point. NaN/inf logits raise
FloatingPointError (found in the log-probs each chunk brings back anyway: no extra
synchronisation).

Log-probs. `.logprobs[t]` is log softmax(logits / temperature) at the sampled token: the
distribution the token was drawn from *before* top-k/top-p truncation, which is the old-policy
log-prob GRPO's importance ratio needs and what model.token_logprobs(h, tokens, temperature)
recomputes (pinned by tests/test_sample.py). With temperature 0 (greedy) it is under T = 1.
A completion that stopped ends with its stop token (it is in .tokens and .logprobs).

Left out: paged KV (every row reserves its full capacity), prefix sharing across prompts,
speculative decoding, beam search, repetition penalties, tensor parallelism; grading and
evaluation (evaluate.py, verify.py).
"""
import argparse
import math
import numbers
import os
import runpy
import shlex
import sys
import time
from collections import deque
from dataclasses import dataclass

import torch

from common import bound_problem, print0, start_distributed, stop_distributed
from data import TEMPLATES, DataError, Tokenizer, clean_exit
from model import ModelFileError, Transformer, read_config, read_generation_eos

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


def default_kv_budget(device) -> int:
    """KV bytes when none is given: 60% of the free GPU memory, or 4 GiB on CPU. Blocks PyTorch's
    allocator holds unoccupied (a training step's activations, a previous call's cache) count as
    taken to the driver; they are handed back first, so inside a training loop the budget does
    not shrink after the first step, and the KV cache gets contiguous memory."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return int(0.6 * torch.cuda.mem_get_info(device)[0])
    return 4 * 2**30


def kv_budget_of(kv_gib: float | None) -> int | None:
    """The one reading of every --kv-gib flag (train.py, polish.py, sample.py, evaluate.py): GiB
    as generate()'s kv_budget in bytes; 0 or None is None, generate()'s default budget."""
    return int(kv_gib * 2**30) if kv_gib else None


def kv_budget_problem(config, kv_budget: int | None, tokens: int, dtype) -> str:
    """Why kv_budget (bytes; None: the default, sized when generate() runs) cannot hold one row
    of `tokens` (a prompt + its new tokens) of a model with this config in dtype; "" if it can.
    generate() makes the same check; the entry points make it before loading any weights."""
    per_row = KVCache.bytes_per_row(config, tokens, dtype)
    if kv_budget is None or kv_budget >= per_row:
        return ""
    return (f"the KV budget of {_size(kv_budget)} holds no sequence of {tokens} tokens, which needs "
            f"{_size(per_row)} of KV cache")


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

def prefill_groups(lengths: dict, budget: int) -> list:
    """Which prompts are prefilled together: lengths maps prompt -> token count (in queue
    order). Prompts are sorted by length (ties keep queue order) and cut into runs whose count
    x longest length (the padded batch) stays within `budget` tokens; a prompt longer than the
    budget is a group of its own. Sorting keeps right-padding waste low."""
    order = sorted(lengths, key=lengths.get)
    groups = []
    while order:
        g = 1
        while g < len(order) and (g + 1) * lengths[order[g]] <= budget:
            g += 1                        # sorted: the last prompt taken is the longest
        groups.append(order[:g])
        order = order[g:]
    return groups


def _prefill(model, prompts: list, group: list):
    """One forward over the prompts `group` (right-padded to the longest, T tokens); returns
    k, v (L, G, Hkv, T, D) and the logits of each prompt's last token (G, V) in fp32."""
    device = next(model.parameters()).device
    lens = torch.tensor([len(prompts[p]) for p in group], device=device)
    T = max(len(prompts[p]) for p in group)
    ids = torch.zeros(len(group), T, dtype=torch.long)                       # (G, T), 0-padded
    for i, p in enumerate(group):
        ids[i, :len(prompts[p])] = torch.tensor(prompts[p])
    pc = _PrefillCache()
    pos = torch.arange(T, device=device).expand(len(group), T)
    h = model(ids.to(device), positions=pos, cache=pc, return_hidden=True)   # (G, T, C)
    # logits of each prompt's last token only, never of every prompt position
    logits = model.lm_head(h[torch.arange(len(group), device=device), lens - 1]).float()
    return torch.stack(pc.k), torch.stack(pc.v), logits


class _Rows:
    """Host-side state of the cache rows and of the sequences they produce, so the hot path
    never asks the device. Sequence s samples prompt s // n; a row holds one sequence at a
    time. For a live row, length == cache.lengths[row]."""

    def __init__(self, count: int, n: int, total: int, max_new_tokens: int, stops: set, callback):
        self.seq = [-1] * count                   # sequence each row holds; -1: the row is free
        self.length = [0] * count                 # tokens in the row's KV slots
        self.left = [0] * count                   # new tokens the row may still produce
        self.tokens = [[] for _ in range(total)]  # per sequence: its new tokens so far
        self.logprobs = [[] for _ in range(total)]
        self.reason = [None] * total              # per sequence: 'stop' | 'length' once done
        self.n, self.max_new_tokens, self.stops, self.callback = n, max_new_tokens, stops, callback

    def free(self, active: int) -> list:
        return [r for r in range(active) if self.seq[r] < 0]

    def live(self, active: int) -> list:
        return [r for r in range(active) if self.seq[r] >= 0]

    def start(self, r: int, s: int, prompt_len: int):
        """Row r takes sequence s, whose prompt fills its first prompt_len slots."""
        self.seq[r], self.length[r], self.left[r] = s, prompt_len, self.max_new_tokens

    def record(self, r: int, new_t: list, new_lp: list):
        """Append row r's new tokens up to a stop or its length limit; free the row if done.
        Tokens sampled after the stop (later steps of the same chunk) are dropped."""
        s = self.seq[r]
        take = min(len(new_t), self.left[r])
        for i, t in enumerate(new_t[:take]):
            if t in self.stops:
                take, self.reason[s] = i + 1, "stop"
                break
        if not math.isfinite(sum(new_lp[:take])):
            self._non_finite(s, new_lp[:take])
        self.tokens[s] += new_t[:take]
        self.logprobs[s] += new_lp[:take]
        self.left[r] -= take
        if self.reason[s] is None and self.left[r] == 0:
            self.reason[s] = "length"
        if self.callback:
            self.callback(s, new_t[:take], self.reason[s])
        if self.reason[s] is not None:
            self.seq[r] = -1

    def _non_finite(self, s: int, new_lp: list):
        """A NaN/inf log-prob means NaN/inf logits (finite logits give a finite log-prob at
        any token that can be sampled): stop with where it happened, instead of returning
        tokens drawn from garbage. The log-probs reach the host anyway, so this costs no sync."""
        i = next(i for i, x in enumerate(new_lp) if not math.isfinite(x))
        step = len(self.tokens[s]) + i           # new token 0 comes from the prefill's logits
        where = "the prefill" if step == 0 else f"decode step {step}"
        raise FloatingPointError(
            f"generate: the model's logits are not finite (log-prob {new_lp[i]}) at {where} of sequence {s} "
            f"(prompt {s // self.n}, sample {s % self.n}): its weights or activations hold NaN or inf "
            f"(an overflow in a low-precision dtype, or a corrupt checkpoint?)")

    def record_chunk(self, steps: int, chunk_t: list, chunk_lp: list) -> list:
        """A decoded chunk, (active, steps) tokens and log-probs: every decoded row's KV grew
        by `steps` slots; live rows record. Returns the rows idle after it."""
        for r in range(len(chunk_t)):
            self.length[r] += steps
            if self.seq[r] >= 0:
                self.record(r, chunk_t[r], chunk_lp[r])
        return self.free(len(chunk_t))

    def compact(self, live: list):
        """Rows `live` move to rows [0, len(live)) (the host side of KVCache.compact)."""
        count = len(self.seq)
        self.seq = [self.seq[r] for r in live] + [-1] * (count - len(live))
        self.length = [self.length[r] for r in live] + [0] * (count - len(live))
        self.left = [self.left[r] for r in live] + [0] * (count - len(live))

    def completions(self) -> list:
        return [Completion(t, lp, why) for t, lp, why in zip(self.tokens, self.logprobs, self.reason)]


class _Scheduler:
    """Continuous batching over one KV cache: the steps generate() runs in turn, and the state
    they share (the rows, the queue of waiting sequences, prefills kept for later samples)."""

    def __init__(self, model, prompts: list, n: int, cache: KVCache, decoder: "_Decoder", rows: _Rows,
                 gen, samp: dict, prefill_tokens: int, check_every: int):
        self.model, self.prompts, self.n = model, prompts, n
        self.cache, self.dec, self.rows, self.gen, self.samp = cache, decoder, rows, gen, samp
        self.prefill_tokens, self.check_every = prefill_tokens, check_every
        self.queue = deque(range(len(prompts) * n))   # waiting sequences, prompt-major
        # prompt -> (k, v (L, 1, Hkv, T, D), logits (1, V)): the prefill of the one prompt whose
        # samples were split between two admits, so its later samples are not prefilled again
        self.pending = {}
        self.stats = dict(prefill_s=0.0, decode_s=0.0, steps=0, decode_tokens=0, kv_token_reads=0,
                          rows=cache.rows)

    def admit(self):
        """Free rows take waiting sequences: each prompt is prefilled once, its K/V copied
        into each of its sample rows, and each row's first token sampled. Repeats while rows
        free up at once (a first token that stops, max_new_tokens=1)."""
        while self.queue:
            free = self.rows.free(self.cache.active)
            if not free:
                return
            t0 = time.perf_counter()
            rows_of = {}                                  # prompt -> [(row, seq)]
            for r in free[:len(self.queue)]:
                s = self.queue.popleft()
                rows_of.setdefault(s // self.n, []).append((r, s))
            # the prompt whose later samples still wait keeps its prefill for the next admit
            wait = self.queue[0] // self.n if self.queue and self.queue[0] % self.n else None
            for group, k, v, logits in self._prefilled(rows_of):   # one group in memory at a time
                self._copy_kv(group, k, v, logits, rows_of, wait)
                self._first_tokens(group, logits, rows_of)
            self.stats["prefill_s"] += time.perf_counter() - t0

    def _prefilled(self, rows_of: dict):
        """(group, k, v, logits) for every prompt in rows_of: kept prefills first, then fresh
        ones in prefill_groups' order."""
        kept = [([p], *self.pending.pop(p)) for p in list(self.pending)]
        yield from kept
        lengths = {p: len(self.prompts[p]) for p in rows_of if all(p != g[0] for g, *_ in kept)}
        for group in prefill_groups(lengths, self.prefill_tokens):
            yield (group, *_prefill(self.model, self.prompts, group))

    def _copy_kv(self, group: list, k, v, logits, rows_of: dict, wait):
        """The group's prompt K/V (L, G, Hkv, T, D) into slots [0, T) of each sample row; the
        prompt `wait` (later samples still queued) keeps a copy in pending."""
        T, device = k.shape[3], self.cache.k.device
        for g, p in enumerate(group):
            ri = torch.tensor([r for r, _ in rows_of[p]], device=device)
            self.cache.k[:, ri, :, :T] = k[:, g:g + 1]             # (L, rows, Hkv, T, D)
            self.cache.v[:, ri, :, :T] = v[:, g:g + 1]
            if p == wait:
                self.pending[p] = (k[:, g:g + 1].clone(), v[:, g:g + 1].clone(), logits[g:g + 1])

    def _first_tokens(self, group: list, logits, rows_of: dict):
        """Each sample row of the group starts: its length is its prompt's, and its first token
        is sampled from its prompt's last logits (G, V) with one uniform per row."""
        device = self.cache.k.device
        rs = [(r, s) for p in group for r, s in rows_of[p]]
        ri = torch.tensor([r for r, _ in rs], device=device)
        plen = [len(self.prompts[s // self.n]) for _, s in rs]
        self.cache.lengths[ri] = torch.tensor(plen, device=device)
        src = torch.tensor([g for g, p in enumerate(group) for _ in rows_of[p]], device=device)
        u = torch.rand(len(rs), 1, generator=self.gen, device=device, dtype=torch.float64)
        tok, lp = sample_tokens(logits[src], u, **self.samp)                   # (len(rs),)
        self.dec.cur[ri] = tok
        for (r, s), P, t, logp in zip(rs, plen, tok.tolist(), lp.tolist()):
            self.rows.start(r, s, P)
            self.rows.record(r, [t], [logp])

    def compact_tail(self, live: list) -> bool:
        """The tail: nothing waits and half the rows are idle while long completions run on.
        Move the live rows to the front so idle rows stop costing; True if it did."""
        if self.queue or len(live) > self.cache.active // 2:
            return False
        self.cache.compact(live, max(self.rows.length[r] for r in live))
        self.dec.cur[:len(live)] = self.dec.cur[torch.tensor(live, device=self.cache.k.device)]
        self.rows.compact(live)
        return True

    def decode_chunk(self, live: list):
        """Up to check_every decode steps of rows [0, active), no more than the live row
        closest to max_new_tokens may take; one host sync at the end. Returns the steps and the chunk's
        tokens and log-probs as host lists (active, steps)."""
        na = self.cache.active
        steps = min(self.check_every, min(self.rows.left[r] for r in live))
        # one window for the chunk: the longest row after `steps` writes, rounded up
        self.cache.window = _window(max(self.rows.length[:na]) + steps, self.cache.capacity)
        t0 = time.perf_counter()
        chunk_t, chunk_lp = self.dec.run(steps, self.gen)
        st = self.stats
        st["decode_s"] += time.perf_counter() - t0
        st["steps"] += steps
        st["decode_tokens"] += steps * len(live)
        st["kv_token_reads"] += sum(steps * self.rows.length[r] + steps * (steps + 1) // 2 for r in live)
        return steps, chunk_t, chunk_lp

    def reset_idle(self, idle: list):
        """Idle rows restart at slot 0, so that decoding them never runs past their capacity."""
        if idle:
            self.cache.lengths[torch.tensor(idle, device=self.cache.k.device)] = 0
            for r in idle:
                self.rows.length[r] = 0


def _kv_cache(model, longest: int, total: int, max_new_tokens: int, max_rows, kv_budget) -> KVCache:
    """A cache of capacity longest prompt + max_new_tokens, with as many rows as the budget
    holds (at most one per sequence, at most max_rows). A budget that holds no row is
    kv_budget_problem's message, the one the entry points give before loading weights."""
    p0 = next(model.parameters())
    capacity = longest + max_new_tokens
    budget = default_kv_budget(p0.device) if kv_budget is None else kv_budget
    problem = kv_budget_problem(model.config, budget, capacity, p0.dtype)
    if problem:
        raise ValueError(f"generate: {problem} (the longest prompt, {longest} tokens, + max_new_tokens, "
                         f"{max_new_tokens}): shorten the prompt or raise kv_budget")
    per_row = KVCache.bytes_per_row(model.config, capacity, p0.dtype)
    rows = min(total if max_rows is None else max_rows, total, budget // per_row)
    return KVCache(model.config, rows, capacity, p0.device, p0.dtype)


def _size(nbytes: float) -> str:
    """Bytes for a message, in the largest unit that keeps the number >= 1: '9.8 KiB'."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    k = 0
    while nbytes >= 1024 and k < len(units) - 1:
        nbytes /= 1024
        k += 1
    return f"{nbytes:.0f} B" if k == 0 else f"{nbytes:.1f} {units[k]}"


def _token_ids(name: str, ids) -> list:
    """ids (a list of ints, or a 1-D integer tensor or array) as a list of Python ints. A float
    is refused, not truncated: 1.7 is no token id."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"generate: {name} must be a 1-D integer tensor, not {ids.dtype} of shape "
                            f"{tuple(ids.shape)}")
        return ids.tolist()
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise TypeError(f"generate: {name} must be a list of token ids, not {type(ids).__name__} {ids!r:.60}")
    ids = list(ids)
    for i, t in enumerate(ids):
        if type(t) is not int and (isinstance(t, bool) or not isinstance(t, numbers.Integral)):
            raise TypeError(f"generate: {name}[{i}] is {type(t).__name__} {t!r}, not an int token id")
    return [int(t) for t in ids]


def _checked_prompts(prompts, vocab_size: int) -> list:
    """prompts as lists of ints, each non-empty and inside the vocabulary."""
    if isinstance(prompts, torch.Tensor):
        prompts = list(prompts)                            # (P, T): one prompt per row
    if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__iter__"):
        raise TypeError(f"generate: prompts must be a list of token-id lists, not {type(prompts).__name__}")
    prompts = [_token_ids(f"prompts[{i}]", p) for i, p in enumerate(prompts)]
    if not prompts:
        raise ValueError("generate: prompts is empty; it must be a non-empty list of non-empty token-id lists")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"generate: prompts[{i}] is empty; prompts must be non-empty token-id lists")
        if min(p) < 0 or max(p) >= vocab_size:
            bad = next(t for t in p if not 0 <= t < vocab_size)
            raise ValueError(f"generate: prompts[{i}] holds token id {bad}, outside the vocabulary "
                             f"[0, {vocab_size})")
    return prompts


def _checked_stops(stop_ids, eos) -> set:
    """The ids that end a completion: stop_ids (ints, a tensor, or one int), or eos for None."""
    if stop_ids is None:
        stop_ids = eos
    if isinstance(stop_ids, numbers.Integral) and not isinstance(stop_ids, bool):
        stop_ids = [stop_ids]
    if isinstance(stop_ids, torch.Tensor) and stop_ids.dim() == 0:
        stop_ids = stop_ids[None]
    return set(_token_ids("stop_ids", stop_ids))


def _int_arg(name: str, value, low: int):
    """An int argument >= low, or an error naming it (a float or a bool is refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"generate: {name} must be an int, not {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"generate: {name} must be >= {low}, not {value}")


def _real_arg(name: str, value, low: float, high: float, low_ok: bool):
    """A finite real argument in [low, high] ((low, high] when not low_ok), or an error naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"generate: {name} must be a number, not {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < low or value > high or (value == low and not low_ok):
        bounds = f"{'[' if low_ok else '('}{low}, {high}]" if high < math.inf else f">= {low}"
        raise ValueError(f"generate: {name} must be a finite number {'in ' if high < math.inf else ''}"
                         f"{bounds}, not {value}")


def _check_options(n, max_new_tokens, temperature, top_p, top_k, seed, max_rows, kv_budget,
                   check_every, prefill_tokens, callback, stats):
    """Every scalar argument of generate(), checked before anything is allocated."""
    for name, value, low in (("n", n, 1), ("max_new_tokens", max_new_tokens, 1), ("top_k", top_k, 0),
                             ("check_every", check_every, 1), ("prefill_tokens", prefill_tokens, 1)):
        _int_arg(name, value, low)
    # None is "no cap" / "the default budget"; 0 is an error, not a synonym for None
    for name, value in (("max_rows", max_rows), ("kv_budget", kv_budget)):
        if value is not None:
            _int_arg(name, value, 1)
    if seed is not None:
        _int_arg("seed", seed, -2**63)
    _real_arg("temperature", temperature, 0.0, math.inf, low_ok=True)
    _real_arg("top_p", top_p, 0.0, 1.0, low_ok=False)
    if callback is not None and not callable(callback):
        raise TypeError(f"generate: callback must be callable, not {type(callback).__name__}")
    if stats is not None and not isinstance(stats, dict):
        raise TypeError(f"generate: stats must be a dict, not {type(stats).__name__}")


@torch.no_grad()
def generate(model, prompts, n: int = 1, max_new_tokens: int = 256, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, stop_ids=None, seed=None, max_rows=None,
             kv_budget=None, check_every: int = 16, prefill_tokens: int = 8192,
             cuda_graphs: bool = False, callback=None, stats=None) -> list:
    """Sample n completions of each prompt; returns len(prompts) * n Completions, prompt-major
    (sequence s = prompt s // n, sample s % n).

    model: a model.Transformer; its device and dtype are the cache's.
    prompts: token-id lists, each non-empty, ids in [0, vocab_size).
    n: completions per prompt; a prompt is prefilled once for all of them.
    max_new_tokens: the most tokens a completion may have (the stop token included).
    temperature: logits are divided by it before sampling; 0 is greedy (log-probs then at T=1).
    top_p: nucleus mass kept, in (0, 1]; 1 keeps every token.
    top_k: the k most likely tokens kept (applied before top_p); 0 keeps every token.
    stop_ids: ids that end a completion; None: model.config.eos_token_id; []: never stop early.
    seed: seeds the sampling generator; None draws a fresh seed.
    max_rows: a cap on the rows decoded together; None: as many as kv_budget holds.
    kv_budget: bytes for the KV cache; None: 60% of free GPU memory, 4 GiB on CPU.
    check_every: decode steps between looks at the device (finished rows found, rows refilled).
    prefill_tokens: the most padded tokens (prompts x longest) in one prefill forward.
    cuda_graphs: replay the decode step as CUDA graphs (GPU only; ignored on CPU).
    callback: callback(seq, new_tokens, finish_reason or None), called as tokens come back.
    stats: a dict that receives timings and counts (prefill_s, decode_s, steps, rows, ...).
    """
    # 0) every argument checked before anything is allocated
    _check_options(n, max_new_tokens, temperature, top_p, top_k, seed, max_rows, kv_budget,
                   check_every, prefill_tokens, callback, stats)
    prompts = _checked_prompts(prompts, model.config.vocab_size)
    stops = _checked_stops(stop_ids, model.config.eos_token_id)
    t_start = time.perf_counter()
    total = len(prompts) * n
    cache = _kv_cache(model, max(map(len, prompts)), total, max_new_tokens, max_rows, kv_budget)
    gen = torch.Generator(cache.k.device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))   # a numpy integer is an Integral, but manual_seed wants an int
    samp = dict(temperature=temperature, top_p=top_p, top_k=top_k)
    # a chunk never runs more than max_new_tokens steps: no wider buffers than that
    dec = _Decoder(model, cache, min(check_every, max_new_tokens), samp, cuda_graphs)
    rows = _Rows(cache.rows, n, total, max_new_tokens, stops, callback)
    run = _Scheduler(model, prompts, n, cache, dec, rows, gen, samp, prefill_tokens, check_every)
    while True:
        # 1) free rows take waiting sequences (prefill, K/V copied per sample, first token)
        run.admit()
        live = rows.live(cache.active)
        if not live:
            break
        # 2) the tail: once nothing waits and half the rows idle, the live rows move to the front
        if run.compact_tail(live):
            live = list(range(len(live)))
        # 3) decode a chunk on the device; its tokens come back in one transfer
        steps, chunk_t, chunk_lp = run.decode_chunk(live)
        # 4) record each live row's tokens up to its stop; finished rows free up and restart at 0
        run.reset_idle(rows.record_chunk(steps, chunk_t, chunk_lp))
    run.stats.update(total_s=time.perf_counter() - t_start, graphs=len(dec.graphs), capture_s=dec.capture_s)
    if stats is not None:
        stats.update(run.stats)
    return rows.completions()


# ----------------------------------------------------------------------------- command line

def add_generation_flags(ap: argparse.ArgumentParser):
    """--model and the flags that become generate()'s keywords, in a group of their own: this
    file's --prompt and evaluate.py share them (checked by generation_flag_problem, turned into
    generate()'s keywords by generation_kwargs)."""
    g = ap.add_argument_group("model and sampling")
    g.add_argument("--model", required=True, help="HF model folder (config.json, safetensors, tokenizer.json)")
    g.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    g.add_argument("--max-new-tokens", type=int, default=4096, help="response budget per sample")
    g.add_argument("--prompt-budget", type=int, default=1024,
                   help="longest prompt in tokens, as train.py (evaluate.py drops and counts longer problems; "
                        "sample.py refuses a longer --prompt)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (each rank adds its rank)")
    g.add_argument("--template", default=None, choices=sorted(TEMPLATES),
                   help="chat template (default: the one the checkpoint's tokenizer_config.json names)")
    g.add_argument("--system", default=None, metavar="TEXT",
                   help="system text of the chat template (default: the checkpoint's own, e.g. Qwen2.5's "
                        "'You are Qwen, ...'; --system '' for none)")
    g.add_argument("--max-rows", type=int, default=None, help="cap on rows decoded together (default: none)")
    g.add_argument("--kv-gib", type=float, default=0.0,
                   help="KV cache budget in GiB; 0 (the default): 60%% of unused GPU memory, 4 on CPU")
    g.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                   help="the weights' dtype while sampling (default bfloat16 on GPU, float32 on CPU); float16 "
                        "matches train.py --precision fp16")
    g.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="replay decode steps as CUDA graphs (GPU only; 2.8x eager at batch 256 on an H200)")


# lowest value of each numeric flag of add_generation_flags, and whether the lowest is allowed
GENERATION_BOUNDS = {"temperature": (0.0, True), "top_k": (0, True), "max_new_tokens": (1, True),
                     "prompt_budget": (1, True), "max_rows": (1, True), "kv_gib": (0.0, True)}


def generation_flag_problem(a: argparse.Namespace) -> str:
    """The first of add_generation_flags' flags out of range, as a message naming flag and value;
    "" if none. These mistakes otherwise surface after the model has loaded, or as a traceback
    from generate()."""
    given = {name: bound for name, bound in GENERATION_BOUNDS.items() if getattr(a, name) is not None}
    problem = bound_problem(a, given)             # --max-rows None: no cap, nothing to check
    if problem:
        return problem
    if not 0 < a.top_p <= 1:
        return f"--top-p must be in (0, 1], not {a.top_p}"
    if not -2**62 <= a.seed <= 2**62:   # each rank adds its rank, and generate() takes a 64-bit seed
        return f"--seed must be between -2^62 and 2^62, not {a.seed}"
    if not os.path.isdir(a.model):
        return f"--model {a.model}: no such folder"
    return ""


def generation_kwargs(a: argparse.Namespace, rank: int) -> dict:
    """generate()'s keywords from add_generation_flags' flags; each rank samples with its own seed."""
    return dict(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, max_rows=a.max_rows,
                cuda_graphs=a.cuda_graphs, max_new_tokens=a.max_new_tokens, seed=a.seed + rank,
                kv_budget=kv_budget_of(a.kv_gib))


def stop_ids(tok, eos: list, folder: str = "", template: str | None = None) -> list[int]:
    """The ids that end a reply, one rule for train.py, polish.py, evaluate.py and --prompt:
    config.json's eos_token_id (`eos`, ModelConfig.eos_token_id), generation_config.json's in
    `folder` (an int or a list; Qwen2.5's instruct checkpoints list <|im_end|> and
    <|endoftext|>), and the end-of-turn token of the chat template the prompts are rendered
    with. transformers stops at generation_config.json's ids; a ChatML checkpoint whose
    config.json names only <|endoftext|> would otherwise never stop at the end of its turn, and
    every reply would run to the budget, be cut off and earn nothing."""
    ids = list(eos) + (read_generation_eos(folder) if folder else [])
    turn_end = tok.end_of_turn(template)
    if turn_end is not None:
        ids.append(turn_end)
    return sorted(set(ids))


def read_tokenizer(folder: str, program: str) -> Tokenizer:
    """The checkpoint's tokenizer; where our rendering of its chat template may differ from the
    checkpoint's own (data.read_chat_template), one line on stderr says how (rank 0)."""
    tok = Tokenizer.from_pretrained(folder)
    if tok.template.note:
        print0(f"{program}: note: {tok.template.note}", file=sys.stderr)
    return tok


def load_sampler(a: argparse.Namespace, device, longest: int, program: str) -> Transformer:
    """--model's weights in --dtype (bfloat16 on GPU, float32 on CPU) on device, loaded only once
    --kv-gib is known to hold the longest prompt (`longest` tokens) + --max-new-tokens; if it
    cannot, one line naming the flag and argparse's exit status, before any weight is read."""
    dtype = getattr(torch, a.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    tokens = longest + a.max_new_tokens
    budget = kv_budget_of(a.kv_gib) or default_kv_budget(device)   # the default is sized now, as generate() will
    problem = kv_budget_problem(read_config(a.model), budget, tokens, dtype)
    if problem:
        print(f"{program}: error: --kv-gib {a.kv_gib:g}: {problem} (the longest prompt, {longest} tokens, "
              f"+ --max-new-tokens {a.max_new_tokens}): raise --kv-gib or lower --max-new-tokens", file=sys.stderr)
        raise SystemExit(2)
    return Transformer.from_pretrained(a.model, device=device, dtype=dtype).eval()


def parse_flags(argv=None) -> argparse.Namespace:
    """The --prompt command line, every flag checked before anything is loaded (argparse's
    one-line error, naming the flag and its value, and exit status 2)."""
    ap = argparse.ArgumentParser(prog="sample.py", description=__doc__.split("How generate() works")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", required=True, help="one user message: render the chat template, stream the reply")
    add_generation_flags(ap)
    a = ap.parse_args(argv)
    problem = generation_flag_problem(a) or ("" if a.prompt.strip() else "--prompt is empty")
    if problem:
        ap.error(problem)
    return a


class _Printer:
    """generate()'s callback for --prompt: prints the reply's new text as its tokens come back
    (decoded in full each time, so a character split across tokens prints once whole)."""

    def __init__(self, tok):
        self.tok, self.got, self.shown = tok, [], ""

    def __call__(self, s: int, new: list, finish):
        self.got.extend(new[:-1] if finish == "stop" else new)    # the stop token is not printed
        text = self.tok.decode(self.got)
        print(text[len(self.shown):], end="", flush=True)
        self.shown = text


def chat(model, tok, ids: list, kw: dict):
    """Stream one reply to stdout, looking at the device every 4 steps."""
    generate(model, [ids], n=1, check_every=4, callback=_Printer(tok), **kw)
    print()


def run(a: argparse.Namespace):
    """Inputs first (tokenizer, prompt, budget), then the model, then the streamed reply."""
    rank, world, device = start_distributed()
    try:
        tok = read_tokenizer(a.model, "sample.py")
        ids = tok.encode_chat(a.prompt, a.template, a.system)
        if len(ids) > a.prompt_budget:
            raise DataError(f"--prompt is {len(ids)} tokens, over --prompt-budget {a.prompt_budget}")
        model = load_sampler(a, device, len(ids), "sample.py")
        kw = dict(generation_kwargs(a, rank), stop_ids=stop_ids(tok, model.config.eos_token_id, a.model, a.template))
        try:
            chat(model, tok, ids, kw)
        except FloatingPointError as e:      # NaN/inf logits: the weights in --model, not the prompt
            raise ModelFileError(f"--model {a.model}: {e}") from None
    finally:
        stop_distributed()                   # on any exit, while the interpreter is whole


def run_evaluate_py(argv: list):
    """`sample.py --data ...`, the evaluation command before it had a file of its own: one line
    on stderr, then evaluate.py run as a program with the same flags, as `python evaluate.py`
    would run it (under torchrun too). Run by path, never imported: evaluate.py imports this
    file, and imports only flow downwards."""
    print0(f"sample.py --data is now evaluate.py: running python evaluate.py {shlex.join(argv)}", file=sys.stderr)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "evaluate.py")
    saved, sys.argv = sys.argv, [path, *argv]
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv = saved


def main(argv=None):
    """The --prompt command line; a command line with --data runs evaluate.py instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg == "--data" or arg.startswith("--data=") for arg in argv):
        run_evaluate_py(argv)
        return
    a = parse_flags(argv)
    with clean_exit("sample.py"):
        run(a)


if __name__ == "__main__":
    main()
