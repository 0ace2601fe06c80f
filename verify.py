r"""verify.py: grade a model's final answer against a reference: right, fast, and never hangs.

    python verify.py --answer '\frac12' --response '... \boxed{0.5}'   # verdict and why
    python verify.py FILE.jsonl [--workers 4] [--timeout 5]            # {response, answer} lines
    from verify import grade, reward, grade_batch
    grade(response, answer, problem=text)   # the problem's text maps a bare choice letter

The answer is the last complete \boxed{..} / \fbox{..} / `\boxed 5` (after </think> if present;
no box, an unclosed last box or an empty one is no answer). One normaliser serves both sides.
The reference picks the comparison: choice letter, text, union, set/list (order free),
interval/tuple (ordered, bracket types), matrix, base-n, ratio, equation (lhs - rhs
proportional), inequality, scalar. Our own small LaTeX parser reads scalars as exact Fractions
in this process; whatever needs sympy (radicals, pi, symbols) runs in a worker process that is
killed and replaced past the timeout (select() on a pipe: any thread, no signals), and that
dies with the process that started it, even mid-job (Linux: PR_SET_PDEATHSIG; elsewhere a
thread that watches getppid()). A cost model refuses, before computing it, whatever is too
big to compute here (the MAX_* caps of answers.py and latex.py, each with its measured
cost): long text, deep nesting, exact values past MAX_BITS bits however they are written
(1e-999999999, 10^{10^9}, 5000 digits, n!), \pm chains past the list cap.
Timeouts and errors are "not correct", counted in STATS and logged; no exception leaves
grade(), reward(), grade_batch() or explain(). The file mode of the CLI reports bad lines by
number, grades the others and ends with a summary.

Five files, imports flowing down: this one holds the policy (below), the API, the typed
comparison and the CLI; forms.py reads the shape of an answer string (names, lists, tuples,
relations, intervals, powers) for the comparison; answers.py finds the final box and normalises
text; latex.py reads LaTeX into exact values under its caps and compares sympy values;
workers.py runs the killable worker processes: each imports this file by name and calls
_worker_judge() once, which imports sympy and hands back _judge to answer each job.

Policies:
- Decimals are exact: 0.333 != 1/3.
- Unreduced fractions are equal by value: 2/4 == 1/2.
- % and degree signs are dropped: 44% == 44 != 0.44; there is no degree/radian conversion
  except inside \sin 30^\circ.
- A dropped base subscript is accepted (1103 for 1103_6); a wrong base is not.
- Boxes separated only by and/or/commas form one list, and a list is wrong against a single
  reference, so hedges ("3 or 4") fail.
- "x = 5", "AB = 5", "10/2 = 5", "a = b = 5" reduce to the last part. A name on the left
  names the value on the right: "(a, b) = (4, 1)", "x:y = 3:5", "|PQ| = 7",
  "\frac{AM}{MB} = \frac{2}{3}" are their values, and in an answer so is "m+n = 12" (a
  reference "x + y + z = 0" stays an equation: it may be the plane asked for). A number on the
  left names nothing: "7 = 11a+c" is an equation, never 11a+c. Two assignments compare by
  value where either names one quantity or a tuple ("x = 5" is "y = 5"); other names must
  match as well ("x:y = 3:5" is not "y:x = 3:5").
- Numbers written with spaces: three-digit groups after a space are a thousands separator
  ("1 000", "1\,000", "1~000" are 1000); a whole number, a space and a proper fraction are a
  mixed number, as DeepScaleR's grader reads them ("2 1/2" is 5/2, "-3 1/4" is -13/4). Any
  other two plain numbers side by side ("2 3", "2 5/2", "1 0000") are no value, never a product.
- Several solutions: against a reference of several k-tuples, an answer may give each solution
  as k values or assignments grouped by ";" or "or" ("x=2, y=3; x=3, y=2" is (2,3), (3,2),
  order free). A tuple's coordinates may be separated by ";" ("(2; 3)"), and a naming prefix
  is dropped ("(x, y) = (5, 8) \text{ and } (8, 5)", "(x, y) \in \{(5, 8), (8, 5)\}").
- Approximations: the exact part before \approx or \simeq is graded, not the rounding after
  it: "\frac{9}{4}\pi \approx 7.07" is right against 9\pi/4 and wrong against 7.07. Where
  nothing exact comes before it ("x \approx 7.07"), the approximation is the answer.
- An inequality equals itself times a positive number ("2x < 2" is "x < 1"), times -1 with the
  sign turned ("-x > -1" is "x < 1"), and the interval it describes ("x < 1" is
  (-\infty, 1)). A bracketed array ("\left[\begin{array}{cc}..\end{array}\right]") is a matrix.
- Braces around a whole answer are LaTeX grouping: "{1,3}" is the list 1, 3 and "{}" holds
  nothing; a set is written "\{1,3\}" (order free, like a list), the empty set "\{\}".
- A doubled backslash before a command name ("\\frac{1}{2}", as JSON-mangled outputs carry
  it) is one backslash, unless the text holds a real \begin: there "\\" is a matrix's line break.
- Two powers of one integer base are compared by their exponents before either is computed:
  2^{2^{2^{2^2}}} is 2^{65536}, 4^{32768} is 2^{65536}, 2^{65537} is not; the size caps refuse
  only what must be computed (2^{65536} + 1).
- An ellipsis item ("\ldots", "\dots", "\cdots", "...") makes a list a sequence, compared in
  order: "1, 2, 3, \ldots" is not "1, 2, 3", "1, 2, \ldots, 10" is "1, 2, \cdots, 10"; an
  ellipsis alone is no answer.
- (a, b) is an ordered pair and equally an open interval.
- A column or row vector equals the tuple of its entries.
- Two irrational values equal to 50 digits are equal; a rational against an irrational needs
  a sympy proof.
- A reference that does not parse is reported (STATS['bad_reference']) and never matches;
  None is no reference (not the text "None").
- A decorated choice, "(C) 28", "\textbf{(C)}\ 28", "C) 28", "(C): 28", "28 (C)", is its
  value against a value reference and its letter against a letter reference. A bare letter
  against a value reference is wrong, unless the problem's text is given and lists choices
  "(A) .. (B) ..": then the letter stands for the value listed for it.
- Several boxes that all equal a single reference are that value written in several forms
  ("\boxed{15\frac{39}{40}}, or \boxed{\frac{639}{40}}"), not a hedge.
- Values too big to compute are not correct, except an answer identical to its reference.
- A box that holds nothing once normalised (`\boxed{.}`, `\boxed{\quad}`, `\boxed{\text{}}`,
  `\boxed{^\circ}`), or whose rule leaves nothing (`x =` has no value, `and` no items), is no
  answer: wrong against every reference, its reason "no answer", counted in STATS['no_answer'].
  Rules over several items (a list, a tuple, a repeated value) need at least one item each,
  two for a repeated value; a reference, or a part of one, that normalises to nothing is a bad
  reference and never matches.

Left out: unit conversion, approximate answers ("to two significant figures"), \log as base 10
(it is the natural log), Windows (the workers use select() on pipes), |x| <= 1 read as an
interval, solutions written as chains ("x=y=z=0; x=y=z=1"), an interval against an inequality
it can be read as only by scaling ("(-\infty, 1)" against "2x < 2").
"""

import argparse
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections import Counter
from fractions import Fraction
from functools import partial

from answers import (MAX_ITEMS, MAX_LEN, MAX_RAW, choice_letter, decoration, extract, is_text,
                     listed_choices, normalize, words)
from forms import (_REL, _assignment, _exact, _flat, _flip, _int_power, _interval, _items, _rhs,
                   _root, _seq, _shape, _single_name, _solutions, _split)
from latex import (MAX_DEPTH, NeedSympy, Ops, ParseError, SyntaxOnly, TooBig, depths, parse,
                   proportional, sym_equal)
from workers import Pool

log = logging.getLogger("verify")
STATS: Counter = Counter()   # timeout, deadline, error, bad_reference, worker_died, too_long, no_answer
TIMEOUT = 5.0                # seconds of sympy work per (reference, answer) pair
# Seconds of sympy work per grade_batch() call, over all its jobs: without it 5% of answers that
# each run to TIMEOUT turned a 1 s batch of 2,000 into 145 s at every GRPO step. A batch of
# ordinary answers (~20 ms each on 4 workers) needs a few seconds; jobs still waiting when the
# budget is spent are "not correct", counted in STATS['deadline'].
BATCH_BUDGET = 60.0
# the reason given when the answer, or the part of it a rule kept, holds nothing: `\boxed{.}`,
# `x =`, `and`; found again in a verdict's why, whose steps are joined by " > " and " | "
NO_ANSWER = "no answer"
_NO_ANSWER_WHY = re.compile(rf"(?:\A| > | \| ){NO_ANSWER}(?:\Z|:| > | \| )")
_HERE = os.path.dirname(os.path.abspath(__file__))
_MOD = os.path.basename(__file__).rsplit(".", 1)[0]
# the sympy worker processes: each runs this file's _worker_judge (imported by name there)
_pool = Pool(_MOD, "_worker_judge", folder=_HERE, stats=STATS, name="verify")
_cache: dict = {}  # worker verdicts by job: GRPO grades the same answer many times


# ---------------------------------------------------------------------------- API

def explain(response: str, answer, timeout: float = TIMEOUT, problem: str | None = None) -> dict:
    """What grade() decides on: the extracted text, both normal forms, the verdict and why."""
    return _grade_all([(response, answer, problem)], 1, timeout)[0]


def grade(response: str, answer, timeout: float = TIMEOUT, problem: str | None = None) -> bool:
    """True when the last box of response equals answer (rules in the module docstring). The
    problem's text, when given, maps a bare choice letter to the value it lists for it."""
    return explain(response, answer, timeout, problem)["correct"]


def reward_of(correct: bool, response: str, require_think: bool = False,
              problem: str | None = None) -> float:
    """DeepScaleR's rule, given the grade: 1.0 if the answer is right and, when required (R1
    models), the response closed its reasoning with </think>; else 0.0. `problem` is taken so
    that callers can pass reward() and reward_of() the same keywords; the grade has used it."""
    return 1.0 if correct and (not require_think or "</think>" in response) else 0.0


def reward(response: str, answer, require_think: bool = False, timeout: float = TIMEOUT,
           problem: str | None = None) -> float:
    """reward_of(grade(response, answer, problem=problem), response, require_think)."""
    return reward_of(grade(response, answer, timeout, problem), response, require_think)


def grade_batch(pairs, workers: int | None = None, timeout: float = TIMEOUT,
                problem: str | None = None, budget: float = BATCH_BUDGET) -> list:
    """grade() for many (response, answer) pairs, or (response, answer, problem) triples:
    string work here, sympy jobs on `workers` processes, all of them within `budget` seconds.
    `problem` is the problem of every pair that does not carry its own (the samples of one
    prompt)."""
    workers = workers or min(4, os.cpu_count() or 1)
    return [i["correct"] for i in _grade_all(pairs, workers, timeout, problem, budget)]


def shutdown() -> None:
    """Stop the idle workers (they also exit by themselves when this process ends)."""
    _pool.shutdown()


# ---------------------------------------------------------------------------- grading

def _refs(answer) -> list:
    """Normal forms of a reference: str, number (27.0 as written), GSM8K '#### N', or a list
    of them. None is no reference (it is not the text "None"), and neither is a float NaN (it
    would match the text NaN); a float infinity is \\infty."""
    if answer is None or (isinstance(answer, float) and math.isnan(answer)):
        return []
    if isinstance(answer, (list, tuple)):
        return [r for x in answer for r in _refs(x)]
    s = repr(answer) if isinstance(answer, float) else str(answer)
    if "####" in s:
        s = s.rsplit("####", 1)[1]
    if "\\boxed" in s or "\\fbox" in s:
        s = extract(s) or s
    return [normalize(s[:MAX_RAW])]


def _prepare(response: str, answer, problem: str | None = None) -> dict:
    """The in-process part of a grade; info["job"] is set when a worker must decide. Nothing
    raises out of it: an unexpected error is counted, logged and not correct."""
    try:
        return _prepare_checked(response, answer, problem)
    except Exception as e:   # a bug or an input we never imagined: never crash the caller
        STATS["error"] += 1
        log.warning("verify: unexpected %s: %s", type(e).__name__, e)
        return dict(extracted=None, reference=[], answer=None, correct=False, job=None,
                    why=f"error: {type(e).__name__}: {e}"[:300])


def _prepare_checked(response: str, answer, problem: str | None) -> dict:
    """_prepare() without the safety net."""
    refs, raw = _refs(answer), extract(response)
    info = dict(extracted=raw, reference=refs, answer=None, why="no complete box", correct=False,
                job=None)
    if raw is None:
        return info
    if not refs:
        STATS["bad_reference"] += 1
        return info | {"why": "bad reference: no reference"}
    ans = normalize(raw) if len(raw) <= MAX_RAW else None
    if ans is None or len(ans) > MAX_LEN:
        STATS["too_long"] += 1
        return info | {"why": "answer too long"}
    info["answer"] = ans
    if not ans:   # \boxed{.}, \boxed{\quad}, \boxed{\text{}}: the box holds no answer
        return info | {"why": f"{NO_ANSWER}: the box holds nothing once normalised"}
    # the choices matter only to a bare letter, so only then is the problem read
    letter, value = decoration(ans)
    choices = listed_choices(problem) if problem and letter and value is None else None
    try:
        info["correct"], info["why"] = _decide(refs, ans, None, choices)
    except NeedSympy:
        job = json.dumps([refs, ans, choices] if choices else [refs, ans])
        hit = _cache.get(job)
        if hit:
            info.update(correct=hit[0], why=hit[1] + " (cached)")
        else:
            info.update(job=job, why="needs sympy")
    except _BadRef as e:
        STATS["bad_reference"] += 1
        log.warning("verify: bad reference %s", e)
        info["why"] = f"bad reference: {e}"
    return info


def _grade_all(pairs, workers: int, timeout: float, problem: str | None = None,
               budget: float = BATCH_BUDGET) -> list:
    """Infos for (response, answer) or (response, answer, problem) tuples; `problem` serves the
    pairs that carry none. The sympy jobs run on `workers` worker processes until `budget`
    seconds have passed; a job then still waiting is not correct (STATS['deadline']), and one
    that was running gets what is left of the budget as its timeout."""
    infos = [_prepare(p[0], p[1], p[2] if len(p) > 2 else problem) for p in pairs]
    results = {}
    jobs = list({i["job"] for i in infos if i["job"]})
    todo = iter(jobs)   # shared by the threads: each next() hands out a job once
    deadline = time.monotonic() + budget

    def drive():   # one thread per worker process; the threads only wait on pipes
        w = _pool.take()
        try:
            for job in todo:
                left = deadline - time.monotonic()
                if left <= 0:
                    STATS["deadline"] += 1
                    results[job] = (False, f"batch budget of {budget:g}s spent before this job")
                    continue
                results[job], w = _ask(w, job, min(timeout, left), cache_timeout=left >= timeout)
        finally:
            _pool.give(w)

    threads = [threading.Thread(target=drive, daemon=True) for _ in range(min(workers, len(jobs)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in infos:
        if i["job"]:   # a thread that could not start a worker left no result
            i["correct"], i["why"] = results.get(i["job"], (False, "no worker answered"))
        if not i["correct"] and _NO_ANSWER_WHY.search(i["why"]):
            STATS["no_answer"] += 1   # counted here, where every verdict passes, workers' too
    return infos


def _ask(w, job: str, timeout: float, cache_timeout: bool = True) -> tuple:
    """Run one job (a JSON line) on worker w: ((verdict, why), worker to use next). The pool
    replaces a timed-out or dead worker (and counts it); errors and bad references are counted
    and logged here, and the other verdicts cached. A job that ran out its full timeout is
    cached as not correct too (cache_timeout): the same hostile answer, sampled again, costs
    nothing the next time."""
    answer, failure, w = _pool.ask(w, job, timeout)
    if failure:
        if failure.startswith("timeout") and cache_timeout:
            _cache[job] = (False, failure)
        return (False, failure), w
    ok, why = answer
    if ok is None:
        STATS["error"] += 1
        log.warning("verify: %s on %.200s", why, job)
    elif why.startswith("bad reference"):
        STATS["bad_reference"] += 1
        log.warning("verify: %s", why)
    else:
        if len(_cache) > 100_000:
            _cache.clear()
        _cache[job] = (bool(ok), why)
    return (bool(ok), why), w


# ---------------------------------------------------------------------------- typed comparison

class _BadRef(Exception):
    """The reference does not parse."""


# a union: "(0, 1) \cup (2, 3)"
_CUP = re.compile(r"\\cup(?![a-zA-Z])")
# ratio and clock-time parts: "3:1", "4:30"
_RATIO = re.compile(":")
# an ellipsis item of a list: "1, 2, 3, \ldots" (the normaliser writes \dots, \cdots, ... so)
_ELLIPSIS = "\\ldots"
# a base-n number: "1103_6", "A3_{12}"
_BASE = re.compile(r"(-?[0-9A-Za-z]+)\s*_\{?(\d+)\}?")
# a choice reference: "C", "(C)", "(C) 42"
_CHOICE_REF = re.compile(r"\(?([A-E])\)?|\(([A-E])\)\s*(.+)")


class _Cmp:
    """Typed comparison of two normal forms; without sympy (sp=None) it raises NeedSympy where
    needed. `why` lists what decided, in order."""

    def __init__(self, sp=None, choices: dict | None = None):
        self.B = Ops(sp)
        self.sp = sp
        self.choices = choices or {}   # letter -> value, from the problem's text
        self.why = []
        self.memo = {}   # (text, is reference) -> parsed value, None for an unreadable answer

    def note(self, w: str) -> None:
        if w not in self.why:
            self.why.append(w)

    def pairwise(self, R: list, A: list) -> bool:
        """Item by item, in order; two empty lists are not equal (all() of nothing is True)."""
        return len(R) == len(A) > 0 and all(self.equal(x, y) for x, y in zip(R, A))

    def equal(self, r: str, a: str) -> bool:
        """Reference r against answer a, by the reference's shape. Every rule below that
        reduces a side to a part of it comes back here, so this is where a part that holds
        nothing is refused: an empty answer is never right, an empty reference never matches."""
        if "\\approx" in r or "\\approx" in a:
            self.note("exact part of an approximation")
            r, a = _exact(r), _exact(a)
        if not r:
            raise _BadRef("a part of the reference is empty")
        if not a:
            self.note(NO_ANSWER)
            return False
        if _ELLIPSIS in (r, a):   # an item "\\ldots" matches only another
            self.note("ellipsis")
            return r == a
        if m := _CHOICE_REF.fullmatch(r):
            return self.choice(m, a)
        letter, value = decoration(a)
        if letter:
            return self.chosen(r, letter, value)
        if is_text(r):
            self.note("text")
            return words(a) == words(r)
        # "x = (1, 2)", "10/2 = 5" against a plain reference, and the other way round
        if not _split(r, _REL)[1]:
            a = _rhs(a, sums=True)
        elif not _split(a, _REL)[1]:
            r = _rhs(r)
        if _CUP.search(r):
            return self.union(r, a)
        R, A = _items(r), _items(a)
        if len(R) > MAX_ITEMS or len(A) > MAX_ITEMS:
            raise TooBig("list length")
        if not R:
            raise _BadRef(f"{r!r}: a list with no items")
        if not A:   # 'and', ', ;', 'or': separators with nothing between them
            self.note(NO_ANSWER)
            return False
        if R != [r] or A != [a]:
            return self.collection(r, a, R, A)
        sr = _seq(r) or _seq(_interval(r))
        sa = _seq(a) or _seq(_interval(a))
        if sr and sa:
            return self.seq(sr, sa)
        # an inequality that is no interval here ("2x < 2") is still a relation: compare it so
        if (sr or sa) and not (_split(r, _REL)[1] and _split(a, _REL)[1]):
            return False
        if m := _BASE.fullmatch(r):
            base = int(m.group(2))
            if 2 <= base <= 36 and all(int(c, 36) < base for c in m.group(1).lstrip("-")):
                return self.base_n(m.group(1), base, a)
        rr = _split(r, _RATIO)[0]
        # ratios and clock times, part by part: 3:1, 4:30 ("x:y = 3:5" is a relation)
        if len(rr) > 1 and not _split(r, _REL)[1]:
            self.note("ratio")
            return self.pairwise(rr, _split(a, _RATIO)[0])
        return self.relation(r, a)

    def choice(self, m: re.Match, a: str) -> bool:
        """A choice reference (m of _CHOICE_REF): letters compare as letters; an answer with no
        letter is compared with the choice's value when the reference gives one."""
        letter = m.group(1) or m.group(2)
        c = choice_letter(a) or decoration(a)[0]
        self.note("choice")
        if c or not m.group(3):
            return c == letter
        return self.equal(m.group(3), a)

    def chosen(self, r: str, letter: str, value: str | None) -> bool:
        """A value reference against a choice: its value when the answer wrote one, else the
        value the problem lists for its letter; a bare letter without that is wrong."""
        if value is None:
            value = self.choices.get(letter)
            if not value:
                self.note("choice letter, no value")
                return False
        self.note("choice value")
        return self.equal(r, normalize(value))   # again: "5 times" -> "5"

    def union(self, r: str, a: str) -> bool:
        """Unions of intervals, order free; inequalities read as intervals."""
        pa = _split(a, _CUP)[0] if _CUP.search(a) else _items(a)
        self.note("union")
        R = [_interval(p) or p for p in _split(r, _CUP)[0]]
        A = [_interval(p) or p for p in pa]
        return self.multiset(R, A)

    def collection(self, r: str, a: str, R: list, A: list) -> bool:
        """Either side is a list (R, A its items): one item each, a tuple of assignments, or a
        set."""
        if _ELLIPSIS in R or _ELLIPSIS in A:   # "1, 3, 5, \\ldots" is a sequence: in order
            self.note("sequence with an ellipsis")
            return self.pairwise(R, A)
        if len(R) == len(A) == 1:
            return self.equal(R[0], A[0])
        if (groups := self.solutions(R, A, a)) is not None:
            return self.multiset(R, groups)
        sr = _seq(r)
        if sr and sr[0] == "tup" and "=" in a:
            self.note("tuple")
            return self.pairwise(sr[2], A)
        if len(R) == 1 and self.repeated(R[0], A):
            return True
        self.note("set")
        return self.multiset(R, A)

    def solutions(self, R: list, A: list, a: str) -> list | None:
        """A reference of several k-tuples against an answer that writes each solution as k
        values or assignments, grouped by ';' or 'or' ('x=2, y=3; x=3, y=2'): the answer's
        tuples, else None."""
        seqs = [_seq(x) for x in R]
        if len(R) < 2 or not all(s and s[0] == "tup" for s in seqs) or any(_seq(x) for x in A):
            return None
        k = len(seqs[0][2])
        groups = _solutions(a, k) if all(len(s[2]) == k for s in seqs) else None
        if groups:
            self.note("solutions")
        return groups

    def repeated(self, r: str, A: list) -> bool:
        """Several answers that all equal one reference are that value written in several forms
        (\\boxed{15\\frac{39}{40}}, or \\boxed{\\frac{639}{40}}), not a hedge. Several means
        two or more, each holding something: all() of no items is True."""
        if len(A) < 2 or not all(A):
            return False
        why = list(self.why)
        if all(self.equal(r, x) for x in A):
            self.note("one value in several forms")
            return True
        self.why = why   # what the failed check noted did not decide
        return False

    def base_n(self, digits: str, base: int, a: str) -> bool:
        """A base-n reference: the same digits, with the same base or none written."""
        n = _BASE.fullmatch(a)
        same = (n.group(1) if n else a).upper().lstrip("0") == digits.upper().lstrip("0")
        self.note("base-n")
        return same and (not n or int(n.group(2)) == base)

    def multiset(self, R: list, A: list) -> bool:
        """Same elements, any order; two empty lists are not equal."""
        if not R or not A:
            return False
        left = list(A) if len(R) == len(A) else []
        for x in R:
            j = next((j for j, y in enumerate(left) if self.equal(x, y)), None)
            if j is None:
                return False
            left.pop(j)
        return True

    def seq(self, sr, sa) -> bool:
        """Matrices by shape, vectors against tuples, intervals by bracket type, then entries."""
        if sr[0] == sa[0] == "mat":
            self.note("matrix")
            if _shape(sr) != _shape(sa):
                return False
        elif "mat" in (sr[0], sa[0]):
            self.note("vector")
            if 1 not in (_shape(sr) or _shape(sa)):
                return False
        else:
            pair = len(sr[2]) == 2
            self.note("interval" if pair and (sr[1], sr[3]) != ("(", ")") else "tuple")
            if pair and (sr[1], sr[3]) != (sa[1], sa[3]):
                return False
        return self.pairwise(_flat(sr), _flat(sa))

    def relation(self, r: str, a: str) -> bool:
        """Assignments by value, equations up to a factor, inequalities up to a positive one."""
        (rp, ro), (ap, ao) = _split(r, _REL), _split(a, _REL)
        if not all(rp):
            raise _BadRef(f"{r!r}: a side of the relation is empty")
        if not all(ap):   # 'x =', '< 5', '=': a relation with a side missing states no value
            self.note(NO_ANSWER)
            return False
        named_r = _assignment(r)
        named_a = _assignment(a, sums=True) if named_r and named_r[1] else None
        if named_a and named_a[1]:
            return self.assignments(named_r, named_a)
        if not ro and not ao:
            return self.scalar(r, a)
        self.note("equation" if "=" in ro + ao else "inequality")
        rp, ro = _flip(rp, ro)
        ap, ao = _flip(ap, ao)
        if ro != ao or len(ro) > 2:
            return False
        if len(ro) == 2:
            return self.pairwise(rp, ap)
        if r == a:
            return all(self.identical(p) for p in rp)
        vals = [self.value(x, True) for x in rp] + [self.value(x, False) for x in ap]
        if None in vals:
            return False
        r0, r1, a0, a1 = self.B.S(*vals)
        return proportional(self.sp, r1 - r0, a1 - a0, ro[0] not in ("=", "!="))

    def assignments(self, r: tuple, a: tuple) -> bool:
        """Two (name, value) assignments: by value where either name is one quantity or a tuple
        of them ('x = 5' is 'y = 5'); two other name expressions must match too ('x:y = 3:5' is
        not 'y:x = 3:5')."""
        if _single_name(r[0]) or _single_name(a[0]) or r[0].replace(" ", "") == a[0].replace(" ", ""):
            self.note("assignment")
            return self.equal(r[1], a[1])
        self.note("named values")
        return self.equal(r[0], a[0]) and self.equal(r[1], a[1])

    def value(self, s: str, ref: bool):
        """s parsed; a reference that does not read raises _BadRef, an answer that does not is
        None."""
        if (s, ref) not in self.memo:
            try:
                self.memo[s, ref] = parse(s, self.B)
            except (ParseError, TooBig) as e:
                if ref and isinstance(e, ParseError):
                    raise _BadRef(f"{s!r}: {e}") from None
                if ref:
                    raise e from None
                self.memo[s, ref] = None
        return self.memo[s, ref]

    def same_base(self, r: str, a: str) -> bool | None:
        """Two powers of one integer base (|base| >= 2), compared by their exponents before either
        is computed: 2^{2^{2^{2^2}}} is 2^{65536}, and 4^{32768} is 2^{2 * 32768}. None when r
        and a are not both such powers, or their bases are not powers of one number."""
        pr = _int_power(r)
        pa = _int_power(a) if pr else None
        if not (pr and pa) or min(abs(pr[0]), abs(pa[0])) < 2:
            return None
        # a tower past the parser's nesting cap is refused there; no recursion here
        if (r + a).count("^") > MAX_DEPTH or max(depths(r + a), default=0) > MAX_DEPTH:
            return None
        (cr, kr), (ca, ka) = _root(pr[0]), _root(pa[0])
        if cr != ca:
            return None
        self.note("powers of one base")
        er = pr[1] if kr == 1 else f"{kr}\\cdot({pr[1]})"
        ea = pa[1] if ka == 1 else f"{ka}\\cdot({pa[1]})"
        return self.scalar(er, ea)

    def identical(self, r: str) -> bool:
        """Identical strings are equal if they read, however big."""
        try:
            parse(r, SyntaxOnly())
        except TooBig:
            pass
        except ParseError as e:
            raise _BadRef(f"{r!r}: {e}") from None
        self.note("identical")
        return True

    def scalar(self, r: str, a: str) -> bool:
        """Two values: exact Fractions here, anything else by sympy in the worker."""
        if r == a:
            return self.identical(r)
        same = self.same_base(r, a)
        if same is not None:
            return same
        x, y = self.value(r, True), self.value(a, False)
        if y is None:
            self.note("answer unreadable or too big")
            return False
        if isinstance(x, Fraction) and isinstance(y, Fraction):
            self.note("exact")
            return x == y
        return sym_equal(self.sp, *self.B.S(x, y), self.note)


def _decide(refs: list, ans: str, sp=None, choices: dict | None = None) -> tuple:
    """(verdict, why) for normalised references against a normalised answer, given the choices
    the problem lists (letter -> value) if any; may raise NeedSympy."""
    why = []
    for r in refs:
        if not r or len(r) > MAX_LEN:
            raise _BadRef(f"empty or too long: {r[:50]!r}")
        c = _Cmp(sp, choices)
        try:
            ok = c.equal(r, ans)
        except TooBig as e:
            ok = False
            c.why = [f"too big: {e}"]
        except RecursionError:   # brackets nested past what the comparison recurses through
            ok = False
            c.why = ["too big: nesting"]
        why.append(" > ".join(c.why))
        if ok:
            return True, why[-1]
    return False, " | ".join(why)


# ---------------------------------------------------------------------------- the worker side

def _worker_judge():
    """Run once in each worker process by workers.serve(), before the worker says it is ready:
    import sympy (so that no job's timeout pays for it) and return the job handler."""
    import sympy
    return partial(_judge, sympy)


def _judge(sympy, line: str) -> list:
    """One job line, [refs, answer] or [refs, answer, choices] (all normal forms), -> [verdict,
    why]. Sympy lives here; a verdict of None is an error, which the caller counts and logs."""
    try:
        job = json.loads(line)
        if job[0] == "sleep":   # ["sleep", s] is a test hook: a job that overruns any timeout
            time.sleep(job[1])
            return [False, "slept"]
        choices = job[2] if len(job) > 2 else None
        return list(_decide(job[0], job[1], sympy, choices))
    except _BadRef as e:
        return [False, f"bad reference: {e}"]
    except Exception as e:   # the worker's catch-all: sympy can raise anything; the caller logs it
        return [None, f"error: {type(e).__name__}: {e}"[:300]]


# ---------------------------------------------------------------------------- command line

def workers_problem(workers: int) -> str:
    """Why `workers` grading processes are too many or too few for this machine ("" if not): each
    holds sympy, about 50 MB, and more processes than about twice the CPUs only wait for a core.
    Every --workers flag (verify.py, polish.py, evaluate.py) is checked with it."""
    most = 2 * (os.cpu_count() or 1)
    if workers is None or 1 <= workers <= most:
        return ""
    return f"--workers must be between 1 and {most} (twice this machine's CPUs), not {workers}"


def _read_rows(path: str) -> tuple[list, list]:
    """The gradeable rows of a JSONL file, and (line number, why) for each bad one."""
    rows, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                bad.append((n, f"not JSON ({e})"))
                continue
            if not isinstance(row, dict) or not isinstance(row.get("response"), str):
                bad.append((n, "no string 'response'"))
            elif "answer" not in row:
                bad.append((n, "no 'answer'"))
            else:
                rows.append(row)
    return rows, bad


def grade_file(path: str, workers: int, timeout: float) -> None:
    """The CLI's file mode: grade {response, answer[, problem]} lines, report bad lines, then a
    summary."""
    rows, bad = _read_rows(path)
    for n, why in bad:
        print(f"{path}:{n}: skipped: {why}", file=sys.stderr)
    t0 = time.perf_counter()
    triples = [(r["response"], r["answer"], r.get("problem")) for r in rows]
    ok = grade_batch(triples, workers, timeout)
    n, dt = len(rows), time.perf_counter() - t0
    print(f"{sum(ok)}/{n} correct ({100 * sum(ok) / max(1, n):.1f}%) in {dt:.2f}s "
          f"({n / max(dt, 1e-9):.0f} grades/s); "
          f"{dict(STATS) or 'no timeouts, errors or bad references'}"
          + (f"; {len(bad)} bad lines skipped (first: line {bad[0][0]})" if bad else ""))


def main(argv=None) -> None:
    """The command line: one verdict and why, or a JSONL file of them."""
    ap = argparse.ArgumentParser(description="Grade final answers (rules in the module docstring).")
    ap.add_argument("file", nargs="?", help="JSONL of {response, answer[, problem]} lines")
    ap.add_argument("--answer", help="reference answer")
    ap.add_argument("--response", help="model response (its last \\boxed{} is graded)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="sympy worker processes")
    ap.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per sympy job")
    args = ap.parse_args(argv)
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        ap.error(f"--timeout must be a finite number of seconds > 0, not {args.timeout}")
    problem = workers_problem(args.workers)
    if problem:
        ap.error(problem)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.file:
        grade_file(args.file, args.workers, args.timeout)
    elif args.answer is not None and args.response is not None:
        info = explain(args.response, args.answer, args.timeout)
        print("CORRECT" if info["correct"] else "WRONG")
        for k in ("extracted", "reference", "answer", "why"):
            print(f"  {k:10s} {info[k]!r}")
    else:
        ap.error("give FILE.jsonl, or --answer and --response")
    shutdown()


if __name__ == "__main__":
    main()
