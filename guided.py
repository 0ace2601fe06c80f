"""polish.py's guided pass: the prompt that hands the model a problem's reference answer (and,
on request, its original solution), and the two checks a guided chain must pass besides the
free rules: the leak check (it must not say it was given the answer) and the copy check (its
reasoning must not be the original solution reworded).

    from guided import guided_ids, leaks, copies
    ids = guided_ids(tok, rec, template, budget, with_solution=False)   # None: over the budget
    leaks(chain) or copies(chain, rec)                                  # True: rejected

Why the copy check. With the solution in the prompt, a small instruct model (Qwen2.5-Coder-0.5B-
Instruct, the first 16 DeepScaleR problems) wrote acceptable chains of which 54% to 85% of the
word 6-grams occur in the solution (8 of 10; free chains 0% to 24%): the reference solution
reworded, its numbered headings kept. Such a chain teaches the warm-up the terse style the
dataset card calls too short, and hides that the model could not solve the problem. Hence also
the default guided prompt: the answer alone (--guided-solution adds the solution), whose chains
shared 0% to 19%; polish.py's docstring has the measurement. The measure is the share of the
chain's word 6-grams (of its reasoning, the text before </think>; words are runs of letters and digits, lowercased, so that a change of
LaTeX delimiters or markdown keeps a copy a copy) that occur in the original solution, leaving
out 6-grams that occur in the problem (restating the problem is no copy). Six words is long
enough that two independent derivations rarely share a run by chance, short enough that a
copy with an equation rewritten here and there is still mostly shared runs. COPY_MAX sits
between the two: free chains of an easy problem reach about a quarter (the chain and the
solution restate the question in the same words), the copies measured start at 54%.

Left out: paraphrase detection (a copy reworded in other words passes), and any check of free
chains (they never saw the solution).
"""
import re
import sys

# The guided pass's user turn (then the chat template, as for the free prompt). The answer comes
# first and the solution after it, so that a solution cut for --prompt-budget leaves the answer;
# the last sentence is DeepScaleR's own, so the chain ends the way train.py's reward reads it.
GUIDED_PROMPT = ("{problem}\n\nThe correct final answer is {answer}.{solution}\n\nSolve the problem from "
                 "scratch, as if you had not been told the answer: explore, try approaches, check each step "
                 "and reconsider where you are unsure, until your own complete derivation reaches this "
                 "answer. Never mention that the answer or a solution was given to you. Let's think step "
                 "by step and output the final answer within \\boxed{{}}.")
GUIDED_SOLUTION = "\n\nA reference solution, for you alone:\n{solution}"

# Phrases with which a guided chain gives away that it was handed the answer or a solution: such
# a chain teaches the model to expect a hint, so it is rejected. "given answer choices" is a
# multiple-choice problem's own wording, hence the lookaheads; tests pin positive and negative
# examples of every phrase.
NOT_CHOICES = r"(?!\s+(?:choices?|options?)\b)"
LEAK_PHRASES = (
    r"\b(?:given|provided|reference|expected|supplied|target) (?:final )?(?:answer|solution)s?\b" + NOT_CHOICES,
    r"\boriginal solution\b",
    r"\b(?:answer|solution) (?:we were|we are|we're|I was|I am|I'm|I've been|we've been) "
    r"(?:given|told|shown|provided)\b",
    r"\b(?:we|I)(?: are| am| were| was|'re|'m| have been|'ve been)? (?:told|given) (?:that )?the "
    r"(?:final |correct )?answer\b" + NOT_CHOICES,
    r"\bthe (?:answer|solution) (?:is |was )?(?:given|provided|supplied)(?! by\b)"
    r"(?: (?:to (?:me|us)|above|earlier|in the (?:prompt|problem|question)))?\b" + NOT_CHOICES,
    r"\b(?:work|working|reason|reasoning) backwards? from the (?:known |final )?answer\b",
)
LEAK = re.compile("|".join(f"(?:{p})" for p in LEAK_PHRASES), re.IGNORECASE)

COPY_N = 6               # words per n-gram of the copy measure
COPY_MAX = 0.35          # a guided chain with this share of its 6-grams from the solution or more is a copy
WORD = re.compile(r"[^\W_]+")    # a run of letters and digits: LaTeX and markdown punctuation is no word


def leaks(text: str) -> bool:
    """Does the chain refer to having been given the answer or a solution (LEAK_PHRASES)?"""
    return LEAK.search(text) is not None


def ngrams(text: str, n: int = COPY_N) -> list[tuple]:
    """The text's word n-grams, in order (lowercased words, WORD)."""
    words = WORD.findall(text.lower())
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def copied_share(chain: str, solution: str, problem: str = "") -> float:
    """The share of the reasoning's (the chain before </think>) word 6-grams that occur in the
    solution, of those that do not occur in the problem; 0.0 for a chain with none left (shorter
    than 6 words, or only the problem restated)."""
    in_problem = set(ngrams(problem))
    grams = [g for g in ngrams(chain.split("</think>", 1)[0]) if g not in in_problem]
    source = set(ngrams(solution))
    return sum(g in source for g in grams) / len(grams) if grams else 0.0


def copies(text: str, rec: dict) -> bool:
    """Is the chain's reasoning mostly the record's original solution (copied_share >= COPY_MAX)?"""
    return copied_share(text, original_solution(rec), rec["problem"]) >= COPY_MAX


def original_solution(rec: dict) -> str:
    """The input's own solution: `original_solution` when the input is an earlier output (its
    `solution` may be a chain by then), else `solution`."""
    return rec["original_solution"] if "original_solution" in rec else rec["solution"]


def guided_text(rec: dict, with_solution: bool = True) -> str:
    """The guided pass's user turn for a record (before the chat template)."""
    sol = original_solution(rec).strip() if with_solution else ""
    return GUIDED_PROMPT.format(problem=rec["problem"], answer=rec["answer"],
                                solution=GUIDED_SOLUTION.format(solution=sol) if sol else "")


def guided_ids(tok, rec: dict, template: str | None, budget: int, with_solution: bool = True,
               system: str | None = None) -> list | None:
    """Token ids of the guided prompt; with_solution: with the original solution, or without it
    when that is over budget. None when even the answer alone is over budget (the problem then
    gets no guided pass). system: the chat template's system text, as for the free prompt."""
    for solution in (True, False) if with_solution else (False,):
        ids = tok.encode_chat(guided_text(rec, solution), template, system)
        if len(ids) <= budget:
            return ids
    return None


def guided_prompts(tok, recs: list, todo: list, cfg, show: bool) -> dict:
    """problem -> guided prompt ids (None when over --prompt-budget even without the solution)
    for this rank's problems `todo`, from polish.py's Config; {} with --no-guided."""
    if not cfg.guided:
        return {}
    guided = {p: guided_ids(tok, recs[p], cfg.template or None, cfg.prompt_budget, cfg.guided_solution, cfg.system)
              for p in todo}
    over = sum(ids is None for ids in guided.values())
    if show and over:
        print(f"polish: {over} problems get no guided pass: their guided prompt is over --prompt-budget "
              f"{cfg.prompt_budget} tokens even without the solution", file=sys.stderr)
    return guided
