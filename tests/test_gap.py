"""The sampler-trainer gap, its guard, and the loss options beside DeepScaleR's recipe.

    python -m pytest -q tests/test_gap.py

Formulas are pinned by hand-computed numbers; the gap is measured on real rollouts (0 to fp32
noise on CPU, exactly a planted shift when one side is moved); the guard must stop a run with
each of the two bugs it exists for: a sampling copy not synced after an update, and a
temperature applied on one side only.
"""
import dataclasses
import json
import math

import pytest
import torch

import grpo
import train
from test_train_fail_fast import task  # noqa: F401  (a fixture: toy.py's tokenizer, a tiny model, 16 problems)
from test_train_loop import CPU, T, fresh_rollout, graded_by_parity, tiny_model

E = math.e


def test_tis_weights_by_hand():
    old, sampled = torch.tensor([0.0, -1.0, -2.0]), torch.tensor([-1.0, -1.0, 0.0])
    # token: min(exp(old - sampler), 2) = min(e, 2), 1, e^-2
    torch.testing.assert_close(grpo.tis_weights(old, sampled, 2.0), torch.tensor([2.0, 1.0, E ** -2]))
    # sequence: tokens 0, 1 are response 0 (log-ratio 1 + 0), token 2 response 1 (-2)
    seq = torch.tensor([0, 0, 1])
    torch.testing.assert_close(grpo.tis_weights(old, sampled, 2.0, "sequence", seq, 2), torch.tensor([2.0, 2.0, E ** -2]))
    torch.testing.assert_close(grpo.tis_weights(old, sampled, 3.0, "sequence", seq, 2), torch.tensor([E, E, E ** -2]))
    old.requires_grad_(True)
    assert not grpo.tis_weights(old, sampled, 2.0).requires_grad    # a weight, never a gradient path


def test_gspo_by_hand_value_clip_and_gradient():
    # response 0: log s = mean(0.5, 0.5) = 0.5, s = e^0.5 = 1.6487 > 1.2 with A = 1: clipped at 1.2
    # response 1: s = 1 with A = -1: loss 1, not clipped
    logp = torch.tensor([-1.0, -2.0, -1.0], requires_grad=True)
    old = torch.tensor([-1.5, -2.5, -1.0])
    seq, lens = torch.tensor([0, 0, 1]), torch.tensor([2, 1])
    loss, clipped = grpo.gspo_policy_loss(logp, old, torch.tensor([1.0, 1.0, -1.0]), seq, lens, 0.2, 0.2)
    torch.testing.assert_close(loss, torch.tensor([-1.2, -1.2, 1.0]))
    assert clipped.tolist() == [True, True, False]
    # inside the clip range every token carries s (here the token log-ratios 0.3 and -0.1, whose
    # own ratios PPO would clip and not, average to 0.1), the per-response mean of the token
    # losses is -s * A, and its gradient is GSPO's: d(-s A)/d logp_t = -s * A / |y| for each token
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    loss, _ = grpo.gspo_policy_loss(logp, torch.tensor([-1.3, -1.9]), torch.tensor([1.0, 1.0]),
                                    torch.tensor([0, 0]), torch.tensor([2]), 0.2, 0.2)
    s = E ** 0.1
    torch.testing.assert_close(loss, torch.tensor([-s, -s]))
    grpo.aggregate(loss, torch.tensor([0, 0]), torch.tensor([2]), "seq-mean-token-mean").backward()
    torch.testing.assert_close(logp.grad, torch.tensor([-s / 2, -s / 2]))


def test_logp_gap_by_hand():
    g = grpo.logp_gap(torch.tensor([0.0, -1.0, -3.0]), torch.tensor([0.0, -0.5, -1.0]))   # d = 0, -0.5, -2
    torch.testing.assert_close(g["abs"], torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64))
    torch.testing.assert_close(g["k3"], torch.tensor([0.0, E ** -0.5 - 0.5, E ** -2 + 1.0], dtype=torch.float64))
    assert g["outside"].tolist() == [False, False, True]      # ratio e^-2 < 0.5


def test_gap_clip_column_by_hand():
    """gap_clip: ratios outside PPO's clip range [1 - clip_low, 1 + clip_high], both sides."""
    d = torch.tensor([0.0, -0.3, 0.19, 0.2])                # ratios 1, 0.74, 1.209, 1.221
    g = grpo.logp_gap(d, torch.zeros(4), clip_low=0.2, clip_high=0.2)
    assert g["clip"].tolist() == [False, True, True, True]
    assert grpo.logp_gap(d, torch.zeros(4), clip_low=0.3, clip_high=0.28)["clip"].tolist() == [False] * 4
    rollouts = [train.Rollout(prompt=[1], tokens=[2, 3, 4, 5], logprobs=[0.0] * 4, reward=0.0, correct=False,
                              advantage=0.0, truncated=False, group=0, text="", old_logp=d.tolist())]
    assert train.gap_columns(train.gap_sums(rollouts, 0.2, 0.2), 1, CPU)["gap_clip"] == 0.75


def test_tis_weights_only_the_policy_gradient():
    logp, old, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    ent, adv, w = torch.tensor([0.3, 0.4]), torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.5])
    plain, _ = grpo.grpo_token_loss(logp, old, ref, ent, adv, kl_coef=0.1, entropy_coef=0.01)
    weighted, parts = grpo.grpo_token_loss(logp, old, ref, ent, adv, kl_coef=0.1, entropy_coef=0.01, is_weights=w)
    pg = torch.tensor([-1.0, 1.0])                                     # -ratio * A at ratio 1
    torch.testing.assert_close(weighted - plain, pg * (w - 1))
    torch.testing.assert_close(parts["pg"], pg * w)


def test_gap_is_zero_on_cpu_fp32_and_exactly_a_planted_shift():
    model = tiny_model()
    rollouts = fresh_rollout(model)
    cfg = train.Config(temperature=T, kl_coef=0.0, old_logp="recompute", micro_tokens=60)
    run = train.Run(cfg=cfg, rank=0, world=1, device=CPU, amp=False, tok=None, require_think=False)
    models = train.Models(policy=model, ddp=model, sampler=model, ref=None)
    cols = train.gap_columns(train.store_old_and_ref_logprobs(run, models, rollouts), 1, CPU)
    assert cols["gap_mean"] < 2e-6 and cols["gap_max"] < 2e-5 and cols["gap_outside"] == 0.0, cols
    for r in rollouts:                     # the sampler's log-probs, all 0.3 nats higher
        r.logprobs = [x + 0.3 for x in r.logprobs]
    cols = train.gap_columns(train.gap_sums(rollouts), 1, CPU)
    assert cols["gap_mean"] == pytest.approx(0.3, abs=1e-5) and cols["gap_max"] == pytest.approx(0.3, abs=1e-5)
    assert cols["gap_kl"] == pytest.approx(E ** -0.3 + 0.3 - 1, abs=1e-5) and cols["gap_outside"] == 0.0
    sampler_run = dataclasses.replace(run, cfg=train.Config(old_logp="sampler"))
    assert train.store_old_and_ref_logprobs(sampler_run, models, rollouts) is None   # nothing to see under sampler


def run_train(task, out, monkeypatch, *flags) -> tuple[list, str]:  # noqa: F811
    """train.main on test_train_fail_fast's task for a few steps of 4 prompts x 4 samples with old
    log-probs recomputed; returns the metrics rows and the SystemExit message ("" when the run
    ended normally)."""
    model_dir, data = task
    argv = ["--model", model_dir, "--data", data, "--out", str(out), "--prompts-per-step",
            "4", "--samples", "4", "--updates-per-step", "1", "--temperature", str(T),
            "--kl-coef", "0", "--entropy-coef", "0", "--old-logp", "recompute", "--micro-tokens", "100",
            "--no-grad-ckpt", "--eval-every", "0", "--save-every", "0", "--sft-steps", "0", "--show-every", "1000",
            *flags]
    argv += [] if "--ctx" in flags else ["--ctx", "6"]
    monkeypatch.setattr(train, "grade_samples", graded_by_parity)
    message = ""
    try:
        train.main(argv)
    except SystemExit as e:
        message = str(e.code)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return rows, message


def test_a_healthy_run_logs_a_gap_near_zero_in_every_row(task, tmp_path, monkeypatch):  # noqa: F811
    rows, message = run_train(task, tmp_path, monkeypatch, "--steps", "3", "--lr", "1e-2", "--tis-cap", "2",
                              "--max-logp-gap", "0.001")
    assert message == "" and len(rows) == 3
    assert all(r["gap_mean"] < 1e-5 and r["gap_outside"] == 0.0 for r in rows), rows


def test_the_guard_stops_a_run_whose_sampling_copy_is_not_synced(task, tmp_path, monkeypatch):  # noqa: F811
    """A separate sampling copy (SAMPLER_COPY keeps one on CPU, in bf16) that an update leaves
    behind: step 1 is fine (nothing was updated yet), step 2 samples from stale weights."""
    monkeypatch.setattr(train, "SAMPLER_COPY", True)
    monkeypatch.setattr(train, "sync_sampler", lambda models: None)
    rows, message = run_train(task, tmp_path, monkeypatch, "--steps", "3", "--lr", "5e-2", "--max-logp-gap", "0.1")
    assert len(rows) == 2 and rows[0]["gap_mean"] < 0.1 < rows[1]["gap_mean"], rows
    assert message.startswith("train.py: error: step 2: the sampler's and the trainer's log-probs differ by "), message
    assert "over --max-logp-gap 0.1" in message and "\n" not in message


def test_the_guard_stops_a_run_that_tempers_one_side_only(task, tmp_path, monkeypatch):  # noqa: F811
    """The trainer scores tokens at T = 1 while the sampler drew them at T = 0.25 (a low one: this
    random model is nearly uniform): the gap is there at the first step."""
    real = train.store_logprobs

    def untempered(model, rollouts, field_name, cfg, device, amp):
        return real(model, rollouts, field_name, dataclasses.replace(cfg, temperature=1.0), device, amp)
    monkeypatch.setattr(train, "store_logprobs", untempered)
    rows, message = run_train(task, tmp_path, monkeypatch, "--steps", "3", "--lr", "1e-2", "--temperature", "0.25")
    assert len(rows) == 1 and rows[0]["gap_mean"] > 0.1, rows
    assert message.startswith("train.py: error: step 1: the sampler's and the trainer's log-probs differ by ")


def test_masked_truncated_responses_take_no_part_in_the_update(task, tmp_path, monkeypatch):  # noqa: F811
    seen = []
    real = train.train_minibatch

    def spy(ddp_model, model, seqs, **kw):
        seen.append([s.truncated for s in seqs])
        return real(ddp_model, model, seqs, **kw)
    monkeypatch.setattr(train, "train_minibatch", spy)
    rows, message = run_train(task, tmp_path, monkeypatch, "--steps", "2", "--lr", "1e-2", "--mask-truncated",
                              "--policy-loss", "gspo", "--clip-low", "3e-4", "--clip-high", "4e-4",
                              "--loss-agg", "seq-mean-token-mean", "--ctx", "30")
    assert message == "" and len(rows) == 2
    kept = sum(round(16 * (1 - r["truncated"])) for r in rows)   # 4 prompts x 4 samples a step
    assert 0 < kept < 32, rows                                 # a ctx of 30 cuts some off, not all ...
    assert sum(len(batch) for batch in seen) == kept           # ... and only the others reach the loss
    assert not any(any(batch) for batch in seen)


@pytest.mark.parametrize("flags,said", [
    (["--tis-cap", "0.5"], "--tis-cap must be 0 (off) or >= 1"),
    (["--tis-cap", "2", "--old-logp", "sampler"], "--tis-cap corrects the gap"),
    (["--policy-loss", "ppo"], "--policy-loss must be one of ('grpo', 'gspo')"),
    (["--tis-level", "batch"], "--tis-level must be one of ('token', 'sequence')"),
    (["--max-logp-gap", "-1"], "--max-logp-gap must be >= 0.0, not -1.0"),
])
def test_bad_loss_options_are_flag_errors(flags, said, capsys):
    with pytest.raises(SystemExit):
        train.parse_config(["--model", "m", "--data", "d"] + flags)
    assert said in capsys.readouterr().err
