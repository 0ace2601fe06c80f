r"""answers.py: an answer as text: the final box of a response, one normal form for references
and answers alike, and the choice letters of multiple-choice problems.

    from answers import extract, normalize, decoration, listed_choices
    extract(r"<think>..</think> so \boxed{\dfrac{1}{2}} cm")     # '\dfrac{1}{2}'
    extract(r"$\boxed{3}$ and $\boxed{5}$")                       # '3, 5': one list
    normalize(r"\dfrac12\text{ cm}")                              # '\frac{1}{2}'
    decoration("(C) 28")                                          # ('C', '28')
    listed_choices(r"$\textbf{(A)}\ 24 \quad \textbf{(B)}\ 25$")   # {'A': '24', 'B': '25'}

extract() finds the last complete \boxed{..} / \fbox{..} / `\boxed 5` (after </think> if
present; no box, an unclosed last box or an empty one is None). normalize() rewrites LaTeX-ish
text into one form: unicode and spacing commands, \text{} wrappers, units, degree and percent
signs, \dfrac, mixed numbers ("3\frac12", "2 1/2"), repeating decimals, thousands separators
("1,000", "1 000"), relation commands, grouping braces around the whole ("{1,3}"), doubled
backslashes before command names ("\\frac"), ellipses ("...", "\dots" -> "\ldots") and
"\simeq" (-> "\approx"). Both work in linear time on hostile text, within the caps below (each
with its measured cost).

Left out: deciding whether two answers are equal (verify.py) and reading values (latex.py);
nothing here imports either.
"""
import re
from functools import lru_cache

# Caps on text: what is past them is cut or refused before the work is done. The costs are
# measured on one core of the 2-core development VM.
MAX_RAW = 10_000             # characters of an extracted box; normalising 10,000 hostile
#                              characters takes <= ~0.2 s (1,400 nested \text{} wrappers)
MAX_LEN = 1_000              # characters of a normal form: every parse, split and list
#                              comparison works on at most this much text
MAX_ITEMS = 40               # items of a list or set: 40 x 40 pairwise comparisons at most;
#                              so a \pm chain expands only up to 5 signs (2^5 = 32 items),
#                              where 18 signs took 4.9 s and 20 over 60 s
UNIT_REACH = 200             # characters at the end of an answer searched for a unit phrase:
#                              ~1 ms a search however hostile the text


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
    "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u2205": "\\emptyset ",
    # the other minus-like dashes: fullwidth (as fullwidth digits, which are read), hyphen, figure dash
    "\uff0d": "-", "\u2010": "-", "\u2011": "-", "\u2012": "-", "\ufe63": "-",
    # an ellipsis, "approximately"
    "\u2026": " \\ldots ", "\u22ef": " \\ldots ", "\u2248": " \\approx ", "\u2243": " \\approx "})
_REPLACE = [
    ("\\textdollar", " "), ("\\$", " "), ("$", " "), ("\\%", " "), ("%", " "), ("\\qquad", " "),
    ("\\quad", " "), ("~", " "), ("{-}", "-"), ("{,}", ","), ("\\{", "{"), ("\\}", "}"),
    ("\\langle", "("), ("\\rangle", ")"), ("\\lt", "<"), ("\\gt", ">"),
    ("\\mathbb{R}", "(-\\infty,\\infty)"), ("\\varnothing", "\\emptyset"),
    # "\simeq" is "\approx", which the comparison reads: it grades the exact part before it
    ("\\simeq", "\\approx")]
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


def _no_spaces(m: re.Match) -> str:
    return m.group().replace(" ", "")


# the command names that a JSON-mangled output writes after a doubled backslash ("\\frac");
# a matrix's line break "\\" is followed by an entry, and no entry is one of these words
_FOLDABLE = """frac dfrac tfrac cfrac sqrt pi cdot times div pm mp infty le leq ge geq ne neq approx
    simeq text textbf textit mathrm mathbf boxed fbox left right begin end sin cos tan cot sec csc
    log ln exp alpha beta gamma delta theta lambda mu sigma phi omega cup cap emptyset varnothing
    circ degree in ldots dots cdots binom dbinom overline mid quad qquad angle lfloor rfloor
    lceil rceil""".split()
_DOUBLED = re.compile(r"(?<!\\)\\\\(?=(?:" + "|".join(_FOLDABLE) + r")(?![a-zA-Z]))")
# a \begin written with one backslash: the text is real LaTeX, whose "\\" are line breaks
_REAL_BEGIN = re.compile(r"(?<!\\)\\begin(?![a-zA-Z])")
# a set-builder's braces, which are kept: "{x | x > 2}", "{x : x > 2}"
_SET_BUILDER = re.compile(r"\{\s*[a-zA-Z]\s*(?:\\mid|\||:)")


def _fold_doubled(s: str) -> str:
    """"\\\\frac{1}{2}" -> "\\frac{1}{2}": a doubled backslash before a command name, as a
    JSON-mangled output carries it. Text with a real (one-backslash) \\begin is left alone: there
    a doubled backslash is a matrix's line break."""
    if "\\\\" not in s or _REAL_BEGIN.search(s):
        return s
    return _DOUBLED.sub(r"\\", s)


def _ungroup(s: str) -> str:
    """Braces around the whole text are LaTeX grouping, not a set: "{1,3}" -> "1,3", "{}" ->
    "". A set is written with escaped braces ("\\{1,3\\}") and keeps them, and so does a
    set-builder "{x | x > 2}". At most three layers: each costs a scan of the text."""
    for _ in range(3):
        if not (s.startswith("{") and s.endswith("}")) or s.endswith("\\}"):
            break
        if _SET_BUILDER.match(s) or _match(s, 0) != len(s) - 1:
            break
        s = s[1:-1].strip()
    return s


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
    # a leading membership: "x \in [1, 2)", "(x, y) \in \{(1, 2), (2, 1)\}"
    (r"^(?:[A-Za-z](?:_\{?\w+\}?)?|\(\s*[A-Za-z](?:_\{?\w+\}?)?(?:\s*,\s*[A-Za-z](?:_\{?\w+\}?)?)+\s*\))"
     r"\s*\\in(?![a-zA-Z])\s*", ""),
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
# an ellipsis as a list item: "1, 2, \dots", "1, \cdots, 9", "1, 2, ..." (-> "\ldots")
_ELLIPSIS_ITEM = re.compile(r"(?:(?<=,)|^)\s*(?:\.\.\.|\\[lc]?dots[cbom]?(?![a-zA-Z]))\s*(?=,|$)")
# (pattern, replacement) for numbers written with a space, applied after _AFTER where a digit,
# a space and a digit occur (rare: the test spares most answers two searches)
_SPACED_NUMBERS = [(re.compile(p), r) for p, r in [
    # thousands separated by spaces: "1 000 000", "12 345.5" ("1~000" arrives so); groups of
    # three digits only, so "1 0000" and "2 3" stay two numbers, which the parser refuses
    (r"(?<![\d.])(?<!\d )\d{1,3}(?: \d{3})+(?!\d| \d)", _no_spaces),
    # a mixed number written with a space: "2 1/2" -> "(2+\frac{1}{2})" (a proper fraction only)
    (r"(?<![\w.^_}/\\])(?<!\d )(\d+) (\d+)/(\d+)(?![\d.^])", _mixed)]]
_DIGIT_SPACE_DIGIT = re.compile(r"\d \d")
# a space command before a fraction's digits is a space: "2\,1/2" is 2 1/2, never 21/2
_SPACED_FRACTION = re.compile(r"(?<=\d)\\[,;: ]\s*(?=\d+\s*/\s*\d)")
# runs of white space: "  ", " \n "
_SPACES = re.compile(r"\s+")
_SPACE_RUNS = re.compile(r"(\s)\s+")
# a normal form that holds only ellipses
_ONLY_ELLIPSES = re.compile(r"\s*\\ldots(?:\s*,\s*\\ldots)*\s*")


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
    s = _ungroup(_fold_doubled(s.strip().translate(_UNICODE)))
    for a, b in _REPLACE:
        s = s.replace(a, b)
    # a run of white space as its first character: several patterns below start with \s* and
    # may start anywhere in a run, which is quadratic (8,500 spaces took 0.25 s)
    s = _SPACE_RUNS.sub(r"\1", s)
    if "/" in s and "\\" in s:   # the spacing commands below would glue "2\,1/2" into 21/2
        s = _SPACED_FRACTION.sub(" ", s)
    for p, r in _BEFORE:
        s = p.sub(r, s)
    if "..." in s or "dots" in s:   # the test costs far less than the search it spares
        s = _ELLIPSIS_ITEM.sub(r" \\ldots", s)
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
    if _DIGIT_SPACE_DIGIT.search(s):
        for p, r in _SPACED_NUMBERS:
            s = p.sub(r, s)
    if "\\ldots" in s and _ONLY_ELLIPSES.fullmatch(s):   # "...", "\dots": an ellipsis alone is no answer
        return ""
    return s.strip()


# ---------------------------------------------------------------------------- choices and words

# a choice letter at the start of an answer: "(C)", "C", "(C) 42", "C 42", "c"
_CHOICE = re.compile(r"\(([A-Ea-e])\)|([A-E])(?![A-Za-z0-9])|([a-e])\Z")
# text: "odd", "Sunday", "Devon's"
_TEXT = re.compile(r"[A-Za-z][A-Za-z ,.'\-]*")
_WORD = re.compile(r"[A-Za-z]+")
# what text comparison ignores: "odd." == "Odd"
_NOT_WORD = re.compile(r"[^a-z0-9]+")
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


def decoration(a: str) -> tuple[str | None, str | None]:
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
def listed_choices(problem: str) -> dict | None:
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


def choice_letter(s: str) -> str | None:
    """The letter of a decorated choice: C, (C), (C) 42, c."""
    m = _CHOICE.match(s)
    if not m:
        return None
    return next(g for g in m.groups() if g).upper()


def is_text(s: str) -> bool:
    """Whether s is words (a text answer: "odd", "Sunday"), not math with letters in it."""
    return bool(_TEXT.fullmatch(s)) and any(
        len(w) >= 3 and w.lower() not in _MATHWORDS for w in _WORD.findall(s))


def words(s: str) -> str:
    """s as lower-case words, for comparing text answers: "Odd." -> "odd"."""
    return _NOT_WORD.sub(" ", s.lower()).strip()
