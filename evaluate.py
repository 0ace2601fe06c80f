"""DeepScaleR's evaluation protocol: n samples per problem, graded; pass@1 with a 95% CI, pass@k,
and a per-problem results file.

    python evaluate.py --model DIR --data aime.jsonl --samples 16 --temperature 0.6 --top-p 0.95 \\
        --max-new-tokens 32768 --out results.jsonl          # one summary line (JSON) on stdout
    torchrun --nproc_per_node=8 evaluate.py --model DIR --data aime.jsonl ...   # problems sharded

    from evaluate import evaluate
    rows, summary = evaluate(model, tok, recs, n=4, require_think=True, max_new_tokens=8192)

Each sample's reply, its stop token dropped, is graded by verify.grade_batch against the
record's answers (the problem's text lets a bare choice letter be read as the choice it names);
with --think (auto: the deepseek-r1 template) a right answer counts only if the reply closed its
reasoning with </think> (verify.reward_of), as in training. pass@1 is the mean over the n
samples of a problem, averaged over problems; its 95% CI is 1.96 x the standard deviation over
problems (n - 1 in the denominator) / sqrt(problems); pass@k (k = 2, 4, ... n) is Chen et al.'s
unbiased estimator. DeepScaleR's AIME setting: 16 samples, T 0.6, top_p 0.95, 32,768 new tokens.
Under torchrun each rank samples every world-th problem (data.shard's split); rows are gathered
in file order and rank 0 writes them.

Problems whose prompt is over --prompt-budget tokens (1024, as in train.py) are dropped before
the model loads, and counted on stderr and in the summary (over_prompt_budget). Problems are not
deduplicated: each row keeps its index in the --data file. --out is written whole or not at all.
The sampling flags are sample.py's (add_generation_flags); `python sample.py --data ...` still
runs this file.

Left out: majority voting (maj@k), breakdowns by source or difficulty, resuming a half-done
evaluation, re-grading a results file (verify.py FILE.jsonl does that).
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time

import torch.distributed as dist

from common import SamplingEta, bound_problem, lock_output, minutes, print0, start_distributed, stop_distributed
from data import (THINK_CHOICES, Problems, clean_exit, load_problems, prompt_ids, reference_answers,
                  requires_think)
from model import ModelFileError
from sample import (add_generation_flags, generate, generation_flag_problem, generation_kwargs, load_sampler,
                    read_tokenizer, stop_ids)
from verify import grade_batch, reward_of, workers_problem


class _Progress:
    """generate()'s callback for evaluate(): a line with tokens/s and the time left
    (common.SamplingEta) to stderr every 10 s."""

    def __init__(self, total: int, budget: int, active: bool):
        self.total, self.active, self.done, self.ntok = total, active, 0, 0
        self.eta = SamplingEta(total, budget)
        self.t0 = self.last = time.time()

    def __call__(self, s: int, new: list, finish):
        self.ntok += len(new)
        self.done += finish is not None
        self.eta(s, new, finish)
        now = time.time()
        if self.active and now - self.last > 10:
            print(f"[rank 0] {self.done}/{self.total} samples, {self.ntok:,} tokens, "
                  f"{self.ntok / (now - self.t0):,.0f} tok/s, ETA {minutes(self.eta.seconds_left())}",
                  file=sys.stderr, flush=True)
            self.last = now


def evaluate(model, tok, recs: list, n: int = 1, require_think: bool = False, template=None, system=None,
             workers: int = 4, rank: int = 0, world: int = 1, progress: bool = False,
             **gen_kw) -> tuple[list, dict]:
    """DeepScaleR's evaluation protocol on records {problem, answer[, answers][, prompt_ids]}:
    n samples per problem (gen_kw go to generate), each rewarded 1.0 or 0.0. Under a process
    group each rank samples every world-th problem and the rows are gathered on every rank.

    Returns (rows, summary): one row per problem, in recs order (its responses, correct flags,
    lengths, finish reasons, pass@1), and summarize() of them plus tokens/s over all ranks.
    progress prints a line with tokens/s and ETA to stderr every 10 s (rank 0)."""
    if not recs:
        raise ValueError("evaluate: no records")
    # 1) this rank's problems (data.shard's split), n completions each, prompt-major
    mine = list(range(rank, len(recs), world))
    prompts = [recs[i].get("prompt_ids") or prompt_ids(tok, recs[i]["problem"], template, system) for i in mine]
    progress_line = _Progress(len(prompts) * n, gen_kw.get("max_new_tokens", 256), active=progress and rank == 0)
    outs = generate(model, prompts, n=n, callback=progress_line, **gen_kw) if prompts else []
    # 2) DeepScaleR's reward: the reply without its stop token, graded against the record's
    #    answers (its problem reads a bare choice letter), then </think> when required
    asked = [recs[i] for i in mine for _ in range(n)]               # the record of each completion
    texts = [tok.decode(o.tokens[:-1] if o.finish_reason == "stop" else o.tokens) for o in outs]
    correct = grade_batch([(t, reference_answers(r), r["problem"]) for t, r in zip(texts, asked)], workers=workers)
    rewards = [reward_of(ok, t, require_think) for ok, t in zip(correct, texts)]
    # 3) one row per problem, every rank's rows in recs order, and the summary over all of them
    rows = []
    for j, i in enumerate(mine):
        sl = slice(j * n, (j + 1) * n)                              # problem i's n completions
        rows.append(problem_row(i, recs[i], outs[sl], texts[sl], rewards[sl]))
    rows = gather_rows(rows, world)
    summary = summarize(rows, n)
    summary["tokens_per_s"] = sum(sum(r["lengths"]) for r in rows) / max(1e-9, time.time() - progress_line.t0)
    return rows, summary


def problem_row(index: int, rec: dict, outs: list, texts: list, rewards: list) -> dict:
    """One problem's results (a line of --out): index is its place in evaluate()'s recs."""
    n = len(outs)
    return {"index": index, "problem": rec["problem"], "answer": rec["answer"],
            "pass@1": sum(rewards) / n, "correct": [r > 0 for r in rewards],
            "lengths": [len(o.tokens) for o in outs],
            "finish": [o.finish_reason for o in outs], "responses": texts}


def gather_rows(rows: list, world: int) -> list:
    """Every rank's rows on every rank, sorted by index (rows are small: all_gather_object)."""
    if world == 1:
        return rows
    parts = [None] * world
    dist.all_gather_object(parts, rows)
    return sorted((r for part in parts for r in part), key=lambda r: r["index"])


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


# ----------------------------------------------------------------------------- command line

def flag_parser() -> argparse.ArgumentParser:
    """evaluate.py's flags: its own, then sample.py's model and sampling flags."""
    ap = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("Left out")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True,
                    help="json/jsonl/parquet file (or a folder of them) of {problem, answer} records")
    ap.add_argument("--out", help="per-problem JSONL, in file order (the summary line goes to stdout)")
    ap.add_argument("--samples", "--n", type=int, default=1,
                    help="samples per problem; pass@1 averages over them (under torchrun spell it --samples: "
                         "torchrun takes --n for an abbreviation of its own flags)")
    ap.add_argument("--workers", type=int, default=4, help="grading processes (verify.grade_batch)")
    ap.add_argument("--think", choices=THINK_CHOICES, default="auto",
                    help="count a reply correct only if it closed </think> (auto: for the deepseek-r1 template)")
    add_generation_flags(ap)
    return ap


def parse_flags(argv=None) -> argparse.Namespace:
    """The command line, every flag checked before anything is loaded (argparse's one-line
    error, naming the flag and its value, and exit status 2)."""
    ap = flag_parser()
    a = ap.parse_args(argv)
    problem = bound_problem(a, {"samples": (1, True)}) or workers_problem(a.workers) or generation_flag_problem(a)
    if not problem and not os.path.exists(a.data):
        problem = f"--data {a.data}: no such file or folder"
    if not problem and a.out is not None and not os.path.isdir(os.path.dirname(a.out) or "."):
        problem = f"--out {a.out}: its folder does not exist"
    if problem:
        ap.error(problem)
    return a


def read_problems(a: argparse.Namespace, tok) -> Problems:
    """--data's problems with their prompts (data.load_problems), before the model loads. None
    is deduplicated, so that rows keep their index in the file; those over --prompt-budget
    are dropped and counted on stderr."""
    problems = load_problems(a.data, tok, a.prompt_budget, a.template, dedup=False, system=a.system)
    dropped = len(problems.records) - len(problems.kept)
    if dropped:
        print0(f"evaluate.py: {a.data}: dropped {dropped} of {len(problems.records)} problems, over the "
               f"{a.prompt_budget}-token prompt budget (--prompt-budget)", file=sys.stderr)
    return problems


def evaluate_to_files(model, tok, a: argparse.Namespace, problems: Problems, rank: int, world: int, kw: dict):
    """evaluate() on the kept problems; rank 0 writes --out and prints the summary line. Rows
    keep their index in the --data file, not in the kept list."""
    think = requires_think(a.think, a.template or tok.chat_template)
    rows, summ = evaluate(model, tok, problems.kept, n=a.samples, require_think=think, template=a.template,
                          system=a.system, workers=a.workers, rank=rank, world=world, progress=True, **kw)
    for r in rows:
        r["index"] = problems.where[r["index"]]
    if rank != 0:
        return
    if a.out:
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(tmp, a.out)                          # never a half-written results file
    dropped = len(problems.records) - len(problems.kept)
    summ.update(model=a.model, data=a.data, require_think=think, over_prompt_budget=dropped)
    print(json.dumps(summ))


def run(a: argparse.Namespace):
    """Inputs first (tokenizer, problems, budget), then the model, then sampling and grading."""
    rank, world, device = start_distributed()
    try:
        # --out's folder must be writable, and no other evaluation may write the same file: both
        # found now, not after hours of sampling (the lock is held until the evaluation ends)
        lock = lock_output(a.out + ".lock", "evaluate.py") if a.out and rank == 0 else contextlib.nullcontext()
        with lock:
            tok = read_tokenizer(a.model, "evaluate.py")
            problems = read_problems(a, tok)
            longest = max(len(r["prompt_ids"]) for r in problems.kept)
            model = load_sampler(a, device, longest, "evaluate.py")
            stops = stop_ids(tok, model.config.eos_token_id, a.model, a.template)
            kw = dict(generation_kwargs(a, rank), stop_ids=stops)
            try:
                evaluate_to_files(model, tok, a, problems, rank, world, kw)
            except FloatingPointError as e:      # NaN/inf logits: the weights in --model, not the data
                raise ModelFileError(f"--model {a.model}: {e}") from None
    finally:
        stop_distributed()                   # on any exit, while the interpreter is whole


def main(argv=None):
    """The command line: flags checked, then run() with one-line errors (data.clean_exit)."""
    a = parse_flags(argv)
    interrupted = "no results were written (an evaluation does not resume: run the same command again)"
    with clean_exit("evaluate.py", on_interrupt=interrupted):
        run(a)


if __name__ == "__main__":
    main()
