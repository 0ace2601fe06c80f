"""polish.py's output files: the part each rank appends its rows to, read back after a crash,
and the merge that writes OUT whole.

    OUT-stem.rankR-of-W.jsonl     one JSON line per problem that finished (a row, with `polish`),
                                  or per problem between guided rounds (a `pending` line)

A rank appends with one os.write per line, so a kill tears at most the last line: reading drops
it, and cuts it off the rank's own part before appending again. A restart reads OUT and every
part, of any world size: a problem with a row is done, one with only pending lines resumes its
guided pass from the furthest. The merge writes every row, in input order, to OUT.tmp and
renames it into place once every problem has one, then removes the parts. What a row and a
pending line hold is polish.py's (PolishMeta, Tally).
"""
import json
import os
import re
import sys

from data import DataError


def part_path(out: str, rank: int, world: int) -> str:
    stem, ext = os.path.splitext(out)
    return f"{stem}.rank{rank}-of-{world}{ext or '.jsonl'}"


def part_files(out: str) -> list[str]:
    """Every rank part of OUT, of any world size."""
    folder, (stem, ext) = os.path.dirname(out) or ".", os.path.splitext(os.path.basename(out))
    pat = re.compile(re.escape(stem) + r"\.rank\d+-of-\d+" + re.escape(ext or ".jsonl") + r"\Z")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if pat.match(f)) \
        if os.path.isdir(folder) else []


def line_id(line: dict):
    """The problem id of a part-file line: a row's polish.id or a pending line's id; None if neither."""
    meta = line.get("polish") or line.get("pending") or {}
    return meta.get("id") if isinstance(meta, dict) else None


def read_rows(path: str, repair: bool = False) -> list[dict]:
    """Lines of a file polish.py wrote: rows, and (in parts) pending lines. A torn last line (no
    newline, or not JSON) is dropped, and with repair cut off the file; a bad line anywhere else
    is a DataError naming file:line."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    torn, rows, good = lines.pop(), [], 0        # torn == b"" when the file ends with a newline
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(line_id(row), str):
                raise ValueError
        except ValueError:
            if i == len(lines) - 1 and not torn:     # a last line of garbage (e.g. NULs after a crash)
                torn = line
                break
            raise DataError(f"{path}:{i + 1}: not a polish.py row: {line[:80]!r}") from None
        rows.append(row)
        good += len(line) + 1
    if torn:
        print(f"{path}: dropping a torn last line ({len(torn)} bytes)", file=sys.stderr)
        if repair:
            os.truncate(path, good)
    return rows


def rounds_of(counts) -> int:
    """Guided rounds a pending line's counts record (a Tally, or a dict when read without one)."""
    return counts["guided_rounds"] if isinstance(counts, dict) else counts.guided_rounds


def read_outputs(out: str, known: set, own: str | None = None, tally=dict) -> tuple[dict, dict]:
    """Over OUT and every part (any world size): id -> finished row, and id -> tally(**counts) of
    the furthest pending line of each problem without a row (polish.py passes its Tally). `own`
    (this rank's part) is repaired."""
    rows, pending = {}, {}
    for path in [out] + part_files(out):
        for r in read_rows(path, repair=path == own):
            pid = line_id(r)
            if pid not in known:
                raise DataError(f"{path}: row {pid!r} matches no problem of --data; "
                                "was it made from another file? Move it away or choose another --out")
            if "polish" in r:
                rows.setdefault(pid, r)
                continue
            try:
                counts = tally(**{k: v for k, v in r["pending"].items() if k != "id"})
            except TypeError:
                raise DataError(f"{path}: pending line of {pid!r} is not one polish.py wrote: "
                                f"{sorted(r['pending'])}") from None
            if pid not in pending or rounds_of(counts) > rounds_of(pending[pid]):
                pending[pid] = counts
    return rows, {pid: t for pid, t in pending.items() if pid not in rows}


def merge(out: str, ids: list, dropped: set = frozenset(), hint: str = "") -> list[dict]:
    """All rows in input order, written to OUT atomically once every problem has one (the
    `dropped` ones, over the prompt budget, need none); parts removed."""
    got, _ = read_outputs(out, set(ids))           # id -> row; pending lines do not count here
    missing = [i for i in ids if i not in got and i not in dropped]
    if missing:
        raise DataError(f"{out}: {len(missing)} of {len(ids)} problems have no row yet (first: {missing[0]})"
                        f"{hint}; run polish.py again with the same flags to finish them")
    rows = [got[i] for i in ids if i in got]
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(out + ".tmp", out)
    for p in part_files(out):
        os.remove(p)
    return rows
