"""The run folder under a hostile environment: damaged checkpoints, stale history, two writers.

    python -m pytest -q tests/test_runfolder.py

Damage is done as disks and users do it: bytes overwritten in place (zeroed bytes still parse),
files truncated, a folder renamed. Every case must end in one line naming the file, or in a
fallback that says what it skipped; never in training on from damaged weights.
"""
import os
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import runfolder  # noqa: E402
import train  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402

TINY = dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2)


def save(out, step, keep=5, ref=None, ref_dir="") -> str:
    """A real checkpoint of a tiny model, as train.py's save_step writes it."""
    torch.manual_seed(step)
    model = Transformer(ModelConfig(**TINY))
    opt = torch.optim.AdamW(model.parameters())
    cfg = train.Config(out=str(out), keep=keep)
    state = runfolder.TrainerState(step=step, data_pos=4 * step, optimizer=opt.state_dict(), config=asdict(cfg),
                                   rng=torch.get_rng_state())
    return runfolder.save_checkpoint(model, state, str(out), keep, str(out), ref=ref, ref_dir=ref_dir)


def zero_bytes(path, offset=-64, count=32):
    """Overwrite count bytes in place with zeros (offset from the end when negative)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(offset % size)
        f.write(bytes(count))


def refused(capsys, call) -> str:
    """The one line a refused resume ends with (SystemExit's message, or what was printed)."""
    with pytest.raises(SystemExit) as e:
        call()
    message = str(e.value.code)
    assert "Traceback" not in message and "\n" not in message, message
    return message


@pytest.mark.parametrize("name", ["model.safetensors", "trainer_state.pt", "config.json"])
def test_zeroed_bytes_are_caught_and_auto_falls_back(tmp_path, capsys, name):
    first, second = save(tmp_path, 1), save(tmp_path, 2)
    zero_bytes(os.path.join(second, name))
    message = refused(capsys, lambda: runfolder.find_resume(str(tmp_path), second))
    assert f"{second}/{name}: its bytes changed since it was written" in message
    path, state = runfolder.find_resume(str(tmp_path), "auto")
    assert (path, state.step, state.data_pos) == (first, 1, 4)
    assert f"skipping {second}: {second}/{name}: its bytes changed" in capsys.readouterr().out


def test_a_file_removed_or_added_is_caught(tmp_path, capsys):
    path = save(tmp_path, 1)
    Path(path, "stray.bin").write_bytes(b"x")
    assert "stray.bin: not written by the save" in refused(capsys, lambda: runfolder.find_resume(str(tmp_path), path))
    os.remove(os.path.join(path, "stray.bin"))
    os.remove(os.path.join(path, "config.json"))
    assert "config.json: missing" in refused(capsys, lambda: runfolder.find_resume(str(tmp_path), path))


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty"])
def test_an_unreadable_trainer_state_is_one_line_even_when_its_digest_matches(tmp_path, capsys, damage):
    """Damage written before the manifest (a bad disk under torch.save) passes the digests: the
    state must still be read with one line, never a traceback from torch.load."""
    path = save(tmp_path, 1)
    state = Path(path, "trainer_state.pt")
    data = state.read_bytes()
    state.write_bytes({"truncated": data[:len(data) // 2], "random bytes": os.urandom(len(data)),
                       "empty": b""}[damage])
    runfolder.write_manifest(path)
    message = refused(capsys, lambda: runfolder.find_resume(str(tmp_path), path))
    assert f"{path}/trainer_state.pt: unreadable" in message


def test_a_state_whose_step_is_not_its_folders_is_refused(tmp_path, capsys):
    path = save(tmp_path, 2)
    moved = os.path.join(tmp_path, "checkpoints", "step_000003")
    os.rename(path, moved)
    message = refused(capsys, lambda: runfolder.find_resume(str(tmp_path), "auto"))
    assert "none of the 1 checkpoints" in message
    assert "holds step 2, but its folder is step_000003" in capsys.readouterr().out


def test_no_checkpoint_that_verifies(tmp_path, capsys):
    zero_bytes(os.path.join(save(tmp_path, 1), "model.safetensors"))
    message = refused(capsys, lambda: runfolder.find_resume(str(tmp_path), "auto"))
    assert message.startswith("train.py: error: --resume auto: none of the 1 checkpoints")


def test_one_write_into_a_hard_linked_reference_fails_every_checkpoint_that_shares_it(tmp_path, capsys):
    """A stage's reference/ is one copy on disk, linked into each of its checkpoints: damage to it
    is found in each, and --resume auto falls back to a checkpoint that does not share it."""
    torch.manual_seed(9)
    ref = Transformer(ModelConfig(**TINY))
    before = save(tmp_path, 1)                                     # an earlier stage: no reference
    a = save(tmp_path, 2, ref=ref)
    b = save(tmp_path, 3, ref=ref, ref_dir=os.path.join(a, "reference"))
    assert os.stat(os.path.join(a, "reference", "model.safetensors")).st_ino == \
        os.stat(os.path.join(b, "reference", "model.safetensors")).st_ino
    zero_bytes(os.path.join(a, "reference", "model.safetensors"))
    assert runfolder.find_resume(str(tmp_path), "auto")[0] == before
    out = capsys.readouterr().out
    assert f"skipping {b}: {b}/reference/model.safetensors: its bytes changed" in out
    assert f"skipping {a}: {a}/reference/model.safetensors: its bytes changed" in out


def test_a_checkpoint_saved_before_manifests_still_resumes_with_a_note(tmp_path, capsys):
    path = save(tmp_path, 1)
    os.remove(os.path.join(path, runfolder.MANIFEST))
    assert runfolder.find_resume(str(tmp_path), "auto")[1].step == 1
    assert "no manifest.json (saved by an older train.py): its files are not verified" in capsys.readouterr().out


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside_with_the_rows(tmp_path):
    """--resume step_1 while steps 2 and 3 exist: their rows and their checkpoints leave together,
    so a kill before the first new save cannot let --resume auto continue the abandoned history."""
    paths = [save(tmp_path, step) for step in (1, 2, 3)]
    Path(tmp_path, "metrics.jsonl").write_text("".join(f'{{"step": {s}}}\n' for s in (1, 2, 3)))
    cfg = train.Config(out=str(tmp_path), resume=paths[0], keep=5)
    src, state = runfolder.resume_point(cfg, rank=0)
    assert (src, state.step) == (paths[0], 1)
    root = os.path.join(tmp_path, "checkpoints")
    assert runfolder.complete_checkpoints(root) == ["step_000001"]
    assert sorted(os.listdir(root)) == ["step_000001", "step_000002.abandoned", "step_000003.abandoned"]
    assert Path(tmp_path, "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert runfolder.find_resume(str(tmp_path), "auto")[0] == paths[0]
    save(tmp_path, 2)                     # the resumed run saved its step 2, then was resumed from 1 again
    runfolder.resume_point(cfg, rank=0)
    assert "step_000002.abandoned2" in os.listdir(root) and runfolder.complete_checkpoints(root) == ["step_000001"]


def test_a_second_writer_on_one_output_stops_at_once_naming_the_holder(tmp_path):
    """Two processes on one --out: the second stops before touching anything, with the pid."""
    import common
    held = runfolder.claim(str(tmp_path / "run"))
    with pytest.raises(SystemExit) as e:
        runfolder.claim(str(tmp_path / "run"))
    assert f"is held by another process (pid {os.getpid()}) writing the same output" in str(e.value.code)
    held.close()                                   # the first run ended: the folder is free again
    runfolder.claim(str(tmp_path / "run")).close()
    with pytest.raises(SystemExit) as e:
        common.lock_output(str(tmp_path / "no" / "such" / "out.jsonl.lock"), "evaluate.py")
    assert str(e.value.code).startswith("evaluate.py: error: cannot write beside the output:")


def test_train_on_a_held_run_folder_stops_before_loading(tmp_path):
    held = runfolder.claim(str(tmp_path / "run"))
    with pytest.raises(SystemExit) as e:
        train.main(["--out", str(tmp_path / "run"), "--steps", "1"])
    assert "run/.lock is held by another process" in str(e.value.code)
    assert sorted(os.listdir(tmp_path / "run")) == [".lock"]     # nothing built, nothing written
    held.close()


def test_a_full_disk_during_a_save_leaves_the_last_checkpoint_and_says_so(tmp_path, monkeypatch):
    first = save(tmp_path, 1)

    def disk_full(*args, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(SystemExit) as e:
        save(tmp_path, 2)
    message = str(e.value.code)
    assert "writing checkpoint" in message and "No space left on device" in message and "\n" not in message
    assert f"the last complete checkpoint is {first}" in message and "--resume auto" in message
    assert os.listdir(os.path.join(tmp_path, "checkpoints")) == ["step_000001"]   # no .tmp left behind


def test_a_full_disk_elsewhere_is_one_line(capsys):
    from data import clean_exit
    with pytest.raises(SystemExit) as e:
        with clean_exit("polish.py", on_interrupt="the rows finished so far are kept"):
            raise OSError(28, "No space left on device", "out.jsonl.part0")
    assert e.value.code == 2
    assert capsys.readouterr().err == ("polish.py: error: no space left on the device writing out.jsonl.part0; "
                                       "the rows finished so far are kept\n")


def test_ranks_started_with_different_flags_are_refused(tmp_path, monkeypatch):
    """train.py's rank signature gathered from two ranks, one started with another --lr: every
    rank stops naming the flag; a data file at another path with the same content is fine."""
    import common
    data = tmp_path / "a.jsonl"
    data.write_text('{"problem": "1+1", "answer": "2"}\n')
    copy = tmp_path / "b.jsonl"
    copy.write_text(data.read_text())
    mine = runfolder.rank_signature(train.Config(data=str(data)))
    other = runfolder.rank_signature(train.Config(data=str(copy)))
    assert mine == other

    def gather(seen, values):
        seen[:] = [values, runfolder.rank_signature(train.Config(data=str(copy), lr=2e-6))]

    monkeypatch.setattr(common.dist, "all_gather_object", gather)
    with pytest.raises(SystemExit) as e:
        common.refuse_diverged_ranks(mine, 2, "train.py")
    assert str(e.value.code) == ("train.py: error: the ranks were started differently (--lr): rank 0 has --lr 1e-06, "
                                 "rank 1 has 2e-06; start every rank with the same command")
    copy.write_text('{"problem": "1+2", "answer": "3"}\n')

    def gather_other_data(seen, values):
        seen[:] = [values, runfolder.rank_signature(train.Config(data=str(copy)))]

    monkeypatch.setattr(common.dist, "all_gather_object", gather_other_data)
    with pytest.raises(SystemExit) as e:
        common.refuse_diverged_ranks(mine, 2, "train.py")
    assert "(--data content (SHA-256))" in str(e.value.code)


def test_resume_auto_before_the_first_checkpoint_starts_from_step_0(tmp_path, capsys):
    """A run killed before its first save, restarted with --resume auto (as a scheduler does):
    a fresh start, its torn rows dropped, instead of each command sending the user to the other."""
    Path(tmp_path, "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    cfg = train.Config(out=str(tmp_path), resume="auto", model="m")
    assert runfolder.resume_point(cfg, rank=0) == ("m", None)
    assert Path(tmp_path, "metrics.jsonl").read_text() == ""
    assert "no checkpoint in" in capsys.readouterr().out


def test_metrics_lines_that_are_not_rows_are_named_and_a_torn_last_line_is_dropped(tmp_path):
    path = Path(tmp_path, "metrics.jsonl")
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    runfolder.truncate_metrics(str(tmp_path), 5)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    for bad in ("[1, 2]", "not json", '{"step": "3"}'):
        path.write_text('{"step": 1}\n' + bad + '\n{"step": 3}\n')
        with pytest.raises(SystemExit) as e:
            runfolder.truncate_metrics(str(tmp_path), 5)
        assert str(e.value.code).startswith(f"train.py: error: {path}:2: not a metrics row"), e.value.code


def test_a_lost_reference_is_named_not_blamed_on_flags_the_run_never_had(tmp_path):
    cfg = train.Config(schedule="0:16:4,2:12:2")
    state = runfolder.TrainerState(step=3, data_pos=0, optimizer={}, config=asdict(cfg), rng=torch.get_rng_state(),
                                   stage=1, ref_step=2)
    _, refusal = runfolder.resume_changes(state, str(tmp_path), cfg)
    assert refusal == f"{tmp_path}/reference: missing (the checkpoint was saved with it)"
    old = train.Config(schedule="0:16:4,2:12:2", kl_coef=0.0)
    state.config = asdict(old)
    assert "its run had --kl-coef 0 or --keep-initial-ref" in runfolder.resume_changes(state, str(tmp_path), cfg)[1]


def test_out_of_range_seeds_and_worker_counts_are_flag_errors(capsys):
    import verify
    assert train.range_problem(train.Config(seed=2**63)) == f"--seed must be between -2^43 and 2^43, not {2**63}"
    assert train.range_problem(train.Config(seed=2**42)) == ""
    for argv, said in ((["--workers", "100000"], "--workers must be between 1 and"),
                       (["--workers", "0"], "--workers must be between 1 and"),
                       (["--timeout", "0"], "--timeout must be a finite number of seconds > 0, not 0.0"),
                       (["--timeout", "nan"], "--timeout must be a finite number of seconds > 0, not nan")):
        with pytest.raises(SystemExit) as e:
            verify.main(argv + ["--answer", "1", "--response", "\\boxed{1}"])
        assert e.value.code == 2 and said in capsys.readouterr().err


def test_every_minus_sign_reads_as_minus():
    import verify
    for minus in "\u2212\uff0d\u2010\u2011\u2012\ufe63-":
        assert verify.grade(f"\\boxed{{{minus}5}}", "-5"), hex(ord(minus))
        assert not verify.grade(f"\\boxed{{{minus}5}}", "5"), hex(ord(minus))
