"""Rejection-sampling chain-of-thought polishing of a math dataset, resumable and multi-GPU.

    python polish.py --model DIR --data deepscaler.json --out polished.jsonl
    torchrun --nproc_per_node=8 polish.py --model DIR --data deepscaler.json --out polished.jsonl \\
        --samples 8 --rounds 2 --max-new-tokens 8192          # rank parts, merged by rank 0 at the end
    python polish.py merge --data deepscaler.json --out polished.jsonl   # merge the parts by hand
    python data.py stats polished.jsonl --model DIR           # coverage and pass-rate histogram

Every problem of --data (data.load_records, deduplicated) gets --samples chains of thought
(T 0.6, top-p 0.95, the DeepScaleR prompt in the checkpoint's chat template) from
sample.generate, continuous batching over --chunk problems per call. When a problem's samples
are all back, verify.grade_batch grades them against `answer` (or any of `answers`); a chain
without </think> is not correct when data.requires_think says so for --think (auto: the R1
template), the same rule as train.py's reward, so pass_rate predicts the reward GRPO will see. A chain is *accepted* when it is correct, not truncated and at least
--min-tokens long (default: min(max_position_embeddings, --max-new-tokens) / 4; R1-Distill-Qwen
with 8,192 new tokens: 2,048). A problem with no accepted chain is sampled again in the next
call, up to --rounds rounds in all; then it stays in the output unpolished, with its pass rate.

Selection rule: of the accepted chains, the one with the most reconsideration markers (MARKERS:
wait, hmm, alternatively, double-check, verify, let me check, ...) per 1,000 tokens of the
reasoning before </think> wins; ties go to the longer chain, then the earlier sample. Density,
not count, so that a long chain is not preferred for length alone, while the floor keeps terse
summary-style chains out. The summary prints the rule's effect: markers/1k and length of the
chosen chains against the mean over all accepted chains (what a random pick would give).

Output: one row per input problem, in input order: the input fields, `solution` = the chosen chain
as the model wrote it after the template's "<think>\\n" (reasoning, </think>, answer; no eos),
`original_solution` = the input's solution (kept from the input if it already has one), and
`polish` = {id, polished, samples, correct, pass_rate = correct / samples, tokens (of the chosen
chain, 0 if none), accepted, score, accepted_score, accepted_tokens, rounds, min_tokens,
max_new_tokens, temperature, top_p, model, seed}. Unpolished rows keep `solution` as it was.
train.py keeps problems with pass_rate_min < pass_rate < pass_rate_max.

Crash safety: each rank appends finished rows to OUT-stem.rankR-of-W.jsonl, one os.write per row
(fsync at the end of every generate call and at least every minute). A restart reads OUT and
every part (any world size), skips problems that have a row, and cuts a torn last line off its
own part. A kill loses only the problems in flight. Rank 0 merges OUT atomically (tmp + rename)
once every problem has a row, and removes the parts.
Left out: grading in the background while decoding (grading is sequential and reported), a
prefix cache across a problem's rounds, length-balanced sharding across ranks.
"""
import argparse
import hashlib
import inspect
import json
import os
import re
import sys
import time
from collections import deque
from dataclasses import dataclass, fields

import torch

from data import (THINK_CHOICES, DataError, Tokenizer, dedupe, load_records, prompt_ids, reference_answers,
                  requires_think, shard)
from model import Transformer
from sample import generate
from verify import grade_batch, reward_of


@dataclass
class Config:
    model: str = ""              # HF model folder (config.json, safetensors, tokenizer.json)
    data: str = ""               # problems: JSON list, JSONL, parquet, or a folder of shards
    out: str = ""                # output JSONL; rank parts are written beside it
    samples: int = 8             # chains of thought sampled per problem per round (K)
    rounds: int = 1              # sampling rounds in all for a problem with no accepted chain yet
    temperature: float = 0.6     # sampling temperature
    top_p: float = 0.95          # nucleus sampling mass
    max_new_tokens: int = 8192   # generation budget per chain; a chain that hits it is rejected
    min_tokens: int = -1         # shortest acceptable chain; -1: min(max_position_embeddings, max_new_tokens) / 4
    chunk: int = 256             # problems per generate call (more: a fuller batch in each call's tail)
    seed: int = 0                # sampling seed; each call derives its own from it, its first problem and round
    workers: int = 4             # sympy grading processes (verify.grade_batch)
    template: str = ""           # chat template, deepseek-r1 or chatml; empty: the checkpoint's own
    think: str = "auto"          # require </think> for a correct chain: yes | no | auto (R1 template)
    kv_gib: float = 0.0          # KV cache budget in GiB; 0: the sampler's default (60% of unused GPU memory)
    max_rows: int = 0            # cap on sequences decoded together; 0: as many as the KV budget holds
    cuda_graphs: bool = True     # replay decode steps as CUDA graphs (GPU only)
    skip_bad: bool = False       # drop input rows without problem or answer (listed) instead of stopping


MARKERS = re.compile(r"\b(?:wait|hmm+|alternatively|double[- ]?check(?:ing|ed)?|re-?check(?:ing)?|"
                     r"verify(?:ing)?|verification|let me (?:check|see|confirm|think again|re-?examine|"
                     r"reconsider)|on second thought|hold on|but actually|re-?examin(?:e|ing)|"
                     r"reconsider(?:ing)?|mistake|another (?:way|approach))\b", re.IGNORECASE)
PROGRESS_S = (0.5, 30.0)         # seconds between progress updates: on a terminal, in a log


def markers(text: str) -> int:
    """Reconsideration markers in the reasoning (the text before </think>)."""
    return len(MARKERS.findall(text.split("</think>", 1)[0]))


def score(text: str, tokens: int) -> float:
    """The selection score: markers per 1,000 tokens of the chain."""
    return 1000.0 * markers(text) / max(tokens, 1)


def pick(cands: list) -> int:
    """Index of the chosen chain among (score, tokens, ...) tuples: highest score, then longest, then first."""
    return max(range(len(cands)), key=lambda i: (cands[i][0], cands[i][1], -i))


def default_floor(max_positions: int, max_new_tokens: int) -> int:
    """A quarter of the model's context, capped at a quarter of the generation budget."""
    return min(max_positions, max_new_tokens) // 4


def problem_id(index: int, problem: str) -> str:
    """Stable row id: position in the deduplicated input + a hash of the problem text."""
    return f"{index}-{hashlib.sha1(problem.encode()).hexdigest()[:10]}"


# ----------------------------------------------------------------------------- files

def part_path(out: str, rank: int, world: int) -> str:
    stem, ext = os.path.splitext(out)
    return f"{stem}.rank{rank}-of-{world}{ext or '.jsonl'}"


def part_files(out: str) -> list[str]:
    """Every rank part of OUT, of any world size."""
    folder, (stem, ext) = os.path.dirname(out) or ".", os.path.splitext(os.path.basename(out))
    pat = re.compile(re.escape(stem) + r"\.rank\d+-of-\d+" + re.escape(ext or ".jsonl") + r"\Z")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if pat.match(f)) \
        if os.path.isdir(folder) else []


def read_rows(path: str, repair: bool = False) -> list[dict]:
    """Rows of a file polish.py wrote. A torn last line (no newline, or not JSON) is dropped, and
    with repair cut off the file; a bad line anywhere else is a DataError naming file:line."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    torn, rows, good = lines.pop(), [], 0        # torn == b"" when the file ends with a newline
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance((row.get("polish") or {}).get("id"), str):
                raise ValueError
        except ValueError:
            if i == len(lines) - 1 and not torn:     # a last line of garbage (e.g. NULs after a crash)
                torn = line
                break
            raise DataError(f"{path}:{i + 1}: not a polish.py row: {line[:80]!r}") from None
        rows.append(row)
        good += len(line) + 1
    if torn:
        print(f"{path}: dropping a torn last line ({len(torn)} bytes)", file=sys.stderr)
        if repair:
            os.truncate(path, good)
    return rows


def done_rows(out: str, known: set, own: str | None = None) -> dict:
    """id -> row over OUT and every part; `own` (this rank's part) is repaired."""
    rows = {}
    for path in [out] + part_files(out):
        for r in read_rows(path, repair=path == own):
            if r["polish"]["id"] not in known:
                raise DataError(f"{path}: row {r['polish']['id']!r} matches no problem of --data; "
                                "was it made from another file? Move it away or choose another --out")
            rows.setdefault(r["polish"]["id"], r)
    return rows


def merge(out: str, ids: list) -> list[dict]:
    """All rows in input order, written to OUT atomically once every problem has one; parts removed."""
    got = done_rows(out, set(ids))
    missing = [i for i in ids if i not in got]
    if missing:
        raise SystemExit(f"error: {out}: {len(missing)} of {len(ids)} problems have no row yet (first: "
                         f"{missing[0]}); run polish.py again with the same flags to finish them")
    rows = [got[i] for i in ids]
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(out + ".tmp", out)
    for p in part_files(out):
        os.remove(p)
    return rows


# ----------------------------------------------------------------------------- polishing

def polish(model, tok, recs, ids, todo, cfg, floor, part, show) -> dict:
    """Polish problems `todo` (indices into recs), appending each finished row to `part`."""
    K, think = cfg.samples, requires_think(cfg.think, cfg.template or tok.chat_template)
    fd = os.open(part, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    queue, retry, state = deque(todo), [], {}
    t = dict(gen=0.0, callback=0.0, grade=0.0, tokens=0, done=0, accepted=0, synced=time.time())
    t0, tty = time.perf_counter(), sys.stderr.isatty()
    last = [t0]

    def progress(final=False):
        now = time.perf_counter()
        if not show or not final and now - last[0] < PROGRESS_S[not tty]:
            return
        last[0], el, d = now, now - t0, t["done"]
        eta = f"{el * (len(todo) - d) / d / 60:.1f} min" if d else "?"
        line = (f"polish: {d}/{len(todo)} problems, {t['accepted'] / max(d, 1):.0%} accepted, "
                f"{t['tokens'] / el:,.0f} tok/s, ETA {eta}")
        print("\r" + line.ljust(79) if tty else line, end="\n" if final or not tty else "",
              file=sys.stderr, flush=True)

    def finish(p, rnd, texts, lengths, fins):
        """Grade one problem's samples; write its row, or queue it for another round."""
        ref = reference_answers(recs[p])
        g0 = time.perf_counter()
        ok = grade_batch([(x, ref) for x in texts], workers=cfg.workers, problem=recs[p]["problem"])
        t["grade"] += time.perf_counter() - g0
        s = state.setdefault(p, dict(samples=0, correct=0, cands=[]))
        for x, n, fin, c in zip(texts, lengths, fins, ok):
            s["samples"] += 1
            c = bool(reward_of(c, x, think))            # train.py's reward: no </think>, no credit
            s["correct"] += c
            if c and fin == "stop" and n >= floor:
                s["cands"].append((score(x, n), n, x))
        if not s["cands"] and rnd < cfg.rounds:
            retry.append((p, rnd + 1))
            return
        del state[p]
        acc = s["cands"]
        best = acc[pick(acc)] if acc else None
        row = dict(recs[p])
        row["original_solution"] = recs[p].get("original_solution", recs[p]["solution"])
        if best:
            row["solution"] = best[2]
        row["polish"] = dict(
            id=ids[p], polished=best is not None, samples=s["samples"], correct=s["correct"],
            pass_rate=s["correct"] / s["samples"], tokens=best[1] if best else 0, accepted=len(acc),
            score=round(best[0], 3) if best else 0.0,
            accepted_score=round(sum(a[0] for a in acc) / len(acc), 3) if acc else 0.0,
            accepted_tokens=round(sum(a[1] for a in acc) / len(acc), 1) if acc else 0.0,
            rounds=rnd, min_tokens=floor, max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, top_p=cfg.top_p, model=cfg.model, seed=cfg.seed)
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        while data:                               # one write per row; a short write continues
            data = data[os.write(fd, data):]
        if time.time() - t["synced"] > 60:
            os.fsync(fd)
            t["synced"] = time.time()
        t["done"] += 1
        t["accepted"] += best is not None

    while queue or retry:
        batch, retry[:] = list(retry), []
        while queue and len(batch) < cfg.chunk:
            batch.append((queue.popleft(), 1))
        toks, fins, left = [[] for _ in range(len(batch) * K)], [None] * (len(batch) * K), [K] * len(batch)

        def on_tokens(seq, new, fin):
            c0 = time.perf_counter()
            toks[seq] += new
            t["tokens"] += len(new)
            if fin is not None:
                fins[seq], j = fin, seq // K
                left[j] -= 1
                if not left[j]:                   # all K samples of problem j are back
                    sl = range(j * K, (j + 1) * K)
                    lens = [len(toks[s]) - (fins[s] == "stop") for s in sl]   # the eos is not text
                    finish(*batch[j], [tok.decode(toks[s][:n]) for s, n in zip(sl, lens)], lens,
                           [fins[s] for s in sl])
                    for s in sl:
                        toks[s] = None
            progress()
            t["callback"] += time.perf_counter() - c0

        prompts = [prompt_ids(tok, recs[p]["problem"], cfg.template or None) for p, _ in batch]
        g0 = time.perf_counter()
        generate(model, prompts, n=K, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                 top_p=cfg.top_p, seed=cfg.seed + 1_000_003 * (batch[0][0] + 1) + batch[0][1],
                 max_rows=cfg.max_rows or None, kv_budget=int(cfg.kv_gib * 2**30) or None,
                 cuda_graphs=cfg.cuda_graphs, callback=on_tokens)
        t["gen"] += time.perf_counter() - g0
        os.fsync(fd)
        t["synced"] = time.time()
    progress(final=True)
    os.close(fd)
    t["wall"] = time.perf_counter() - t0
    return t


def summary(rows: list, t: dict | None, rank: int) -> str:
    """The end-of-run report: coverage, pass rates, the selection rule's effect, where time went."""
    meta = [r["polish"] for r in rows]
    pol = [m for m in meta if m["polished"]]
    never, always = sum(m["pass_rate"] == 0 for m in meta), sum(m["pass_rate"] == 1 for m in meta)
    out = [f"{len(rows)} problems: {len(pol)} polished ({100 * len(pol) / max(len(rows), 1):.1f}%), "
           f"{len(rows) - len(pol)} keep their original solution",
           f"pass rate: mean {sum(m['pass_rate'] for m in meta) / max(len(meta), 1):.3f}; never solved "
           f"{never}, always solved {always}, in between {len(meta) - never - always}"]
    if pol:
        mean = lambda k: sum(m[k] for m in pol) / len(pol)  # noqa: E731
        out.append(f"selection (most markers per 1k tokens): chosen chains {mean('score'):.2f} markers/1k, "
                   f"{mean('tokens'):,.0f} tokens; a random accepted chain {mean('accepted_score'):.2f} "
                   f"markers/1k, {mean('accepted_tokens'):,.0f} tokens ({sum(m['accepted'] for m in pol)} "
                   "accepted chains)")
    if t:
        gen = t["gen"] - t["callback"]            # the callback's time (grading, writing) is not generation
        other = t["wall"] - gen - t["grade"]
        out.append(f"rank {rank}: {t['done']} problems, {t['tokens']:,} tokens in {t['wall']:.1f}s "
                   f"({t['tokens'] / max(t['wall'], 1e-9):,.0f} tok/s): generation {gen:.1f}s, grading "
                   f"{t['grade']:.1f}s, other {other:.2f}s ({100 * other / max(t['wall'], 1e-9):.1f}%); "
                   f"setup {t['setup']:.1f}s")
    return "\n".join(out)


# ----------------------------------------------------------------------------- CLI

def parse_config(argv) -> Config:
    comments = dict(re.findall(r"^\s+(\w+): .*?#\s*(.*)$", inspect.getsource(Config), re.M))
    ap = argparse.ArgumentParser(
        description="Rejection-sampling chain-of-thought polishing (see the module docstring). "
        "`python polish.py merge --data D --out O` merges the rank parts of O.")
    for f in fields(Config):
        flag, help_ = "--" + f.name.replace("_", "-"), f"{comments[f.name]} (default {f.default!r})".replace("%", "%%")
        if f.type is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        else:
            ap.add_argument(flag, type=f.type, default=f.default, help=help_)
    cfg = Config(**vars(ap.parse_args(argv)))
    bad = [f"--{k.replace('_', '-')}" for k in ("data", "out") if not getattr(cfg, k)]
    if bad:
        ap.error(f"{' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} required")
    if cfg.think not in THINK_CHOICES:
        ap.error(f"--think must be one of {', '.join(THINK_CHOICES)}, not {cfg.think!r}")
    if min(cfg.samples, cfg.rounds, cfg.chunk, cfg.max_new_tokens, cfg.workers) < 1:
        ap.error("--samples, --rounds, --chunk, --max-new-tokens and --workers must be >= 1")
    if cfg.temperature < 0 or not 0 < cfg.top_p <= 1 or cfg.min_tokens > cfg.max_new_tokens:
        ap.error(f"need --temperature >= 0, 0 < --top-p <= 1, --min-tokens <= --max-new-tokens; got "
                 f"{cfg.temperature}, {cfg.top_p}, {cfg.min_tokens}")
    return cfg


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    merge_only = argv[:1] == ["merge"]
    cfg = parse_config(argv[1:] if merge_only else argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    t_start = time.perf_counter()
    try:
        recs = dedupe(load_records(cfg.data, cfg.skip_bad))
        ids = [problem_id(i, r["problem"]) for i, r in enumerate(recs)]
        if merge_only:
            print(summary(merge(cfg.out, ids), None, rank))
            return
        if not cfg.model or not os.path.isdir(cfg.model):
            raise FileNotFoundError(f"--model {cfg.model!r}: no such folder (expected an HF model folder)")
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        part = part_path(cfg.out, rank, world)
        done = done_rows(cfg.out, set(ids), own=part)
        tok = Tokenizer.from_pretrained(cfg.model)
    except (DataError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    try:
        tok.render_chat("", cfg.template or None)
    except ValueError as e:
        sys.exit(f"error: {e}")
    todo = [i for i in shard(range(len(recs)), rank, world) if ids[i] not in done]

    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:   # only for the barrier before the merge; no tensors are exchanged
        import datetime
        import torch.distributed as dist
        # Before the group exists: torch.distributed.nn binds the default group into its functions'
        # defaults when first imported (torch._dynamo pulls it in when the model is built on the meta
        # device). Imported later, that reference keeps the gloo group and its worker threads alive
        # past destroy_process_group into interpreter exit, where a worker still freeing a finished
        # collective aborts the rank ("terminate called without an active exception"; seen in the
        # sample.py and DDP tests).
        import torch.distributed.nn as _dist_nn  # noqa: F401
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    model = Transformer.from_pretrained(cfg.model, device=device,
                                        dtype=torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    floor = cfg.min_tokens if cfg.min_tokens >= 0 else \
        default_floor(model.config.max_position_embeddings, cfg.max_new_tokens)
    if rank == 0:
        print(f"polish: {len(recs)} problems, {len(done)} already done, {len(todo)} on rank 0 of {world}; "
              f"{cfg.samples} samples x {cfg.rounds} round(s), min {floor} tokens, device {device}",
              file=sys.stderr, flush=True)
    setup = time.perf_counter() - t_start
    t = polish(model, tok, recs, ids, todo, cfg, floor, part, show=rank == 0)
    t["setup"] = setup
    if world > 1:
        dist.barrier()
    if rank == 0:
        rows = merge(cfg.out, ids)
        print(f"wrote {cfg.out}\n" + summary(rows, t, rank))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
