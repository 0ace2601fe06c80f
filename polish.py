"""Rejection-sampling chain-of-thought polishing of a math dataset, resumable and multi-GPU.

    python polish.py --model DIR --data deepscaler.json --out polished.jsonl
    torchrun --nproc_per_node=8 polish.py --model DIR --data deepscaler.json --out polished.jsonl \\
        --samples 8 --rounds 2 --max-new-tokens 8192          # rank parts, merged by rank 0 at the end
    python polish.py merge --data deepscaler.json --out polished.jsonl   # merge the parts by hand
    python polish.py ... --guided-rounds 2                    # up to 2 guided rounds (--no-guided: none)
    python polish.py ... --guided-solution                    # the guided prompt carries the solution too
    python data.py stats polished.jsonl --model DIR           # coverage by method, lengths, pass rates

Every problem of --data (data.load_problems, deduplicated) gets --samples chains of thought
(T 0.6, top-p 0.95, the DeepScaleR prompt in the checkpoint's chat template) from
sample.generate, continuous batching over --chunk problems per call. When a problem's samples
are all back, verify.grade_batch grades them against `answer` (or any of `answers`); a chain
without </think> is not correct when data.requires_think says so for --think (auto: the R1
template), the same rule as train.py's reward, so pass_rate predicts the reward GRPO will see.
A chain is *accepted* when it is correct, not truncated and at least --min-tokens long
(default: min(max_position_embeddings, --max-new-tokens) / 4; R1-Distill-Qwen with 8,192 new
tokens: 2,048). A problem with no accepted chain is sampled again in the next call, up to
--rounds rounds in all. A problem whose prompt is over --prompt-budget tokens (train.py's
default, 1,024) is not sampled and has no output row: it is listed at the start and counted
(none within the budget: an error).

Guided pass (on by default; --no-guided switches it off; guided.py): a problem with no accepted
free chain after --rounds is sampled again, K chains a round for up to --guided-rounds rounds,
with guided.GUIDED_PROMPT: the problem, its reference answer (with --guided-solution also its
original solution, when it has one), and the request for a complete exploratory derivation
written as if solving from scratch. The dataset card wants a long chain for every problem, and
82% of DeepScaleR's solutions are empty. A guided chain is accepted by the free rules plus two
checks, each rejection counted: the leak check (a chain that says it was given the answer or a
solution) and the copy check (a chain with 35% or more of its reasoning's word 6-grams from the
original solution; guided.py says why that measure and threshold). Guided samples never count
towards samples, correct or pass_rate: those stay the free pass's, which train.py filters on. A
problem whose guided prompt is over --prompt-budget even without the solution gets no guided
pass. A problem with no accepted chain at the end keeps its solution (method "none"). One line
says when the free pass is over (how many problems it covered, how many enter the guided pass),
one when the guided pass is.

Measured, to choose the copy check's threshold and the guided prompt (2-core CPU VM, torch
2.13.0+cpu; Qwen2.5-Coder-0.5B-Instruct, ChatML; the first 16 DeepScaleR problems; 512 new
tokens, T 0.6, top-p 0.95, floor 128). Free chains (12, of 3 problems): 0% to 24% of their word
6-grams from the solution, median 5%. Guided chains, 2 per problem for all 16 problems:
  prompt with the solution: 12 of 32 correct, 10 acceptable (7 problems), sharing 16%, 34%,
    then 54% to 85%; median over all 32 chains 71%, max 95%. The copy check keeps 2 (2 problems);
  the answer alone: 9 of 32 correct, 9 acceptable (9 problems), sharing 0% to 19%; median over
    all 32 chains 1%. The copy check keeps all 9.
So the answer alone covers more problems with the model's own derivations, and is the default.

Selection rule: of the accepted chains, the one with the most reconsideration markers (MARKERS:
wait, hmm, alternatively, double-check, verify, let me check, ...) per 1,000 tokens of the
reasoning before </think> wins; ties go to the longer chain, then the earlier sample. Density,
not count, so that a long chain is not preferred for length alone, while the floor keeps terse
summary-style chains out. The summary prints the rule's effect: markers/1k and length of the
chosen chains against the mean over all accepted chains (what a random pick would give), and
(data.polish_report, shared with `data.py stats`) coverage by method, the chosen chains' lengths
by method against the floor, and the guided chains the leak and copy checks rejected.

Output: one row per problem, in input order: the input fields, `solution` = the chosen chain as
the model wrote it after the template's "<think>\\n" (reasoning, </think>, answer; no eos),
`original_solution` = the input's solution (kept from the input if it already has one), and
`polish` = a PolishMeta (below: 23 fields, id .. copied; `method` says how the chain was
obtained: free | guided | none). Unpolished rows keep `solution` as it was. train.py keeps
problems with pass_rate_min < pass_rate < pass_rate_max. Rows of older versions (no method) read
as free when polished, else none; without `copied`, data.py stats says the copy check never ran.

Failing fast: every flag is checked (ranges, combinations, paths) before anything is read, and
the tokenizer, config.json, chat template, prompt budget and KV budget before the weights are
loaded. Bad input or model files, and a model whose logits are not finite (NaN weights), end
the run with one line naming the file or folder (data.clean_exit; DEBUG=1: the traceback).

Crash safety (the files are parts.py's): each rank appends finished rows to
OUT-stem.rankR-of-W.jsonl, one os.write per row (fsync at the end of every generate call, and
at least once a minute while rows are written). A restart reads OUT and every part (any world
size), skips problems that have a row, and cuts a torn last line off its own part. A problem
that enters the guided pass also gets a `pending` line (its Tally, no chains) after its free
rounds and after each guided round without an accepted chain, so a restart resumes its guided
rounds where they stopped; its row, once written, supersedes them. A kill loses only the
rounds in flight; Ctrl-C and SIGTERM say so in one line (exit 130, 143). A restart with
--no-guided or fewer --guided-rounds writes such a problem's row at once (method none). Rank 0
merges OUT atomically (tmp + rename) once every problem has a row, and removes the parts.

Progress: one line, rewritten in place on a terminal (every 30 s in a log); its ETA is the
generate call's (common.SamplingEta: decode steps and expected reply lengths, not finished
rows), and as long again for each further call's worth of queued problems.

Left out: grading in the background while decoding (grading is sequential and reported), a
prefix cache across a problem's rounds, length-balanced sharding across ranks, a guided pass
for the unpolished rows of an earlier output (its rows are done; rerun from the input instead),
resuming a problem's free rounds (a kill restarts them).
"""
import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.distributed as dist

import precision
from common import (SamplingEta, add_config_flags, bound_problem, lock_output, minutes, start_distributed,
                    stop_distributed)
from data import (TEMPLATES, THINK_CHOICES, DataError, Tokenizer, clean_exit, dedupe, load_problems, load_records,
                  polish_report, reference_answers, requires_think, shard)
from guided import copies, guided_prompts, leaks, original_solution
from model import ModelConfig, ModelFileError, Transformer, read_config
from parts import merge, part_path, read_outputs
from sample import default_kv_budget, generate, kv_budget_of, kv_budget_problem, read_tokenizer, stop_ids
from verify import grade_batch, reward_of, workers_problem


@dataclass
class Config:
    model: str = ""              # HF model folder (config.json, safetensors, tokenizer.json)
    data: str = ""               # problems: JSON list, JSONL, parquet, or a folder of shards
    out: str = ""                # output JSONL; rank parts are written beside it
    samples: int = 8             # chains of thought sampled per problem per round (K)
    rounds: int = 1              # sampling rounds in all for a problem with no accepted chain yet
    temperature: float = 0.6     # sampling temperature; 0 (greedy) needs --samples 1 --rounds 1
    top_p: float = 0.95          # nucleus sampling mass
    max_new_tokens: int = 8192   # generation budget per chain; a chain that hits it is rejected
    prompt_budget: int = 1024    # longest prompt in tokens; longer ones are dropped (listed and counted)
    min_tokens: int = -1         # shortest acceptable chain; -1: min(max_position_embeddings, max_new_tokens) / 4
    chunk: int = 256             # problems per generate call (more: a fuller batch in each call's tail)
    seed: int = 0                # sampling seed; each call derives its own from it, its first problem and round
    workers: int = 4             # sympy grading processes (verify.grade_batch)
    template: str = ""           # chat template, deepseek-r1 or chatml; empty: the checkpoint's own
    system: str | None = None    # system text of the chat template; default: the checkpoint's own; "" for none
    precision: str = "auto"      # the sampler's dtype: bf16 | fp16 | fp32; auto: bf16 on GPU, fp32 on CPU
    think: str = "auto"          # require </think> for a correct chain: yes | no | auto (R1 template)
    kv_gib: float = 0.0          # KV cache budget in GiB; 0: the sampler's default (60% of unused GPU memory)
    max_rows: int = 0            # cap on sequences decoded together; 0: as many as the KV budget holds
    cuda_graphs: bool = True     # replay decode steps as CUDA graphs (GPU only)
    skip_bad: bool = False       # drop input rows without problem or answer (listed) instead of stopping
    guided: bool = True          # guided pass: sample problems with no accepted free chain given their answer
    guided_rounds: int = 1       # guided rounds in all for a problem (K samples each); see GUIDED_PROMPT
    guided_solution: bool = False    # guided prompt carries the original solution too (not only the answer)


@dataclass
class PolishMeta:
    """The `polish` field of an output row. The field order is the JSON key order (asdict keeps
    it); train.py filters on pass_rate, data.py stats reads polished and pass_rate, and a restart
    finds finished problems by id."""
    id: str                  # problem_id: position in the deduplicated input + a hash of the problem
    polished: bool           # an accepted chain was found, and `solution` is now that chain
    samples: int             # chains sampled for the problem, over all its rounds
    correct: int             # of those, the ones train.py's reward would pay (answer, and </think> if required)
    pass_rate: float         # correct / samples: the mean reward GRPO will see on this problem
    tokens: int              # length of the chosen chain without its eos; 0 when none was accepted
    accepted: int            # chains correct, finished ("stop", not truncated), >= min_tokens long (and,
                             # guided, not leaking), of the pass `method` names: the pool of the pick
    score: float             # the chosen chain's markers per 1k tokens, 3 decimals; 0.0 when none
    accepted_score: float    # mean score of the accepted chains (what a random pick would give); 0.0 if none
    accepted_tokens: float   # mean length of the accepted chains, 1 decimal; 0.0 if none
    rounds: int              # free sampling rounds the problem took (<= --rounds)
    min_tokens: int          # the length floor in force (--min-tokens or its default)
    max_new_tokens: int      # --max-new-tokens: a chain that reached it was truncated, so rejected
    temperature: float       # --temperature
    top_p: float             # --top-p
    model: str               # --model, as given on the command line
    seed: int                # --seed
    method: str = "none"     # how `solution` was obtained: free | guided | none (no accepted chain)
    guided_rounds: int = 0   # guided rounds the problem took (<= --guided-rounds); 0: no guided pass
    guided_samples: int = 0  # guided chains sampled (never part of samples, correct or pass_rate)
    guided_correct: int = 0  # of those, the ones with the right answer (and </think> if required)
    leaked: int = 0          # guided chains otherwise acceptable but rejected by the leak check
    copied: int = 0          # guided chains otherwise acceptable (no leak) but rejected by the copy check;
                             # rows of older versions have no such field: the check did not run


class Candidate(NamedTuple):
    """An accepted chain. A tuple, so that pick() sees (score, tokens, ...)."""
    score: float             # markers per 1k tokens of the reasoning
    tokens: int              # length without the eos
    text: str                # the chain as written after "<think>\n"


@dataclass
class Tally:
    """One problem's samples so far, carried across its rounds until its row is written. Between
    guided rounds it is also written to the part as a `pending` line, all fields but `accepted`
    (empty there: a problem with an accepted chain gets its row at once)."""
    samples: int = 0         # free chains sampled
    correct: int = 0         # of those, the rewarded ones
    rounds: int = 0          # free rounds done
    guided_rounds: int = 0   # guided rounds done
    guided_samples: int = 0  # guided chains sampled
    guided_correct: int = 0  # of those, the rewarded ones
    leaked: int = 0          # guided chains rejected by the leak check alone
    copied: int = 0          # guided chains rejected by the copy check alone (not leaking)
    accepted: list = field(default_factory=list)     # Candidate of every accepted chain of the current pass


class Job(NamedTuple):
    """One problem in a generate call: which, its round within its pass, and which pass."""
    p: int                   # index into recs
    rnd: int                 # round of the pass, from 1
    guided: bool             # the guided pass (GUIDED_PROMPT) rather than the free one


@dataclass
class Passes:
    """Where one rank's problems stand between the two passes, for the line that ends each pass."""
    free: set = field(default_factory=set)      # problems still in their free rounds
    guided: set = field(default_factory=set)    # problems in the guided pass whose row is not written
    free_total: int = 0      # problems that started the free pass in this run
    free_accepted: int = 0   # of those, the ones with an accepted free chain
    entered: int = 0         # problems that entered the guided pass from this run's free pass
    guided_total: int = 0    # problems that entered the guided pass, resumed ones included
    guided_accepted: int = 0     # of those, the ones with an accepted guided chain
    leaked: int = 0          # their chains rejected by the leak check
    copied: int = 0          # their chains rejected by the copy check


@dataclass
class RunStats:
    """Where one rank's time went, for the summary. Seconds unless named otherwise."""
    gen: float = 0.0         # inside sample.generate, the callback included
    callback: float = 0.0    # inside our callback: decoding text, grading, writing rows
    grade: float = 0.0       # grading alone (part of callback)
    tokens: int = 0          # tokens sampled
    done: int = 0            # rows written
    accepted: int = 0        # rows written polished
    wall: float = 0.0        # the whole polishing loop
    setup: float = 0.0       # from the start of main to the first generate call


MARKERS = re.compile(r"\b(?:wait|hmm+|alternatively|double[- ]?check(?:ing|ed)?|re-?check(?:ing)?|"
                     r"verify(?:ing)?|verification|let me (?:check|see|confirm|think again|re-?examine|"
                     r"reconsider)|on second thought|hold on|but actually|re-?examin(?:e|ing)|"
                     r"reconsider(?:ing)?|mistake|another (?:way|approach))\b", re.IGNORECASE)
PROGRESS_S = (0.5, 30.0)         # seconds between progress updates: on a terminal, in a log
LISTED = 20                      # dropped problems listed by name at the start; the rest are counted


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


def tally_samples(tally: Tally, texts, lengths, fins, grades, think: bool, floor: int, rec: dict | None = None) -> None:
    """Add one round's graded samples of a problem to its tally: to the free counts, or, given
    the problem's record `rec`, to the guided ones (where an otherwise acceptable chain that leaks,
    or copies rec's solution, is counted, not accepted)."""
    guided = rec is not None
    for x, n, fin, c in zip(texts, lengths, fins, grades):
        c = bool(reward_of(c, x, think))            # train.py's reward: no </think>, no credit
        if guided:
            tally.guided_samples += 1
            tally.guided_correct += c
        else:
            tally.samples += 1
            tally.correct += c
        if c and fin == "stop" and n >= floor:
            if guided and leaks(x):
                tally.leaked += 1
                continue
            if guided and copies(x, rec):
                tally.copied += 1
                continue
            tally.accepted.append(Candidate(score(x, n), n, x))


def pending_line(pid: str, tally: Tally) -> dict:
    """The part-file line that lets a restart resume a problem's guided rounds."""
    state = asdict(tally)
    del state["accepted"]                           # always empty here: no chain is pending
    return {"pending": {"id": pid, **state}}


def output_row(rec: dict, pid: str, tally: Tally, floor: int, cfg: Config, guided: bool = False) -> dict:
    """The row written for a finished problem: the input record, the chosen chain (if any) as
    `solution`, the input's solution as `original_solution`, and a PolishMeta as `polish`.
    `guided`: the tally's accepted chains are guided ones. Keys the input already has keep their
    place, new ones follow in this order."""
    acc = tally.accepted
    best = acc[pick(acc)] if acc else None
    method = "none" if best is None else "guided" if guided else "free"
    meta = PolishMeta(
        id=pid, polished=best is not None, samples=tally.samples, correct=tally.correct,
        pass_rate=tally.correct / tally.samples, tokens=best.tokens if best else 0, accepted=len(acc),
        score=round(best.score, 3) if best else 0.0,
        accepted_score=round(sum(a.score for a in acc) / len(acc), 3) if acc else 0.0,
        accepted_tokens=round(sum(a.tokens for a in acc) / len(acc), 1) if acc else 0.0,
        rounds=tally.rounds, min_tokens=floor, max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, top_p=cfg.top_p, model=cfg.model, seed=cfg.seed, method=method,
        guided_rounds=tally.guided_rounds, guided_samples=tally.guided_samples,
        guided_correct=tally.guided_correct, leaked=tally.leaked, copied=tally.copied)
    row = dict(rec)
    row["original_solution"] = original_solution(rec)
    if best:
        row["solution"] = best.text
    row["polish"] = asdict(meta)
    return row


# ----------------------------------------------------------------------------- polishing

class Call:
    """The sequences of one generate call, numbered as sample.generate numbers them: problem j's
    K samples are sequences j * K .. j * K + K - 1."""

    def __init__(self, problems: list, K: int):
        self.problems = problems                           # a Job per problem
        self.K = K
        self.tokens = [[] for _ in range(len(problems) * K)]   # per sequence; None once graded
        self.finish = [None] * (len(problems) * K)         # per sequence: "stop" | "length" when done
        self.left = [K] * len(problems)                    # per problem: samples still decoding

    def add(self, seq: int, new: list, fin) -> int | None:
        """Record a sequence's new tokens; the problem's index j when its last sample just ended."""
        self.tokens[seq] += new
        if fin is None:
            return None
        j = seq // self.K
        self.finish[seq] = fin
        self.left[j] -= 1
        return j if not self.left[j] else None

    def take(self, j: int, tok) -> tuple[list, list, list]:
        """Problem j's samples as (texts, lengths, finish reasons), the eos left out (it is not
        text); their tokens are freed."""
        seqs = range(j * self.K, (j + 1) * self.K)
        lens = [len(self.tokens[s]) - (self.finish[s] == "stop") for s in seqs]
        texts = [tok.decode(self.tokens[s][:n]) for s, n in zip(seqs, lens)]
        fins = [self.finish[s] for s in seqs]
        for s in seqs:
            self.tokens[s] = None
        return texts, lens, fins


class Polisher:
    """One rank's polishing run: the problems waiting, the tallies of those between rounds, the
    part file and the counters. Its steps are methods, so the callback generate calls is one
    bound method (on_tokens) rather than a closure rebuilt for every call."""

    def __init__(self, model, tok, recs, ids, prompts, guided: dict, cfg: Config, floor: int, part: str,
                 show: bool):
        self.model, self.tok, self.recs, self.ids, self.prompts = model, tok, recs, ids, prompts
        self.guided = guided          # problem -> guided prompt ids (None: over budget); {} with --no-guided
        self.cfg, self.floor, self.part, self.show = cfg, floor, part, show
        self.think = requires_think(cfg.think, cfg.template or tok.chat_template)
        self.stops = stop_ids(tok, model.config.eos_token_id, cfg.model, cfg.template or None)
        self.eta = None               # the generate call's time left (common.SamplingEta), with the call
        self.call_t0 = 0.0            # when the generate call in progress began
        self.queue = deque()          # problems not sampled yet (indices into recs)
        self.retry = []               # Job of each problem due another round (free or guided), for the next call
        self.tallies = {}             # problem -> Tally, from its first graded round to its row
        self.call = None              # the generate call in progress
        self.stats = RunStats()
        self.passes = Passes()
        self.fd = -1                  # the part file, opened for appending
        self.synced = time.time()     # last fsync of the part file
        self.total = 0                # problems this run
        self.t0 = self.last_shown = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def run(self, todo: list, pending: dict) -> RunStats:
        """Polish problems `todo` (indices into recs); every finished row is appended to the part.
        `pending`: problem -> Tally of those an earlier run left between guided rounds."""
        self.queue.extend(p for p in todo if p not in pending)
        self.total = len(todo)
        self.passes.free, self.passes.free_total = set(self.queue), len(self.queue)
        self.fd = os.open(self.part, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        finished = False
        try:
            # 0) problems an earlier run left mid-guided-pass go on from the round after their last
            for p, tally in pending.items():
                self.tallies[p] = tally
                if self.guided_left(p, tally):
                    self.retry.append(Job(p, tally.guided_rounds + 1, True))
                    self.passes.guided.add(p)
                    self.passes.guided_total += 1
                else:                     # --no-guided or fewer --guided-rounds this time: done
                    self.write_row(p, tally, guided=True)
            while self.queue or self.retry:
                # 1) problems due another round first, then new ones, up to --chunk
                self.call = self.next_call()
                # 2) sample; each problem is graded and written as soon as its K samples are back
                self.sample(self.call)
                # 3) what this call wrote reaches the disk
                self.sync()
            finished = True
        finally:                      # also on Ctrl-C or an error: the rows written so far are kept
            self.sync()
            os.close(self.fd)
            if not finished and self.show and self.tty:
                print(file=sys.stderr)    # close the progress line: the message that follows gets its own
        self.progress(final=True)
        self.stats.wall = time.perf_counter() - self.t0
        return self.stats

    def next_call(self) -> Call:
        """The next generate call's problems, --chunk of them: retries first (free round 2 and up,
        guided rounds; more than --chunk only after a restart with many problems mid-guided-pass),
        then new problems."""
        batch, self.retry = self.retry[:self.cfg.chunk], self.retry[self.cfg.chunk:]
        while self.queue and len(batch) < self.cfg.chunk:
            batch.append(Job(self.queue.popleft(), 1, False))
        return Call(batch, self.cfg.samples)

    def sample(self, call: Call) -> None:
        """One sample.generate call over the call's problems, K samples each."""
        cfg, first = self.cfg, call.problems[0]
        prompts = [self.guided[j.p] if j.guided else self.prompts[j.p] for j in call.problems]
        seed = call_seed(cfg.seed, first.p, first.rnd, first.guided)
        g0 = time.perf_counter()
        try:
            self.eta, self.call_t0 = SamplingEta(len(prompts) * cfg.samples, cfg.max_new_tokens), time.perf_counter()
            generate(self.model, prompts, n=cfg.samples, stop_ids=self.stops,
                     max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                     seed=seed, max_rows=cfg.max_rows or None,
                     kv_budget=kv_budget_of(cfg.kv_gib), cuda_graphs=cfg.cuda_graphs,
                     callback=self.on_tokens)
        except FloatingPointError as e:
            # sample.generate's check on the logits (NaN or inf weights, or an overflow): stop
            # here, rather than grade chains drawn from garbage and exit 0 with a 0% pass rate
            why = str(e).splitlines()[0] if str(e) else "the model's logits are not finite"
            raise ModelFileError(f"--model {cfg.model}: {why} (rows finished so far are kept in {self.part})") from None
        self.stats.gen += time.perf_counter() - g0

    def on_tokens(self, seq: int, new: list, fin) -> None:
        """generate's callback: new tokens of sequence seq, and its finish reason when it ends."""
        c0 = time.perf_counter()
        self.stats.tokens += len(new)
        self.eta(seq, new, fin)
        j = self.call.add(seq, new, fin)
        if j is not None:                 # all K samples of the call's problem j are back
            self.finish(self.call.problems[j], *self.call.take(j, self.tok))
        self.progress()
        self.stats.callback += time.perf_counter() - c0

    def finish(self, job: Job, texts: list, lengths: list, fins: list) -> None:
        """Grade one problem's samples of a round; write its row, or queue its next round."""
        p, rnd = job.p, job.rnd
        rec, g0 = self.recs[p], time.perf_counter()
        ref = reference_answers(rec)
        grades = grade_batch([(x, ref) for x in texts], workers=self.cfg.workers, problem=rec["problem"])
        self.stats.grade += time.perf_counter() - g0
        tally = self.tallies.setdefault(p, Tally())
        tally_samples(tally, texts, lengths, fins, grades, self.think, self.floor, rec if job.guided else None)
        if job.guided:
            tally.guided_rounds = rnd
            self.next_guided(p, tally)
            return
        tally.rounds = rnd
        if not tally.accepted and rnd < self.cfg.rounds:
            self.retry.append(Job(p, rnd + 1, False))
            return
        to_guided = not tally.accepted and self.guided.get(p) is not None
        self.free_over(p, bool(tally.accepted), to_guided)
        if to_guided:
            self.write(pending_line(self.ids[p], tally))     # the free rounds survive a kill from here on
            self.retry.append(Job(p, 1, True))
            return
        self.write_row(p, tally, guided=False)

    def free_over(self, p: int, accepted: bool, to_guided: bool) -> None:
        """Problem p's free rounds are over; once they are over for every problem, one line says
        how the free pass went and how many problems the guided pass takes (it may run for long)."""
        c = self.passes
        c.free.discard(p)
        c.free_accepted += accepted
        if to_guided:
            c.guided.add(p)
            c.guided_total += 1
            c.entered += 1
        if c.free:
            return
        line = f"polish: free pass done: {c.free_accepted} of {c.free_total} accepted; {c.entered} problems " \
               "enter the guided pass"
        rest = c.free_total - c.free_accepted - c.entered
        if rest:
            why = "guided prompt over --prompt-budget" if self.cfg.guided else "--no-guided"
            line += f", {rest} keep their solution ({why})"
        self.say(line)

    def guided_over(self, p: int, tally: Tally, polished: bool) -> None:
        """Problem p's guided rounds are over; once every problem's passes are, one line says how
        the guided pass went."""
        c = self.passes
        if p not in c.guided:         # a resumed problem with no guided round left this time
            return
        c.guided.remove(p)
        c.guided_accepted += polished
        c.leaked += tally.leaked
        c.copied += tally.copied
        if not c.free and not c.guided:
            self.say(f"polish: guided pass done: {c.guided_accepted} of {c.guided_total} accepted; leak check "
                     f"rejected {c.leaked} chains, copy check {c.copied}")

    def guided_left(self, p: int, tally: Tally) -> bool:
        """Is a guided round due: the pass is on, the prompt fits, rounds remain?"""
        return self.guided.get(p) is not None and tally.guided_rounds < self.cfg.guided_rounds

    def next_guided(self, p: int, tally: Tally) -> None:
        """After a guided round: the row when a chain was accepted or no round is left, else a
        pending line (a restart goes on from the next round) and the next round."""
        if tally.accepted or not self.guided_left(p, tally):
            self.write_row(p, tally, guided=True)
            return
        self.write(pending_line(self.ids[p], tally))
        self.retry.append(Job(p, tally.guided_rounds + 1, True))

    def write_row(self, p: int, tally: Tally, guided: bool) -> None:
        """The problem's row, once its passes are over."""
        del self.tallies[p]
        row = output_row(self.recs[p], self.ids[p], tally, self.floor, self.cfg, guided=guided)
        self.write(row)
        self.stats.done += 1
        self.stats.accepted += row["polish"]["polished"]
        if guided:
            self.guided_over(p, tally, row["polish"]["polished"])

    def write(self, row: dict) -> None:
        """Append one row with one os.write (a short write continues), so a kill tears at most
        the last line; fsync at least once a minute."""
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data):]
        if time.time() - self.synced > 60:
            self.sync()

    def sync(self) -> None:
        """The rows written so far reach the disk (they survive a power cut, not only a kill)."""
        os.fsync(self.fd)
        self.synced = time.time()

    def say(self, line: str, in_place: bool = False) -> None:
        """A line on rank 0's stderr. On a terminal it overwrites the progress line; in_place
        leaves the cursor on it, so that the next progress update overwrites it in turn."""
        if self.show:
            print("\r" + line.ljust(79) if self.tty else line, end="" if in_place and self.tty else "\n",
                  file=sys.stderr, flush=True)

    def progress(self, final: bool = False) -> None:
        """A progress line on rank 0: rewritten in place on a terminal, every 30 s in a log."""
        now = time.perf_counter()
        if not self.show or not final and now - self.last_shown < PROGRESS_S[not self.tty]:
            return
        self.last_shown, elapsed, d = now, now - self.t0, self.stats.done
        self.say(f"polish: {d}/{self.total} problems, {self.stats.accepted / max(d, 1):.0%} accepted, "
                 f"{self.stats.tokens / max(elapsed, 1e-9):,.0f} tok/s, ETA {minutes(self.time_left())}",
                 in_place=not final)

    def time_left(self) -> float | None:
        """Seconds left: the generate call's (common.SamplingEta), and as long again for every
        further call's worth of problems still queued (rounds that failures will add are not
        foreseen). None before the first call has tokens."""
        left = self.eta.seconds_left() if self.eta else None
        if left is None or not self.call:
            return left
        calls_after = (len(self.queue) + len(self.retry)) / max(len(self.call.problems), 1)
        return left + calls_after * (left + time.perf_counter() - self.call_t0)


def polish(model, tok, recs, ids, prompts, guided, todo, pending, cfg, floor, part, show) -> RunStats:
    """Polish problems `todo` (indices into recs), appending each finished row to `part`."""
    return Polisher(model, tok, recs, ids, prompts, guided, cfg, floor, part, show).run(todo, pending)


def summary(rows: list, t: RunStats | None, rank: int, dropped: int = 0, budget: int = 0) -> str:
    """The end-of-run report: coverage (by method), chain lengths, the leak check, free pass rates,
    the selection rule's effect, where time went."""
    meta = [r["polish"] for r in rows]
    pol = [m for m in meta if m["polished"]]
    never, always = sum(m["pass_rate"] == 0 for m in meta), sum(m["pass_rate"] == 1 for m in meta)
    out = [f"{len(rows)} problems: {len(pol)} polished ({100 * len(pol) / max(len(rows), 1):.1f}%), "
           f"{len(rows) - len(pol)} keep their original solution",
           *polish_report(meta),
           f"free pass rate: mean {sum(m['pass_rate'] for m in meta) / max(len(meta), 1):.3f}; never solved "
           f"{never}, always solved {always}, in between {len(meta) - never - always}"]
    if dropped:
        out.append(f"{dropped} problems dropped: prompt over --prompt-budget {budget} tokens "
                   "(listed at the start; not in the output)")
    if pol:
        def mean(k):
            return sum(m[k] for m in pol) / len(pol)
        out.append(f"selection (most markers per 1k tokens): chosen chains {mean('score'):.2f} markers/1k, "
                   f"{mean('tokens'):,.0f} tokens; a random accepted chain {mean('accepted_score'):.2f} "
                   f"markers/1k, {mean('accepted_tokens'):,.0f} tokens ({sum(m['accepted'] for m in pol)} "
                   "accepted chains)")
    if t:
        gen = t.gen - t.callback                  # the callback's time (grading, writing) is not generation
        other = t.wall - gen - t.grade
        out.append(f"rank {rank}: {t.done} problems, {t.tokens:,} tokens in {t.wall:.1f}s "
                   f"({t.tokens / max(t.wall, 1e-9):,.0f} tok/s): generation {gen:.1f}s, grading "
                   f"{t.grade:.1f}s, other {other:.2f}s ({100 * other / max(t.wall, 1e-9):.1f}%); "
                   f"setup {t.setup:.1f}s")
    return "\n".join(out)


# ----------------------------------------------------------------------------- CLI

# The smallest value each numeric flag may take, and whether that value itself is allowed (all
# are here): common.bound_problem's table. Checked before anything is read, as these mistakes
# otherwise surface late: --samples 0 as a ZeroDivisionError at the first row, --kv-gib -1 or
# --max-rows -1 as a sampler error after the weights are loaded.
LOWER_BOUNDS = {"samples": (1, True), "rounds": (1, True), "temperature": (0.0, True),
                "max_new_tokens": (1, True), "prompt_budget": (1, True), "min_tokens": (-1, True),
                "chunk": (1, True), "workers": (1, True), "kv_gib": (0.0, True), "max_rows": (0, True),
                "guided_rounds": (1, True)}
DIST_TIMEOUT_S = 7 * 24 * 3600   # the barrier before the merge waits for the slowest rank's share


def flag_problem(cfg: Config, merge_only: bool) -> str:
    """The first thing wrong with the flags, as a message naming flag and value; "" if none."""
    for name in ("data", "out") + (() if merge_only else ("model",)):
        if not getattr(cfg, name):
            return f"--{name} is required"
    problem = bound_problem(cfg, LOWER_BOUNDS) or workers_problem(cfg.workers)   # nan, inf come in through float()
    if problem:
        return problem
    if not 0 < cfg.top_p <= 1:
        return f"--top-p must be in (0, 1], not {cfg.top_p}"
    if cfg.think not in THINK_CHOICES:
        return f"--think must be one of {', '.join(THINK_CHOICES)}, not {cfg.think!r}"
    if cfg.template and cfg.template not in TEMPLATES:
        return f"--template must be one of {', '.join(TEMPLATES)} (or empty: the checkpoint's), not {cfg.template!r}"
    if cfg.precision not in precision.PRECISIONS:
        return f"--precision must be one of {', '.join(precision.PRECISIONS)}, not {cfg.precision!r}"
    if cfg.min_tokens > cfg.max_new_tokens:
        return (f"--min-tokens {cfg.min_tokens} is over --max-new-tokens {cfg.max_new_tokens}: "
                "no chain could be accepted")
    if cfg.temperature == 0 and (cfg.samples > 1 or cfg.rounds > 1):
        return (f"--temperature 0 is greedy decoding: --samples {cfg.samples} and --rounds {cfg.rounds} "
                "would repeat one chain; use --samples 1 --rounds 1, or a temperature above 0")
    if cfg.temperature == 0 and cfg.guided and cfg.guided_rounds > 1:
        return (f"--temperature 0 is greedy decoding: --guided-rounds {cfg.guided_rounds} would repeat one "
                "chain; use --guided-rounds 1, or a temperature above 0")
    return path_problem(cfg)


def path_problem(cfg: Config) -> str:
    """What is wrong with --model, --data and --out as paths; "" if nothing."""
    if cfg.model and not os.path.isdir(cfg.model):
        return f"--model {cfg.model}: no such folder (expected an HF model folder)"
    if not os.path.exists(cfg.data):
        return f"--data {cfg.data}: no such file or folder"
    out, data = os.path.realpath(cfg.out), os.path.realpath(cfg.data)
    if os.path.isdir(out):
        return f"--out {cfg.out} is a folder; name a file in it, e.g. {os.path.join(cfg.out, 'polished.jsonl')}"
    if out == data:
        return f"--out {cfg.out} is --data: the merge would overwrite the input"
    if os.path.isdir(data) and os.path.dirname(out) == data:
        # load_records reads every .jsonl of the folder: a rerun would take OUT and its parts as input
        return f"--out {cfg.out} is inside the --data folder {cfg.data}; write it elsewhere"
    return ""


def parse_config(argv, merge_only: bool = False) -> Config:
    """Flags from the Config fields (common.add_config_flags: their comments are the help), every
    one checked."""
    ap = argparse.ArgumentParser(
        prog="polish.py", description="Rejection-sampling chain-of-thought polishing (see the module "
        "docstring). `python polish.py merge --data D --out O` merges the rank parts of O.")
    add_config_flags(ap, Config)
    cfg = Config(**vars(ap.parse_args(argv)))
    problem = flag_problem(cfg, merge_only)
    if problem:
        ap.error(problem)
    return cfg


def fail(message: str) -> SystemExit:
    """A flag combination found wrong once files are read: one line, argparse's exit status."""
    print(f"polish.py: error: {message}", file=sys.stderr)
    return SystemExit(2)


def call_seed(seed: int, problem: int, round_: int, guided: bool) -> int:
    """The sampling seed of a generate call, from --seed and the call's first problem and round,
    so that no two calls draw the same stream. Each problem owns a block of 1,000,003 seeds (a
    prime); free round r takes offset r and guided round r offset 500,009 + r, so a guided round
    never repeats the free round of the same number while rounds stay under 500,000."""
    return seed + 1_000_003 * (problem + 1) + round_ + 500_009 * guided


def model_error(cfg: Config, e: Exception) -> ModelFileError:
    """An error reading the model folder as one line that names it."""
    text = str(e) if not isinstance(e, KeyError) else f"config.json has no key {e.args[0]!r}"
    return ModelFileError(text if cfg.model in text else f"--model {cfg.model}: {text}")


def read_model_files(cfg: Config) -> tuple[Tokenizer, ModelConfig]:
    """The model folder's tokenizer and config.json, and a known chat template: all that the
    checks before loading the weights need."""
    try:
        tok = read_tokenizer(cfg.model, "polish.py")
        tok.render_chat("", cfg.template or None)   # the checkpoint's own template must be one we know
        mcfg = read_config(cfg.model)   # the same reader as Transformer.from_pretrained (a BOM, any locale)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise model_error(cfg, e) from None
    return tok, mcfg


def problem_ids(recs: list) -> list[str]:
    """Each record's row id (problem_id), by its position in the deduplicated input."""
    return [problem_id(i, r["problem"]) for i, r in enumerate(recs)]


def read_problems(cfg: Config, tok: Tokenizer, show: bool) -> tuple[list, list, list, set]:
    """--data through data.load_problems: every deduplicated record (a file with no problem, or
    with no prompt within --prompt-budget, is its DataError), the records' row ids and prompt ids,
    and the indices of the problems over the budget, listed on stderr when shown."""
    problems = load_problems(cfg.data, tok, cfg.prompt_budget, cfg.template or None, skip_bad=cfg.skip_bad,
                             system=cfg.system)
    recs, prompts = problems.records, problems.prompts
    ids = problem_ids(recs)
    kept = set(problems.where)
    over = [i for i in range(len(recs)) if i not in kept]
    if show and over:
        print(f"polish: {len(over)} of {len(recs)} problems dropped, their prompt is over --prompt-budget "
              f"{cfg.prompt_budget} tokens:", file=sys.stderr)
        for i in over[:LISTED]:
            print(f"  {ids[i]} ({len(prompts[i])} tokens): {recs[i]['problem'][:60]!r}", file=sys.stderr)
        if len(over) > LISTED:
            print(f"  ... and {len(over) - LISTED} more", file=sys.stderr)
    return recs, ids, prompts, set(over)


def check_kv_budget(mcfg: ModelConfig, longest: int, cfg: Config, dtype, what: str = "prompt") -> None:
    """--kv-gib must hold one sequence: the longest prompt + --max-new-tokens (sample's one
    KV-budget rule, which generate() applies too, checked before the weights are loaded). With
    --kv-gib 0 the default budget is sized now, on this rank's device, as generate() will."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    budget = kv_budget_of(cfg.kv_gib) or default_kv_budget(device)
    problem = kv_budget_problem(mcfg, budget, longest + cfg.max_new_tokens, dtype)
    if problem:
        raise fail(f"--kv-gib {cfg.kv_gib} is too small for the longest {what} ({longest} tokens) + "
                   f"--max-new-tokens {cfg.max_new_tokens}: {problem}")


def load_model(cfg: Config, device, dtype) -> Transformer:
    """The weights, in eval mode; a bad model folder is one line naming it."""
    try:
        return Transformer.from_pretrained(cfg.model, device=device, dtype=dtype).eval()
    except (FileNotFoundError, ValueError) as e:
        raise model_error(cfg, e) from None


def run_polish(cfg: Config, rank: int, world: int, part: str) -> None:
    """Check, load, polish this rank's share, merge on rank 0."""
    t_start = time.perf_counter()
    # 1) everything but the weights: model files, problems, prompts in budget, rows already written
    tok, mcfg = read_model_files(cfg)
    recs, ids, prompts, over = read_problems(cfg, tok, show=rank == 0)
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    lock = lock_output(cfg.out + ".lock", "polish.py") if rank == 0 else None   # one polish.py per --out
    try:   # to the end: the lock and the process group are let go on any exit
        done, pending_ids = read_outputs(cfg.out, set(ids), own=part, tally=Tally)
        dropped = {ids[i] for i in over if ids[i] not in done}      # a row from an earlier run is kept
        todo = [i for i in shard(range(len(recs)), rank, world) if ids[i] not in done and i not in over]
        pending = {i: pending_ids[ids[i]] for i in todo if ids[i] in pending_ids}
        guided = guided_prompts(tok, recs, todo, cfg, show=rank == 0)
        dtype = precision.DTYPES[precision.resolve(cfg.precision, "cuda" if torch.cuda.is_available() else "cpu")]
        check_kv_budget(mcfg, max((len(prompts[i]) for i in todo), default=0), cfg, dtype)
        check_kv_budget(mcfg, max((len(g) for g in guided.values() if g), default=0), cfg, dtype, "guided prompt")
        floor = cfg.min_tokens if cfg.min_tokens >= 0 else \
            default_floor(mcfg.max_position_embeddings, cfg.max_new_tokens)
        # 2) the process group (gloo, only for the barrier before the merge: no tensors are exchanged),
        # this rank's device (cuda:LOCAL_RANK, made the current one, or the CPU), the weights
        _, _, device = start_distributed(timeout_s=DIST_TIMEOUT_S, backend="gloo")
        model = load_model(cfg, device, dtype)
        if rank == 0:
            passes = f", then guided x {cfg.guided_rounds} round(s)" if cfg.guided else ""
            print(f"polish: {len(recs)} problems, {len(done)} already done, {len(dropped)} over the prompt "
                  f"budget, {len(todo)} on rank 0 of {world} ({len(pending)} resuming their guided pass); "
                  f"{cfg.samples} samples x {cfg.rounds} round(s){passes}, min {floor} tokens, device {device}",
                  file=sys.stderr, flush=True)
        # 3) this rank's problems, each row appended to its part as it finishes
        setup = time.perf_counter() - t_start
        t = polish(model, tok, recs, ids, prompts, guided=guided, todo=todo, pending=pending, cfg=cfg,
                   floor=floor, part=part, show=rank == 0)
        t.setup = setup
        # 4) once every rank is done, rank 0 merges the parts into OUT
        if world > 1:
            dist.barrier()
        if rank == 0:
            rows = merge(cfg.out, ids, dropped)
            print(f"wrote {cfg.out}\n" + summary(rows, t, rank, len(dropped), cfg.prompt_budget))
    finally:
        stop_distributed()   # also on an error: gloo's threads are joined before the interpreter exits
        if lock is not None:
            lock.close()


def run_merge(cfg: Config) -> None:
    """`polish.py merge`: the parts into OUT, by hand. With --model, problems over --prompt-budget
    need no row, as in the run; without it (no tokenizer, so no prompts) every problem needs one."""
    dropped, hint = set(), ""
    if cfg.model:
        tok, _ = read_model_files(cfg)
        _, ids, _, over = read_problems(cfg, tok, show=True)
        dropped = {ids[i] for i in over}
    else:
        recs = dedupe(load_records(cfg.data, cfg.skip_bad))   # data.load_problems' reading, without prompts
        if not recs:
            raise DataError(f"{cfg.data}: no problems")
        ids = problem_ids(recs)
        hint = " (problems over --prompt-budget count only when merge is given --model)"
    rows = merge(cfg.out, ids, dropped, hint)
    print(summary(rows, None, 0, len(dropped - {r["polish"]["id"] for r in rows}), cfg.prompt_budget))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    merge_only = argv[:1] == ["merge"]
    cfg = parse_config(argv[1:] if merge_only else argv, merge_only)
    if merge_only:
        with clean_exit("polish.py", on_interrupt=f"{cfg.out} is replaced only when complete and the rank "
                        "parts are kept; run the merge again"):
            run_merge(cfg)
        return
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    part = part_path(cfg.out, rank, world)
    with clean_exit("polish.py", on_interrupt=f"the rows finished so far are kept in {part}; run the same "
                    "command again to continue from them"):
        run_polish(cfg, rank, world, part)


if __name__ == "__main__":
    main()
