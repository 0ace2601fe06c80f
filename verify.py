r"""verify.py: grade a model's final answer against a reference: right, fast, and never hangs.

    python verify.py --answer '\frac12' --response '... \boxed{0.5}'   # verdict and why
    python verify.py FILE.jsonl [--workers 4] [--timeout 5]            # grade {response, answer} lines
    from verify import grade, reward, grade_batch

The answer is the last complete \boxed{..} / \fbox{..} / `\boxed 5` (after </think> if present; no box,
an unclosed last box or an empty one is no answer). One normaliser serves both sides. The reference
picks the comparison: choice letter, text, union, set/list (order free), interval/tuple (ordered,
bracket types), matrix, base-n, ratio, equation (lhs - rhs proportional), inequality, scalar. Our own
small LaTeX parser reads scalars as exact Fractions in this process; whatever needs sympy (radicals,
pi, symbols) runs in a worker process that is killed and replaced past the timeout (select() on a
pipe: any thread, no signals). Caps on length, nesting, exponent bits and n! apply before anything
is evaluated. Timeouts and errors are "not correct", counted in STATS and logged.

Policies: decimals are exact (0.333 != 1/3); unreduced fractions are equal by value (2/4 == 1/2);
% and degree signs are dropped (44% == 44 != 0.44; no degree/radian conversion except inside
\sin 30^\circ); a dropped base subscript is accepted (1103 for 1103_6), a wrong base is not;
boxes separated only by and/or/commas form one list, and a list is wrong against a single
reference, so hedges ("3 or 4") fail; "x = 5", "AB = 5", "10/2 = 5", "a = b = 5" reduce to the
last part; (a, b) is an ordered pair and equally an open interval; a column or row vector equals
the tuple of its entries; two irrational values equal to 50 digits are equal, a rational against
an irrational needs a sympy proof; a reference that does not parse is reported
(STATS['bad_reference']) and never matches.
Left out: unit conversion, approximate answers ("to two significant figures"), \log as base 10
(it is the natural log), Windows (the workers use select() on pipes).
"""

import argparse, itertools, json, logging, math, operator, os, re, select, subprocess, sys, threading, time
from collections import Counter
from fractions import Fraction
from functools import lru_cache

log = logging.getLogger("verify")
STATS: Counter = Counter()   # timeout, error, bad_reference, worker_died, too_long
TIMEOUT = 5.0                # seconds of sympy work per (reference, answer) pair
MAX_RAW, MAX_LEN, MAX_DEPTH = 10_000, 1_000, 40      # extracted chars, normalised chars, bracket nesting
MAX_BITS, MAX_FACT, MAX_ITEMS = 1 << 16, 1_000, 40   # bits of an exact power, n!, list items
_HERE, _MOD = os.path.dirname(os.path.abspath(__file__)), os.path.basename(__file__).rsplit(".", 1)[0]

# ---------------------------------------------------------------------------- extraction
_BOXCMD = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])\s*")
_JOIN = re.compile(r"\}((?:\s|\$|\\[\])]|,|;|&|\\quad|\band\b|\bor\b|\\text\{\s*(?:and|or)\s*\})*)\Z")
def _match(s: str, i: int, step: int = 1) -> int:
    """Index of the brace matching s[i] ('{' looking forward, '}' back) within MAX_RAW chars, else -1."""
    ks = range(i, min(len(s), i + MAX_RAW) if step > 0 else max(-1, i - MAX_RAW), step)
    depths = itertools.accumulate(((s[k] == "{") - (s[k] == "}")) * step for k in ks)
    return next((k for k, d in zip(ks, depths) if d == 0), -1)
def extract(response: str) -> str | None:
    """Content of the last complete box (after </think> if any); boxes joined by and/or/commas."""
    s = response[response.rfind("</think>") + 8:] if "</think>" in response else response
    last, m = len(s), None
    while last >= 0 and not m:   # the last \boxed / \fbox that is a command, not \boxedfoo
        last = max(s.rfind("\\boxed", 0, last), s.rfind("\\fbox", 0, last))
        m = _BOXCMD.match(s, last) if last >= 0 else None
    if not m: return None
    j = m.end()
    if j < len(s) and s[j] != "{": return re.match(r"[^\s$]*", s[j:j + MAX_RAW]).group() or None   # \boxed 5
    end = _match(s, j) if j < len(s) else -1
    if end < 0 or not s[j + 1:end].strip(): return None
    parts, start = [s[j + 1:end]], last
    while len(parts) < MAX_ITEMS and (m := _JOIN.search(s[max(0, start - 200):start])):
        o = _match(s, close := start - len(m.group()), -1)
        box = [b for b in _BOXCMD.finditer(s, max(0, o - 12), max(0, o)) if b.end() == o] if o > 0 else []
        if not box: break
        parts.insert(0, s[o + 1:close]); start = box[0].start()
    return ", ".join(parts)

# ---------------------------------------------------------------------------- normalisation
_UNICODE = str.maketrans({
    "\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ", "\u00f7": "/", "\u03c0": "\\pi ",
    "\u221e": "\\infty ", "\u2264": "<=", "\u2265": ">=", "\u2260": "!=", "\u221a": "\\sqrt", "\u00b0": "^\\circ",
    "\u222a": "\\cup ", "\u2208": "\\in ", "\u00b1": "\\pm ", "\u2213": "\\mp ", "\u00b2": "^2", "\u00b3": "^3",
    "\u00bd": "\\frac{1}{2}", "\u00bc": "\\frac{1}{4}", "\u00be": "\\frac{3}{4}", "\u00a0": " ", "\u2009": " ",
    "\u202f": " ", "\u2205": "\\emptyset "})
_REPLACE = [("\\$", " "), ("$", " "), ("\\%", " "), ("%", " "), ("\\qquad", " "), ("\\quad", " "), ("~", " "),
            ("{,}", ","), ("\\{", "{"), ("\\}", "}"), ("\\langle", "("), ("\\rangle", ")"), ("\\lt", "<"),
            ("\\gt", ">"), ("\\mathbb{R}", "(-\\infty,\\infty)"), ("\\varnothing", "\\emptyset")]
_WRAP = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mbox|boxed|fbox|overline"
                   r"|operatorname|hbox)\s*\{([^{}]*)\}")
_UNITS = set("""unit units cm mm km meter meters metre metres ft feet foot inch inches yd yards mi mile miles
    mph hr hrs hour hours min mins minute minutes sec secs second seconds day days week weeks month months year
    years degree degrees radian radians dollar dollars cent cents percent g kg gram grams lb lbs pound pounds oz
    ml liter liters people am pm""".split())
_MATHWORDS = set("sin cos tan cot sec csc log ln exp sqrt pi infty arcsin arccos arctan and or sinh cosh tanh".split())
_UNIT_TAIL = re.compile(r"(?<=[\d}).])(\s*)(?:(?:square|sq|cubic)\s+)?([A-Za-z][A-Za-z.]*)"
                        r"(?:\s*\^\s*\{?[23]\}?|\s*(?:/|per)\s*[A-Za-z]+)?\s*\Z")
def _unit(m: re.Match) -> str:
    """Drop a trailing unit word: a known unit, or any word of 3+ letters after a space (not sin, pi...)."""
    w = m.group(2).rstrip(".").lower().replace(".", "")
    return "" if w in _UNITS or (m.group(1) and len(w) >= 3 and w not in _MATHWORDS) else m.group()
_BEFORE = [(re.compile(p), r) for p, r in [   # before \text{} wrappers are removed
    (r"(?<!\\)\\[()\[\]]|\\phantom\s*(?:\{[^{}]*\}|\S)", " "),                      # \( \) \[ \] delimiters
    (r"(?<!\\)\\(?:[,;:!> ]|displaystyle|textstyle|[Bb]igg?[lr]?)(?![a-zA-Z])\s*|\\(?:left|right)(?:\.|(?![a-zA-Z]))", ""),
    (r"\\[dtc](frac|binom)", r"\\\1"), (r"\^\s*\{?\s*\\text\{\s*(?:st|nd|rd|th)\s*\}\s*\}?", ""),   # 11^{\text{th}}
    (r"\\(sin|cos|tan|cot|sec|csc)\s*\(?\s*(-?\d+(?:\.\d+)?)\s*\^\s*\{?\s*\\circ\s*\}?\s*\)?", r"\\\1(\2\\pi/180)"),
    (r"(\d*)\.(\d*)\\overline\{(\d+)\}", lambda m: "\\frac{%d}{%d}" % (   # 0.1\overline{6} = (16 - 1) / 90
        int(m[1] + m[2] + m[3]) - int(m[1] + m[2] or 0), 10 ** len(m[2]) * (10 ** len(m[3]) - 1))),
    (r"(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree)\s*(?:\\?[CF](?![A-Za-z]))?", " "),
    (r"(?<=[\d}).\s])\s*\\(?:text|mathrm|mbox|textrm|rm)\s*\{\s*(?!(?:and|or|e|i)\s*\})[A-Za-z][A-Za-z ./]*\}"
     r"(?:\s*\^\s*\{?[23]\}?)?\s*\.?\s*\Z", "")]]                                     # 10\text{ m}
_AFTER = [(re.compile(p), r) for p, r in [    # after wrappers and units
    (r"\^\s*\{((?:\s*\\prime)+)\s*\}|\^\s*\\prime", lambda m: "'" * max(1, m.group().count("prime"))),
    (r"(?<=[\d}])\s*'+\Z", ""), (r"^\{\s*[a-zA-Z]\s*(?:\\mid|\||:)(.*)\}\Z", r"\1"),   # 16'' ; {x | x > 2}
    (r"\\approx(?![a-zA-Z])", "="), (r"^[=\s]+", ""), (r"\\(?:ne|neq)(?![a-zA-Z])", "!="),
    (r"\\(?:le|leq|leqslant)(?![a-zA-Z])", "<="), (r"\\(?:ge|geq|geqslant)(?![a-zA-Z])", ">="),
    (r"\\infinity|(?<![a-zA-Z\\])(?:infinity|inf|oo)(?![a-zA-Z])", r"\\infty"),
    (r"^[A-Za-z](?:_\{?\w+\}?)?\s*\\in(?![a-zA-Z])\s*", ""),                         # x \in [1, 2)
    (r"\\(frac|sqrt)\s*([0-9a-zA-Z])", r"\\\1{\2}"), (r"(\\frac\{[^{}]*\})\s*([0-9a-zA-Z])", r"\1{\2}"),  # \frac12
    (r"(?<![\w.^_}\\])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}",                             # 3\frac12 = 7/2
     lambda m: "(%s+\\frac{%s}{%s})" % m.groups() if 0 < int(m[2]) < int(m[3]) else m[0]),
    (r"(?<=\d)\s*[xX]\s*(?=10\s*\^)", "\\\\times "),                                 # 6.02 x 10^{23}
    (r"(?<![\d.,(\[])\d{1,3}(?:,\d{3})+(?![\d,]|\.\d*,|\s*[)\]])", lambda m: m.group().replace(",", "")),
    (r"^\{\s*\}\Z", "\\\\emptyset")]]
@lru_cache(maxsize=65536)
def normalize(s: str) -> str:
    """One normal form for references and answers alike (a LaTeX-ish string)."""
    s = s.strip().translate(_UNICODE)
    for a, b in _REPLACE: s = s.replace(a, b)
    for p, r in _BEFORE: s = p.sub(r, s)
    while (t := _WRAP.sub(r" \1 ", s)) != s: s = t   # \text{..} and friends, innermost first
    s = re.sub(r"\s+", " ", s).strip().rstrip(".,;\\ ").strip()
    while (t := _UNIT_TAIL.sub(_unit, s).strip()) != s and t: s = t   # whole trailing unit words only
    for p, r in _AFTER: s = p.sub(r, s)
    return s.strip()

# ---------------------------------------------------------------------------- parsing
class _Syntax(Exception): "text that is not an expression we read"
class _Big(Exception): "a value past the size caps"
class _NeedSympy(Exception): "the in-process exact path cannot decide"
class _BadRef(Exception): "the reference does not parse"
_FUNCS = set("sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh ln log exp sqrt".split())
_SYMCMDS = ("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi rho sigma "
            "tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega ell hbar emptyset "
            "angle triangle").split()
_SUB = r"(?:_(?:\{[^{}]*\}|[a-zA-Z0-9]))?'*"   # a symbol's subscript and primes are part of its name
_TOKEN = re.compile(
    r"\s*(?:(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"                   # 1 number
    r"|(\\(?:" + "|".join(_SYMCMDS) + r")(?![a-zA-Z])" + _SUB +                    # 2 symbol command
    r"|\\(?:dot|ddot|hat|vec|bar|tilde|widehat|widetilde|overrightarrow)\s*\{[^{}]*\}" + _SUB + ")"
    r"|(\\[a-zA-Z]+|\\[|])|(<=|>=|!=|[-+*/^_!(){}\[\]|,=<>'])"                     # 3 command, 4 operator
    r"|(arcsin|arccos|arctan|sin|cos|tan|log|ln|exp|sqrt|pi)(?![a-zA-Z])"          # 5 function word
    r"|([a-zA-Z]" + _SUB + "))")                                                   # 6 letter symbol
_ATOMS = _FUNCS | {"frac", "sqrt", "pi", "infty", "binom", "lfloor", "lceil"}
class _Parser:
    """Recursive descent over LaTeX math into values of a backend B (_Ops, or _Check for syntax only)."""
    def __init__(self, s: str, B):
        self.k, self.i, self.B, i = [], 0, B, 0   # k: (group, text) tokens
        while i < len(s) and (m := _TOKEN.match(s, i)): self.k.append((m.lastindex, m.group(m.lastindex))); i = m.end()
        if s[i:].strip(): raise _Syntax(f"cannot read {s[i:i + 20]!r}")
    def peek(self) -> str: return self.k[self.i][1] if self.i < len(self.k) else ""
    def eat(self, want: str = "") -> str:
        if not (t := self.peek()) or (want and t != want): raise _Syntax(f"expected {want or 'more'} at token {self.i}")
        self.i += 1; return t
    def expr(self):
        v = self.term()
        while self.peek() in ("+", "-"): v = self.B.add(v, self.term() if self.eat() == "+" else self.B.neg(self.term()))
        return v
    def term(self):   # explicit * and /, and implicit multiplication: 2x, 3\sqrt2, x\sin x
        v = self.unary()
        while t := self.peek():
            if t in ("*", "\\cdot", "\\times", "/", "\\div"):
                self.eat(); w = self.unary()
                v = self.B.div(v, w) if t in ("/", "\\div") else self.B.mul(v, w)
            elif self.k[self.i][0] in (1, 2, 5, 6) or t in ("(", "{", "[") or t[1:] in _ATOMS:
                v = self.B.mul(v, self.power())
            else: break
        return v
    def unary(self):
        if self.peek() in ("-", "+"): return self.B.neg(self.unary()) if self.eat() == "-" else self.unary()
        return self.power()
    def power(self):   # n! and right-associative powers: 10^10^10 = 10^(10^10)
        v, exps = self.atom(), []
        while self.peek() == "!": self.eat(); v = self.B.fact(v)
        while self.peek() == "^": self.eat(); exps.append(self.arg(exponent=True))
        for e in reversed(exps[:-1]): exps[-1] = self.B.pow(e, exps[-1])
        return self.B.pow(v, exps[-1]) if exps else v
    def arg(self, exponent: bool = False):   # a LaTeX argument: {group} or one token
        if self.peek() == "{": self.eat(); v = self.expr(); self.eat("}"); return v
        if exponent and self.peek() in ("-", "+"): return self.B.neg(self.arg(True)) if self.eat() == "-" else self.arg(True)
        return self.atom()
    def atom(self):
        if self.i >= len(self.k): raise _Syntax("unexpected end")
        (kind, t), B = self.k[self.i], self.B
        self.i, c = self.i + 1, t[1:] if kind == 3 else t
        if kind == 1: return B.num(t)
        if kind == 2: return B.sym(t)
        if kind == 6: return B.const("E") if t == "e" else B.const("I") if t == "i" else B.sym(t)
        if t in ("(", "[", "{", "|"):
            v = self.expr(); self.eat(")]}|"["([{|".index(t)])
            return B.fn("abs", v) if t == "|" else v
        if c in ("pi", "infty"): return B.const(c)
        if c in ("frac", "binom"):
            a, b = self.arg(), self.arg()
            return B.div(a, b) if c == "frac" else B.binom(a, b)
        if c == "sqrt" and self.peek() == "[":   # \sqrt[3]{x}
            self.eat(); n = self.expr(); self.eat("]")
            return B.pow(self.arg(), B.div(B.num("1"), n))
        if c in ("lfloor", "lceil"):
            v = self.expr(); self.eat("\\r" + c[1:])
            return B.fn("floor" if c == "lfloor" else "ceiling", v)
        if c not in _FUNCS: raise _Syntax(f"unknown {t!r}")
        if c == "sqrt": return B.fn("sqrt", self.arg())     # \sqrt2, \sin x, \sin^2 x, \log_2 8, \ln(x+1)
        base = self.arg() if c == "log" and self.peek() == "_" and self.eat() else None
        power = self.arg(True) if self.peek() == "^" and self.eat() else None
        x = self.atom() if self.peek() == "(" else self.power()
        v = B.fn(c, x) if base is None else B.div(B.fn("ln", x), B.fn("ln", base))
        return v if power is None else B.pow(v, power)
def _cap(ok: bool, what) -> None:
    if not ok: raise _Big(f"{what} is past the size caps")
_int = lambda x: x.denominator == 1 if isinstance(x, Fraction) else bool(x.is_Integer)
_SYMPY_NAMES = dict(ln="log", abs="Abs", arcsin="asin", arccos="acos", arctan="atan", infty="oo")
class _Ops:
    """Values: exact Fractions while rational, else sympy; only the worker has sympy (sp), so in-process
    any step that needs it raises _NeedSympy."""
    def __init__(self, sp=None): self.sp = sp
    def S(self, *xs):   # lift to sympy
        if self.sp is None: raise _NeedSympy
        return [self.sp.Rational(x.numerator, x.denominator) if isinstance(x, Fraction) else x for x in xs]
    def call(self, f: str, *xs):   # a sympy function or constant, by our name
        xs, g = self.S(*xs), getattr(self.sp, _SYMPY_NAMES.get(f, f))
        return g(*xs) if xs else g
    def num(self, t): return Fraction(t)
    def const(self, n): return self.call(n)
    def sym(self, n): self.S(); return self.sp.Symbol(n)
    def op(self, f, a, b): return f(a, b) if isinstance(a, Fraction) and isinstance(b, Fraction) else f(*self.S(a, b))
    def add(self, a, b): return self.op(operator.add, a, b)
    def mul(self, a, b): return self.op(operator.mul, a, b)
    def neg(self, a): return -a
    def div(self, a, b):
        if b == 0: raise _Syntax("division by zero")
        return self.op(operator.truediv, a, b)
    def pow(self, a, b):
        rat = lambda x: x if isinstance(x, Fraction) else Fraction(int(x.p), int(x.q)) if x.is_Rational else None
        if (e := rat(b)) is not None and a not in (0, 1, -1) and (isinstance(a, Fraction) or a.is_number):
            bits = max(q.numerator.bit_length(), q.denominator.bit_length()) if (q := rat(a)) is not None else 64
            _cap(abs(e) * bits <= MAX_BITS, f"a power with exponent {e}")   # 10^{10^{10}}: refused before computing
        if isinstance(a, Fraction) and isinstance(b, Fraction) and b.denominator == 1: return a ** b
        return operator.pow(*self.S(a, b))
    def fact(self, a):
        _cap(not _int(a) or 0 <= a <= MAX_FACT, f"{a}!")
        return Fraction(math.factorial(int(a))) if isinstance(a, Fraction) and _int(a) else self.call("factorial", a)
    def binom(self, a, b):   # rare in answers: sympy only
        _cap(not _int(a) or a <= MAX_FACT, f"binomial of {a}")
        return self.call("binomial", a, b)
    def fn(self, f, x):
        if isinstance(x, Fraction) and f == "abs": return abs(x)
        return self.call(f, x)
class _Check:   # a backend that computes nothing: parsing with it only checks the syntax
    def __getattr__(self, name): return lambda *a: None
def _parse(s: str, B):
    if max(_depths(s), default=0) > MAX_DEPTH: raise _Big("nesting")
    try: p = _Parser(s, B); v = p.expr()
    except (ZeroDivisionError, RecursionError, ValueError, OverflowError, TypeError) as e:
        raise _Syntax(f"{type(e).__name__}: {e}") from None
    if p.i < len(p.k): raise _Syntax(f"unexpected {p.peek()!r}")
    return v

# ---------------------------------------------------------------------------- typed comparison
@lru_cache(maxsize=1 << 16)   # the comparisons split the same short strings many times; callers never mutate
def _split(s: str, sep: re.Pattern) -> tuple[list, list]:
    """Split s at the matches of sep outside brackets: (parts, separators)."""
    parts, seps, last, depth = [], [], 0, _depths(s)
    for m in sep.finditer(s):   # separators hold no brackets, so a match inside brackets cannot leave them
        if m.end() > m.start() and depth[m.start()] == 0:
            parts.append(s[last:m.start()].strip()); seps.append(m.group().strip()); last = m.end()
    return parts + [s[last:].strip()], seps
_LIST = re.compile(r",|;|(?<![A-Za-z\\])(?:or|and)(?![A-Za-z])")
_REL, _CUP, _RATIO = re.compile(r"<=|>=|!=|<|>|="), re.compile(r"\\cup(?![a-zA-Z])"), re.compile(":")
_NAME = re.compile(r"(?:m?\\angle\s*)?(?:[A-Za-z]{1,3}|\\[a-zA-Z]+)(?:_\{?\w+\}?)?(?:\([^()]*\))?")
_VAR = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?")
_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}\Z", re.S)
_BASE = re.compile(r"(-?[0-9A-Za-z]+)\s*_\{?(\d+)\}?")
def _choice(s: str) -> str | None:   # the letter of a decorated choice: C, (C), (C) 42, c
    m = re.match(r"\(([A-Ea-e])\)|([A-E])(?![A-Za-z0-9])|([a-e])\Z", s)
    return next(g for g in m.groups() if g).upper() if m else None
def _is_text(s: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z ,.'\-]*", s)) and any(
        len(w) >= 3 and w.lower() not in _MATHWORDS for w in re.findall(r"[A-Za-z]+", s))
def _depths(s: str) -> list:
    return list(itertools.accumulate((c in "([{") - (c in ")]}") for c in s))
def _wrapped(s: str, opens: str = "([{") -> bool:   # one bracketed group: (1,2), [2,12), but not (1)+(2)
    return len(s) > 1 and s[0] in opens and s[-1] in ")]}" and 0 not in _depths(s)[:-1]
def _rhs(s: str, default: str | None = "") -> str | None:
    """The value of an assignment or chain: 'x = 5', 'AB = 5', '10/2 = 5', 'a = b = 5', '5 = x' -> '5'."""
    p, ops = _split(s, _REL)
    if ops and set(ops) == {"="} and len(_split(s, _LIST)[0]) == 1:
        if len(p) == 2 and _NAME.fullmatch(p[1]) and not _NAME.fullmatch(p[0]): return p[0]
        if len(p) > 2 or _NAME.fullmatch(p[0]) or not re.search("[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", p[0])): return p[-1]
    return s if default == "" else default
def _items(s: str) -> list:
    """Top-level list items: set braces dropped, 'x =' dropped from items, \\pm expanded."""
    s = s[1:-1] if _wrapped(s, "{") and "," in s else s
    out, items = [], [p for p in _split(s, _LIST)[0] if p]
    for p in items:
        todo = [_rhs(p) if len(items) > 1 or re.search(r"\\[pm][mp](?![a-zA-Z])", p) else p]
        while todo and len(out) <= MAX_ITEMS:
            q = todo.pop(0)
            if not (m := re.search(r"\\(pm|mp)(?![a-zA-Z])", q)): out.append(q); continue
            todo += [q[:m.start()] + sign + q[m.end():] for sign in (("+", "-") if m.group(1) == "pm" else ("-", "+"))]
    return out
def _seq(s: str):
    """('mat', rows) for a matrix, ('tup', open, items, close) for (a, b, ...) or [a, b), else None."""
    if m := _MATRIX.match(s):
        rows = [[c.strip() for c in r.split("&")] for r in m.group(2).split("\\\\") if r.strip()]
        return ("mat", rows) if rows and all(len(r) == len(rows[0]) for r in rows) else None
    if _wrapped(s, "([") and s[-1] in ")]" and len(items := _split(s[1:-1], re.compile(","))[0]) > 1:
        return ("tup", s[0], items, s[-1])
def _interval(s: str) -> str:
    """'x >= 3' -> '[3,\\infty)', '3 < x <= 5' -> '(3,5]'; '' if s is not such an inequality."""
    p, ops = _split(s, _REL)
    if ops and ops[0].startswith(">"): p, ops = p[::-1], [o.replace(">", "<") for o in ops[::-1]]
    if not ops or not set(ops) <= {"<", "<="} or len(p) > 3: return ""
    if len(p) == 2 and _VAR.fullmatch(p[0]) and not _VAR.fullmatch(p[1]): p, ops = ["-\\infty"] + p, ["<"] + ops
    elif len(p) == 2 and _VAR.fullmatch(p[1]) and not _VAR.fullmatch(p[0]): p, ops = p + ["\\infty"], ops + ["<"]
    if len(p) != 3 or not _VAR.fullmatch(p[1]): return ""
    return ("[" if ops[0] == "<=" else "(") + p[0] + "," + p[2] + ("]" if ops[1] == "<=" else ")")
class _Cmp:
    """Typed comparison of two normal forms; without sympy (sp=None) it raises _NeedSympy where needed.
    note() returns None, so `return self.note(kind) or verdict` records what decided."""
    def __init__(self, sp=None):
        self.B, self.sp, self.why, self.memo = _Ops(sp), sp, [], {}
    def note(self, w: str) -> None: self.why += [] if w in self.why else [w]
    def pairwise(self, R: list, A: list) -> bool: return len(R) == len(A) and all(self.equal(x, y) for x, y in zip(R, A))
    def equal(self, r: str, a: str) -> bool:
        if m := re.fullmatch(r"\(?([A-E])\)?|\(([A-E])\)\s*(.+)", r):   # choices: C, (C), (C) 42
            c, letter = _choice(a), m.group(1) or m.group(2)
            return self.note("choice") or (c == letter if c or not m.group(3) else self.equal(m.group(3), a))
        if _is_text(r):
            words = lambda s: re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()
            return self.note("text") or words(a) == words(r)
        if not _split(r, _REL)[1]: a = _rhs(a)     # "x = (1, 2)", "10/2 = 5" against a plain reference
        elif not _split(a, _REL)[1]: r = _rhs(r)
        if _CUP.search(r):
            pa = _split(a, _CUP)[0] if _CUP.search(a) else _items(a)
            return self.note("union") or self.multiset(*[[_interval(p) or p for p in x] for x in (_split(r, _CUP)[0], pa)])
        R, A = _items(r), _items(a)
        if len(R) > MAX_ITEMS or len(A) > MAX_ITEMS: raise _Big("list length")
        if R != [r] or A != [a]:
            if len(R) == len(A) == 1: return self.equal(R[0], A[0])
            if (sr := _seq(r)) and sr[0] == "tup" and "=" in a: return self.note("tuple") or self.pairwise(sr[2], A)
            return self.note("set") or self.multiset(R, A)
        sr, sa = _seq(r) or _seq(_interval(r)), _seq(a) or _seq(_interval(a))
        if sr or sa: return bool(sr and sa) and self.seq(sr, sa)
        m = _BASE.fullmatch(r)
        if m and 2 <= (base := int(m.group(2))) <= 36 and all(int(c, 36) < base for c in m.group(1).lstrip("-")):
            n = _BASE.fullmatch(a)
            same = (n.group(1) if n else a).upper().lstrip("0") == m.group(1).upper().lstrip("0")
            return self.note("base-n") or (same and (not n or int(n.group(2)) == base))
        if len(rr := _split(r, _RATIO)[0]) > 1:   # ratios and clock times, part by part: 3:1, 4:30
            return self.note("ratio") or self.pairwise(rr, _split(a, _RATIO)[0])
        return self.relation(r, a)
    def multiset(self, R: list, A: list) -> bool:   # same elements, any order
        left = list(A) if len(R) == len(A) else []
        for x in R:
            if (j := next((j for j, y in enumerate(left) if self.equal(x, y)), None)) is None: return False
            left.pop(j)
        return True
    def seq(self, sr, sa) -> bool:
        flat = lambda s: [c for row in s[1] for c in row] if s[0] == "mat" else s[2]
        shape = lambda s: (len(s[1]), len(s[1][0])) if s[0] == "mat" else None
        if sr[0] == sa[0] == "mat":
            if self.note("matrix") or shape(sr) != shape(sa): return False
        elif "mat" in (sr[0], sa[0]):
            if self.note("vector") or 1 not in (shape(sr) or shape(sa)): return False
        elif self.note("interval" if len(sr[2]) == 2 and (sr[1], sr[3]) != ("(", ")") else "tuple") or (
                len(sr[2]) == 2 and (sr[1], sr[3]) != (sa[1], sa[3])): return False
        return self.pairwise(flat(sr), flat(sa))
    def relation(self, r: str, a: str) -> bool:
        (rp, ro), (ap, ao) = _split(r, _REL), _split(a, _REL)
        if (rv := _rhs(r, None)) is not None and (av := _rhs(a, None)) is not None:
            return self.note("assignment") or self.equal(rv, av)
        if not ro and not ao: return self.scalar(r, a)
        self.note("equation" if "=" in ro + ao else "inequality")
        flip = lambda p, o: (p[::-1], [x.replace(">", "<") for x in o[::-1]]) if o and o[0][0] == ">" else (p, o)
        (rp, ro), (ap, ao) = flip(rp, ro), flip(ap, ao)
        if ro != ao or len(ro) > 2: return False
        if len(ro) == 2: return self.pairwise(rp, ap)
        if r == a: return all(self.identical(p) for p in rp)
        vals = [self.value(x, True) for x in rp] + [self.value(x, False) for x in ap]
        if None in vals: return False
        r0, r1, a0, a1 = self.B.S(*vals)
        return _proportional(self.sp, r1 - r0, a1 - a0, ro[0] not in ("=", "!="))
    def value(self, s: str, ref: bool):
        """s parsed; a reference that does not read raises _BadRef, an answer that does not is None."""
        if (s, ref) not in self.memo:
            try:
                self.memo[s, ref] = _parse(s, self.B)
            except (_Syntax, _Big) as e:
                if ref: raise _BadRef(f"{s!r}: {e}") if isinstance(e, _Syntax) else e from None
                self.memo[s, ref] = None
        return self.memo[s, ref]
    def identical(self, r: str) -> bool:   # identical strings are equal if they read, however big
        try: _parse(r, _Check())
        except _Big: pass
        except _Syntax as e: raise _BadRef(f"{r!r}: {e}") from None
        return self.note("identical") or True
    def scalar(self, r: str, a: str) -> bool:
        if r == a: return self.identical(r)
        x, y = self.value(r, True), self.value(a, False)
        if y is None: return self.note("answer unreadable or too big") or False
        if isinstance(x, Fraction) and isinstance(y, Fraction): return self.note("exact") or x == y
        return _sym_equal(self.sp, *self.B.S(x, y), self.note)
def _num(sp, e, pts: list) -> list:
    """e at each point to 50 digits (complex), None where it is not a finite number."""
    vs = [sp.N(e, 50, subs=pt) if pt else sp.N(e, 50) for pt in pts]
    return [complex(v) if v.is_number and v.is_finite else None for v in vs]
def _points(sp, syms, n=3) -> list:
    """Deterministic awkward sample points with mixed signs, for identity tests."""
    return [{s: sp.Rational((-1) ** (i + k) * (7 + 12 * i + 5 * k), 13 + 4 * k) for k, s in enumerate(syms)}
            for i in range(n if syms else 1)]
def _sym_equal(sp, x, y, note) -> bool:
    if x == y or (d := x - y) == 0: return note("structural") or True
    if x.is_Rational and y.is_Rational: return note("exact") or False
    if any(e.has(sp.oo, -sp.oo, sp.zoo, sp.nan) for e in (x, y)): return note("infinite") or False
    pts = _points(sp, syms := sorted(x.free_symbols | y.free_symbols, key=str))
    good = [v for v in zip(_num(sp, d, pts), _num(sp, x, pts), _num(sp, y, pts)) if None not in v]
    if any(abs(vd) > 1e-30 * max(abs(vx), abs(vy)) or abs(vd) > 1e-20 for vd, vx, vy in good):   # relative and absolute
        return note("numeric") or False
    if good and (len(good) >= 2 if syms else not (x.is_Rational or y.is_Rational)): return note("numeric, 50 digits") or True
    note("simplify")   # a rational against an irrational, or nothing evaluable: needs a proof
    return sp.simplify(d) == 0
def _proportional(sp, e1, e2, positive: bool) -> bool:
    """e1 == c * e2 for a constant c (c > 0 for inequalities), at sample points."""
    if e1.free_symbols != e2.free_symbols: return False
    pts = _points(sp, sorted(e1.free_symbols, key=str), 5)
    vals = [(v1, v2) for v1, v2 in zip(_num(sp, e1, pts), _num(sp, e2, pts)) if v1 is not None and v2 is not None]
    if any((v1 == 0) != (v2 == 0) for v1, v2 in vals): return False
    ratios = [v1 / v2 for v1, v2 in vals if v2]
    c = ratios[0] if ratios else 0
    same = bool(ratios) and all(abs(q - c) <= 1e-25 * abs(c) for q in ratios)
    return same and (not positive or (c.real > 0 and abs(c.imag) < 1e-25))
def _decide(refs: list, ans: str, sp=None) -> tuple:
    """(verdict, why) for normalised references against a normalised answer; may raise _NeedSympy."""
    why = []
    for r in refs:
        if not r or len(r) > MAX_LEN: raise _BadRef(f"empty or too long: {r[:50]!r}")
        c = _Cmp(sp)
        try: ok = c.equal(r, ans)
        except _Big as e: ok, c.why = False, [f"too big: {e}"]
        why.append(" > ".join(c.why))
        if ok: return True, why[-1]
    return False, " | ".join(why)

# ---------------------------------------------------------------------------- worker processes
def _serve() -> None:
    """Worker main: JSON lines [refs, answer] on stdin, [verdict, why] on stdout. Sympy lives here."""
    import sympy   # before "ready", so that a job's timeout is all work
    out = os.fdopen(os.dup(1), "w"); os.dup2(2, 1)   # stray prints go to stderr, never into the protocol
    out.write('"ready"\n'); out.flush()
    for line in sys.stdin:
        try:   # ["sleep", s] is a test hook: a job that overruns any timeout
            job = json.loads(line)
            res = [bool(time.sleep(job[1])), "slept"] if job[0] == "sleep" else list(_decide(job[0], job[1], sympy))
        except _BadRef as e:
            res = [False, f"bad reference: {e}"]
        except Exception as e:   # the one catch-all: sympy can raise anything; the caller counts and logs it
            res = [None, f"error: {type(e).__name__}: {e}"[:300]]
        out.write(json.dumps(res) + "\n"); out.flush()
class _Worker:
    """One sympy process on pipes. Timeouts are select() on its stdout, so any thread may wait."""
    def __init__(self):
        code = f"import sys; sys.path.insert(0, {_HERE!r}); import {_MOD}; {_MOD}._serve()"
        self.p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  start_new_session=True)   # no terminal signals; it exits on stdin EOF
        self.buf, self.ready = b"", False
    def _line(self, timeout: float) -> bytes:
        end, fd = time.monotonic() + timeout, self.p.stdout.fileno()
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]: raise TimeoutError
            if not (chunk := os.read(fd, 65536)): raise EOFError("worker exited")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line
    def ask(self, job: str, timeout: float):
        if not self.ready: self._line(120.0); self.ready = True   # startup is not part of the job's timeout
        self.p.stdin.write(job.encode() + b"\n"); self.p.stdin.flush()
        return json.loads(self._line(timeout))
    def kill(self) -> None:
        try: self.p.kill(); self.p.wait(5); self.p.stdin.close(); self.p.stdout.close()
        except (OSError, ValueError, subprocess.TimeoutExpired): pass
_idle: list = []   # workers not in use, shared by grade() calls and grade_batch threads
_lock = threading.Lock()
_cache: dict = {}  # worker verdicts by job: GRPO grades the same answer many times
def _take() -> _Worker:
    with _lock: return _idle.pop() if _idle else _Worker()
def _give(w: _Worker) -> None:
    if w.p.poll() is None:
        with _lock: _idle.append(w)
def shutdown() -> None:
    """Stop the idle workers (they also exit by themselves when this process ends)."""
    with _lock: [w.kill() for w in _idle]; _idle.clear()
def _ask(w: _Worker, job: str, timeout: float) -> tuple:
    """Run one job (a JSON line): ((verdict, why), worker to use next). A timed-out or dead worker is replaced."""
    for attempt in range(2):
        try: ok, why = w.ask(job, timeout); break
        except TimeoutError:
            STATS["timeout"] += 1; log.warning("verify: timeout after %.1fs on %.200s", timeout, job)
            w.kill(); return (False, f"timeout after {timeout}s"), _Worker()
        except (EOFError, OSError, ValueError) as e:   # a killed worker: replace it and retry once
            STATS["worker_died"] += 1; log.warning("verify: worker died (%s); replacing it", e)
            w.kill(); w, ok, why = _Worker(), False, "worker died twice"
    if ok is None: STATS["error"] += 1; log.warning("verify: %s on %.200s", why, job)
    elif why.startswith("bad reference"): STATS["bad_reference"] += 1; log.warning("verify: %s", why)
    elif why != "worker died twice":
        if len(_cache) > 100_000: _cache.clear()
        _cache[job] = (bool(ok), why)
    return (bool(ok), why), w

# ---------------------------------------------------------------------------- API

def _refs(answer) -> list:
    """Normal forms of a reference: str, number (27.0 as written), GSM8K '#### N', or a list of them."""
    if isinstance(answer, (list, tuple)): return [r for x in answer for r in _refs(x)]
    s = repr(answer) if isinstance(answer, float) else str(answer)
    s = s.rsplit("####", 1)[1] if "####" in s else s
    s = (extract(s) or s) if "\\boxed" in s or "\\fbox" in s else s
    return [normalize(s[:MAX_RAW])]

def _prepare(response: str, answer) -> dict:
    """The in-process part of a grade; info["job"] is set when a worker must decide."""
    refs, raw = _refs(answer), extract(response)
    info = dict(extracted=raw, reference=refs, answer=None, why="no complete box", correct=False, job=None)
    if raw is None: return info
    if len(raw) > MAX_RAW or len(ans := normalize(raw)) > MAX_LEN:
        STATS["too_long"] += 1; return info | {"why": "answer too long"}
    info["answer"] = ans
    try:
        info["correct"], info["why"] = _decide(refs, ans)
    except _NeedSympy:
        hit = _cache.get(job := json.dumps([refs, ans]))
        info.update(correct=hit[0], why=hit[1] + " (cached)") if hit else info.update(job=job, why="needs sympy")
    except _BadRef as e:
        STATS["bad_reference"] += 1; log.warning("verify: bad reference %s", e)
        info["why"] = f"bad reference: {e}"
    return info

def _grade_all(pairs, workers: int, timeout: float) -> list:
    """Infos for (response, answer) pairs; the sympy jobs run on `workers` worker processes."""
    infos, results = [_prepare(r, a) for r, a in pairs], {}
    jobs = list({i["job"] for i in infos if i["job"]})
    todo = iter(jobs)   # shared by the threads: each next() hands out a job once
    def drive():   # one thread per worker process; the threads only wait on pipes
        w = _take()
        try:
            for job in todo: results[job], w = _ask(w, job, timeout)
        finally:
            _give(w)
    threads = [threading.Thread(target=drive, daemon=True) for _ in range(min(workers, len(jobs)))]
    for t in threads: t.start()
    for t in threads: t.join()
    for i in infos:
        if i["job"]: i["correct"], i["why"] = results[i["job"]]
    return infos

def explain(response: str, answer, timeout: float = TIMEOUT) -> dict:
    """What grade() decides on: the extracted text, both normal forms, the verdict and why."""
    return _grade_all([(response, answer)], 1, timeout)[0]

def grade(response: str, answer, timeout: float = TIMEOUT) -> bool:
    """True when the last box of response equals answer (rules in the module docstring)."""
    return explain(response, answer, timeout)["correct"]

def reward_of(correct: bool, response: str, require_think: bool = False) -> float:
    """DeepScaleR's rule, given the grade: 1.0 if the answer is right and, when required (R1
    models), the response closed its reasoning with </think>; else 0.0."""
    return 1.0 if correct and (not require_think or "</think>" in response) else 0.0

def reward(response: str, answer, require_think: bool = False, timeout: float = TIMEOUT) -> float:
    """reward_of(grade(response, answer), response, require_think)."""
    return reward_of(grade(response, answer, timeout), response, require_think)

def grade_batch(pairs, workers: int | None = None, timeout: float = TIMEOUT) -> list:
    """grade() for many (response, answer) pairs: string work here, sympy jobs on `workers` processes."""
    return [i["correct"] for i in _grade_all(pairs, workers or min(4, os.cpu_count() or 1), timeout)]

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Grade final answers (rules in the module docstring).")
    ap.add_argument("file", nargs="?", help="JSONL of {response, answer} lines")
    ap.add_argument("--answer", help="reference answer")
    ap.add_argument("--response", help="model response (its last \\boxed{} is graded)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="sympy worker processes")
    ap.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per sympy job")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.file:
        rows, t0 = [json.loads(line) for line in open(args.file) if line.strip()], time.perf_counter()
        ok = grade_batch([(r["response"], r["answer"]) for r in rows], args.workers, args.timeout)
        n, dt = len(rows), time.perf_counter() - t0
        print(f"{sum(ok)}/{n} correct ({100 * sum(ok) / max(1, n):.1f}%) in {dt:.2f}s ({n / dt:.0f} grades/s); "
              f"{dict(STATS) or 'no timeouts, errors or bad references'}")
    elif args.answer is not None and args.response is not None:
        info = explain(args.response, args.answer, args.timeout)
        print("CORRECT" if info["correct"] else "WRONG")
        for k in ("extracted", "reference", "answer", "why"): print(f"  {k:10s} {info[k]!r}")
    else:
        ap.error("give FILE.jsonl, or --answer and --response")
    shutdown()

if __name__ == "__main__":
    main()
