"""toy.py: the held-out split is disjoint and fixed, and a killed set-up leaves nothing half-written."""
import json
import os

import pytest

import toy


def test_heldout_triples_are_never_trained_on():
    train = toy.make_task(10 ** toy.TERMS - toy.HELDOUT_SIZE, seed=1, split="train")
    heldout = toy.make_task(toy.HELDOUT_SIZE, seed=1, split="heldout")
    train_problems = {r["problem"] for r in train}
    heldout_problems = {r["problem"] for r in heldout}
    assert len(train_problems) == len(train)              # every training triple exactly once
    assert len(heldout_problems) == toy.HELDOUT_SIZE
    assert not train_problems & heldout_problems
    # the split does not depend on the seed that orders the rows
    assert {r["problem"] for r in toy.make_task(toy.HELDOUT_SIZE, seed=7, split="heldout")} == heldout_problems
    # every digit appears in every place in training: a rule on the digits (say, the number they
    # spell is a multiple of 5) would hold out whole classes, and the held-out steps would be new
    terms = [r["problem"][len("What is "):-1].split(" + ") for r in train]
    for place in range(toy.TERMS):
        assert {t[place] for t in terms} == set("0123456789")


def test_solutions_are_chains_with_one_box_in_four():
    rows = toy.make_task(8, seed=1)
    first = rows[0]
    digits = [int(x) for x in first["problem"][len("What is "):-1].split(" + ")]
    assert first["answer"] == str(sum(digits))
    assert first["solution"].startswith(f"{digits[0]}+{digits[1]}={digits[0] + digits[1]}\n")
    assert first["solution"].endswith(f"</think>\n\nThe answer is \\boxed{{{sum(digits)}}}.")
    boxed = ["\\boxed" in r["solution"] for r in rows]
    assert boxed == [i % toy.BOX_EVERY == 0 for i in range(8)]


def test_prepare_killed_while_writing_leaves_no_partial_dataset(tmp_path, monkeypatch):
    """A crash in the middle of writing train.jsonl leaves no train.jsonl; the next call builds it whole."""
    real_dumps = json.dumps
    calls = []

    def dumps_then_crash(obj, *args, **kw):
        calls.append(1)
        if len(calls) > 63:
            raise KeyboardInterrupt   # what Ctrl-C or a kill looks like from inside the loop
        return real_dumps(obj, *args, **kw)

    monkeypatch.setattr(toy.json, "dumps", dumps_then_crash)
    with pytest.raises(KeyboardInterrupt):
        toy.prepare(str(tmp_path), seed=0)
    assert os.path.isfile(tmp_path / "toy_model" / "config.json")
    assert not os.path.exists(tmp_path / "train.jsonl")
    monkeypatch.setattr(toy.json, "dumps", real_dumps)
    _, train_path, heldout_path = toy.prepare(str(tmp_path), seed=0)
    with open(train_path) as f:
        assert len(f.readlines()) == 10 ** toy.TERMS - toy.HELDOUT_SIZE
    with open(heldout_path) as f:
        assert len(f.readlines()) == toy.HELDOUT_SIZE


def test_prepare_killed_while_building_the_model_leaves_no_model_folder(tmp_path, monkeypatch):
    real_build = toy.build_model_dir

    def build_then_crash(path, seed=0):
        toy.write_tokenizer(path)     # part of the folder exists when the crash comes
        raise KeyboardInterrupt

    monkeypatch.setattr(toy, "build_model_dir", build_then_crash)
    with pytest.raises(KeyboardInterrupt):
        toy.prepare(str(tmp_path), seed=0)
    assert not os.path.exists(tmp_path / "toy_model")
    monkeypatch.setattr(toy, "build_model_dir", real_build)
    model_dir, _, _ = toy.prepare(str(tmp_path), seed=0)
    assert os.path.isfile(os.path.join(model_dir, "model.safetensors"))
    assert not os.path.exists(tmp_path / "toy_model.tmp")
