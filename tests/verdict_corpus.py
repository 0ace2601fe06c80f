r"""A verdict corpus for verify.py: record every verdict and its reason, then diff two records.

    python tests/verdict_corpus.py record /tmp/before.json      # grade the corpus, write verdicts
    python tests/verdict_corpus.py record /tmp/old.json --verify /tmp/old/   # another copy's folder
    python tests/verdict_corpus.py diff /tmp/before.json /tmp/after.json

The corpus is every distinct answer in ../shared/data graded against itself and a few perturbed
forms of itself, its neighbour's answer, the table in tests/verify_cases.py, and the worked
solutions of the DeepScaleR subset and MATH-500 against their own answers. Each entry has a
class (what kind of pair it is, and for solutions what kind of box they end with), so a diff
says which classes a change of verify.py moved. A refactor must leave the record identical;
a change of policy must move only the classes it means to move.
"""
import argparse
import importlib
import inspect
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from verify_cases import CASES  # noqa: E402

V = None   # the verify module under test: this checkout's, or the file given by --verify

DATA = ROOT.parent / "shared" / "data"


def read_rows(path: Path) -> list:
    """A JSON list or JSON lines."""
    text = path.read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def reference_text(x) -> str:
    """An answer field as the graders see it written (GSM8K's '#### N' tail, floats as written)."""
    s = repr(x) if isinstance(x, float) else str(x) if x is not None else ""
    return s.rsplit("####", 1)[1].strip() if "####" in s else s.strip()


def data_answers() -> list:
    """Every distinct answer string in the shared data, in file order."""
    seen = {}
    for f in sorted(DATA.glob("*/*.json*")):
        for row in read_rows(f):
            a = row.get("answer") if row.get("answer") is not None else row.get("solution")
            for x in a if isinstance(a, list) else [a]:
                s = reference_text(x)
                if s:
                    seen.setdefault(s, f.name)
    return list(seen)


def last_digit_changed(s: str) -> str | None:
    """s with its last digit replaced by another one: a near miss, usually wrong."""
    m = re.search(r"\d(?=\D*\Z)", s)
    if not m:
        return None
    d = str((int(m.group()) + 3) % 10)
    return s[:m.start()] + d + s[m.end():]


def load_verify(path: str | None):
    """verify.py from this checkout, or another copy to compare with: a folder holding verify.py
    (and the answers.py, forms.py, latex.py, workers.py it imports), or a file, such as a one-file verify.py
    from before the split. Its folder goes first on sys.path, so that what it imports comes from
    there too, not from this checkout; a file named otherwise is imported by its own name."""
    if path is None:
        import verify
        return verify
    file = Path(path) / "verify.py" if Path(path).is_dir() else Path(path)
    sys.path.insert(0, str(file.resolve().parent))
    module = importlib.import_module(file.stem)
    sys.modules["verify"] = module
    return module


# wrappers and spacing around a choice letter: "\textbf{(C)}\ ", "\text{ (D) }", "\mathrm{"
_DECORATION = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm)\s*\{|[{}\s~]|\\[ ,;:!]")


def box_class(solution: str) -> str:
    """What kind of final box a worked solution ends with (the classes the grader treats apart):
    a bare choice letter, a letter with its value, degrees, currency, several boxes, other."""
    raw = V.extract(solution)
    if raw is None:
        return "sol:no-box"
    bare = _DECORATION.sub("", raw)
    if re.fullmatch(r"\(?[A-E]\)?", bare):
        return "sol:letter"
    if re.search(r"\([A-E]\)|(?<![A-Za-z\\])[A-E]\)", bare):
        return "sol:letter+value"
    if "circ" in raw:
        return "sol:degrees"
    if "dollar" in raw or "$" in raw:
        return "sol:currency"
    if solution.count("\\boxed") > 1:
        return "sol:several-boxes"
    return "sol:plain"


def build() -> list:
    """(class, response, answer, problem) entries; problem is None where there is none."""
    out = []
    answers = data_answers()
    for i, s in enumerate(answers):
        out.append(("self", "\\boxed{%s}" % s, s, None))
        out.append(("assign", "So $\\boxed{x = %s}$." % s.replace("\\frac", "\\dfrac"), s, None))
        if (near := last_digit_changed(s)) is not None:
            out.append(("near-miss", "\\boxed{%s}" % near, s, None))
        out.append(("neighbour", "\\boxed{%s}" % answers[i - 1], s, None))
        if i % 10 == 0:
            out.append(("as-response", s, s, None))   # the bare answer, no box: never correct
        if i % 3 == 0:   # a form that only sympy can decide
            out.append(("sympy", "\\boxed{\\frac{2(%s)}{2}}" % s, s, None))
    for cat, ref, resp, _want in CASES:
        out.append(("case:" + cat, resp, ref, None))
    for row in read_rows(DATA / "train" / "deepscaler_subset803_metareason.json"):
        out.append((box_class(row["solution"]), row["solution"], row["answer"], row["problem"]))
    for row in read_rows(DATA / "test" / "math500_with_solutions_mastts.jsonl"):
        cls = "math500-" + box_class(row["solution"])
        out.append((cls, row["solution"], row["answer"], row["problem"]))
    return out


def record(path: str, workers: int, timeout: float) -> None:
    """Grade the corpus and write [{cls, response, answer, correct, why}] to path. Where this
    verify.py takes the problem text, solutions are graded with their problem."""
    entries = build()
    takes_problem = "problem" in inspect.signature(V.explain).parameters
    t0 = time.perf_counter()
    if takes_problem:
        triples = [(resp, ans, prob) for _, resp, ans, prob in entries]
        infos = V._grade_all(triples, workers, timeout)
    else:
        infos = V._grade_all([(resp, ans) for _, resp, ans, _ in entries], workers, timeout)
    dt = time.perf_counter() - t0
    rows = []
    for (cls, resp, ans, _), info in zip(entries, infos):
        rows.append(dict(cls=cls, response=resp[-300:], answer=str(ans),
                         correct=bool(info["correct"]), why=info["why"]))
    Path(path).write_text(json.dumps(rows, indent=0))
    right = Counter(r["cls"] for r in rows if r["correct"])
    total = Counter(r["cls"] for r in rows)
    print(f"{len(rows)} entries graded in {dt:.1f}s; {dict(V.STATS)}")
    for cls in sorted(total):
        print(f"  {cls:28s} {right[cls]:5d} / {total[cls]:5d} correct")


def diff(path_a: str, path_b: str, show: int) -> int:
    """Print the entries whose verdict or reason differs, matched by (class, answer, response);
    return the number of verdict changes. Entries in only one file are counted apart."""
    a, b = json.loads(Path(path_a).read_text()), json.loads(Path(path_b).read_text())
    later = {}
    for y in b:
        later.setdefault((y["cls"], y["answer"], y["response"]), []).append(y)
    verdicts, reasons, only_a = Counter(), Counter(), 0
    shown = 0
    for x in a:
        same = later.get((x["cls"], x["answer"], x["response"]))
        if not same:
            only_a += 1
            continue
        y = same.pop(0)
        if x["correct"] != y["correct"]:
            verdicts[x["cls"], x["correct"], y["correct"]] += 1
        elif x["why"] != y["why"]:
            reasons[x["cls"]] += 1
        else:
            continue
        if shown < show:
            shown += 1
            print(f"[{x['cls']}] answer {x['answer'][:80]!r} response ...{x['response'][-80:]!r}")
            print(f"    {x['correct']} {x['why'][:150]!r}\n -> {y['correct']} {y['why'][:150]!r}")
    for (cls, was, now), n in sorted(verdicts.items()):
        print(f"verdict {cls}: {was} -> {now}: {n}")
    for cls, n in sorted(reasons.items()):
        print(f"reason only {cls}: {n}")
    only_b = sum(len(v) for v in later.values())
    changed, reworded = sum(verdicts.values()), sum(reasons.values())
    print(f"{len(a)} and {len(b)} entries ({only_a} only in the first, {only_b} only in the "
          f"second): {changed} verdicts and {reworded} reasons differ")
    return changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="grade the corpus into a JSON file")
    rec.add_argument("out")
    rec.add_argument("--workers", type=int, default=2, help="sympy worker processes")
    rec.add_argument("--timeout", type=float, default=20.0, help="seconds per sympy job")
    rec.add_argument("--verify", help="grade with the verify.py in this folder (or this file) "
                                      "instead of the checkout's")
    dif = sub.add_parser("diff", help="compare two recorded files")
    dif.add_argument("a")
    dif.add_argument("b")
    dif.add_argument("--show", type=int, default=30, help="print this many differing entries")
    args = ap.parse_args()
    global V
    if args.cmd == "record":
        V = load_verify(args.verify)
        record(args.out, args.workers, args.timeout)
        V.shutdown()
    else:
        sys.exit(1 if diff(args.a, args.b, args.show) else 0)


if __name__ == "__main__":
    main()
