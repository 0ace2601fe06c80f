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
big to compute here (the MAX_* caps below, each with its measured cost): long text, deep
nesting, exact values past MAX_BITS bits however they are written (1e-999999999, 10^{10^9},
5000 digits, n!), \pm chains past the list cap.
Timeouts and errors are "not correct", counted in STATS and logged; no exception leaves
grade(), reward(), grade_batch() or explain(). The file mode of the CLI reports bad lines by
number, grades the others and ends with a summary.

Policies:
- Decimals are exact: 0.333 != 1/3.
- Unreduced fractions are equal by value: 2/4 == 1/2.
- % and degree signs are dropped: 44% == 44 != 0.44; there is no degree/radian conversion
  except inside \sin 30^\circ.
- A dropped base subscript is accepted (1103 for 1103_6); a wrong base is not.
- Boxes separated only by and/or/commas form one list, and a list is wrong against a single
  reference, so hedges ("3 or 4") fail.
- "x = 5", "AB = 5", "10/2 = 5", "a = b = 5" reduce to the last part.
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
(it is the natural log), Windows (the workers use select() on pipes).
"""

import argparse
import itertools
import json
import logging
import math
import operator
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from fractions import Fraction
from functools import lru_cache

log = logging.getLogger("verify")
STATS: Counter = Counter()   # timeout, error, bad_reference, worker_died, too_long, no_answer
TIMEOUT = 5.0                # seconds of sympy work per (reference, answer) pair
# Caps: what is past them is refused ("too big", never correct) before it is computed. The
# costs are measured on one core of the 2-core development VM (Python 3, CPython ints).
MAX_RAW = 10_000             # characters of an extracted box; normalising 10,000 hostile
#                              characters takes <= ~0.2 s (1,400 nested \text{} wrappers)
MAX_LEN = 1_000              # characters of a normal form: every parse, split and list
#                              comparison works on at most this much text
MAX_DEPTH = 40               # bracket nesting; recursion stays far from Python's limit
MAX_BITS = 1 << 16           # bits of any exact value (numerator or denominator): a product
#                              of two 65,536-bit Fractions takes ~7 ms, a sum ~5 ms, and the
#                              cost grows 4x per doubling (gcd); 1e-16384 or 10^{16384} fit
MAX_WORK = 1 << 20           # bits of exact results per comparison: at most ~16 operations
#                              at MAX_BITS, ~0.1 s; a real answer uses a few hundred bits
MAX_FACT = 5_000             # largest n in n! and binomials: 5000! (54,233 bits) takes 0.4 ms
MAX_ITEMS = 40               # items of a list or set: 40 x 40 pairwise comparisons at most;
#                              so a \pm chain expands only up to 5 signs (2^5 = 32 items),
#                              where 18 signs took 4.9 s and 20 over 60 s
UNIT_REACH = 200             # characters at the end of an answer searched for a unit phrase:
#                              ~1 ms a search however hostile the text
MAX_EXP_DIGITS = 9           # digits of an exponent written in e-notation; more is refused
#                              without reading it (any such exponent is past MAX_BITS)
_HERE = os.path.dirname(os.path.abspath(__file__))
_MOD = os.path.basename(__file__).rsplit(".", 1)[0]


# ---------------------------------------------------------------------------- extraction

# a box command and the spaces after it: "\boxed {", "\fbox{", but not "\boxedfoo"
_BOXCMD = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])\s*")
# what may sit between two boxes that form one list, up to the later box: "}$ and $", "}, "
_JOIN = re.compile(
    r"\}((?:\s|\$|\\[\])]|,|;|&|\\quad|\band\b|\bor\b|\\text\{\s*(?:and|or)\s*\})*)\Z")
# the unbraced argument of "\boxed 5"
_BARE_BOX = re.compile(r"[^\s$]*")


def _match(s: str, i: int, step: int = 1) -> int:
    """Index of the brace matching s[i] ('{' looking forward, '}' back) within MAX_RAW chars,
    else -1."""
    if step > 0:
        ks = range(i, min(len(s), i + MAX_RAW), step)
    else:
        ks = range(i, max(-1, i - MAX_RAW), step)
    depth = 0
    for k in ks:
        depth += ((s[k] == "{") - (s[k] == "}")) * step
        if depth == 0:
            return k
    return -1


def _last_box(s: str):
    """The match of the last \\boxed / \\fbox that is a command (not \\boxedfoo), or None.
    One forward scan: looking back with rfind() from each \\boxedfoo would be quadratic."""
    m = None
    for m in _BOXCMD.finditer(s):
        pass
    return m


def _boxes_before(s: str, start: int, first: str) -> list:
    """The box contents joined to the box at `start` by and/or/commas, in order, ending with
    `first` (the content of the box at `start`)."""
    parts = [first]
    while len(parts) < MAX_ITEMS:
        m = _JOIN.search(s[max(0, start - 200):start])
        if not m:
            break
        close = start - len(m.group())   # the "}" that closes the box before
        o = _match(s, close, -1)
        box = []
        if o > 0:
            box = [b for b in _BOXCMD.finditer(s, max(0, o - 12), max(0, o)) if b.end() == o]
        if not box:
            break
        parts.insert(0, s[o + 1:close])
        start = box[0].start()
    return parts


def extract(response: str) -> str | None:
    """Content of the last complete box (after </think> if any); boxes joined by and/or/commas."""
    s = response
    if "</think>" in response:
        s = response[response.rfind("</think>") + 8:]
    m = _last_box(s)
    if not m:
        return None
    j = m.end()
    if j < len(s) and s[j] != "{":   # \boxed 5
        return _BARE_BOX.match(s[j:j + MAX_RAW]).group() or None
    end = _match(s, j) if j < len(s) else -1
    if end < 0 or not s[j + 1:end].strip():
        return None
    return ", ".join(_boxes_before(s, m.start(), s[j + 1:end]))


# ---------------------------------------------------------------------------- normalisation

_UNICODE = str.maketrans({
    "\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ", "\u00f7": "/",
    "\u03c0": "\\pi ", "\u221e": "\\infty ", "\u2264": "<=", "\u2265": ">=", "\u2260": "!=",
    "\u221a": "\\sqrt", "\u00b0": "^\\circ", "\u222a": "\\cup ", "\u2208": "\\in ",
    "\u00b1": "\\pm ", "\u2213": "\\mp ", "\u00b2": "^2", "\u00b3": "^3",
    "\u00bd": "\\frac{1}{2}", "\u00bc": "\\frac{1}{4}", "\u00be": "\\frac{3}{4}",
    "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u2205": "\\emptyset "})
_REPLACE = [
    ("\\textdollar", " "), ("\\$", " "), ("$", " "), ("\\%", " "), ("%", " "), ("\\qquad", " "),
    ("\\quad", " "), ("~", " "), ("{-}", "-"), ("{,}", ","), ("\\{", "{"), ("\\}", "}"),
    ("\\langle", "("), ("\\rangle", ")"), ("\\lt", "<"), ("\\gt", ">"),
    ("\\mathbb{R}", "(-\\infty,\\infty)"), ("\\varnothing", "\\emptyset")]
# a text-like wrapper around brace-free content: "\text{ cm}", "\mathbf{5}", "\boxed{3}"
_WRAP = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mbox|boxed|fbox|overline"
    r"|operatorname|hbox)\s*\{([^{}]*)\}")
_UNITS = set("""unit units cm mm km meter meters metre metres ft feet foot inch inches yd yards
    mi mile miles mph hr hrs hour hours min mins minute minutes sec secs second seconds day days
    week weeks month months year years degree degrees radian radians dollar dollars cent cents
    percent g kg gram grams lb lbs pound pounds oz ml liter liters people am pm""".split())
_MATHWORDS = set("""sin cos tan cot sec csc log ln exp sqrt pi infty arcsin arccos arctan and or
    sinh cosh tanh""".split())
# a trailing word after a value, maybe squared or "per x": "12 square feet", "5 m^2", "3 km/h"
_UNIT_TAIL = re.compile(r"(?<=[\d}).])(\s*)(?:(?:square|sq|cubic)\s+)?([A-Za-z][A-Za-z.]*)"
                        r"(?:\s*\^\s*\{?[23]\}?|\s*(?:/|per)\s*[A-Za-z]+)?\s*\Z")


def _unit(m: re.Match) -> str:
    """Drop a trailing unit word: a known unit, or any word of 3+ letters after a space (not
    sin, pi...)."""
    w = m.group(2).rstrip(".").lower().replace(".", "")
    if w in _UNITS or (m.group(1) and len(w) >= 3 and w not in _MATHWORDS):
        return ""
    return m.group()


def _repeating(m: re.Match) -> str:
    """0.1\\overline{6} as a fraction: (16 - 1) / 90. Past MAX_LEN digits the fraction could
    not be a normal form anyway, so the text stays as it is (and is refused as too long)."""
    whole, head, period = m[1], m[2], m[3]
    if len(whole) + len(head) + len(period) > MAX_LEN:
        return m[0]
    numerator = int(whole + head + period) - int(whole + head or 0)
    denominator = 10 ** len(head) * (10 ** len(period) - 1)
    return "\\frac{%d}{%d}" % (numerator, denominator)


def _primes(m: re.Match) -> str:
    """x^{\\prime\\prime} -> x''."""
    return "'" * max(1, m.group().count("prime"))


def _mixed(m: re.Match) -> str:
    """3\\frac12 -> (3+\\frac{1}{2}) when it is a mixed number (proper fraction). Digit runs
    past MAX_LEN are left as they are: int() refuses strings of over 4,300 digits."""
    if len(m[2]) > MAX_LEN or len(m[3]) > MAX_LEN:
        return m[0]
    if 0 < int(m[2]) < int(m[3]):
        return "(%s+\\frac{%s}{%s})" % m.groups()
    return m[0]


def _no_commas(m: re.Match) -> str:
    return m.group().replace(",", "")


# (pattern, replacement) applied before \text{} wrappers are removed
_BEFORE = [(re.compile(p), r) for p, r in [
    # \( \) \[ \] delimiters and \phantom{..}
    (r"(?<!\\)\\[()\[\]]|\\phantom\s*(?:\{[^{}]*\}|\S)", " "),
    # spacing and sizing commands: "\,", "\!", "\displaystyle", "\bigl", "\left(", "\right."
    (r"(?<!\\)\\(?:[,;:!> ]|displaystyle|textstyle|[Bb]igg?[lr]?)(?![a-zA-Z])\s*"
     r"|\\(?:left|right)(?:\.|(?![a-zA-Z]))", ""),
    # a control space before a letter, which the pattern above leaves: "\textbf{(C)}\ h"
    (r"(?<!\\)\\ (?=[a-zA-Z])", " "),
    # horizontal space: "\hspace{.05in}"
    (r"\\hspace\*?\s*\{[^{}]*\}", " "),
    # "\dfrac", "\tbinom" -> "\frac", "\binom"
    (r"\\[dtc](frac|binom)", r"\\\1"),
    # ordinal suffixes: "11^{\text{th}}"
    (r"\^\s*\{?\s*\\text\{\s*(?:st|nd|rd|th)\s*\}\s*\}?", ""),
    # degrees inside a trig function become radians: "\sin 30^\circ" -> "\sin(30\pi/180)"
    (r"\\(sin|cos|tan|cot|sec|csc)\s*\(?\s*(-?\d+(?:\.\d+)?)\s*\^\s*\{?\s*\\circ\s*\}?\s*\)?",
     r"\\\1(\2\\pi/180)"),
    # repeating decimals: "0.1\overline{6}" (only from the start of a digit run: linear time)
    (r"(?<!\d)(\d*)\.(\d*)\\overline\{(\d+)\}", _repeating),
    # degree signs elsewhere are dropped: "30^{\circ}", "90^\circ C", "\degree"
    (r"(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree)\s*(?:\\?[CF](?![A-Za-z]))?", " "),
    # a unit in \text after a value, at the end: "10\text{ m}", "4\mbox{ cm}^2"
    (r"(?<=[\d}).\s])\s*\\(?:text|mathrm|mbox|textrm|rm)\s*\{\s*(?!(?:and|or|e|i)\s*\})"
     r"[A-Za-z][A-Za-z ./]*\}(?:\s*\^\s*\{?[23]\}?)?\s*\.?\s*\Z", "")]]
# (pattern, replacement) applied after wrappers and units are removed
_AFTER = [(re.compile(p), r) for p, r in [
    # primes: "f^{\prime}", "x^\prime"
    (r"\^\s*\{((?:\s*\\prime)+)\s*\}|\^\s*\\prime", _primes),
    # feet and inches after a value: "16''"
    (r"(?<=[\d}])\s*'+\Z", ""),
    # set-builder braces: "{x | x > 2}" -> "x > 2"
    (r"^\{\s*[a-zA-Z]\s*(?:\\mid|\||:)(.*)\}\Z", r"\1"),
    # "\approx" is an equals sign
    (r"\\approx(?![a-zA-Z])", "="),
    # leading "=" signs
    (r"^[=\s]+", ""),
    # "\ne", "\neq"
    (r"\\(?:ne|neq)(?![a-zA-Z])", "!="),
    # "\le", "\leq", "\leqslant"
    (r"\\(?:le|leq|leqslant)(?![a-zA-Z])", "<="),
    # "\ge", "\geq", "\geqslant"
    (r"\\(?:ge|geq|geqslant)(?![a-zA-Z])", ">="),
    # "\infinity", "infinity", "inf", "oo"
    (r"\\infinity|(?<![a-zA-Z\\])(?:infinity|inf|oo)(?![a-zA-Z])", r"\\infty"),
    # a leading membership: "x \in [1, 2)"
    (r"^[A-Za-z](?:_\{?\w+\}?)?\s*\\in(?![a-zA-Z])\s*", ""),
    # one-token arguments get braces: "\frac12" -> "\frac{1}2", "\sqrt2" -> "\sqrt{2}"
    (r"\\(frac|sqrt)\s*([0-9a-zA-Z])", r"\\\1{\2}"),
    # the second argument too: "\frac{1}2" -> "\frac{1}{2}"
    (r"(\\frac\{[^{}]*\})\s*([0-9a-zA-Z])", r"\1{\2}"),
    # mixed numbers: "3\frac{1}{2}", "22\frac {1}{2}" -> "(3+\frac{1}{2})"
    (r"(?<![\w.^_}\\])(\d+)\s*\\frac\s*\{(\d+)\}\s*\{(\d+)\}", _mixed),
    # a letter x as times before a power of ten: "6.02 x 10^{23}"
    (r"(?<=\d)\s*[xX]\s*(?=10\s*\^)", "\\\\times "),
    # thousands separators: "1,000,000" (not a list "1, 000" or a tuple "(1,000)")
    (r"(?<![\d.,(\[])\d{1,3}(?:,\d{3})+(?![\d,]|\.\d*,|\s*[)\]])", _no_commas),
    # empty braces are the empty set: "{ }"
    (r"^\{\s*\}\Z", "\\\\emptyset")]]
# runs of white space: "  ", " \n "
_SPACES = re.compile(r"\s+")
_SPACE_RUNS = re.compile(r"(\s)\s+")


def _drop_unit(s: str) -> str:
    """s without its trailing unit phrase, if it has one. The phrase is looked for in the last
    UNIT_REACH characters only: the search is quadratic in the length it scans (9,000
    characters of "a.a.a..." took 2.8 s), and no unit phrase is that long."""
    m = _UNIT_TAIL.search(s, max(0, len(s) - UNIT_REACH))
    if not m:
        return s
    return s[:m.start()] + _unit(m) + s[m.end():]


def normalize(s: str) -> str:
    """One normal form for references and answers alike (a LaTeX-ish string)."""
    if len(s) > 500:   # long strings are rare; caching them would hold megabytes
        return _normalize(s)
    return _normalize_cached(s)


@lru_cache(maxsize=65536)
def _normalize_cached(s: str) -> str:
    return _normalize(s)


def _normalize(s: str) -> str:
    """normalize() without the cache."""
    s = s.strip().translate(_UNICODE)
    for a, b in _REPLACE:
        s = s.replace(a, b)
    # a run of white space as its first character: several patterns below start with \s* and
    # may start anywhere in a run, which is quadratic (8,500 spaces took 0.25 s)
    s = _SPACE_RUNS.sub(r"\1", s)
    for p, r in _BEFORE:
        s = p.sub(r, s)
    while True:   # \text{..} and friends, innermost first
        t = _WRAP.sub(r" \1 ", s)
        if t == s:
            break
        s = t
    s = _SPACES.sub(" ", s).strip().rstrip(".,;\\ ").strip()
    while True:   # whole trailing unit words only, until none is left (never to nothing)
        t = _drop_unit(s).strip()
        if t == s or not t:
            break
        s = t
    for p, r in _AFTER:
        s = p.sub(r, s)
    return s.strip()


# ---------------------------------------------------------------------------- parsing

class _Syntax(Exception):
    """Text that is not an expression we read."""


class _Big(Exception):
    """A value past the size caps."""


class _NeedSympy(Exception):
    """The in-process exact path cannot decide."""


class _BadRef(Exception):
    """The reference does not parse."""


_FUNCS = set("sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh ln log exp sqrt".split())
_SYMCMDS = """alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda
    mu nu xi rho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi
    Psi Omega ell hbar emptyset angle triangle""".split()
# a symbol's subscript and primes are part of its name: "_1", "_{AB}", "''"
_SUB = r"(?:_(?:\{[^{}]*\}|[a-zA-Z0-9]))?'*"
# one token; the group number is its kind
_TOKEN = re.compile(
    # 1 number: "12", "3.5", "2.", ".75", "6e23", "1.5E-3"
    r"\s*(?:(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
    # 2 symbol command: "\alpha", "\theta_1", "\vec{v}", "\hat{x}'"
    r"|(\\(?:" + "|".join(_SYMCMDS) + r")(?![a-zA-Z])" + _SUB +
    r"|\\(?:dot|ddot|hat|vec|bar|tilde|widehat|widetilde|overrightarrow)\s*\{[^{}]*\}" + _SUB + ")"
    # 3 command: "\frac", "\sqrt", "\|"; 4 operator: "<=", "^", "(", ","
    r"|(\\[a-zA-Z]+|\\[|])|(<=|>=|!=|[-+*/^_!(){}\[\]|,=<>'])"
    # 5 function word without a backslash: "sin", "log", "pi"
    r"|(arcsin|arccos|arctan|sin|cos|tan|log|ln|exp|sqrt|pi)(?![a-zA-Z])"
    # 6 letter symbol: "x", "a_1", "f'"
    r"|([a-zA-Z]" + _SUB + "))")
_NUMBER, _SYMCMD, _COMMAND, _OPERATOR, _FUNCWORD, _LETTER = range(1, 7)
# a number token's parts: "12.5e-3" -> "12", "5", "-3"
_DECIMAL = re.compile(r"(\d*)\.?(\d*)(?:[eE]([-+]?\d+))?")
_ATOMS = _FUNCS | {"frac", "sqrt", "pi", "infty", "binom", "lfloor", "lceil"}
_CLOSING = {"(": ")", "[": "]", "{": "}", "|": "|"}


class _Parser:
    """Recursive descent over LaTeX math into values of a backend B (_Ops, or _Check for syntax
    only). Precedence, loosest first: expr (+ -), term (* / and implicit products), unary
    signs, power (! and ^), atom."""

    def __init__(self, s: str, B):
        self.k = []   # (kind, text) tokens
        self.i = 0    # the next token
        self.B = B
        i = 0
        while i < len(s):
            m = _TOKEN.match(s, i)
            if not m:
                break
            self.k.append((m.lastindex, m.group(m.lastindex)))
            i = m.end()
        if s[i:].strip():
            raise _Syntax(f"cannot read {s[i:i + 20]!r}")

    def peek(self) -> str:
        return self.k[self.i][1] if self.i < len(self.k) else ""

    def eat(self, want: str = "") -> str:
        t = self.peek()
        if not t or (want and t != want):
            raise _Syntax(f"expected {want or 'more'} at token {self.i}")
        self.i += 1
        return t

    def expr(self):
        """Sums and differences."""
        v = self.term()
        while self.peek() in ("+", "-"):
            sign = self.eat()
            w = self.term()
            v = self.B.add(v, w if sign == "+" else self.B.neg(w))
        return v

    def term(self):
        """Explicit * and /, and implicit multiplication: 2x, 3\\sqrt2, x\\sin x."""
        v = self.unary()
        while True:
            t = self.peek()
            if not t:
                break
            if t in ("*", "\\cdot", "\\times", "/", "\\div"):
                self.eat()
                w = self.unary()
                v = self.B.div(v, w) if t in ("/", "\\div") else self.B.mul(v, w)
            elif self.starts_factor(t):
                v = self.B.mul(v, self.power())
            else:
                break
        return v

    def starts_factor(self, t: str) -> bool:
        """Whether the next token can start an implicitly multiplied factor."""
        kind = self.k[self.i][0]
        if kind in (_NUMBER, _SYMCMD, _FUNCWORD, _LETTER):
            return True
        return t in ("(", "{", "[") or t[1:] in _ATOMS

    def unary(self):
        if self.peek() in ("-", "+"):
            sign = self.eat()
            v = self.unary()
            return self.B.neg(v) if sign == "-" else v
        return self.power()

    def power(self):
        """n! and right-associative powers: 10^10^10 = 10^(10^10)."""
        v = self.atom()
        while self.peek() == "!":
            self.eat()
            v = self.B.fact(v)
        exps = []
        while self.peek() == "^":
            self.eat()
            exps.append(self.arg(exponent=True))
        if not exps:
            return v
        e = exps[-1]
        for x in reversed(exps[:-1]):
            e = self.B.pow(x, e)
        return self.B.pow(v, e)

    def arg(self, exponent: bool = False):
        """A LaTeX argument: {group} or one token."""
        if self.peek() == "{":
            self.eat()
            v = self.expr()
            self.eat("}")
            return v
        if exponent and self.peek() in ("-", "+"):
            sign = self.eat()
            v = self.arg(exponent=True)
            return self.B.neg(v) if sign == "-" else v
        return self.atom()

    def atom(self):
        """A number, symbol, bracketed group, constant or command with its arguments."""
        if self.i >= len(self.k):
            raise _Syntax("unexpected end")
        kind, t = self.k[self.i]
        B = self.B
        self.i += 1
        c = t[1:] if kind == _COMMAND else t
        if kind == _NUMBER:
            return B.num(t)
        if kind == _SYMCMD:
            return B.sym(t)
        if kind == _LETTER:
            if t == "e":
                return B.const("E")
            if t == "i":
                return B.const("I")
            return B.sym(t)
        if t in _CLOSING:
            v = self.expr()
            self.eat(_CLOSING[t])
            return B.fn("abs", v) if t == "|" else v
        if c in ("pi", "infty"):
            return B.const(c)
        if c in ("frac", "binom"):
            a = self.arg()
            b = self.arg()
            return B.div(a, b) if c == "frac" else B.binom(a, b)
        if c == "sqrt" and self.peek() == "[":   # \sqrt[3]{x}
            self.eat()
            n = self.expr()
            self.eat("]")
            x = self.arg()
            return B.pow(x, B.div(B.num("1"), n))
        if c in ("lfloor", "lceil"):
            v = self.expr()
            self.eat("\\r" + c[1:])
            return B.fn("floor" if c == "lfloor" else "ceiling", v)
        if c not in _FUNCS:
            raise _Syntax(f"unknown {t!r}")
        return self.function(c)

    def function(self, c: str):
        """\\sqrt2, \\sin x, \\sin^2 x, \\log_2 8, \\ln(x+1): the function word c is eaten."""
        B = self.B
        if c == "sqrt":
            return B.fn("sqrt", self.arg())
        base = None
        if c == "log" and self.peek() == "_":
            self.eat()
            base = self.arg()
        power = None
        if self.peek() == "^":
            self.eat()
            power = self.arg(exponent=True)
        x = self.atom() if self.peek() == "(" else self.power()
        if base is None:
            v = B.fn(c, x)
        else:
            v = B.div(B.fn("ln", x), B.fn("ln", base))
        return v if power is None else B.pow(v, power)


def _short(x) -> str:
    """x for a message: str() of a number with thousands of digits is slow, and past 4,300
    digits it raises ValueError."""
    q = _rational(x)
    if q is not None and _bits(q) > 256:
        return f"<a number of {_bits(q)} bits>"
    return str(x)


def _bits(q: Fraction) -> int:
    """The size of an exact value: bits of its numerator or denominator, whichever is larger."""
    return max(q.numerator.bit_length(), q.denominator.bit_length())


def _is_int(x) -> bool:
    """Whether a value (Fraction or sympy) is an integer."""
    if isinstance(x, Fraction):
        return x.denominator == 1
    return bool(x.is_Integer)


def _rational(x) -> Fraction | None:
    """A rational value (Fraction or sympy Rational) as a Fraction, else None."""
    if isinstance(x, Fraction):
        return x
    if getattr(x, "is_Rational", False):
        return Fraction(int(x.p), int(x.q))
    return None


_SYMPY_NAMES = dict(ln="log", abs="Abs", arcsin="asin", arccos="acos", arctan="atan", infty="oo")


class _Ops:
    """Values: exact Fractions while rational, else sympy. Only the worker has sympy (sp), so
    in this process any step that needs it raises _NeedSympy."""

    def __init__(self, sp=None):
        self.sp = sp
        self.work = 0   # bits of the exact values computed so far, against MAX_WORK

    def charge(self, bits, what: str) -> None:
        """Account for an exact result of up to `bits` bits, or refuse it before it is computed."""
        if bits > MAX_BITS or self.work + bits > MAX_WORK:
            raise _Big(f"{what} is past the size caps")
        self.work += int(bits)

    def S(self, *xs):
        """Lift values to sympy."""
        if self.sp is None:
            raise _NeedSympy
        return [self.sp.Rational(x.numerator, x.denominator) if isinstance(x, Fraction) else x
                for x in xs]

    def call(self, f: str, *xs):
        """A sympy function or constant, by our name."""
        xs = self.S(*xs)
        g = getattr(self.sp, _SYMPY_NAMES.get(f, f))
        return g(*xs) if xs else g

    def num(self, t):
        """A number token: 12, 0.5, 6.02e23. Its size is known from its digits and exponent
        (about 4 bits a decimal digit, as for 10^n) before Fraction() builds 10^n."""
        m = _DECIMAL.fullmatch(t)
        if len(m[3] or "") > MAX_EXP_DIGITS:
            raise _Big(f"the exponent of {t[:30]} is past the size caps")
        digits = len(m[1]) + len(m[2]) + abs(int(m[3] or 0))
        self.charge(4 * digits, f"the number {t[:30]}")
        return Fraction(t)

    def const(self, n):
        return self.call(n)

    def sym(self, n):
        self.S()
        return self.sp.Symbol(n)

    def op(self, f, a, b):
        if isinstance(a, Fraction) and isinstance(b, Fraction):
            self.charge(_bits(a) + _bits(b) + 1, "an exact result")
            return f(a, b)
        return f(*self.S(a, b))

    def add(self, a, b):
        return self.op(operator.add, a, b)

    def mul(self, a, b):
        return self.op(operator.mul, a, b)

    def neg(self, a):
        return -a

    def div(self, a, b):
        if b == 0:
            raise _Syntax("division by zero")
        return self.op(operator.truediv, a, b)

    def pow(self, a, b):
        """a^b, exact for a rational base and an integer exponent; sizes checked first."""
        e = _rational(b)
        if e is not None and a not in (0, 1, -1) and (isinstance(a, Fraction) or a.is_number):
            # 10^{10^{10}}: refused before computing
            q = _rational(a)
            bits = 64 if q is None else _bits(q)
            if abs(e) * bits > MAX_BITS:
                raise _Big(f"a power with exponent {_short(e)} is past the size caps")
        if isinstance(a, Fraction) and isinstance(b, Fraction) and b.denominator == 1:
            if a not in (0, 1, -1):
                self.charge(abs(b.numerator) * _bits(a), "a power")
            return a ** b
        return operator.pow(*self.S(a, b))

    def fact(self, a):
        """a!, exact for a small non-negative integer."""
        if _is_int(a) and not 0 <= a <= MAX_FACT:
            raise _Big(f"{_short(a)}! is past the size caps")
        if isinstance(a, Fraction) and _is_int(a):
            # n! has about log2(n!) = lgamma(n + 1) / ln 2 bits
            self.charge(math.lgamma(int(a) + 1) / math.log(2), f"{a}!")
            return Fraction(math.factorial(int(a)))
        return self.call("factorial", a)

    def binom(self, a, b):
        """Rare in answers: sympy only."""
        if _is_int(a) and a > MAX_FACT:
            raise _Big(f"binomial of {_short(a)} is past the size caps")
        return self.call("binomial", a, b)

    def fn(self, f, x):
        if isinstance(x, Fraction) and f == "abs":
            return abs(x)
        return self.call(f, x)


def _nothing(*args) -> None:
    return None


class _Check:
    """A backend that computes nothing: parsing with it only checks the syntax."""

    def __getattr__(self, name):
        return _nothing


def _parse(s: str, B):
    """s read by our parser into backend B's values."""
    if max(_depths(s), default=0) > MAX_DEPTH:
        raise _Big("nesting")
    try:
        p = _Parser(s, B)
        v = p.expr()
    except (ZeroDivisionError, RecursionError, ValueError, OverflowError, TypeError) as e:
        raise _Syntax(f"{type(e).__name__}: {e}") from None
    if p.i < len(p.k):
        raise _Syntax(f"unexpected {p.peek()!r}")
    return v


# ---------------------------------------------------------------------------- typed comparison

@lru_cache(maxsize=1 << 16)   # the comparisons split the same short strings many times
def _split(s: str, sep: re.Pattern) -> tuple[list, list]:
    """Split s at the matches of sep outside brackets: (parts, separators). Callers never
    mutate the cached lists."""
    parts, seps, last, depth = [], [], 0, _depths(s)
    # separators hold no brackets, so a match inside brackets cannot leave them
    for m in sep.finditer(s):
        if m.end() > m.start() and depth[m.start()] == 0:
            parts.append(s[last:m.start()].strip())
            seps.append(m.group().strip())
            last = m.end()
    return parts + [s[last:].strip()], seps


# the reason given when the answer, or the part of it a rule kept, holds nothing: `\boxed{.}`,
# `x =`, `and`; found again in a verdict's why, whose steps are joined by " > " and " | "
NO_ANSWER = "no answer"
_NO_ANSWER_WHY = re.compile(rf"(?:\A| > | \| ){NO_ANSWER}(?:\Z|:| > | \| )")

# list separators: "1, 2", "1; 2", "1 or 2", "1 and 2" (not the "or" of "for")
_LIST = re.compile(r",|;|(?<![A-Za-z\\])(?:or|and)(?![A-Za-z])")
# relations: "<=", "!=", "="
_REL = re.compile(r"<=|>=|!=|<|>|=")
# a union: "(0, 1) \cup (2, 3)"
_CUP = re.compile(r"\\cup(?![a-zA-Z])")
# ratio and clock-time parts: "3:1", "4:30"
_RATIO = re.compile(":")
# tuple items: "1, 2"
_COMMA = re.compile(",")
# a name being assigned: "x", "AB", "m\angle ABC", "a_{n}", "f(x)", "\theta"
_NAME = re.compile(r"(?:m?\\angle\s*)?(?:[A-Za-z]{1,3}|\\[a-zA-Z]+)(?:_\{?\w+\}?)?(?:\([^()]*\))?")
# a variable: "x", "a_1", "x_{10}"
_VAR = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?")
# a matrix: "\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", "\begin{array}{cc} ... \end{array}"
_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}\Z", re.S)
# a base-n number: "1103_6", "A3_{12}"
_BASE = re.compile(r"(-?[0-9A-Za-z]+)\s*_\{?(\d+)\}?")
# a choice letter at the start of an answer: "(C)", "C", "(C) 42", "C 42", "c"
_CHOICE = re.compile(r"\(([A-Ea-e])\)|([A-E])(?![A-Za-z0-9])|([a-e])\Z")
# a choice reference: "C", "(C)", "(C) 42"
_CHOICE_REF = re.compile(r"\(?([A-E])\)?|\(([A-E])\)\s*(.+)")
# text: "odd", "Sunday", "Devon's"
_TEXT = re.compile(r"[A-Za-z][A-Za-z ,.'\-]*")
_WORD = re.compile(r"[A-Za-z]+")
# what text comparison ignores: "odd." == "Odd"
_NOT_WORD = re.compile(r"[^a-z0-9]+")
# \pm and \mp (and the never-meant \pp and \mm, which the list expansion also accepts)
_PM_ANY = re.compile(r"\\[pm][mp](?![a-zA-Z])")
# one \pm or \mp to expand: "1 \pm \sqrt{2}"
_PM = re.compile(r"\\(pm|mp)(?![a-zA-Z])")
# a LaTeX command: "\sqrt" (dropped when asking whether a side has letters)
_COMMAND_WORD = re.compile(r"\\[a-zA-Z]+")
_LETTERS = re.compile("[a-zA-Z]")


# a choice letter before its value, after normalisation: "(C) 28", "(C): 28", "C) 28", "(C)"
_LETTER_FIRST = re.compile(r"\(?([A-E])\)\s*:?\s*(.*)", re.S)
# a value, then its choice letter: "40 (B)" (from "40\textbf{ (B)}"), but not "x = (B)";
# or an arrow to the letter: "115 \Rightarrow (D)", "100 \Longrightarrow A"
_LETTER_LAST = re.compile(r"(.*?[^=<>\s])(?:\s+\(([A-E])\)"
                          r"|\s*\\(?:Longrightarrow|Rightarrow|implies)\s*\(?([A-E])\)?)", re.S)
# a bare choice letter: "C"
_BARE_LETTER = re.compile(r"[A-E]")
# a choice marker in a problem's text: "(A)" in "\textbf{(A)}\ 24 \qquad \textbf{(B)}\ 25"
_CHOICE_MARK = re.compile(r"\(([A-E])\)")


def _decoration(a: str) -> tuple[str | None, str | None]:
    """(letter, value) of an answer written as a choice: '(C) 28' -> ('C', '28'), '40 (B)' ->
    ('B', '40'), 'C' -> ('C', None); (None, None) for any other answer."""
    if m := _LETTER_FIRST.fullmatch(a):
        return m[1], m[2].strip() or None
    if m := _LETTER_LAST.fullmatch(a):
        return m[2] or m[3], m[1].strip()
    if _BARE_LETTER.fullmatch(a):
        return a, None
    return None, None


@lru_cache(maxsize=4096)   # a problem is graded once per sample, n samples per prompt
def _choices(problem: str) -> dict | None:
    """The answer choices a problem lists, letter -> normal form, or None if it lists none:
    the last "(A)" starts them and "(B)", "(C)"... follow in order."""
    start = problem.rfind("(A)")
    if start < 0:
        return None
    # from the start of the line or $...$ that holds them, so that wrappers stay whole
    begin = max(problem.rfind("$", 0, start), problem.rfind("\n", 0, start), 0)
    parts = _CHOICE_MARK.split(normalize(problem[begin:begin + MAX_RAW]))
    letters, values = parts[1::2], parts[2::2]
    if len(letters) < 2 or letters != list("ABCDE"[:len(letters)]):
        return None
    return {k: normalize(v.strip().rstrip(".,;")) for k, v in zip(letters, values)}


def _choice(s: str) -> str | None:
    """The letter of a decorated choice: C, (C), (C) 42, c."""
    m = _CHOICE.match(s)
    if not m:
        return None
    return next(g for g in m.groups() if g).upper()


def _is_text(s: str) -> bool:
    return bool(_TEXT.fullmatch(s)) and any(
        len(w) >= 3 and w.lower() not in _MATHWORDS for w in _WORD.findall(s))


def _words(s: str) -> str:
    return _NOT_WORD.sub(" ", s.lower()).strip()


def _depths(s: str) -> list:
    """Bracket depth after each character of s."""
    return list(itertools.accumulate((c in "([{") - (c in ")]}") for c in s))


def _wrapped(s: str, opens: str = "([{") -> bool:
    """One bracketed group: (1,2), [2,12), but not (1)+(2)."""
    return len(s) > 1 and s[0] in opens and s[-1] in ")]}" and 0 not in _depths(s)[:-1]


def _rhs(s: str, default: str | None = "") -> str | None:
    """The value of an assignment or chain: 'x = 5', 'AB = 5', '10/2 = 5', 'a = b = 5',
    '5 = x' -> '5'; anything else is s itself (or default, when one is given). A value that
    would be empty ('x =', '=5=') is no value: s is kept whole, and the comparison refuses it."""
    value = _assigned(s)
    if value:
        return value
    return s if default == "" else default


def _assigned(s: str) -> str | None:
    """The part of s that _rhs() keeps, or None; the part may be empty."""
    p, ops = _split(s, _REL)
    if not ops or set(ops) != {"="} or len(_split(s, _LIST)[0]) != 1:
        return None
    if len(p) == 2 and _NAME.fullmatch(p[1]) and not _NAME.fullmatch(p[0]):
        return p[0]
    if len(p) > 2 or _NAME.fullmatch(p[0]):
        return p[-1]
    if not _LETTERS.search(_COMMAND_WORD.sub("", p[0])):
        return p[-1]
    return None


def _items(s: str) -> list:
    """Top-level list items: set braces dropped, 'x =' dropped from items, \\pm expanded."""
    if _wrapped(s, "{") and "," in s:
        s = s[1:-1]
    out = []
    items = [p for p in _split(s, _LIST)[0] if p]
    for p in items:
        first = _rhs(p) if len(items) > 1 or _PM_ANY.search(p) else p
        # n signs expand to 2^n items: refuse before expanding what cannot fit the list cap
        signs = len(_PM.findall(first))
        if signs > MAX_ITEMS.bit_length() or len(out) + 2 ** signs > MAX_ITEMS + 1:
            raise _Big("list length")
        todo = [first]
        while todo and len(out) <= MAX_ITEMS:
            q = todo.pop(0)
            m = _PM.search(q)
            if not m:
                out.append(q)
                continue
            signs = ("+", "-") if m.group(1) == "pm" else ("-", "+")
            todo += [q[:m.start()] + sign + q[m.end():] for sign in signs]
    return out


def _seq(s: str):
    """('mat', rows) for a matrix, ('tup', open, items, close) for (a, b, ...) or [a, b), else
    None."""
    if m := _MATRIX.match(s):
        rows = [[c.strip() for c in r.split("&")] for r in m.group(2).split("\\\\") if r.strip()]
        if rows and all(len(r) == len(rows[0]) for r in rows):
            return ("mat", rows)
        return None
    if not (_wrapped(s, "([") and s[-1] in ")]"):
        return None
    items = _split(s[1:-1], _COMMA)[0]
    if len(items) > 1:
        return ("tup", s[0], items, s[-1])
    return None


def _flat(s) -> list:
    """The entries of a _seq() value, a matrix row by row."""
    if s[0] == "mat":
        return [c for row in s[1] for c in row]
    return s[2]


def _shape(s) -> tuple | None:
    """(rows, columns) of a matrix, None for a tuple."""
    if s[0] == "mat":
        return (len(s[1]), len(s[1][0]))
    return None


def _interval(s: str) -> str:
    """'x >= 3' -> '[3,\\infty)', '3 < x <= 5' -> '(3,5]'; '' if s is not such an inequality."""
    p, ops = _split(s, _REL)
    if ops and ops[0].startswith(">"):
        p, ops = p[::-1], [o.replace(">", "<") for o in ops[::-1]]
    if not ops or not set(ops) <= {"<", "<="} or len(p) > 3:
        return ""
    if len(p) == 2 and _VAR.fullmatch(p[0]) and not _VAR.fullmatch(p[1]):
        p, ops = ["-\\infty"] + p, ["<"] + ops
    elif len(p) == 2 and _VAR.fullmatch(p[1]) and not _VAR.fullmatch(p[0]):
        p, ops = p + ["\\infty"], ops + ["<"]
    if len(p) != 3 or not _VAR.fullmatch(p[1]):
        return ""
    return ("[" if ops[0] == "<=" else "(") + p[0] + "," + p[2] + ("]" if ops[1] == "<=" else ")")


def _flip(parts: list, ops: list) -> tuple[list, list]:
    """A relation written with > read right to left: 'a > b' -> 'b < a'."""
    if ops and ops[0][0] == ">":
        return parts[::-1], [x.replace(">", "<") for x in ops[::-1]]
    return parts, ops


class _Cmp:
    """Typed comparison of two normal forms; without sympy (sp=None) it raises _NeedSympy where
    needed. `why` lists what decided, in order."""

    def __init__(self, sp=None, choices: dict | None = None):
        self.B = _Ops(sp)
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
        if not r:
            raise _BadRef("a part of the reference is empty")
        if not a:
            self.note(NO_ANSWER)
            return False
        if m := _CHOICE_REF.fullmatch(r):
            return self.choice(m, a)
        letter, value = _decoration(a)
        if letter:
            return self.chosen(r, letter, value)
        if _is_text(r):
            self.note("text")
            return _words(a) == _words(r)
        # "x = (1, 2)", "10/2 = 5" against a plain reference, and the other way round
        if not _split(r, _REL)[1]:
            a = _rhs(a)
        elif not _split(a, _REL)[1]:
            r = _rhs(r)
        if _CUP.search(r):
            return self.union(r, a)
        R, A = _items(r), _items(a)
        if len(R) > MAX_ITEMS or len(A) > MAX_ITEMS:
            raise _Big("list length")
        if not R:
            raise _BadRef(f"{r!r}: a list with no items")
        if not A:   # 'and', ', ;', 'or': separators with nothing between them
            self.note(NO_ANSWER)
            return False
        if R != [r] or A != [a]:
            return self.collection(r, a, R, A)
        sr = _seq(r) or _seq(_interval(r))
        sa = _seq(a) or _seq(_interval(a))
        if sr or sa:
            return bool(sr and sa) and self.seq(sr, sa)
        if m := _BASE.fullmatch(r):
            base = int(m.group(2))
            if 2 <= base <= 36 and all(int(c, 36) < base for c in m.group(1).lstrip("-")):
                return self.base_n(m.group(1), base, a)
        rr = _split(r, _RATIO)[0]
        if len(rr) > 1:   # ratios and clock times, part by part: 3:1, 4:30
            self.note("ratio")
            return self.pairwise(rr, _split(a, _RATIO)[0])
        return self.relation(r, a)

    def choice(self, m: re.Match, a: str) -> bool:
        """A choice reference (m of _CHOICE_REF): letters compare as letters; an answer with no
        letter is compared with the choice's value when the reference gives one."""
        letter = m.group(1) or m.group(2)
        c = _choice(a) or _decoration(a)[0]
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
        if len(R) == len(A) == 1:
            return self.equal(R[0], A[0])
        sr = _seq(r)
        if sr and sr[0] == "tup" and "=" in a:
            self.note("tuple")
            return self.pairwise(sr[2], A)
        if len(R) == 1 and self.repeated(R[0], A):
            return True
        self.note("set")
        return self.multiset(R, A)

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
        rv = _rhs(r, None)
        av = _rhs(a, None) if rv is not None else None
        if rv is not None and av is not None:
            self.note("assignment")
            return self.equal(rv, av)
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
        return _proportional(self.sp, r1 - r0, a1 - a0, ro[0] not in ("=", "!="))

    def value(self, s: str, ref: bool):
        """s parsed; a reference that does not read raises _BadRef, an answer that does not is
        None."""
        if (s, ref) not in self.memo:
            try:
                self.memo[s, ref] = _parse(s, self.B)
            except (_Syntax, _Big) as e:
                if ref and isinstance(e, _Syntax):
                    raise _BadRef(f"{s!r}: {e}") from None
                if ref:
                    raise e from None
                self.memo[s, ref] = None
        return self.memo[s, ref]

    def identical(self, r: str) -> bool:
        """Identical strings are equal if they read, however big."""
        try:
            _parse(r, _Check())
        except _Big:
            pass
        except _Syntax as e:
            raise _BadRef(f"{r!r}: {e}") from None
        self.note("identical")
        return True

    def scalar(self, r: str, a: str) -> bool:
        """Two values: exact Fractions here, anything else by sympy in the worker."""
        if r == a:
            return self.identical(r)
        x, y = self.value(r, True), self.value(a, False)
        if y is None:
            self.note("answer unreadable or too big")
            return False
        if isinstance(x, Fraction) and isinstance(y, Fraction):
            self.note("exact")
            return x == y
        return _sym_equal(self.sp, *self.B.S(x, y), self.note)


def _num(sp, e, pts: list) -> list:
    """e at each point to 50 digits (complex), None where it is not a finite number."""
    vs = [sp.N(e, 50, subs=pt) if pt else sp.N(e, 50) for pt in pts]
    return [complex(v) if v.is_number and v.is_finite else None for v in vs]


def _points(sp, syms, n=3) -> list:
    """Deterministic awkward sample points with mixed signs, for identity tests."""
    return [{s: sp.Rational((-1) ** (i + k) * (7 + 12 * i + 5 * k), 13 + 4 * k)
             for k, s in enumerate(syms)}
            for i in range(n if syms else 1)]


def _sym_equal(sp, x, y, note) -> bool:
    """Sympy values x and y: structurally, exactly, at 50 digits, or by simplify()."""
    if x == y:
        note("structural")
        return True
    d = x - y
    if d == 0:
        note("structural")
        return True
    if x.is_Rational and y.is_Rational:
        note("exact")
        return False
    if any(e.has(sp.oo, -sp.oo, sp.zoo, sp.nan) for e in (x, y)):
        note("infinite")
        return False
    syms = sorted(x.free_symbols | y.free_symbols, key=str)
    pts = _points(sp, syms)
    good = [v for v in zip(_num(sp, d, pts), _num(sp, x, pts), _num(sp, y, pts)) if None not in v]
    # a difference past relative or absolute noise: different
    if any(abs(vd) > 1e-30 * max(abs(vx), abs(vy)) or abs(vd) > 1e-20 for vd, vx, vy in good):
        note("numeric")
        return False
    if good and (len(good) >= 2 if syms else not (x.is_Rational or y.is_Rational)):
        note("numeric, 50 digits")
        return True
    note("simplify")   # a rational against an irrational, or nothing evaluable: needs a proof
    return sp.simplify(d) == 0


def _proportional(sp, e1, e2, positive: bool) -> bool:
    """e1 == c * e2 for a constant c (c > 0 for inequalities), at sample points."""
    if e1.free_symbols != e2.free_symbols:
        return False
    pts = _points(sp, sorted(e1.free_symbols, key=str), 5)
    vals = [(v1, v2) for v1, v2 in zip(_num(sp, e1, pts), _num(sp, e2, pts))
            if v1 is not None and v2 is not None]
    if any((v1 == 0) != (v2 == 0) for v1, v2 in vals):
        return False
    ratios = [v1 / v2 for v1, v2 in vals if v2]
    c = ratios[0] if ratios else 0
    same = bool(ratios) and all(abs(q - c) <= 1e-25 * abs(c) for q in ratios)
    return same and (not positive or (c.real > 0 and abs(c.imag) < 1e-25))


def _decide(refs: list, ans: str, sp=None, choices: dict | None = None) -> tuple:
    """(verdict, why) for normalised references against a normalised answer, given the choices
    the problem lists (letter -> value) if any; may raise _NeedSympy."""
    why = []
    for r in refs:
        if not r or len(r) > MAX_LEN:
            raise _BadRef(f"empty or too long: {r[:50]!r}")
        c = _Cmp(sp, choices)
        try:
            ok = c.equal(r, ans)
        except _Big as e:
            ok = False
            c.why = [f"too big: {e}"]
        except RecursionError:   # brackets nested past what the comparison recurses through
            ok = False
            c.why = ["too big: nesting"]
        why.append(" > ".join(c.why))
        if ok:
            return True, why[-1]
    return False, " | ".join(why)


# ---------------------------------------------------------------------------- worker processes

def _set_pdeathsig() -> bool:
    """prctl(PR_SET_PDEATHSIG, SIGKILL) through libc: the kernel kills this process when the
    thread that started it ends. False where there is no prctl (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0   # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):   # no libc to load, or a libc without prctl
        return False


def _watch_parent(parent: int) -> None:
    """The portable fallback, run in a daemon thread: exit once this process is orphaned (it is
    then reparented, so getppid() changes). Python switches threads every 5 ms, so this runs
    even while the main thread is inside a sympy job."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _die_with_parent(parent: int) -> None:
    """Make this worker end with the process that started it, even in the middle of a job. Its
    stdin EOF is only read between jobs, so a killed trainer otherwise leaves its graders
    computing until their current sympy job is done."""
    if not _set_pdeathsig():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:   # the parent died before the kernel was asked to watch it
        os._exit(1)


def _serve(parent: int | None = None) -> None:
    """Worker main: JSON lines [refs, answer] on stdin, [verdict, why] on stdout. Sympy lives
    here. `parent` is the pid of the process that started it: the worker dies with it."""
    if parent is not None:
        _die_with_parent(parent)
    import sympy   # before "ready", so that a job's timeout is all work
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)   # stray prints go to stderr, never into the protocol
    out.write('"ready"\n')
    out.flush()
    for line in sys.stdin:
        try:
            job = json.loads(line)
            if job[0] == "sleep":   # ["sleep", s] is a test hook: a job that overruns any timeout
                time.sleep(job[1])
                res = [False, "slept"]
            else:
                choices = job[2] if len(job) > 2 else None
                res = list(_decide(job[0], job[1], sympy, choices))
        except _BadRef as e:
            res = [False, f"bad reference: {e}"]
        except Exception as e:   # the worker's catch-all: sympy can raise anything; the caller logs it
            res = [None, f"error: {type(e).__name__}: {e}"[:300]]
        out.write(json.dumps(res) + "\n")
        out.flush()


class _Spawner:
    """Starts the worker processes from one thread that lives as long as this process. Linux's
    PR_SET_PDEATHSIG fires when the *thread* that started a child ends, not the process: a
    worker started by one of grade_batch's threads would be killed when that batch is done,
    though the pool means to keep it for the next one."""

    def __init__(self):
        self.pid = os.getpid()   # a forked child has no copy of the thread: it needs its own
        self.requests = queue.SimpleQueue()
        threading.Thread(target=self._run, daemon=True, name="verify-spawner").start()

    def _run(self) -> None:
        while True:
            argv, reply = self.requests.get()
            try:   # no terminal signals (own session); the worker exits on stdin EOF
                reply.put(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           start_new_session=True))
            except Exception as e:   # raised again in the caller's thread; this thread must live on
                reply.put(e)

    def popen(self, argv: list) -> subprocess.Popen:
        """Popen(argv) on pipes, run by the spawner thread; the caller waits for it."""
        reply = queue.SimpleQueue()
        self.requests.put((argv, reply))
        p = reply.get()
        if isinstance(p, Exception):
            raise p
        return p


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def _spawn(argv: list) -> subprocess.Popen:
    """Start a worker process through this process's spawner thread (made on first use)."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner.pid != os.getpid():
            _spawner = _Spawner()
    return _spawner.popen(argv)


class _Worker:
    """One sympy process on pipes. Timeouts are select() on its stdout, so any thread may wait."""

    def __init__(self):
        code = "\n".join([
            "import sys",
            f"sys.path.insert(0, {_HERE!r})",
            f"import {_MOD}",
            f"{_MOD}._serve(parent={os.getpid()})"])
        self.p = _spawn([sys.executable, "-c", code])
        self.buf = b""
        self.ready = False

    def _line(self, timeout: float) -> bytes:
        """The next line the worker writes, waiting at most timeout seconds."""
        end = time.monotonic() + timeout
        fd = self.p.stdout.fileno()
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("worker exited")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def ask(self, job: str, timeout: float):
        """Send one job line and wait at most timeout seconds for its answer."""
        if not self.ready:   # startup is not part of the job's timeout
            self._line(120.0)
            self.ready = True
        self.p.stdin.write(job.encode() + b"\n")
        self.p.stdin.flush()
        return json.loads(self._line(timeout))

    def kill(self) -> None:
        """End the process; a worker that is already gone is fine."""
        try:
            self.p.kill()
            self.p.wait(5)
            self.p.stdin.close()
            self.p.stdout.close()
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass


_idle: list = []   # workers not in use, shared by grade() calls and grade_batch threads
_lock = threading.Lock()
_cache: dict = {}  # worker verdicts by job: GRPO grades the same answer many times


def _take() -> _Worker:
    with _lock:
        return _idle.pop() if _idle else _Worker()


def _give(w: _Worker) -> None:
    if w.p.poll() is None:
        with _lock:
            _idle.append(w)


def shutdown() -> None:
    """Stop the idle workers (they also exit by themselves when this process ends)."""
    with _lock:
        for w in _idle:
            w.kill()
        _idle.clear()


def _forget_parents_workers() -> None:
    """In a forked child: the parent's idle workers and spawner thread are the parent's (their
    pipes are shared, so two processes could read one answer), and a lock held at the fork by
    another parent thread would stay held. Start afresh; the workers are not killed, they are
    still the parent's."""
    global _spawner, _spawner_lock, _lock
    _idle.clear()
    _spawner = None
    _spawner_lock = threading.Lock()
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents_workers)


def _ask(w: _Worker, job: str, timeout: float) -> tuple:
    """Run one job (a JSON line): ((verdict, why), worker to use next). A timed-out or dead
    worker is replaced."""
    for _attempt in range(2):
        try:
            ok, why = w.ask(job, timeout)
            break
        except TimeoutError:   # before OSError, of which it is a subclass
            STATS["timeout"] += 1
            log.warning("verify: timeout after %.1fs on %.200s", timeout, job)
            w.kill()
            return (False, f"timeout after {timeout}s"), _Worker()
        except (EOFError, OSError, ValueError) as e:   # a killed worker: replace it and retry once
            STATS["worker_died"] += 1
            log.warning("verify: worker died (%s); replacing it", e)
            w.kill()
            w = _Worker()
            ok, why = False, "worker died twice"
    if ok is None:
        STATS["error"] += 1
        log.warning("verify: %s on %.200s", why, job)
    elif why.startswith("bad reference"):
        STATS["bad_reference"] += 1
        log.warning("verify: %s", why)
    elif why != "worker died twice":
        if len(_cache) > 100_000:
            _cache.clear()
        _cache[job] = (bool(ok), why)
    return (bool(ok), why), w


# ---------------------------------------------------------------------------- API

def _refs(answer) -> list:
    """Normal forms of a reference: str, number (27.0 as written), GSM8K '#### N', or a list
    of them. None is no reference (it is not the text "None")."""
    if answer is None:
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
    letter, value = _decoration(ans)
    choices = _choices(problem) if problem and letter and value is None else None
    try:
        info["correct"], info["why"] = _decide(refs, ans, None, choices)
    except _NeedSympy:
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


def _grade_all(pairs, workers: int, timeout: float, problem: str | None = None) -> list:
    """Infos for (response, answer) or (response, answer, problem) tuples; `problem` serves the
    pairs that carry none. The sympy jobs run on `workers` worker processes."""
    infos = [_prepare(p[0], p[1], p[2] if len(p) > 2 else problem) for p in pairs]
    results = {}
    jobs = list({i["job"] for i in infos if i["job"]})
    todo = iter(jobs)   # shared by the threads: each next() hands out a job once

    def drive():   # one thread per worker process; the threads only wait on pipes
        w = _take()
        try:
            for job in todo:
                results[job], w = _ask(w, job, timeout)
        finally:
            _give(w)

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
                problem: str | None = None) -> list:
    """grade() for many (response, answer) pairs, or (response, answer, problem) triples:
    string work here, sympy jobs on `workers` processes. `problem` is the problem of every
    pair that does not carry its own (the samples of one prompt)."""
    workers = workers or min(4, os.cpu_count() or 1)
    return [i["correct"] for i in _grade_all(pairs, workers, timeout, problem)]


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
