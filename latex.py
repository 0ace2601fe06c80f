r"""latex.py: read LaTeX math into exact values, refusing before computing whatever is too big,
and tell whether two values are equal.

    from latex import parse, Ops, SyntaxOnly
    parse(r"\frac{1}{2} + 0.5", Ops())   # Fraction(1, 1): exact, in this process, no sympy
    parse(r"\sqrt{2}", Ops())            # raises NeedSympy: this backend was given no sympy
    parse(r"\sqrt{2}", Ops(sympy))       # sqrt(2), a sympy value (verify's worker processes)
    parse(r"10^{10^{9}}", Ops())         # raises TooBig, before computing anything
    parse(r"x +", SyntaxOnly())          # raises ParseError; SyntaxOnly computes nothing
    sym_equal(sympy, x, y, note)         # two sympy values: exactly, at 50 digits, or simplify()

A recursive-descent parser (_Parser) reads one expression (numbers, symbols, \frac, \sqrt,
\binom, powers, n!, functions, |x|, floors) into the values of a backend; two plain numbers
side by side ("2 3", "1.2.3") are no expression, never a product. Ops keeps values as
exact Fractions while they are rational and lifts them to sympy only where it must; without
sympy it raises NeedSympy there, which tells the caller to ask a process that has it. A cost
model charges every exact result its size in bits and refuses, before it is computed, whatever
is past the caps below (each with its measured cost): 1e-999999999, 10^{10^9}, 5000 digits,
n!, nesting past MAX_DEPTH.

Left out: lists, relations, intervals and matrices (the caller splits those into single
expressions), normalisation (units, \text, degrees: the caller's), \log as base 10 (it is the
natural log), and importing sympy: whoever has it passes the module in.
"""
import itertools
import math
import operator
import re
from fractions import Fraction

# Caps: what is past them is refused (TooBig) before it is computed. The costs are measured on
# one core of the 2-core development VM (Python 3, CPython ints).
MAX_DEPTH = 40               # bracket nesting; recursion stays far from Python's limit
MAX_BITS = 1 << 16           # bits of any exact value (numerator or denominator): a product
#                              of two 65,536-bit Fractions takes ~7 ms, a sum ~5 ms, and the
#                              cost grows 4x per doubling (gcd); 1e-16384 or 10^{16384} fit
MAX_WORK = 1 << 20           # bits of exact results per comparison: at most ~16 operations
#                              at MAX_BITS, ~0.1 s; a real answer uses a few hundred bits
MAX_FACT = 5_000             # largest n in n! and binomials: 5000! (54,233 bits) takes 0.4 ms
MAX_EXP_DIGITS = 9           # digits of an exponent written in e-notation; more is refused
#                              without reading it (any such exponent is past MAX_BITS)


# ---------------------------------------------------------------------------- errors and depth

class ParseError(Exception):
    """Text that is not an expression we read."""


class TooBig(Exception):
    """A value past the size caps."""


class NeedSympy(Exception):
    """The in-process exact path cannot decide."""


def depths(s: str) -> list:
    """Bracket depth after each character of s."""
    return list(itertools.accumulate((c in "([{") - (c in ")]}") for c in s))


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


# ---------------------------------------------------------------------------- parsing

class _Parser:
    """Recursive descent over LaTeX math into values of a backend B (Ops, or SyntaxOnly for syntax
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
            raise ParseError(f"cannot read {s[i:i + 20]!r}")

    def peek(self) -> str:
        return self.k[self.i][1] if self.i < len(self.k) else ""

    def eat(self, want: str = "") -> str:
        t = self.peek()
        if not t or (want and t != want):
            raise ParseError(f"expected {want or 'more'} at token {self.i}")
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
                self.refuse_juxtaposed_numbers()
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

    def refuse_juxtaposed_numbers(self) -> None:
        """Two plain numbers side by side are never a product: a person who writes "1 000" or
        "2 1/2" means a thousands separator or a mixed number (the normaliser reads those), and
        "2 3" or "1.2.3" is no value at all."""
        if self.k[self.i][0] == _NUMBER and self.k[self.i - 1][0] == _NUMBER:
            raise ParseError(f"two numbers side by side: {self.k[self.i - 1][1]} {self.k[self.i][1]}")

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
            raise ParseError("unexpected end")
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
            raise ParseError(f"unknown {t!r}")
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


class Ops:
    """Values: exact Fractions while rational, else sympy. Only a process that was handed sympy
    (sp) computes those; without it any step that needs sympy raises NeedSympy."""

    def __init__(self, sp=None):
        self.sp = sp
        self.work = 0   # bits of the exact values computed so far, against MAX_WORK

    def charge(self, bits, what: str) -> None:
        """Account for an exact result of up to `bits` bits, or refuse it before it is computed."""
        if bits > MAX_BITS or self.work + bits > MAX_WORK:
            raise TooBig(f"{what} is past the size caps")
        self.work += int(bits)

    def S(self, *xs):
        """Lift values to sympy."""
        if self.sp is None:
            raise NeedSympy
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
            raise TooBig(f"the exponent of {t[:30]} is past the size caps")
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
            raise ParseError("division by zero")
        return self.op(operator.truediv, a, b)

    def pow(self, a, b):
        """a^b, exact for a rational base and an integer exponent; sizes checked first."""
        e = _rational(b)
        if e is not None and a not in (0, 1, -1) and (isinstance(a, Fraction) or a.is_number):
            # 10^{10^{10}}: refused before computing
            q = _rational(a)
            bits = 64 if q is None else _bits(q)
            if abs(e) * bits > MAX_BITS:
                raise TooBig(f"a power with exponent {_short(e)} is past the size caps")
        if isinstance(a, Fraction) and isinstance(b, Fraction) and b.denominator == 1:
            if a not in (0, 1, -1):
                self.charge(abs(b.numerator) * _bits(a), "a power")
            return a ** b
        return operator.pow(*self.S(a, b))

    def fact(self, a):
        """a!, exact for a small non-negative integer."""
        if _is_int(a) and not 0 <= a <= MAX_FACT:
            raise TooBig(f"{_short(a)}! is past the size caps")
        if isinstance(a, Fraction) and _is_int(a):
            # n! has about log2(n!) = lgamma(n + 1) / ln 2 bits
            self.charge(math.lgamma(int(a) + 1) / math.log(2), f"{a}!")
            return Fraction(math.factorial(int(a)))
        return self.call("factorial", a)

    def binom(self, a, b):
        """Rare in answers: sympy only."""
        if _is_int(a) and a > MAX_FACT:
            raise TooBig(f"binomial of {_short(a)} is past the size caps")
        return self.call("binomial", a, b)

    def fn(self, f, x):
        if isinstance(x, Fraction) and f == "abs":
            return abs(x)
        return self.call(f, x)


def _nothing(*args) -> None:
    return None


class SyntaxOnly:
    """A backend that computes nothing: parsing with it only checks the syntax."""

    def __getattr__(self, name):
        return _nothing


def parse(s: str, B):
    """s read by our parser into backend B's values."""
    if max(depths(s), default=0) > MAX_DEPTH:
        raise TooBig("nesting")
    try:
        p = _Parser(s, B)
        v = p.expr()
    except (ZeroDivisionError, RecursionError, ValueError, OverflowError, TypeError) as e:
        raise ParseError(f"{type(e).__name__}: {e}") from None
    if p.i < len(p.k):
        raise ParseError(f"unexpected {p.peek()!r}")
    return v


# ---------------------------------------------------------------------------- equality of values
# Sympy values, compared in a process that has sympy (sp): exactly, then numerically at 50 digits
# at a few sample points, then by simplify() where only a proof can decide.

def _num(sp, e, pts: list) -> list:
    """e at each point to 50 digits (complex), None where it is not a finite number."""
    vs = [sp.N(e, 50, subs=pt) if pt else sp.N(e, 50) for pt in pts]
    return [complex(v) if v.is_number and v.is_finite else None for v in vs]


def _points(sp, syms, n=3) -> list:
    """Deterministic awkward sample points with mixed signs, for identity tests."""
    return [{s: sp.Rational((-1) ** (i + k) * (7 + 12 * i + 5 * k), 13 + 4 * k)
             for k, s in enumerate(syms)}
            for i in range(n if syms else 1)]


def sym_equal(sp, x, y, note) -> bool:
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


def proportional(sp, e1, e2, positive: bool) -> bool:
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

