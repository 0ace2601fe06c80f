r"""Hostile inputs for verify.py: every one is answered within the timeout, from a non-main
thread, with a sane verdict and no exception.

    python -m pytest tests/test_verify_hostile.py -q

Each case is (name, response, reference, verdict); verdict None means "any bool": for those
the point is only that grading returns in time (a value too big to compute is not correct,
and neither is one we cannot read).
"""
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import verify as V  # noqa: E402

TIMEOUT = 2.0   # seconds a sympy job may take here; each case must finish within TIMEOUT + 1 s
MB = 1_000_000


def B(x: str) -> str:
    return "so the answer is $\\boxed{" + x + "}$."


CASES = [
    # --- giant exponents, in every notation
    ("e-notation tiny", B("1e-999999999"), "1", False),
    ("e-notation tiny, reference", B("1"), "1e-999999999", False),
    ("e-notation huge, identical", B("1e999999999"), "1e999999999", True),
    ("E+ notation", B("1E+99999999999999999999"), "5", False),
    ("e-notation in range", B("2.5e-4000"), "0", False),
    ("e-notation at the cap", B("1e16000"), "10^{16000}", True),
    ("times ten to the", B("6.02 \\times 10^{-99999999}"), "0", False),
    ("x ten to the", B("6.02 x 10^{99999999}"), "6.02 \\times 10^{23}", False),
    ("power of ten", B("10^{99999999}"), "1", False),
    ("power of ten, reference", B("1"), "10^{99999999}", False),
    ("negative tower", B("10^{-10^{9}}"), "0", False),
    ("tower", B("10^{10^{10^{10}}}"), "1", False),
    ("two tower", B("2^{2^{2^{2^{2^{2}}}}}"), "4", False),
    ("unbraced tower", B("2^2^2^2^2^2"), "4", False),
    ("tower of e-notation", B("1e9999^{1e9999}"), "1", False),
    ("exponent of a message-sized number", B("10^{10^{5000}}"), "1", False),
    ("radical power", B("\\sqrt{2}^{10^{9}}"), "2", False),
    ("symbol power", B("x^{99999999}"), "x", None),
    ("big products", B("\\cdot".join(["2^{32000}"] * 40)), "1", False),
    ("big sums", B("+".join(["3^{32000}"] * 40)), "1", False),
    ("big quotients", B("/".join(["7^{21000}"] * 40)), "1", False),
    # --- digit runs, repeating decimals, mixed numbers
    ("5,000 digits", B("9" * 5000), "1", False),
    ("999 digits, identical", B("9" * 999), "9" * 999, True),
    ("999 digits, one short", B("9" * 999), "9" * 998, False),
    ("long repeating decimal", B("0.\\overline{" + "3" * 5000 + "}"), "\\frac13", False),
    ("long repeating decimal, reference", B("\\frac13"), "0.\\overline{" + "3" * 5000 + "}", False),
    ("long repeating head", B("0." + "1" * 5000 + "\\overline{6}"), "\\frac16", False),
    ("long mixed number", B("1\\frac{" + "1" * 4400 + "}{" + "2" * 4400 + "}"), "1", False),
    ("long mixed number, reference", B("1"), "1\\frac{" + "1" * 4400 + "}{" + "2" * 4400 + "}",
     False),
    ("repeating decimal still works", B("0.1\\overline{6}"), "\\frac16", True),
    # --- factorials and binomials
    ("factorial", B("100000!"), "5", False),
    ("factorial of a factorial", B("(1000!)!"), "5", False),
    ("factorial quotient", B("\\frac{1000!}{999!}"), "1000", True),
    ("binomial", B("\\binom{10^{9}}{5 \\cdot 10^{8}}"), "1", False),
    ("factorial of a power", B("(2^{60000})!"), "1", False),
    # --- plus-minus chains
    ("pm chain 20", B(" \\pm ".join(["1"] * 21)), "1", False),
    ("pm chain 200", B(" \\pm ".join(["1"] * 201)), "1", False),
    ("pm chain, reference", B("1"), " \\pm ".join(["1"] * 30), False),
    ("mp chain in a list", B(", ".join(["1 \\mp 2 \\pm 3"] * 30)), "1", False),
    ("pm still works", B("1 \\pm \\sqrt{2}"), "1+\\sqrt2, 1-\\sqrt2", True),
    # --- nesting
    ("50 KB of braces", B("{" * 25_000 + "1" + "}" * 25_000), "1", False),
    ("parentheses", B("(" * 300 + "1" + ")" * 300), "1", False),
    ("set braces", B("{" * 490 + "1," + "}" * 490), "1", None),
    ("nested radicals", B("\\sqrt{" * 200 + "2" + "}" * 200), "2", False),
    ("nested fractions", B("\\frac{1}{" * 60 + "2" + "}" * 60), "2", False),
    ("unary minus chain", B("-" * 999 + "1"), "-1", None),
    ("text wrappers", B("\\text{" * 1400 + "5" + "}" * 1400), "5", None),
    ("unit words", B("1" + " apples" * 1400), "1", None),
    ("dotted words", B("1 " + "a." * 4900), "1", None),
    # --- megabyte responses
    ("1 MB before the box", "x" * MB + B("5"), "5", True),
    ("1 MB of fake boxes after", B("5") + "\\boxedx" * 150_000, "5", True),
    ("1 MB of fake fboxes after", B("5") + "\\fboxy" * 160_000, "5", True),
    ("1 MB of open boxes", "\\boxed{" * 150_000, "5", False),
    ("1 MB inside a box", "\\boxed{" + "1+" * 500_000 + "1}", "1000001", False),
    ("1 MB of closing braces", B("5") + "}" * MB, "5", True),
    ("1 MB of think tags", "</think>" * 130_000 + B("5"), "5", True),
    ("1 MB of joined boxes", "\\boxed{1}, " * 90_000, "1", True),     # one value, many forms
    ("1 MB of joined hedges", "\\boxed{1}, \\boxed{2}, " * 50_000, "1", False),
    # --- unbalanced braces
    ("extra closing braces", "\\boxed{1}}}}}", "1", True),
    ("unclosed box", "\\boxed{{{1}", "1", False),
    ("unclosed fraction", "\\boxed{\\frac{1}{2}", "\\frac12", False),
    ("stray opening braces after", "\\boxed{1}" + "{" * 50, "1", True),
    ("unbalanced inside", B("\\frac{1}{2}}{"), "\\frac12", None),
    ("brackets only", B(")]}" * 300), "1", False),
    # --- lookalike and odd unicode
    ("cyrillic C", B("\u0421"), "C", False),
    ("fullwidth digit", B("\uff15"), "5", None),
    ("arabic-indic digit", B("\u0665"), "5", None),
    ("zero-width space", B("1\u200b0"), "10", None),
    ("right-to-left override", B("\u202e01"), "10", None),
    ("minus sign", B("\u22125"), "-5", True),
    ("emoji and integrals", B("\U0001F600\u2211\u222b"), "5", False),
    ("lone surrogate", B("\ud800"), "5", False),
    ("null bytes", B("5\x00"), "5", None),
    # --- code-like text
    ("python", B("__import__('os').system('echo hi')"), "5", False),
    ("lambda", B("lambda: 5"), "5", None),
    ("format string", B("{0.__class__}"), "5", False),
    ("lookup string", B("${jndi:ldap://x/a}"), "5", False),
    ("sql", B("5'; DROP TABLE answers; --"), "5", None),
    ("latex input", B("\\input{/etc/passwd}"), "5", False),
    ("latex macro loop", B("\\def\\x{\\x}\\x"), "5", False),
    ("json in a box", B('["sleep", 30]'), "5", False),
    # --- lists and references
    ("450 items", B("1," * 450 + "1"), "1", False),
    ("list of 100 references", B("7"), [str(k) for k in range(100)], True),
    ("huge float reference", B("10^{308}"), 1e308, True),
    ("infinite float reference", B("\\infty"), float("inf"), True),
    ("None reference", B("None"), None, False),
    ("None in the references", B("None"), [None, "5"], False),
    ("None beside a right one", B("5"), [None, "5"], True),
    ("reference of 1 MB", B("5"), "5" + " " * MB, True),
]


def _in_thread(fn, *args, **kwargs):
    """fn(*args) from a new thread: (result, exception, seconds)."""
    out = {}

    def run():
        t0 = time.perf_counter()
        try:
            out["result"] = fn(*args, **kwargs)
        except BaseException as e:   # the test reports it; nothing may escape grading
            out["error"] = e
        out["seconds"] = time.perf_counter() - t0

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(TIMEOUT + 30)
    return out.get("result"), out.get("error"), out.get("seconds", float("inf"))


@pytest.fixture(scope="module", autouse=True)
def pool():
    V.grade("\\boxed{\\sqrt{2}}", "\\sqrt{2}")   # start one worker: startup is not grading time
    yield
    V.shutdown()


@pytest.mark.parametrize("name,response,reference,want", CASES, ids=[c[0] for c in CASES])
def test_hostile_grade(name, response, reference, want):
    result, error, seconds = _in_thread(V.grade, response, reference, timeout=TIMEOUT)
    assert error is None, f"{name}: {type(error).__name__}: {error}"
    assert seconds < TIMEOUT + 1, f"{name}: {seconds:.1f}s"
    assert isinstance(result, bool)
    if want is not None:
        assert result == want, V.explain(response, reference, timeout=TIMEOUT)


def test_hostile_reward_and_batch():
    """reward() and grade_batch() over all the cases at once, from a thread."""
    pairs = [(resp, ref) for _, resp, ref, _ in CASES]
    t0 = time.perf_counter()
    verdicts, error, _ = _in_thread(V.grade_batch, pairs, workers=2, timeout=TIMEOUT)
    assert error is None, error
    wanted = [(v, c[3]) for v, c in zip(verdicts, CASES) if c[3] is not None]
    assert all(v == want for v, want in wanted)

    def rewards_of_all():
        return [V.reward(resp, ref, timeout=TIMEOUT) for resp, ref in pairs]

    rewards, error, _ = _in_thread(rewards_of_all)
    assert error is None, error
    assert rewards == [float(v) for v in verdicts]
    assert time.perf_counter() - t0 < 60


def test_explain_answers_every_case():
    for name, response, reference, _ in CASES[::7]:
        info, error, _ = _in_thread(V.explain, response, reference, timeout=TIMEOUT)
        assert error is None and isinstance(info["why"], str), name


def test_none_in_references_never_matches_none():
    assert not V.grade("\\boxed{None}", [None])
    assert not V.grade("\\boxed{None}", [None, "4"])
    assert not V.grade("\\boxed{none}", None)
    assert V.grade("\\boxed{4}", [None, "4"])
