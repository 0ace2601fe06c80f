"""train.py fails fast and says where (CPU, seconds):

- 2 gloo ranks under torchrun, rank 1 stalled in sampling by the TRAIN_TEST_STALL_RANK hook:
  both exit within seconds of --collective-timeout-s, each with one line naming its phase;
- a non-finite loss at the first GRPO step stops the run naming the checkpoint; at a later step
  it is skipped as before, until --max-bad-steps;
- non-finite logits while sampling (sample.generate's FloatingPointError) name the checkpoint;
- Ctrl-C ends with one line (exit 130) naming the intact checkpoint and --resume auto, which
  then continues;
- a checkpoint write or prune cut short never leaves a half checkpoint under a name that
  --resume auto would take.
"""
import json
import os
from dataclasses import asdict
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import grpo
import toy
import runfolder
import train
from data import Tokenizer
from model import ModelConfig, Transformer

REPO = Path(__file__).resolve().parents[1]
TINY = dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, torch_dtype="float32")
PROBLEMS = 16


def save(model, opt, cfg, step: int, data_pos: int, tok_dir: str) -> str:
    """runfolder.save_checkpoint as train.py's save_step calls it."""
    state = runfolder.TrainerState(step=step, data_pos=data_pos, optimizer=opt.state_dict(), config=asdict(cfg),
                                   rng=torch.get_rng_state())
    return runfolder.save_checkpoint(model, state, cfg.out, cfg.keep, tok_dir)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A tiny model folder with toy.py's tokenizer and 16 addition problems: (model_dir, data_path)."""
    tmp = tmp_path_factory.mktemp("task")
    model_dir = str(tmp / "model")
    toy.write_tokenizer(model_dir)
    tok = Tokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    vocab = (tok.vocab_size + 63) // 64 * 64
    Transformer(ModelConfig(**dict(TINY, vocab_size=vocab, eos_token_id=[tok.eos_id]))).save_pretrained(model_dir)
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)}) + "\n"
                            for i in range(PROBLEMS)))
    return model_dir, str(data)


def flags(task, out, *extra) -> list[str]:
    """A run of a few 4-prompt steps with nothing on a schedule but what `extra` turns on."""
    model_dir, data = task
    return ["--model", model_dir, "--data", data, "--out", str(out), "--prompts-per-step", "4", "--samples", "2",
            "--ctx", "4", "--steps", "3", "--updates-per-step", "1", "--lr", "1e-3", "--kl-coef", "0",
            "--micro-tokens", "200", "--no-grad-ckpt", "--eval-every", "0", "--save-every", "0", "--sft-steps", "0",
            "--show-every", "1000", *extra]


def main_exit(argv) -> SystemExit:
    """train.main(argv) in this process on one thread; the SystemExit it must end with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped train.main")
    except SystemExit as e:
        return e
    finally:
        torch.set_num_threads(threads)
    pytest.fail("train.main returned instead of stopping")


def rows(out) -> list[dict]:
    path = Path(out) / "metrics.jsonl"
    return [json.loads(line) for line in open(path)] if path.exists() else []


def nan_loss_from_step(first: int):
    """grpo.grpo_token_loss, made NaN from GRPO step `first` on (as a broken checkpoint would)."""
    real = grpo.grpo_token_loss

    def loss(*args, **kw):
        tok_loss, parts = real(*args, **kw)
        if train.PROGRESS.step >= first:
            tok_loss = tok_loss * float("nan")
        return tok_loss, parts
    return loss


# ----------------------------------------------------------------------------- a rank stops answering

def kill_job(job: subprocess.Popen):
    """SIGKILL torchrun and its workers, which run in sessions of their own (found through /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):   # a process that ended meanwhile
            continue
        if parent == job.pid:
            os.kill(int(stat.parent.name), signal.SIGKILL)
    job.kill()
    job.communicate()


def test_a_stalled_rank_ends_every_rank_within_the_timeout_naming_phases(task, tmp_path):
    """Rank 1 sleeps when it starts sampling; rank 0 waits at the next collective. With a 4 s
    collective timeout rank 0 exits naming its phase, torchrun stops rank 1 (SIGTERM), which names
    sampling, and the whole job is over in seconds instead of the hour of the default."""
    t0 = time.time()
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                            str(REPO / "train.py"), *flags(task, tmp_path / "run", "--collective-timeout-s", "4")],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1", train.STALL_ENV: "1"})
    try:
        _, err = job.communicate(timeout=60)   # measured: 8 s on an idle 2-core machine, 27 s on a busy one
    except subprocess.TimeoutExpired:
        kill_job(job)
        pytest.fail(f"still running after {time.time() - t0:.0f} s: a stalled rank hangs the job")
    assert job.returncode != 0
    assert (f"train.py: rank 1 stopped by SIGTERM during sampling of step 1: the last checkpoint in "
            f"{tmp_path / 'run' / 'checkpoints'} is intact; the same command with --resume auto continues "
            f"from it\n") in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("train.py: error: rank 0 lost the other ranks")]
    assert len(lines) == 1, err[-3000:]
    assert "during sampling of step 1 (no answer within --collective-timeout-s 4," in lines[0]


def test_fewer_problems_than_prompts_per_step_is_said_once(task, tmp_path, capsys):
    """3 problems and --prompts-per-step 4: each step draws a problem twice, said at start-up."""
    model_dir, data = task
    three = tmp_path / "three.jsonl"
    three.write_text("".join(Path(data).read_text().splitlines(keepends=True)[:3]))
    train.main(flags((model_dir, str(three)), tmp_path / "run", "--steps", "1"))
    err = capsys.readouterr().err
    assert err.count("note: 3 usable problems, fewer than --prompts-per-step 4: every step samples some of "
                     "them more than once; lower --prompts-per-step to at most 3 to avoid it") == 1


def test_collective_timeout_default_and_bounds():
    assert train.Config().collective_timeout_s == 3600.0
    assert train.range_problem(train.Config(collective_timeout_s=0)) == "--collective-timeout-s must be > 0.0, not 0"


# ----------------------------------------------------------------------------- non-finite numbers

def test_non_finite_first_step_names_the_checkpoint(task, tmp_path, monkeypatch):
    """A NaN loss at step 1 stops the run at once with one line naming --model; no row is written."""
    monkeypatch.setattr(grpo, "grpo_token_loss", nan_loss_from_step(1))
    e = main_exit(flags(task, tmp_path / "run"))
    message = str(e.code)
    assert message.startswith("train.py: error: the first GRPO step gave a non-finite loss (nan)"), message
    assert f"with the weights of {task[0]}:" in message and "\n" not in message
    assert rows(tmp_path / "run") == []


def test_non_finite_later_steps_are_skipped_until_max_bad_steps(task, tmp_path, monkeypatch):
    """NaN from step 2 on: steps 2 and 3 are logged as skipped, and --max-bad-steps 2 stops the
    run after step 3 with its own message (the first-step rule is for the first step only)."""
    monkeypatch.setattr(grpo, "grpo_token_loss", nan_loss_from_step(2))
    e = main_exit(flags(task, tmp_path / "run", "--max-bad-steps", "2"))
    assert str(e.code).startswith("stopping: 2 steps in a row had a non-finite gradient (last step 3)"), e.code
    assert [(r["step"], r["skipped"]) for r in rows(tmp_path / "run")] == [(1, 0), (2, 1), (3, 1)]


def test_non_finite_logits_while_sampling_name_the_checkpoint(task, tmp_path, monkeypatch):
    """sample.generate raises FloatingPointError on non-finite logits: one line naming the phase
    and the checkpoint, not a traceback."""
    def broken_generate(*args, **kw):
        raise FloatingPointError("logits are not finite at decode step 3")

    monkeypatch.setattr(train, "generate", broken_generate)
    e = main_exit(flags(task, tmp_path / "run"))
    assert str(e.code) == (f"train.py: error: non-finite logits during sampling of step 1 from the weights of "
                           f"{task[0]}: logits are not finite at decode step 3")


# ----------------------------------------------------------------------------- Ctrl-C and checkpoints

def test_ctrl_c_names_the_intact_checkpoint_and_resume_continues(task, tmp_path, monkeypatch, capsys):
    """Ctrl-C in step 2's sampling: exit 130 with one line naming <out>/checkpoints and --resume
    auto; resuming then runs step 2 from step 1's checkpoint."""
    real = train.rollout

    def interrupted_in_step_2(*args, **kw):
        if train.PROGRESS.step == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        mp.setattr(train, "rollout", interrupted_in_step_2)
        e = main_exit(flags(task, out, "--save-every", "1"))
    assert e.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"train.py: interrupted: the last checkpoint in {out / 'checkpoints'} is intact; "
                   "the same command with --resume auto continues from it"]
    assert runfolder.complete_checkpoints(str(out / "checkpoints")) == ["step_000001"]
    train.main(flags(task, out, "--save-every", "1", "--steps", "2", "--resume", "auto"))
    assert [r["step"] for r in rows(out)] == [1, 2]


def checkpoint_files(path) -> dict:
    return {name: (Path(path) / name).read_bytes() for name in sorted(os.listdir(path))}


def test_a_cut_short_checkpoint_write_or_prune_leaves_the_last_whole_one(tmp_path, monkeypatch):
    """Ctrl-C while step 2's trainer state is written: step 1 stays as it was and is what --resume
    auto takes. Ctrl-C while step 1 is being deleted (--keep 1) after step 2 is in place: no
    half-deleted folder keeps a checkpoint's name. The next save clears what both left."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**dict(TINY, vocab_size=64)))
    opt = torch.optim.AdamW(model.parameters())
    cfg = train.Config(out=str(tmp_path), keep=1, resume="auto")
    root = tmp_path / "checkpoints"
    save(model, opt, cfg, 1, 4, tok_dir=str(tmp_path))
    first = checkpoint_files(root / "step_000001")

    def interrupt(*args, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(torch, "save", interrupt)
        with pytest.raises(KeyboardInterrupt):
            save(model, opt, cfg, 2, 8, tok_dir=str(tmp_path))
    assert runfolder.find_resume(cfg.out, cfg.resume)[0] == str(root / "step_000001")
    assert checkpoint_files(root / "step_000001") == first

    real_rmtree = shutil.rmtree

    def rmtree_cut_short(path, *args, **kw):
        """Deleting a whole checkpoint: remove its trainer state, then Ctrl-C."""
        if os.path.isfile(os.path.join(path, "trainer_state.pt")):
            os.remove(os.path.join(path, "trainer_state.pt"))
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(shutil, "rmtree", rmtree_cut_short)
        with pytest.raises(KeyboardInterrupt):
            save(model, opt, cfg, 2, 8, tok_dir=str(tmp_path))
    names = runfolder.complete_checkpoints(str(root))
    assert names == ["step_000002"]
    assert all(os.path.isfile(root / name / "trainer_state.pt") for name in names)
    assert runfolder.find_resume(cfg.out, cfg.resume)[0] == str(root / "step_000002")
    save(model, opt, cfg, 3, 12, tok_dir=str(tmp_path))
    assert os.listdir(root) == ["step_000003"]


def test_a_kv_budget_below_one_row_of_the_longest_stage_is_refused_before_step_1(task, tmp_path, capsys):
    """The budget is fixed for the whole run, so one that cannot hold a sequence of a later,
    longer stage must stop the run at start-up, not at the switch hours later."""
    with pytest.raises(SystemExit) as e:
        argv = flags(task, tmp_path / "run", "--kv-gib", "1e-6", "--schedule", "0:4:2,1:4096:2")
        for flag in ("--ctx", "--samples"):   # the schedule sets both
            i = argv.index(flag)
            del argv[i:i + 2]
        train.main(argv)
    message = str(e.value.code)
    assert "no sequence of the longest stage fits" in message and "ctx 4096" in message, message
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()


def test_resume_from_a_folder_that_is_no_checkpoint_says_so(task, tmp_path):
    (tmp_path / "not_a_checkpoint").mkdir()
    with pytest.raises(SystemExit) as e:
        train.main(flags(task, tmp_path / "run", "--resume", str(tmp_path / "not_a_checkpoint")))
    assert "not a checkpoint of train.py (no trainer_state.pt)" in str(e.value.code)


def test_a_save_after_resuming_from_an_earlier_checkpoint_replaces_the_later_ones(task, tmp_path):
    """Resumed from step 1 while steps 2 and 3 exist: the new step 2 must not be pruned in favour
    of the old run's step 3, which --resume auto would then pick."""
    m = Transformer.from_pretrained(task[0])
    opt = torch.optim.AdamW(m.parameters())
    cfg = train.Config(out=str(tmp_path), keep=3)
    for step in (1, 2, 3):
        save(m, opt, cfg, step, 0, task[0])
    cfg.keep = 1
    save(m, opt, cfg, 2, 7, task[0])          # the run resumed from step 1 saves its step 2
    root = tmp_path / "checkpoints"
    assert runfolder.complete_checkpoints(str(root)) == ["step_000002"]
    assert torch.load(root / "step_000002" / "trainer_state.pt", weights_only=False)["data_pos"] == 7
