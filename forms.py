r"""forms.py: the shape of an answer string: names and assignments, lists, tuples and matrices,
relations and intervals, powers of an integer. Text in, text out; no value is read here.

    from forms import _LIST, _split, _rhs, _items, _seq, _interval, _int_power
    _split("(1, 2), 3", _LIST)    # (['(1, 2)', '3'], [',']): split outside brackets only
    _rhs("(a, b) = (4, 1)")       # '(4, 1)': a name on the left names the value on the right
    _items(r"1 \pm \sqrt{2}")     # ['1 + \sqrt{2}', '1 - \sqrt{2}']: list items, \pm expanded
    _seq("[2, 12)")               # ('tup', '[', ['2', '12'], ')'): a tuple or interval
    _interval("3 < x <= 5")       # '(3,5]': an inequality in one variable as an interval
    _int_power("2^{65536}")       # (2, '65536'): compared by exponent, never computed

verify.py's typed comparison (_Cmp) asks these questions of two normal forms to choose its rule
and to cut each side into the parts it compares: is this a name or a value, a list, a tuple,
a relation, an interval, a power? They are string work on text of at most MAX_LEN characters
(answers.py), kept apart from verify.py so that it reads as the rules and this file as the forms
the rules are about. Which form counts as which answer is verify.py's policy table.

The names keep the leading underscore they had in verify.py: they are the comparison's
internals, and verify.py imports each one it uses by name.

Left out: reading values (latex.py, of which this file uses only depths() and TooBig),
normalisation (answers.py), comparing anything (verify.py), and sympy.
"""
import re
from functools import lru_cache

from answers import MAX_ITEMS
from latex import TooBig, depths

# list separators: "1, 2", "1; 2", "1 or 2", "1 and 2" (not the "or" of "for")
_LIST = re.compile(r",|;|(?<![A-Za-z\\])(?:or|and)(?![A-Za-z])")
# relations: "<=", "!=", "="
_REL = re.compile(r"<=|>=|!=|<|>|=")
# tuple items: "1, 2", and "2; 3" where no comma separates them
_COMMA = re.compile(",")
_SEMICOLON = re.compile(";")
# a name being assigned: "x", "AB", "m\angle ABC", "a_{n}", "f(x)", "\theta"
_NAME = re.compile(r"(?:m?\\angle\s*)?(?:[A-Za-z]{1,3}|\\[a-zA-Z]+)(?:_\{?\w+\}?)?(?:\([^()]*\))?")
# a variable: "x", "a_1", "x_{10}"
_VAR = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?")
# a variable times -1: "-x" in "-x > -1"
_NEG_VAR = re.compile(r"-\s*" + _VAR.pattern)
# a number or infinity whose sign can be toggled as text: "-1", "2.5", "\infty"
_SIGNED = re.compile(r"-?\s*(?:\d+(?:\.\d+)?|\\infty)")
# one name inside a name expression: "x", "AM", "a_1", "\theta", "m\angle B"
_NAME_PART = re.compile(r"(?:m?\\angle\s*)?(?:(?<![A-Za-z])[A-Za-z]{1,3}(?![A-Za-z])"
                        r"|\\(?:alpha|beta|gamma|delta|theta|phi|omega|lambda|mu|sigma|rho|tau|psi"
                        r"|angle)(?![a-zA-Z]))(?:_\{?\w+\}?)?'*")
# what may join names in a name expression ("(a, b)", "x:y", "|PQ|", "AM/MB", "m+n"); a digit
# or any other command leaves a value, which is no name
_NAME_GLUE = re.compile(r"[N,:/|(){}]*")
_NAME_SUM_GLUE = re.compile(r"[N,:/|(){}+\-]*")
_SPACE = re.compile(r"\s+")
# a tuple of names: "(a, b)", "(x,y,z)"
_NAME_TUPLE = re.compile(r"\(\s*N(?:\s*,\s*N)+\s*\)")
# an approximation: "\frac{9}{4}\pi \approx 7.07" (the normaliser writes \simeq so too)
_APPROX = re.compile(r"\\approx(?![a-zA-Z])")
# what separates whole solutions: "x=2, y=3; x=3, y=2", "x=1, y=2 or x=3, y=4"
_SOLUTIONS = re.compile(r";|(?<![A-Za-z\\])(?:or|and)(?![A-Za-z])")
# an integer raised to a power: "2^{65536}", "(-3)^{5}", "2^2^2"
_INT_POWER = re.compile(r"(\d+|\(\s*-?\d+\s*\))\s*\^\s*")
# an exponent without braces: "2", "2^2" (the parser reads 2^2^2 as 2^(2^2))
_DIGIT_TOWER = re.compile(r"\d+(?:\s*\^\s*\d+)*")
# the largest base whose perfect powers are looked for: "4^{32768}" is 2^{65536}
_ROOT_BITS = 64
# a matrix: "\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", "\begin{array}{cc} ... \end{array}"
_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}\Z", re.S)
# \pm and \mp (and the never-meant \pp and \mm, which the list expansion also accepts)
_PM_ANY = re.compile(r"\\[pm][mp](?![a-zA-Z])")
# one \pm or \mp to expand: "1 \pm \sqrt{2}"
_PM = re.compile(r"\\(pm|mp)(?![a-zA-Z])")
# a LaTeX command: "\sqrt" (dropped when asking whether a side has letters)
_COMMAND_WORD = re.compile(r"\\[a-zA-Z]+")
_LETTERS = re.compile("[a-zA-Z]")


@lru_cache(maxsize=1 << 16)   # the comparisons split the same short strings many times
def _split(s: str, sep: re.Pattern) -> tuple[list, list]:
    """Split s at the matches of sep outside brackets: (parts, separators). Callers never
    mutate the cached lists."""
    parts, seps, last, depth = [], [], 0, depths(s)
    # separators hold no brackets, so a match inside brackets cannot leave them
    for m in sep.finditer(s):
        if m.end() > m.start() and depth[m.start()] == 0:
            parts.append(s[last:m.start()].strip())
            seps.append(m.group().strip())
            last = m.end()
    return parts + [s[last:].strip()], seps


def _wrapped(s: str, opens: str = "([{") -> bool:
    """One bracketed group: (1,2), [2,12), but not (1)+(2)."""
    return len(s) > 1 and s[0] in opens and s[-1] in ")]}" and 0 not in depths(s)[:-1]


def _has_letters(s: str) -> bool:
    """Whether s holds a letter outside its command words: "2x" does, "\\sqrt{2}" does not."""
    return bool(_LETTERS.search(_COMMAND_WORD.sub("", s)))


def _named(s: str, sums: bool = False) -> bool:
    """Whether s names a quantity rather than states one: a name ("x", "AB", "f(x)", "\\theta"),
    or names joined as a tuple "(a, b)", a ratio "x:y", a length "|PQ|", a quotient
    "\\frac{AM}{MB}" or, with sums, "m+n". A digit anywhere but a subscript is a value."""
    if _NAME.fullmatch(s):
        return True
    marked = _SPACE.sub("", _NAME_PART.sub("N", s.replace("\\frac", "")))
    glue = _NAME_SUM_GLUE if sums else _NAME_GLUE
    # "NN" is a product of names ("b v"), which names nothing
    return "N" in marked and "NN" not in marked and bool(glue.fullmatch(marked))


def _rhs(s: str, default: str | None = "", sums: bool = False) -> str | None:
    """The value of an assignment or chain: 'x = 5', 'AB = 5', '(a, b) = (4, 1)', '10/2 = 5',
    'a = b = 5', '5 = x' -> the value; anything else is s itself (or default, when one is
    given). With sums (an answer's side), 'm+n = 12' names 12 too. A value that would be empty
    ('x =', '=5=') is no value: s is kept whole, and the comparison refuses it."""
    named = _assignment(s, sums)
    if named and named[1]:
        return named[1]
    return s if default == "" else default


def _assignment(s: str, sums: bool = False) -> tuple[str, str] | None:
    """(name, value) of an assignment, for _rhs(); the name is "" for a computation
    '10/2 = 5', and the value may be empty. A number on the left names nothing, so '7 = 11a+c'
    is an equation, not the value 11a+c."""
    p, ops = _split(s, _REL)
    if not ops or set(ops) != {"="} or len(_split(s, _LIST)[0]) != 1:
        return None
    if len(p) == 2 and _named(p[1], sums) and not _named(p[0], sums):
        return p[1], p[0]
    if not _has_letters(p[0]):
        return None if _has_letters(p[-1]) else ("", p[-1])
    if len(p) > 2 or _named(p[0], sums):
        return p[0], p[-1]
    return None


def _single_name(name: str) -> bool:
    """A name of one quantity or a tuple of names: with these, which names does not matter
    ('x = 5' is 'y = 5'); other name expressions ('x:y', 'm+n') must match."""
    return not name or bool(_NAME.fullmatch(name)) or bool(
        _NAME_TUPLE.fullmatch(_NAME_PART.sub("N", name)))


def _exact(s: str) -> str:
    """Each item of s with its approximation dropped: '\\frac{9}{4}\\pi \\approx 7.07' ->
    '\\frac{9}{4}\\pi', 'x = \\sqrt{2} \\approx 1.41' -> 'x = \\sqrt{2}'. Where the part before
    \\approx holds no value ('x \\approx 7.07', '\\approx 7.07'), the approximation is the answer
    given: it is read as 'x = 7.07'."""
    items, seps = _split(s, _LIST)
    out = []
    for item in items:
        parts = _split(item, _APPROX)[0]
        head = parts[0].rstrip("= ")   # 'x = \\approx 8.24' gives its value after \\approx
        if len(parts) > 1 and (not head or _named(head, sums=True)):
            item = " = ".join(x for x in [head] + parts[1:] if x)
        elif len(parts) > 1:
            item = parts[0]
        out.append(item)
    return out[0] + "".join(f" {sep} {item}" for sep, item in zip(seps, out[1:]))


def _solutions(a: str, k: int) -> list | None:
    """Solutions grouped by ';' or 'or', each k comma-separated values or assignments, as
    tuples: 'x=2, y=3; x=3, y=2' -> ['(2, 3)', '(3, 2)'] for k = 2; None if a is not so."""
    groups = _split(a, _SOLUTIONS)[0]
    if len(groups) < 2:
        return None
    out = []
    for g in groups:
        parts = _split(g, _COMMA)[0]
        if len(parts) != k or not all(parts):
            return None
        out.append("(" + ", ".join(_rhs(x) for x in parts) + ")")
    return out


def _int_power(s: str) -> tuple[int, str] | None:
    """(base, exponent) of an integer to a numeric power: '2^{65536}' -> (2, '65536'),
    '2^2^2' -> (2, '2^2'); None for anything else, and for an exponent with a letter."""
    m = _INT_POWER.match(s)
    if not m:
        return None
    rest = s[m.end():]
    if _wrapped(rest, "{") and rest[-1] == "}":
        exponent = rest[1:-1].strip()
    elif _DIGIT_TOWER.fullmatch(rest):
        exponent = rest
    else:
        return None
    if not exponent or _has_letters(exponent):
        return None
    return int(m.group(1).strip("() ")), exponent


def _root(b: int) -> tuple[int, int]:
    """(c, k) with c^k = b and c as small as possible: 64 -> (2, 6); a negative or large base is
    its own root (b, 1)."""
    if b < 2 or b.bit_length() > _ROOT_BITS:
        return b, 1
    for k in range(b.bit_length(), 1, -1):
        r = round(b ** (1.0 / k))
        for c in (r - 1, r, r + 1):
            if c > 1 and c ** k == b:
                return c, k
    return b, 1


def _negated(parts: list, ops: list) -> tuple[list, list]:
    """An inequality whose variable carries a minus, times -1: '-x < -1' -> '1 < x'."""
    if not any(_NEG_VAR.fullmatch(x) for x in parts):
        return parts, ops
    out = []
    for x in parts:
        if _SIGNED.fullmatch(x) or _NEG_VAR.fullmatch(x):
            out.append(x[1:].strip() if x.startswith("-") else "-" + x)
        else:
            out.append(f"-({x})")
    return out[::-1], ops[::-1]


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
            raise TooBig("list length")
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
    if _MATRIX.match(s[1:-1].strip()):   # "\\left[\\begin{array}{cc} .. \\end{array}\\right]"
        return _seq(s[1:-1].strip())
    items = _split(s[1:-1], _COMMA)[0]
    if len(items) == 1:   # coordinates separated by ';': "(2; 3)"
        items = _split(s[1:-1], _SEMICOLON)[0]
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
    p, ops = _negated(p, ops)
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
