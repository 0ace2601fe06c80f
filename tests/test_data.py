"""Dataset loading: formats, field mapping, validation errors, dedup, shuffling, sharding."""
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from data import DataError, dedupe, epoch_order, load_records, main, shard

SHARED = Path(__file__).resolve().parents[2] / "shared"


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_json_list_jsonl_and_folder(tmp_path):
    rows = [{"problem": "1+1?", "answer": "2", "solution": "", "difficulty": 1.0},
            {"question": "2+2?", "answer": 4}]
    a = load_records(write(tmp_path / "a.json", json.dumps(rows)))
    assert [r["problem"] for r in a] == ["1+1?", "2+2?"] and a[1]["answer"] == "4"
    assert a[0]["difficulty"] == 1.0 and "question" not in a[1]
    b = load_records(write(tmp_path / "b.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n"))
    assert a == b
    assert len(load_records(str(tmp_path))) == 4  # the folder: a.json then b.jsonl


def test_field_mapping_gsm8k_amc_lists(tmp_path):
    def load_records_from(rows):
        return load_records(write(tmp_path / "x.json", json.dumps(rows)))

    gsm = {"question": "Eggs?", "answer": "16 - 3 = <<16-3=13>>13 eggs\n#### 1,300"}
    rec = load_records_from([gsm])[0]
    assert (rec["answer"], rec["solution"]) == ("1,300", "16 - 3 = <<16-3=13>>13 eggs")
    assert load_records_from([{"problem": "p", "answer": None, "solution": "work\n#### 18"}])[0]["answer"] == "18"
    assert load_records_from([{"problem": "p", "answer": 27.0}])[0]["answer"] == "27.0"  # kept as written
    rec = load_records_from([{"problem": "p", "answer": ["0.01\n", "0.02\n"], "solution": ["a", "b"]}])[0]
    assert rec["answer"] == "0.01" and rec["answers"] == ["0.01", "0.02"] and rec["solution"] == "a\n\nb"


@pytest.mark.parametrize("text,message", [
    ('{"problem": "ok", "answer": "1"}\n{"problem": "", "answer": "2"}\n', r"x.jsonl:2: field 'problem'"),
    ('{"problem": "ok", "answer": "1"}\n\n{"problem": "q"}\n', r"x.jsonl:3: field 'answer' is missing"),
    ('{"problem": "ok", "answer": "1"}\n{"problem": \n', r"x.jsonl:2: not valid JSON"),
    ('["just a string"]', r"x.jsonl row 0: expected an object"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, text, message):
    path = write(tmp_path / "x.jsonl", text)
    with pytest.raises(DataError, match=message):
        load_records(path)


def test_skip_bad_rows_lists_them(tmp_path, capsys):
    path = write(tmp_path / "x.jsonl", '{"problem": "a", "answer": "1"}\n{"problem": "b"}\n{"problem": "c", "answer": "3"}\n')
    assert [r["problem"] for r in load_records(path, skip_bad=True)] == ["a", "c"]
    err = capsys.readouterr().err
    assert "skipped 1 bad rows of 3" in err and "x.jsonl:2: field 'answer'" in err


def test_missing_inputs_and_parquet_without_pyarrow(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no such file"):
        load_records(str(tmp_path / "nope.json"))
    with pytest.raises(DataError, match="holds no .json"):
        load_records(str(tmp_path))
    import builtins
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError())
                        if name.startswith("pyarrow") else real_import(name, *a, **k))
    with pytest.raises(DataError, match="pip install pyarrow"):
        load_records(write(tmp_path / "t.parquet", ""))


def test_parquet_when_pyarrow_is_installed(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"problem": ["p1", "p2"], "answer": ["1", "2"], "solution": ["", "s"]}),
                   tmp_path / "train-00000.parquet")
    assert [r["answer"] for r in load_records(str(tmp_path))] == ["1", "2"]


def test_dedupe_shuffle_shard():
    recs = [{"problem": p} for p in ["Find $x$.", "find  x.", "Find y.", "FIND $X$ ."]]
    assert [r["problem"] for r in dedupe(recs)] == ["Find $x$.", "Find y."]
    a, b = epoch_order(100, seed=1, epoch=0), epoch_order(100, seed=1, epoch=1)
    assert sorted(a) == list(range(100)) and a != b and a == epoch_order(100, seed=1, epoch=0)
    parts = [shard(list(range(10)), r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(10)) and parts[0] == [0, 3, 6, 9]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is not present")
def test_every_shared_dataset_loads_and_stats_cli(capsys):
    for f in sorted((SHARED / "data").glob("*/*.json*")):
        recs = load_records(str(f), skip_bad=True)
        assert recs and all(r["problem"] and r["answer"] for r in recs), f
    main(["stats", str(SHARED / "data/train/deepscaler_subset803_metareason.json"),
          "--model", str(SHARED / "tokenizers/deepseek-r1-distill-qwen")])
    out = capsys.readouterr().out
    assert "803 rows" in out and "empty solutions: 0 (0.0%)" in out and "mean 524" in out


def test_requires_think_and_reference_answers():
    from data import reference_answers, requires_think
    assert requires_think("auto", "deepseek-r1") and not requires_think("auto", "chatml")
    assert not requires_think("auto", None)
    assert requires_think("yes", "chatml") and not requires_think("no", "deepseek-r1")
    with pytest.raises(ValueError, match="think must be one of"):
        requires_think("maybe", "chatml")
    assert reference_answers({"answer": "1", "answers": ["1", "1.0"]}) == ["1", "1.0"]
    assert reference_answers({"answer": "1"}) == "1"


def test_clean_exit_turns_input_errors_and_ctrl_c_into_one_line(capsys, monkeypatch):
    from data import clean_exit
    from model import ModelFileError
    monkeypatch.delenv("DEBUG", raising=False)
    with pytest.raises(SystemExit) as e, clean_exit("prog"):
        raise ModelFileError("m/config.json: not JSON (line 1)")
    assert e.value.code == 2 and capsys.readouterr().err == "prog: error: m/config.json: not JSON (line 1)\n"
    with pytest.raises(SystemExit) as e, clean_exit("prog", "rows so far are kept"):
        raise KeyboardInterrupt
    assert e.value.code == 130 and capsys.readouterr().err == "prog: interrupted: rows so far are kept\n"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e, clean_exit("prog", "rows so far are kept; run the same command"):
        os.kill(os.getpid(), signal.SIGTERM)      # a scheduler's stop: as Ctrl-C, with 128 + 15
        time.sleep(5)
    assert e.value.code == 143
    assert capsys.readouterr().err == "prog: stopped by SIGTERM: rows so far are kept; run the same command\n"
    assert signal.getsignal(signal.SIGTERM) == before
    with pytest.raises(ZeroDivisionError), clean_exit("prog"):   # a bug is not an input error
        1 / 0
    monkeypatch.setenv("DEBUG", "1")
    with pytest.raises(DataError), clean_exit("prog"):
        raise DataError("x")


@pytest.mark.parametrize("answer,said", [
    ([[2, -2]], "holds a nested list [2, -2]"),            # joined it would read as 2 - 2 = 0
    ([["2", "-2"], "2"], "holds a nested list ['2', '-2']"),
    ({"value": 2}, "holds a nested dict"),
])
def test_an_answer_no_grader_can_hold_to_is_refused_with_file_and_line(tmp_path, answer, said):
    path = write(tmp_path / "x.jsonl", json.dumps({"problem": "p", "answer": "1"}) + "\n"
                 + json.dumps({"problem": "q", "answer": answer}) + "\n")
    with pytest.raises(DataError, match=re.escape(f"x.jsonl:2: field 'answer' {said}")):
        load_records(path)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_number_answer_is_refused(tmp_path, literal):
    path = write(tmp_path / "x.jsonl", '{"problem": "p", "answer": %s}\n' % literal)
    with pytest.raises(DataError, match="x.jsonl:1: field 'answer' is .*, not a finite number"):
        load_records(path)


def test_a_nan_reference_never_matches_the_text_nan():
    import verify
    assert not verify.grade("\\boxed{NaN}", float("nan"))
    assert verify.grade("\\boxed{\\infty}", float("inf"))      # an infinite float is infinity, as before


def test_a_huge_line_is_not_read_whole(tmp_path, monkeypatch):
    import data
    monkeypatch.setattr(data, "MAX_LINE", 1000)
    path = write(tmp_path / "x.jsonl", json.dumps({"problem": "p", "answer": "1"}) + "\n" + "0" * 5000)
    with pytest.raises(DataError, match=r"x.jsonl:2: a line over 0 MiB \(starts b'0000"):
        load_records(path)
    monkeypatch.setattr(data, "MAX_JSON_LIST", 10)
    with pytest.raises(DataError, match="a JSON list of 0.0 GiB, over the 0 GiB read whole; write it as JSONL"):
        load_records(write(tmp_path / "y.json", json.dumps([{"problem": "p", "answer": "1"}])))


def test_a_fifo_or_device_is_not_a_regular_file(tmp_path):
    import os
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero"):
        with pytest.raises(DataError, match="not a regular file or a folder"):
            load_records(path)
