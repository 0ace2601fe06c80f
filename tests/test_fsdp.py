"""train.py --shard (FSDP2, fsdp.py) on two gloo ranks: the toy's run equals DDP's, resumes exactly,
its checkpoints are whole HF folders that resume either way, and the sampling copy is the
gathered policy after every update. The update step alone is compared with one process in
test_train.py (test_two_process_ddp_step_equals_one_process, its "shard" cases)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fsdp
from model import Transformer

REPO = Path(__file__).resolve().parents[1]
TIMINGS = ("sample_s", "grade_s", "train_s", "step_s", "tok_per_s")

pytestmark = pytest.mark.skipif(fsdp.fully_shard is None, reason="--shard needs torch >= 2.6")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The run folders of tests/fsdp_run.py (shard, ddp, resumed, crossed, back) and checks.json."""
    d = tmp_path_factory.mktemp("fsdp")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                        str(REPO / "tests/fsdp_run.py"), str(d)], cwd=d, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return d


def checkpoint(runs: Path, name: str, step: int = 2) -> Path:
    return runs / name / "checkpoints" / f"step_{step:06d}"


def weights(runs: Path, name: str, step: int = 2, part: str = "") -> dict:
    """A checkpoint's policy weights, or its reference/'s with part="reference"."""
    return load_file(checkpoint(runs, name, step) / part / "model.safetensors")


def adam(runs: Path, name: str) -> dict:
    """AdamW's state of a run's step-2 checkpoint."""
    return torch.load(checkpoint(runs, name) / "trainer_state.pt", weights_only=False)["optimizer"]["state"]


def rows(runs: Path, name: str) -> list[dict]:
    """metrics.jsonl without the timings."""
    with open(runs / name / "metrics.jsonl") as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in f]


def assert_close_runs(runs: Path, a: str, b: str, atol: float):
    """Two runs' step-2 weights, reference, AdamW moments and metric rows agree to fp32 tolerance."""
    for part in ("", "reference"):
        wa, wb = weights(runs, a, part=part), weights(runs, b, part=part)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=f"{part}/{k}")
    sa, sb = adam(runs, a), adam(runs, b)
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            torch.testing.assert_close(sa[i][k], sb[i][k], rtol=1e-3, atol=1e-7, msg=f"{i} {k}")
    ra, rb = rows(runs, a)[-1], rows(runs, b)[-1]
    assert ra.keys() == rb.keys()
    for k, v in ra.items():
        assert rb[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k


# The weights of a sharded and a DDP run after 2 steps differed by at most 5.4e-6 (the order of
# float sums in the reduce-scatter and the all-reduce); a step moves them by 2e-3.
ATOL = 5e-5


def test_a_sharded_run_equals_the_ddp_run(runs):
    """--shard and DDP on the same flags: the same metrics, the same weights after a stage switch
    (so the same reference) and the same AdamW moments, to fp32 tolerance. The step moved the
    weights by far more than the tolerance."""
    assert_close_runs(runs, "shard", "ddp", ATOL)
    before, after = weights(runs, "shard", step=1), weights(runs, "shard")
    assert max(float((after[k] - before[k]).abs().max()) for k in before) > 20 * ATOL
    assert [r["stage"] for r in rows(runs, "shard")] == [0, 1] and rows(runs, "shard")[0]["kl"] > 0


def test_a_sharded_resume_is_exact(runs):
    """Step 2 resumed from the sharded step-1 checkpoint (across the stage switch) equals step 2
    of the run that went straight on, bit for bit: weights, reference, AdamW state, metrics."""
    for part in ("", "reference"):
        a, b = weights(runs, "shard", part=part), weights(runs, "resumed", part=part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    sa, sb = adam(runs, "shard"), adam(runs, "resumed")
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert rows(runs, "resumed")[-1] == rows(runs, "shard")[-1]


def test_checkpoints_resume_with_or_without_shard(runs):
    """A DDP checkpoint resumed with --shard and a sharded one resumed under DDP both give the
    step 2 of the runs that went straight on."""
    assert_close_runs(runs, "crossed", "ddp", ATOL)
    assert_close_runs(runs, "back", "shard", ATOL)


def test_the_sampling_copy_is_the_gathered_policy_after_every_update(runs):
    """After each update every rank's sampling copy equals the policy gathered whole, and no weight
    of the policy or the reference is left gathered. Uneven rows and tied embeddings load, copy
    and gather back whole."""
    checks = json.loads((runs / "checks.json").read_text())
    assert checks["updates"] == [dict(sampler_equals_policy=True, released=True)] * 2
    assert checks["uneven"] is True


def test_a_sharded_checkpoint_is_a_whole_hf_folder(runs):
    """The step-2 checkpoint of the sharded run holds whole tensors (AdamW's moments too), loads
    into Transformer.from_pretrained and into transformers with the same logits, and its
    reference/ is the policy of the stage switch's step, exactly."""
    transformers = pytest.importorskip("transformers")
    path = checkpoint(runs, "shard")
    ours = Transformer.from_pretrained(path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    ids = torch.arange(40).view(2, 20) % ours.config.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, rtol=0, atol=1e-4)
    shapes = {tuple(p.shape) for p in ours.parameters()}
    moments = [v for s in adam(runs, "shard").values() for k, v in s.items() if k != "step"]
    assert moments and all(tuple(m.shape) in shapes for m in moments)
    assert sum(m.numel() for m in moments) == 2 * ours.num_params()
    step1, ref = weights(runs, "shard", step=1), weights(runs, "shard", part="reference")
    assert step1.keys() == ref.keys() and all(torch.equal(step1[k], ref[k]) for k in ref)


def test_shard_in_one_process_is_refused(tmp_path, train_cli):
    """--shard without torchrun: one line saying what to do, before any model is built."""
    r = train_cli(tmp_path, "--shard", "--steps", "1", "--sft-steps", "0", "--out", tmp_path / "run")
    assert r.returncode != 0
    assert "--shard splits the policy over torchrun's ranks, and this is one process" in r.stderr
    assert not (tmp_path / "run" / "toy_model").exists()
