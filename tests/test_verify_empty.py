r"""A box that holds no answer never scores, whatever the reference and whatever the entry point.

    python -m pytest tests/test_verify_empty.py -q

A policy under RL searches for any output the reward pays for: one sampled `\boxed{.}` that
scored would be reinforced on every problem. Each content below normalises to nothing, or
leaves nothing once a rule has reduced it (a relation's side, a list's items), and is graded
against one reference of every kind the comparison dispatches on.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402
import verify as V  # noqa: E402

HOLLOW = [
    # punctuation and ellipses
    ".", ",", ";", ":", "!", "?", "..", "...", ", ,", "; ;", ",;.", "'", "~",
    # spacing commands and line breaks
    "\\,", "\\;", "\\!", "\\ ", "\\quad", "\\qquad", "\\;\\;", "\\quad \\quad", "\\\\",
    "\\hspace{1cm}", "\\phantom{42}", "\\vphantom{x}", "\\displaystyle", "\\displaystyle\\,",
    # relations with a side missing, chains that end in nothing
    "=", "x =", "x=", "x = ,", "=5=", "<", "x <", "\\le", "y \\geq", "x = y =",
    # connectives alone
    "and", "or", "and or", "\\text{or}", "\\textit{and}", "\\quad \\text{and}\\quad",
    # empty text and formatting commands
    "\\text{}", "\\text{ }", "\\textbf{}", "\\textrm{}", "\\mathrm{ }", "\\mathbf{}",
    "\\mathit{ }", "\\mbox{}", "\\operatorname{}", "\\overline{}",
    # delimiters, signs, units of nothing
    "\\left.", "\\right.", "\\left. \\right.", "^\\circ", "\\circ", "\\degree", "\\%", "\\%\\%",
    "\\$", "$", "$$",
    # empty slots of a tuple, an interval, a choice list
    "(,)", "( , )", "[,)", "x = , y =",
]

REFERENCES = {
    "number": "42",
    "fraction": "\\frac{17}{3}",
    "expression": "x^2+1",
    "tuple": "(1, 2)",
    "list": "1, 2",
    "text": "\\text{Evelyn}",
    "choice": "(C)",
    "assignment": "x = 5",
    "interval": "[2, 5)",
    "radical": "\\sqrt{2}",
    "vector": "\\begin{pmatrix}1\\\\2\\end{pmatrix}",
    "ratio": "3:1",
    "inequality": "x > 3",
    "base-n": "10_6",
}


def box(content: str) -> str:
    return "</think> so the answer is $\\boxed{" + content + "}$."


def test_the_table_is_large_enough():
    assert len(HOLLOW) >= 40 and len(set(HOLLOW)) == len(HOLLOW)


@pytest.mark.parametrize("kind", list(REFERENCES))
def test_hollow_box_is_wrong_against_every_kind_of_reference(kind):
    ref = REFERENCES[kind]
    right = [c for c in HOLLOW if V.grade(box(c), ref)]
    assert right == [], f"scored against the {kind} reference {ref!r}: {right}"


@pytest.mark.parametrize("content", ["x =", "\\boxed{.}", "and", "(,)", "\\quad"])
def test_hollow_box_says_no_answer_and_is_counted(content):
    before = V.STATS["no_answer"]
    info = V.explain(box(content), "42" if content != "(,)" else "(1, 2)")
    assert info["correct"] is False
    assert "no answer" in info["why"], info
    assert V.STATS["no_answer"] == before + 1


def test_the_right_answer_still_scores_beside_them():
    """The guard refuses nothing real: the same references against their own values."""
    for kind, ref in REFERENCES.items():
        assert V.grade(box(ref), ref), kind
    assert V.grade(box("15\\frac{39}{40}") + ", or $\\boxed{\\frac{639}{40}}$", "\\frac{639}{40}")
    assert V.grade(box("x = \\approx 8.24"), "8.24")   # 'x = = 8.24' keeps its last part


def test_the_reason_says_where_the_answer_was_lost():
    """Nothing left after normalising is refused before any comparison; nothing left after a
    rule (a relation's side, a list's items, a tuple's slot) is refused where the rule left it."""
    why = V.explain(box("\\quad ."), "42")["why"]
    assert why == "no answer: the box holds nothing once normalised"
    assert V.explain(box("x ="), "x = 5")["why"] == "no answer"
    assert V.explain(box("and"), "42")["why"] == "no answer"


@pytest.mark.parametrize("kind", list(REFERENCES))
def test_comparison_refuses_an_empty_part_against_every_kind(kind):
    c = V._Cmp()
    assert c.equal(V.normalize(REFERENCES[kind]), "") is False
    assert c.why == ["no answer"]


def test_a_relation_with_nothing_on_a_side_is_not_reduced_to_it():
    assert V._rhs("x =") == "x ="
    assert V._rhs("=5=", None) is None
    assert V._rhs("x = = 8.24") == "8.24"
    assert V._rhs("x = 5") == "5"


def test_repeated_value_needs_two_items_that_hold_something():
    c = V._Cmp()
    assert not c.repeated("42", [])
    assert not c.repeated("42", ["42"])
    assert not c.repeated("42", ["42", ""])
    assert c.repeated("42", ["42", "42"])
    assert not c.multiset([], [])
    assert not c.multiset([], ["42"])
    assert not c.multiset(["42"], [])
    assert not c.pairwise([], [])


def test_reference_that_normalises_to_nothing_is_bad_never_a_match():
    for ref in ["", ".", "\\text{}", "\\quad", "x ="]:
        for content in [".", "x =", "42", ref or "."]:
            assert not V.grade(box(content), ref), (ref, content)


@pytest.mark.parametrize("content", HOLLOW)
def test_reward_is_zero(content):
    assert V.reward(box(content), "42", require_think=True) == 0.0
    assert V.reward(box(content), "(1, 2)") == 0.0


def test_grade_batch_gives_no_hollow_box_credit():
    pairs = [(box(c), ref) for c in HOLLOW for ref in REFERENCES.values()]
    assert not any(V.grade_batch(pairs, workers=2))


@dataclass
class Out:
    tokens: list
    finish_reason: str


class CharTokenizer:
    """Token ids are characters: enough for the GRPO step's decode-then-grade path."""

    def decode(self, ids):
        return "".join(map(chr, ids))


def test_the_grpo_steps_reward_gives_no_hollow_box_credit():
    """train.grade_samples: decode, grade_batch, DeepScaleR's reward rule, as the GRPO step runs them."""
    texts = [box(c) for c in HOLLOW] + [box("42")]
    outs = [Out([ord(ch) for ch in t], "length") for t in texts]
    recs = [dict(problem="What is 6 x 7?", answer="42")] * len(outs)
    _, right, rewards = train.grade_samples(CharTokenizer(), outs, recs, require_think=True)
    assert right == [False] * len(HOLLOW) + [True]
    assert rewards == [0.0] * len(HOLLOW) + [1.0]
