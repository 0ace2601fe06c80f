"""train.py --schedule: stages parsed and refused up front, a switch resets the reference and
AdamW, a resume at or after a switch (or with another KV budget) is exact, a changed recipe is
named or refused, the plot marks the switches."""
import copy
import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import runfolder
import train
from model import ModelConfig, Transformer

REPO = Path(__file__).resolve().parents[1]
DEEPSCALER = "0:8192:8,1040:16384:16,1520:24576:16"


@pytest.mark.parametrize("argv,message", [
    (["--schedule", "0:8192"], "--schedule entry 1 '0:8192' must be FIRST_STEP:CTX:SAMPLES, three integers"),
    (["--schedule", "0:8192:8,x:1:2"], "--schedule entry 2 'x:1:2' must be FIRST_STEP:CTX:SAMPLES"),
    (["--schedule", "5:8192:8"], "entry 1 '5:8192:8': the first stage must start at step 0, not 5"),
    (["--schedule", "0:8192:8,1040:16384:16,1000:24576:16"],
     "entry 3 '1000:24576:16': steps must increase, and 1000 is not after 1040"),
    (["--schedule", "0:8192:8,1040:16384:16,1040:24576:16"], "entry 3 '1040:24576:16': steps must increase"),
    (["--schedule", "0:0:8"], "entry 1 '0:0:8': ctx must be >= 1, not 0"),
    (["--schedule", "0:8192:8,10:16384:1"], "entry 2 '10:16384:1': samples must be >= 2, not 1"),
    (["--schedule", "0:24:8", "--ctx", "24"], "--schedule sets ctx and samples per stage: drop --ctx"),
])
def test_bad_schedule_is_explained(argv, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_config(argv)
    assert message in capsys.readouterr().err


def test_stages_and_the_one_stage_default():
    """Without --schedule, --ctx and --samples are one stage from step 0; with it, the config shows
    the first stage's, and stage_at picks the stage of the step after `done` completed ones."""
    assert runfolder.schedule_of(train.Config()) == [runfolder.Stage(0, 8192, 8)]
    cfg, _ = train.parse_config(["--schedule", DEEPSCALER])
    stages = runfolder.schedule_of(cfg)
    assert (cfg.ctx, cfg.samples, runfolder.fmt_stages(stages)) == (8192, 8, DEEPSCALER)
    assert [runfolder.stage_at(stages, d) for d in (0, 1039, 1040, 1519, 1520, 9999)] == [0, 0, 1, 1, 2, 2]
    assert runfolder.describe_stages(stages, 1200) == ("stages: 0) 8192 tokens x 8 samples, steps 1-1040; 1) 16384 "
                                                   "tokens x 16 samples, steps 1041-1200; 2) 24576 tokens x 16 "
                                                   "samples, after --steps 1200, not reached")


TINY_MODEL = dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("keep", [False, True])
def test_a_switch_resets_reference_and_optimizer_unless_kept(keep):
    """enter_stage at 2 completed steps of 0:16:4,2:12:2: ctx and samples change; by default the
    reference becomes the policy and AdamW is new, with --keep-initial-ref --keep-optimizer neither."""
    torch.manual_seed(0)
    policy = Transformer(ModelConfig(**TINY_MODEL))
    initial = copy.deepcopy(policy).requires_grad_(False)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)
    base = train.Config(schedule="0:16:4,2:12:2", keep_initial_ref=keep, keep_optimizer=keep)
    run = train.Run(cfg=base, rank=0, world=1, device=torch.device("cpu"), amp=False, tok=None,
                    require_think=False, stages=runfolder.schedule_of(base))
    models = train.Models(policy=policy, ddp=policy, sampler=policy, ref=copy.deepcopy(initial))
    opt = torch.optim.AdamW(policy.parameters())
    assert runfolder.enter_stage(run, models, opt, base, 1) is opt and run.stage == 0
    new = runfolder.enter_stage(run, models, opt, base, 2)
    assert (run.stage, run.cfg.ctx, run.cfg.samples) == (1, 12, 2)
    assert (new is opt) == keep
    follows = initial if keep else policy
    assert all(torch.equal(a, b) for a, b in zip(models.ref.parameters(), follows.parameters()))
    assert models.ref_step == (0 if keep else 2)


@pytest.fixture
def run_train(train_cli):
    """train.py in this process (conftest's train_cli), asserting that it succeeded or failed."""
    def run(tmp_path, *args, ok=True):
        r = train_cli(tmp_path, *args)
        assert (r.returncode == 0) == ok, r.stderr[-3000:]
        return r
    return run


def metric_rows(path):
    """A run's metric rows without the timings."""
    drop = ("sample_s", "grade_s", "train_s", "step_s", "tok_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in open(path)]


# test_train.py's TINY recipe, with a switch after step 2 instead of --ctx / --samples. The KV budget
# of the resumed runs holds 2-3 rows where the first run's held all 16-32: the resumed runs must
# keep the first one's, or they sample different tokens.
SCHEDULED = ["--schedule", "0:16:4,2:12:2", "--prompts-per-step", "8", "--temperature", "0.7", "--sft-steps", "4",
             "--sft-batch", "16", "--sft-lr", "3e-3", "--lr", "1e-3", "--weight-decay", "0", "--updates-per-step",
             "2", "--kl-coef", "0.05", "--entropy-coef", "0.01", "--old-logp", "recompute", "--micro-tokens", "4096",
             "--no-grad-ckpt", "--eval-every", "0", "--save-every", "1", "--keep", "4", "--show-every", "100"]
SMALL_KV = ["--kv-gib", "0.0004"]


def test_resume_at_and_after_a_switch_is_exact(tmp_path, run_train):
    """4 steps straight == 2 steps + --resume auto for 2 (resuming exactly at the switch) == a's step-3
    checkpoint resumed for 1 (inside the second stage, its reference read from the checkpoint), both
    resumes under another KV budget: identical weights, AdamW state and metric rows."""
    from safetensors.torch import load_file
    a = run_train(tmp_path, *SCHEDULED, "--steps", "4", "--out", "a")
    assert "stage 1 from step 3: ctx 16 -> 12, samples 4 -> 2, KL reference = the policy after step 2, " \
           "fresh AdamW" in a.stdout and "step     3 stage 1 |" in a.stdout
    run_train(tmp_path, *SCHEDULED, "--steps", "2", "--out", "b")
    b = run_train(tmp_path, *SCHEDULED, "--steps", "4", "--out", "b", "--resume", "auto", *SMALL_KV)
    assert "--kv-gib 0 -> 0.0004 ignored" in b.stdout
    run_train(tmp_path, *SCHEDULED, "--steps", "4", "--out", "c", "--resume", "a/checkpoints/step_000003", *SMALL_KV)

    def ckpt(run, step):
        return tmp_path / run / f"checkpoints/step_{step:06d}"

    wa = load_file(ckpt("a", 4) / "model.safetensors")
    for other in ("b", "c"):
        wo = load_file(ckpt(other, 4) / "model.safetensors")
        assert all(torch.equal(wa[k], wo[k]) for k in wa), other
    rows = metric_rows(tmp_path / "a/metrics.jsonl")
    assert rows == metric_rows(tmp_path / "b/metrics.jsonl")
    assert [rows[3]] == metric_rows(tmp_path / "c/metrics.jsonl")
    assert [(r["stage"], r["ctx"], r["samples"]) for r in rows] == [(0, 16, 4)] * 2 + [(1, 12, 2)] * 2
    assert rows[3]["kl"] > 0 and all(r["grad_norm"] > 0 for r in rows)
    sa, sb = (torch.load(ckpt(d, 4) / "trainer_state.pt", weights_only=False) for d in ("a", "b"))
    assert float(sa["optimizer"]["state"][0]["step"]) == 4    # stage 1's 2 steps x 2 updates: a fresh AdamW
    for i, st in sa["optimizer"]["state"].items():
        assert all(torch.equal(st[k], sb["optimizer"]["state"][i][k]) for k in st), i
    # the second stage's reference is the policy after step 2, held by its checkpoints as one file
    assert not (ckpt("a", 2) / "reference").exists()
    w2, r3 = load_file(ckpt("a", 2) / "model.safetensors"), load_file(ckpt("a", 3) / "reference/model.safetensors")
    assert all(torch.equal(w2[k], r3[k]) for k in w2)
    inode = [os.stat(ckpt("a", s) / "reference/model.safetensors").st_ino for s in (3, 4)]
    assert inode[0] == inode[1]
    # a resume that would move a switch already made is refused, and leaves the run folder as it was
    kept = {name: (tmp_path / "b" / name).read_text() for name in ("metrics.jsonl", "config.json")}
    moved = ["0:16:4,1:12:2" if arg == "0:16:4,2:12:2" else arg for arg in SCHEDULED]
    r = run_train(tmp_path, *moved, "--steps", "5", "--out", "b", "--resume", "auto", ok=False)
    assert "train.py: error: cannot resume from b/checkpoints/step_000004: by step 4 it had begun the stages " \
           "0:16:4,2:12:2, and --schedule now says 0:16:4,1:12:2" in r.stderr and "Traceback" not in r.stderr
    assert kept == {name: (tmp_path / "b" / name).read_text() for name in kept}


def saved_state(tmp_path, step, stage, ref_step, reference=True, **flags) -> dict:
    """A trainer_state.pt's dict as resume_changes reads it, and its checkpoint folder."""
    if reference:
        (tmp_path / "reference").mkdir(exist_ok=True)
    cfg = train.Config(**{"schedule": "0:16:4,2:12:2", **flags})
    return dict(step=step, data_pos=0, optimizer={}, rng=torch.get_rng_state(), stage=stage, ref_step=ref_step,
                kv_budget=2**30, config=asdict(cfg))


@pytest.mark.parametrize("step,stage,ref_step,old,new,said,refused", [
    # a stage still to come may change, and so may the recipe's flags: both are named
    (2, 0, 0, {}, dict(schedule="0:16:4,2:20:2", lr=2e-6), ["--lr 1e-06 -> 2e-06", "stages 0:16:4,2:12:2 -> "
                                                            "0:16:4,2:20:2"], ""),
    (3, 1, 2, {}, dict(schedule="0:16:4,2:12:2,5:20:2"), ["-> 0:16:4,2:12:2,5:20:2"], ""),
    # a stage that has begun may not
    (3, 1, 2, {}, dict(schedule="0:16:4,3:12:2"), [], "only stages still to come can change"),
    (3, 1, 2, {}, dict(schedule="0:16:4"), [], "only stages still to come can change"),
    (3, 0, 0, dict(schedule=""), dict(schedule="0:16:4,2:12:2"), [], "only stages still to come can change"),
    # without --schedule either side, --ctx may change as before (the manual staging of old)
    (3, 0, 0, dict(schedule=""), dict(schedule="", ctx=32), ["stages 0:8192:8 -> 0:32:8"], ""),
    # the initial reference can always be had again; a switch's only from the checkpoint
    (3, 1, 2, {}, dict(keep_initial_ref=True), ["--keep-initial-ref False -> True"], ""),
    (3, 1, 0, dict(keep_initial_ref=True), {}, [], "holds no copy of it"),
    (3, 1, 2, dict(kl_coef=0.0), {}, [], "holds no copy of it"),
    (3, 1, 2, dict(kl_coef=0.0), dict(kl_coef=0.0), [], ""),
    # the KV budget stays the run's
    (3, 1, 2, {}, dict(kv_gib=1.0), ["--kv-gib 0 -> 1 ignored"], ""),
])
def test_a_changed_recipe_on_resume_is_named_or_refused(tmp_path, step, stage, ref_step, old, new, said, refused):
    """resume_changes on a saved state: what is said, and what is refused."""
    holds_reference = ref_step > 0 and old.get("kl_coef", 1) != 0
    state = saved_state(tmp_path, step, stage, ref_step, reference=holds_reference, **old)
    cfg = train.Config(**{"schedule": "0:16:4,2:12:2", **new})
    changes, refusal = runfolder.resume_changes(runfolder.TrainerState(**state), str(tmp_path), cfg)
    assert refused in refusal and bool(refusal) == bool(refused), refusal
    for s in said:
        assert any(s in c for c in changes), (s, changes)


def test_the_plot_marks_stage_switches():
    """stage_switches: the completed steps before each new stage, labelled; none for old runs."""
    rows = [dict(step=s, stage=k, ctx=c, samples=n) for s, k, c, n in
            [(1, 0, 16, 4), (2, 0, 16, 4), (3, 1, 12, 2), (4, 1, 12, 2), (5, 2, 20, 2)]]
    assert runfolder.stage_switches(rows) == [(2, "stage 1: 12 x 2"), (4, "stage 2: 20 x 2")]
    assert runfolder.stage_switches([dict(step=1), dict(step=2)]) == []
