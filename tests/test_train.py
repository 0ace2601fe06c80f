"""train.py: DDP equals one process, resume is exact, the toy learns, bad input is explained."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train

REPO = Path(__file__).resolve().parents[1]


def run(args, cwd, env=None, timeout=600):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_two_process_ddp_step_equals_one_process(tmp_path):
    """2 gloo ranks (uneven micro-batch counts) == 1 process over all sequences; fp32, atol 1e-6."""
    one = run([sys.executable, str(REPO / "tests/ddp_step.py"), str(tmp_path / "one.pt")], tmp_path)
    assert one.returncode == 0, one.stderr
    two = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               str(REPO / "tests/ddp_step.py"), str(tmp_path / "two.pt")], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


TINY = ["--prompts-per-step", "8", "--samples", "4", "--sft-steps", "4", "--sft-batch", "16", "--eval-every", "0",
        "--save-every", "1", "--show-every", "100"]


def test_resume_is_exact(tmp_path):
    """2 steps straight == 1 step, then --resume auto for 1 more: identical weights and metrics."""
    keep1 = ["--keep", "1"]
    straight = run([sys.executable, str(REPO / "train.py"), *TINY, *keep1, "--steps", "2", "--out", "a"], tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = run([sys.executable, str(REPO / "train.py"), *TINY, *keep1, "--steps", "1", "--out", "b"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run([sys.executable, str(REPO / "train.py"), *TINY, *keep1, "--steps", "2", "--out", "b",
                  "--resume", "auto"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from b/checkpoints/step_000001 at step 1" in second.stdout
    from safetensors.torch import load_file
    wa = load_file(tmp_path / "a/checkpoints/step_000002/model.safetensors")
    wb = load_file(tmp_path / "b/checkpoints/step_000002/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = lambda d: [json.loads(line) for line in open(tmp_path / d / "metrics.jsonl")]
    drop = ("sample_s", "grade_s", "train_s", "step_s", "tok_per_s")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]
    assert strip(rows("a")) == strip(rows("b")) and len(rows("a")) == 2
    # --keep 1: only the newest checkpoint remains, none half-written
    assert os.listdir(tmp_path / "a/checkpoints") == ["step_000002"]
    assert os.listdir(tmp_path / "b/checkpoints") == ["step_000002"]


@pytest.mark.slow
def test_toy_grpo_raises_heldout_accuracy(tmp_path):
    """`python train.py` (fixed seed): GRPO adds >= 20 points of held-out accuracy (-m slow; CI runs it)."""
    r = run([sys.executable, str(REPO / "train.py"), "--out", "toy"], tmp_path, env={"OMP_NUM_THREADS": "2"}, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    line = r.stdout.strip().splitlines()[-1]
    print(line)
    before, after = map(float, re.fullmatch(r"held-out accuracy: before GRPO ([\d.]+)%, after GRPO ([\d.]+)%", line).groups())
    assert after - before >= 20


@pytest.mark.parametrize("argv,message", [
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--steps", "ten"], "argument --steps: invalid int value: 'ten'"),
    (["--model", "m"], "--model needs --data"),
    (["--loss-agg", "mean"], "--loss-agg must be one of"),
    (["--think", "maybe"], "--think must be yes, no or auto"),
])
def test_bad_flags_are_explained(argv, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_config(argv)
    assert message in capsys.readouterr().err


def test_bad_data_is_explained(tmp_path):
    import toy
    toy.build_model_dir(str(tmp_path / "m"))
    (tmp_path / "d.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "x"}\n')
    r = run([sys.executable, str(REPO / "train.py"), "--model", "m", "--data", "d.jsonl"], tmp_path)
    assert r.returncode != 0 and "d.jsonl:2: field 'answer' is missing" in r.stderr
    assert "Traceback" not in r.stderr


def test_config_defaults_are_deepscalers_8k_stage():
    c = train.Config()
    assert (c.prompts_per_step, c.samples, c.temperature, c.top_p, c.lr, c.grad_clip, c.updates_per_step,
            c.clip_low, c.kl_coef, c.entropy_coef, c.loss_agg, c.ctx) == \
        (128, 8, 0.6, 1.0, 1e-6, 1.0, 2, 0.2, 0.001, 0.001, "token-mean", 8192)


def test_bench_grpo_step_reports_its_split(tmp_path):
    """`bench.py --grpo` on CPU (the toy model): one whole train.py step, split into its parts."""
    r = run([sys.executable, str(REPO / "bench.py"), "--grpo", "--grpo-prompts", "4", "--grpo-samples", "2",
             "--grpo-ctx", "8"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    line = r.stdout.strip().splitlines()[-1]
    assert re.match(r"GRPO step, 4 prompts x 2 samples, ctx 8: [\d.]+ s .* \| sample [\d.]+ s \(\d+%\), "
                    r"grade [\d.]+ s \(\d+%\), train [\d.]+ s \(\d+%\), other", line), line
