"""runfolder.py: a training run's folder: its stages, checkpoints written whole, exact resume,
the metrics rows and their curves. train.py's bookkeeping, so that train.py reads as GRPO.

    runs/grpo/config.json                 the resolved flags of the run (rewritten on resume)
    runs/grpo/metrics.jsonl               one row per GRPO step, flushed as written
    runs/grpo/checkpoints/step_000050/    HF weights + tokenizer + trainer_state.pt (+ reference/)
    python train.py plot runs/grpo        # curves.png from metrics.jsonl

A checkpoint only ever appears whole: it is written as step_N.tmp and renamed into place, and
an old one is renamed to .old before it is deleted, so a kill at any line leaves every
step_N complete. trainer_state.pt holds a TrainerState: everything besides the weights that a
resumed run needs to repeat the uninterrupted one exactly. manifest.json, written last, holds
the SHA-256 of every other file; a resume checks them, so a damaged file is never trained on
even when it still parses (zeroed bytes do): `--resume auto` takes the newest checkpoint that
verifies and says which it skipped and why, an explicit `--resume DIR` that does not verify is
refused. A later stage's reference/ is hard-linked into each of the stage's checkpoints (one
copy on disk), so one write into it damages them all at once: each checkpoint's manifest
covers its reference/, all of them then fail, and `--resume auto` falls back past the stage.
Resuming from an older checkpoint sets the newer ones aside (step_N.abandoned, never resumed
from) at the moment metrics.jsonl loses their rows. What every rank and every step of a run
must share is fixed here too: the flags and data every rank was started with (compared once),
and the sampler's KV budget (fixed at the first step, kept on resume: the rows decoded
together decide which random numbers each sample draws). Left out: asynchronous saving.
"""
import hashlib
import json
import os
import pickle
import re
import shutil
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.distributed as dist

import fsdp
from common import enter, lock_output, print0
from model import one_line
from sample import default_kv_budget, kv_budget_of, kv_budget_problem

# ----------------------------------------------------------------------------- stages

@dataclass(frozen=True)
class Stage:
    """One stage of --schedule. DeepScaleR launched each by hand from the last one's checkpoint,
    which became both the policy and the KL reference, with a fresh optimizer."""
    first: int                 # completed GRPO steps before the stage begins (it runs step first + 1 on)
    ctx: int                   # response budget in tokens within the stage
    samples: int               # completions per prompt within the stage

    def __str__(self):
        return f"{self.first}:{self.ctx}:{self.samples}"


def parse_schedule(text: str) -> list[Stage]:
    """--schedule "0:8192:8,1040:16384:16" as Stages; a ValueError naming the first bad entry."""
    stages = []
    for i, entry in enumerate(text.split(","), 1):
        where = f"--schedule entry {i} {entry.strip()!r}"
        parts = [p.strip() for p in entry.split(":")]
        if len(parts) != 3 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
            raise ValueError(f"{where} must be FIRST_STEP:CTX:SAMPLES, three integers")
        stage = Stage(*map(int, parts))
        if stage.ctx < 1:
            raise ValueError(f"{where}: ctx must be >= 1, not {stage.ctx}")
        if stage.samples < 2:   # as --samples: a group of one has no spread, its advantage is always 0
            raise ValueError(f"{where}: samples must be >= 2, not {stage.samples}")
        if not stages and stage.first != 0:
            raise ValueError(f"{where}: the first stage must start at step 0, not {stage.first}")
        if stages and stage.first <= stages[-1].first:
            raise ValueError(f"{where}: steps must increase, and {stage.first} is not after {stages[-1].first}")
        stages.append(stage)
    return stages


def schedule_of(cfg) -> list[Stage]:
    """The run's stages: --schedule, or one stage of --ctx and --samples."""
    return parse_schedule(cfg.schedule) if cfg.schedule else [Stage(0, cfg.ctx, cfg.samples)]


def stage_at(stages: list[Stage], done: int) -> int:
    """The index of the stage that runs the step after `done` completed steps."""
    return max(k for k, s in enumerate(stages) if s.first <= done)


def fmt_stages(stages: list[Stage]) -> str:
    """Stages as --schedule spells them."""
    return ",".join(map(str, stages)) or "none"


def describe_stages(stages: list[Stage], steps: int) -> str:
    """The schedule in one line: the steps each stage runs, or that --steps ends before it."""
    parts = []
    for k, s in enumerate(stages):
        end = min(stages[k + 1].first if k + 1 < len(stages) else steps, steps)
        span = f"steps {s.first + 1}-{end}" if s.first < steps else f"after --steps {steps}, not reached"
        parts.append(f"{k}) {s.ctx} tokens x {s.samples} samples, {span}")
    return "stages: " + "; ".join(parts)

def enter_stage(run, models, opt, base, done: int):
    """Before each step: the stage that runs it (base is the run's config). At a switch, as
    DeepScaleR's hand-launched stages did, the policy so far becomes the KL reference (unless
    --keep-initial-ref) and AdamW starts afresh (unless --keep-optimizer); ctx and samples
    change. Returns the optimizer to use from now on."""
    k = stage_at(run.stages, done)
    if k == run.stage:
        return opt
    old, new = run.stages[run.stage], run.stages[k]
    run.stage = k
    run.cfg = replace(base, ctx=new.ctx, samples=new.samples)
    said = [f"ctx {old.ctx} -> {new.ctx}", f"samples {old.samples} -> {new.samples}"]
    if not base.keep_initial_ref:
        models.ref_step = done
        models.ref_dir = ""   # the new reference is on no disk yet
        if models.ref is not None:   # in place: the same dtype and device, no second copy in memory
            models.ref.load_state_dict(models.policy.state_dict())
        said.append(f"KL reference = the policy after step {done}")
    if not base.keep_optimizer:
        opt = torch.optim.AdamW(models.policy.parameters(), lr=base.lr, weight_decay=base.weight_decay)
        said.append("fresh AdamW")
    print0(f"stage {k} from step {done + 1}: " + ", ".join(said))
    return opt


# ----------------------------------------------------------------------------- checkpoints

@dataclass
class TrainerState:
    """What trainer_state.pt holds beside a checkpoint's weights: with it a resumed run draws the
    same prompts, the same random numbers and the same stage as the uninterrupted run would."""
    step: int                  # completed GRPO steps
    data_pos: int              # position in the training stream (train.take) of the next prompt batch
    optimizer: dict            # AdamW's state_dict
    config: dict               # the run's Config as a dict (resume_changes compares it with today's flags)
    rng: torch.Tensor          # torch's CPU RNG state after the step
    stage: int = 0             # the index of the stage that ran the last step (older checkpoints: 0)
    ref_step: int = 0          # the KL reference is the policy after this many steps; 0: --model
    kv_budget: int = 0         # the sampler's KV bytes, fixed at the run's first step; 0: not yet fixed
    loss_scaler: dict | None = None   # fp16's GradScaler state_dict (scale, steps since the last overflow); None otherwise


MANIFEST = "manifest.json"   # in a checkpoint: {path relative to it: SHA-256 hex} of every other file


# What torch.load raises for a damaged trainer_state.pt, seen with truncated, zeroed and random
# bytes: a bad zip or pickle stream (RuntimeError, UnpicklingError, EOFError, ValueError), a
# pickle that names what does not exist (AttributeError, ImportError, KeyError, IndexError,
# TypeError), or a read error (OSError).
UNREADABLE = (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError, KeyError,
              IndexError, TypeError, OSError)


class CheckpointError(Exception):
    """A checkpoint folder that must not be resumed from; the message says which file and why."""


def file_digest(path: str) -> str:
    """SHA-256 of a file, read in 16 MiB blocks (a 1.5B policy's 7 GB take seconds)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def content_digest(path: str) -> str:
    """SHA-256 over a file, or over a folder's files in name order (their names included); "" for
    a path that is neither (the loader names it)."""
    if os.path.isfile(path):
        return file_digest(path)
    if not os.path.isdir(path):
        return ""
    h = hashlib.sha256()
    for name in folder_files(path):
        h.update(f"{name}\0{file_digest(os.path.join(path, name))}\0".encode())
    return h.hexdigest()


def folder_files(folder: str) -> list[str]:
    """Every file under folder but the manifest, as paths relative to it, sorted."""
    found = []
    for parent, _, names in os.walk(folder):
        found += [os.path.relpath(os.path.join(parent, n), folder) for n in names]
    return sorted(f for f in found if f != MANIFEST)


def write_manifest(folder: str):
    """The digests of every file of a checkpoint being written, as its last file."""
    digests = {name: file_digest(os.path.join(folder, name)) for name in folder_files(folder)}
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump(digests, f, indent=0)


def verify_files(folder: str) -> bool:
    """CheckpointError naming the first file that is missing, extra or not what was written; True
    once all verify, False for a checkpoint saved before checkpoints carried a manifest (its
    files cannot be checked)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return False
    try:
        with open(path) as f:
            digests = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({one_line(e)})") from None
    if not isinstance(digests, dict):
        raise CheckpointError(f"{path}: not a JSON object of file digests")
    have = folder_files(folder)
    for name in sorted(set(digests) | set(have)):
        where = os.path.join(folder, name)
        if name not in have:
            raise CheckpointError(f"{where}: missing")
        if name not in digests:
            raise CheckpointError(f"{where}: not written by the save ({MANIFEST} does not list it)")
        if file_digest(where) != digests[name]:
            raise CheckpointError(f"{where}: its bytes changed since it was written (SHA-256 differs)")
    return True


def read_state(src: str) -> TrainerState:
    """The TrainerState of checkpoint folder src (the fields it was saved with; missing ones take
    their defaults); CheckpointError naming the file when it cannot be read or does not belong to
    the folder (its step must be the N of step_N)."""
    path = os.path.join(src, "trainer_state.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"{src}: not a checkpoint of train.py (no trainer_state.pt)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except UNREADABLE as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {one_line(e)})") from None
    names = {f.name for f in fields(TrainerState)}
    if not isinstance(saved, dict) or not {"step", "data_pos", "optimizer", "config", "rng"} <= set(saved):
        raise CheckpointError(f"{path}: not a train.py trainer state")
    state = TrainerState(**{k: v for k, v in saved.items() if k in names})
    m = re.fullmatch(r"step_(\d+)", os.path.basename(os.path.normpath(src)))
    if m and int(m.group(1)) != state.step:
        raise CheckpointError(f"{path}: holds step {state.step}, but its folder is {os.path.basename(src)}")
    return state


def open_checkpoint(src: str) -> TrainerState:
    """A checkpoint's TrainerState once every file matches its manifest; CheckpointError if not."""
    if not verify_files(src):
        print0(f"{src}: no {MANIFEST} (saved by an older train.py): its files are not verified")
    return read_state(src)


def complete_checkpoints(root: str) -> list[str]:
    """The names of the whole checkpoints in root, oldest first. Only a finished checkpoint is
    ever named step_N (see save_checkpoint): step_N.tmp is a write and step_N.old a deletion that
    was cut short, and neither is ever resumed from."""
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root) if re.fullmatch(r"step_\d+", d))


def retire(path: str):
    """Delete a checkpoint folder without ever leaving it half there under its own name: rename
    it to .old (one atomic step), then delete."""
    trash = path + ".old"
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(model, state: TrainerState, out: str, keep: int, tok_dir: str, ref=None, ref_dir="",
                    weights: dict | None = None, ref_weights: dict | None = None) -> str:
    """out/checkpoints/step_N: the policy in HF format + tokenizer + trainer_state.pt (state), and
    reference/ with `ref`'s weights when given (see save_reference). weights, ref_weights: the
    whole tensors of a sharded policy and reference (fsdp.full_state_dict), written in place of
    the models' own.

    Ctrl-C or a crash at any line leaves every complete checkpoint complete: the new one is
    written as step_N.tmp and renamed into place whole, and the ones pruned beyond --keep (or an
    older step_N being replaced) are retired: renamed, then deleted. The newest step_N is always
    whole, which is what `--resume auto` takes."""
    step = state.step
    root = os.path.join(out, "checkpoints")
    final = os.path.join(root, f"step_{step:06d}")
    tmp = final + ".tmp"
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):   # what an interrupted save or prune left behind
        if name.endswith((".tmp", ".old")):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    try:
        write_checkpoint(tmp, model, state, tok_dir, ref, ref_dir, weights, ref_weights)
    except (OSError, RuntimeError) as e:   # a full disk: OSError ENOSPC, or torch.save's "unexpected pos"
        shutil.rmtree(tmp, ignore_errors=True)
        last = complete_checkpoints(root)
        free = shutil.disk_usage(root).free / 2**20
        raise SystemExit(f"train.py: error: writing checkpoint {final} failed ({type(e).__name__}: {one_line(e)}; "
                         f"{free:,.0f} MiB free there); the partial copy is removed, the last complete checkpoint is "
                         f"{os.path.join(root, last[-1]) if last else 'none'}; free space and run the same command "
                         f"with --resume auto") from None
    for name in complete_checkpoints(root):
        if int(name.removeprefix("step_")) >= step:   # saved before a resume from an earlier checkpoint:
            print(f"replacing {os.path.join(root, name)}, left by the run before the resume")   # another history
            retire(os.path.join(root, name))
    os.replace(tmp, final)     # the only way a checkpoint appears, whole
    for old in complete_checkpoints(root)[:-keep]:
        retire(os.path.join(root, old))
    return final


def write_checkpoint(tmp: str, model, state: TrainerState, tok_dir: str, ref, ref_dir: str, weights=None,
                     ref_weights=None):
    """Every file of a checkpoint into the folder tmp, the manifest last."""
    model.save_pretrained(tmp, state_dict=weights)
    if ref is not None:
        save_reference(ref, ref_dir, os.path.join(tmp, "reference"), ref_weights)
    # the tokenizer, and what a sampler reads beside it: the chat template and the stop ids
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if os.path.isfile(os.path.join(tok_dir, name)):
            shutil.copy(os.path.join(tok_dir, name), tmp)
    torch.save(asdict(state), os.path.join(tmp, "trainer_state.pt"))
    write_manifest(tmp)        # last: a folder with a manifest was written in full


def save_reference(ref, have: str, dest: str, weights: dict | None = None):
    """A later stage's KL reference (the policy at its switch) into a checkpoint, which is the only
    place a resumed run can find it once the switch's own checkpoint is pruned. Hard links to a
    folder that already holds it (the stage's previous checkpoint) keep one copy on disk however
    many checkpoints share it; without one, or where links fail, it is written."""
    if have and os.path.isdir(have):
        try:
            os.makedirs(dest)
            for name in os.listdir(have):
                os.link(os.path.join(have, name), os.path.join(dest, name))
            return
        except OSError:   # another filesystem, or no hard links there: write a copy instead
            shutil.rmtree(dest, ignore_errors=True)
    ref.save_pretrained(dest, state_dict=weights)


def save_step(run, models, opt, step: int, data_pos: int, scaler=None):
    """Rank 0 writes checkpoints/step_N; the others wait for it (collective). Beside the policy: the
    stage and where its reference came from, a switch's reference weights (--model's are not
    copied), and fp16's loss scale, so that a resume rebuilds the stage exactly. A sharded policy
    (--shard) is first gathered whole into rank 0's memory, weights and AdamW's moments alike
    (every rank takes part), so its checkpoint is the one an unsharded run writes; a switch's
    reference is gathered too, even when rank 0 then hard-links the copy already on disk."""
    enter("checkpoint")
    holds_ref = models.ref is not None and models.ref_step > 0
    if run.cfg.shard:   # collective: every rank gathers, rank 0 keeps
        weights = fsdp.full_state_dict(models.policy, run.rank)
        ref_weights = fsdp.full_state_dict(models.ref, run.rank) if holds_ref else None
        optimizer = fsdp.full_optimizer_state(opt, run.rank)
    else:               # the models' own weights; rank 0's AdamW holds the whole state
        weights = ref_weights = None
        optimizer = opt.state_dict() if run.rank == 0 else {}
    if run.rank == 0:
        state = TrainerState(step=step, data_pos=data_pos, optimizer=optimizer, config=asdict(run.cfg),
                             rng=torch.get_rng_state(), stage=run.stage, ref_step=models.ref_step,
                             kv_budget=run.kv_budget, loss_scaler=scaler.state_dict() if scaler is not None else None)
        path = save_checkpoint(models.policy, state, run.cfg.out, run.cfg.keep, run.cfg.model,
                               ref=models.ref if holds_ref else None, ref_dir=models.ref_dir,
                               weights=weights, ref_weights=ref_weights)
        if holds_ref:
            models.ref_dir = os.path.join(path, "reference")
        print0(f"saved {path}")
    if run.world > 1:
        dist.barrier()


def find_resume(out: str, resume: str) -> tuple[str, TrainerState | None]:
    """--resume as given, or with "auto" the newest checkpoint in <out>/checkpoints whose files all
    verify (those skipped are named, with why), and its TrainerState; ("", None) for "auto" when
    there is no checkpoint yet. A checkpoint that does not verify is refused with one line naming
    the file."""
    if resume != "auto":
        try:
            return resume, open_checkpoint(resume)
        except CheckpointError as e:
            raise SystemExit(f"train.py: error: --resume {resume}: {e}") from None
    root = os.path.join(out, "checkpoints")
    names = complete_checkpoints(root)
    if not names:
        return "", None
    for name in reversed(names):
        path = os.path.join(root, name)
        try:
            return path, open_checkpoint(path)
        except CheckpointError as e:
            print0(f"--resume auto: skipping {path}: {e}")
    raise SystemExit(f"train.py: error: --resume auto: none of the {len(names)} checkpoints in {root} verifies "
                     f"(each is named above with why)")


def set_aside_later(out: str, step: int):
    """Rename the checkpoints past `step` to step_N.abandoned (never resumed from, never deleted
    here): a run resumed from step continues another history, and a kill before its first save
    must not let `--resume auto` pick up the abandoned one."""
    root = os.path.join(out, "checkpoints")
    for name in complete_checkpoints(root):
        if int(name.removeprefix("step_")) > step:
            path = os.path.join(root, name)
            aside = path + ".abandoned"
            k = 1
            while os.path.exists(aside):   # a history abandoned before, at the same step
                k += 1
                aside = f"{path}.abandoned{k}"
            os.replace(path, aside)
            print0(f"set aside {path} as {os.path.basename(aside)}: the resumed run continues from step {step}")


def claim(out: str):
    """Create the run folder and hold <out>/.lock for this run (common.lock_output): a second
    train.py on the same --out stops at once, naming the pid that holds it."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"train.py: error: --out {out}: cannot create the run folder ({e.strerror})") from None
    return lock_output(os.path.join(out, ".lock"), "train.py")


def refuse_used_out(out: str):
    """Run-folder bookkeeping: a fresh run (no --resume) must not write into another run's folder.

    Appending to another run's metrics.jsonl would mix two runs' curves, and its checkpoints
    would be taken for this run's by --resume auto. The toy's own set-up files (toy_model/,
    train.jsonl, heldout.jsonl, config.json) are reusable, so a run killed before its first
    GRPO step can simply be started again. An empty metrics.jsonl holds no run's rows.
    """
    metrics = os.path.join(out, "metrics.jsonl")
    checkpoints = os.path.join(out, "checkpoints")
    used = []
    if os.path.isfile(metrics) and os.path.getsize(metrics) > 0:
        used.append(metrics)
    if os.path.isdir(checkpoints):
        used.append(checkpoints)
    if used:
        raise SystemExit(f"{out} already holds another run ({', '.join(used)}): continue it with "
                         f"--resume auto, or start a new run with a fresh --out")


def read_metrics(path: str) -> list[tuple[str, dict]]:
    """metrics.jsonl's rows, each with its line as written. A torn last line (a run killed while
    writing it) is dropped; any other line that is not a row is an error naming metrics.jsonl:N."""
    with open(path) as f:
        lines = f.readlines()
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append((line if line.endswith("\n") else line + "\n", row))
        elif n < len(lines) or line.endswith("\n"):
            raise SystemExit(f"train.py: error: {path}:{n}: not a metrics row (a JSON object with an integer "
                             f"step): {line[:80]!r}")
    return rows


def truncate_metrics(out: str, step: int):
    """Run-folder bookkeeping on resume: keep only metrics.jsonl's rows up to the resumed step.

    The rows past the checkpoint were written by steps the resumed run repeats; dropping them
    keeps exactly one row per step. Written to a temporary file and swapped in with os.replace,
    so a crash here leaves the old file whole. A torn last line (a run killed mid-write) goes too.
    """
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.isfile(path):
        return
    kept = [line for line, row in read_metrics(path) if row["step"] <= step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def resume_point(cfg, rank: int) -> tuple[str, TrainerState | None]:
    """Where the policy's weights come from (--model, or the --resume checkpoint) and the trainer
    state saved beside a checkpoint (None for a fresh run). Resuming restores the RNG and drops
    metrics.jsonl's rows past the checkpoint."""
    if not cfg.resume:
        return cfg.model, None
    src, state = find_resume(cfg.out, cfg.resume)
    if state is None:   # --resume auto before the first save (a fresh folder, or a run killed early)
        if rank == 0:
            truncate_metrics(cfg.out, 0)
        print0(f"--resume auto: no checkpoint in {os.path.join(cfg.out, 'checkpoints')} yet: starting from step 0")
        return cfg.model, None
    changes, refusal = resume_changes(state, src, cfg)
    if refusal:   # before metrics.jsonl is touched
        raise SystemExit(f"train.py: error: cannot resume from {src}: {refusal}")
    torch.set_rng_state(state.rng)
    if rank == 0:   # the rows and the checkpoints past src go together: one history from here on
        truncate_metrics(cfg.out, state.step)
        set_aside_later(cfg.out, state.step)
    print0(f"resuming from {src} at step {state.step}" + "".join(f"\n  changed: {c}" for c in changes))
    return src, state


# Flags a resumed run may change without a word: how long, how often and where it runs. ctx,
# samples and schedule are compared as stages, kv_gib on its own (resume_changes).
RUN_CONTROL = {"out", "resume", "steps", "save_every", "keep", "eval_every", "eval_samples", "eval_temperature",
               "eval_top_p", "show_every", "max_bad_steps", "collective_timeout_s", "wandb", "sft_steps",
               "sft_lr", "sft_batch", "ctx", "samples", "schedule", "kv_gib"}


def resume_changes(state: TrainerState, src: str, cfg) -> tuple[list[str], str]:
    """What a resumed run changes of the run it continues ("--flag old -> new"), and why it cannot
    continue ("" when it can). Stages that have begun are history: their ctx, samples and KL
    reference stay as they ran. Stages still to come, and the other flags, may change (a run
    without --schedule may still change --ctx and --samples, the manual staging of old)."""
    names = {f.name for f in fields(cfg)}
    old = replace(type(cfg)(), **{k: v for k, v in state.config.items() if k in names})
    changed = [f"--{k.replace('_', '-')} {getattr(old, k)!r} -> {getattr(cfg, k)!r}"
               for k in sorted(names - RUN_CONTROL) if getattr(old, k) != getattr(cfg, k)]
    old_stages, new_stages = schedule_of(old), schedule_of(cfg)
    if old_stages != new_stages:
        changed.append(f"stages {fmt_stages(old_stages)} -> {fmt_stages(new_stages)}")
    step = state.step
    old_begun = [s for s in old_stages if s.first < step]
    new_begun = [s for s in new_stages if s.first < step]
    if old_begun != new_begun and (old.schedule or cfg.schedule):
        return changed, (f"by step {step} it had begun the stages {fmt_stages(old_begun)}, and --schedule now says "
                         f"{fmt_stages(new_begun)}: only stages still to come can change")
    k = state.stage
    need = 0 if k == 0 or cfg.keep_initial_ref else new_stages[k].first
    held = os.path.isdir(os.path.join(src, "reference"))
    saved_with_it = old.kl_coef and not old.keep_initial_ref and state.ref_step == need
    if cfg.kl_coef and need and saved_with_it and not held:   # deleted or lost since: not the flags' doing
        return changed, f"{os.path.join(src, 'reference')}: missing (the checkpoint was saved with it)"
    if cfg.kl_coef and need and (state.ref_step != need or not held):
        return changed, (f"stage {k}'s KL reference is the policy after step {need}, and the checkpoint holds no "
                         f"copy of it (its run had --kl-coef 0 or --keep-initial-ref): resume with "
                         f"--keep-initial-ref or --kl-coef 0")
    if state.kv_budget and cfg.kv_gib != old.kv_gib:
        changed.append(f"--kv-gib {old.kv_gib:g} -> {cfg.kv_gib:g} ignored: sampling keeps the run's KV budget of "
                       f"{state.kv_budget / 2**30:.3g} GiB, so that rollouts repeat exactly")
    return changed, ""

# ----------------------------------------------------------------------------- what every rank and step must share

# Flags that may differ between ranks: where each rank finds its files (a node-local copy of the
# same model or data may live at another path); the data's content is compared instead.
RANK_LOCAL = {"model", "data", "eval_data", "out", "resume"}


def rank_signature(cfg) -> dict:
    """What every rank must agree on: its flags but RANK_LOCAL's, and the content of --data."""
    flags = {f"--{k.replace('_', '-')}": v for k, v in asdict(cfg).items() if k not in RANK_LOCAL}
    return flags | {"--data content (SHA-256)": content_digest(cfg.data)}


def fix_kv_budget(run, models, opt, state: TrainerState | None) -> int:
    """The sampler's KV bytes for the whole run. The rows decoded together follow from it and the
    sampled tokens from the rows (uniforms are drawn per chunk of rows), so a resumed run takes the
    budget its run fixed at the first step, whatever --kv-gib or free memory it finds now: its
    rollouts then repeat exactly. A fresh run takes --kv-gib, or sample.py's default (60% of free
    GPU memory) less 60% of what AdamW's first step will still allocate; the least over ranks."""
    if state is not None and state.kv_budget:
        refuse_budget_below_one_row(run, models, state.kv_budget)
        return state.kv_budget
    budget = kv_budget_of(run.cfg.kv_gib)
    if budget is None:
        budget = default_kv_budget(run.device)
        if run.device.type == "cuda" and not opt.state:   # AdamW's two fp32 moments per parameter, still to come
            moments = 2 * sum(p.numel() * p.element_size() for p in models.policy.parameters())
            budget -= int(0.6 * moments / (run.world if run.cfg.shard else 1))   # --shard: this rank's slices
    least = torch.tensor([budget], dtype=torch.int64, device=run.device)
    if run.world > 1:
        dist.all_reduce(least, op=dist.ReduceOp.MIN)
    refuse_budget_below_one_row(run, models, int(least))
    print0(f"sampling KV budget {int(least) / 2**30:.3g} GiB, fixed for the run (rollouts depend on it)")
    return int(least)


def refuse_budget_below_one_row(run, models, budget: int):
    """The fixed budget must hold one row of the longest stage (prompt budget + its ctx tokens):
    found at start-up, not hours in at the switch to a longer stage, where a resume could not
    raise it (the budget is part of the run's state)."""
    longest = max(stage.ctx for stage in run.stages)
    problem = kv_budget_problem(models.policy.config, budget, run.cfg.prompt_budget + longest,
                                next(models.sampler.parameters()).dtype)
    if problem:
        raise SystemExit(f"train.py: error: no sequence of the longest stage fits the sampler (prompt "
                         f"{run.cfg.prompt_budget} + ctx {longest} tokens): {problem}; raise --kv-gib, or lower "
                         f"--prompt-budget or the stage's ctx")


# ----------------------------------------------------------------------------- metrics and curves

def write_row(metrics_f, wandb_run, row: dict):
    """Rank 0: the row to metrics.jsonl (flushed, so a killed run keeps every finished step) and wandb."""
    metrics_f.write(json.dumps(row) + "\n")
    metrics_f.flush()
    if wandb_run:
        wandb_run.log(row, step=row["step"])


def open_wandb(cfg, rank: int):
    """A wandb run on rank 0 when --wandb names a project; None otherwise."""
    if not cfg.wandb or rank != 0:
        return None
    try:
        import wandb
    except ImportError:
        raise SystemExit("--wandb needs wandb: pip install wandb") from None
    return wandb.init(project=cfg.wandb, config=asdict(cfg))


def stage_switches(rows: list[dict]) -> list[tuple[int, str]]:
    """Where a metrics.jsonl's stage changes: (completed steps before the new stage, its label).
    Rows written before stages were logged have none."""
    marks = []
    for prev, row in zip(rows, rows[1:]):
        if "stage" in prev and row.get("stage") != prev["stage"]:
            marks.append((row["step"] - 1, f"stage {row['stage']}: {row['ctx']} x {row['samples']}"))
    return marks


def plot(run_dir: str):
    """Draw reward, accuracy, length, entropy and KL from RUN_DIR/metrics.jsonl to curves.png, with
    a dashed line at each stage switch."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no metrics (is {run_dir} a run folder?)")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plotting needs matplotlib: pip install matplotlib") from None
    rows = [row for _, row in read_metrics(path)]
    keys = ["reward", "accuracy", "len_mean", "entropy", "kl"] + (["gap_mean"] if rows and "gap_mean" in rows[-1] else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    for ax, k in zip(axes, keys):
        ax.plot([r["step"] for r in rows], [r.get(k, float("nan")) for r in rows])
        for x, label in stage_switches(rows):
            ax.axvline(x + 0.5, color="gray", linestyle="--", linewidth=0.8, label=label)
        ax.set_title(k)
        ax.set_xlabel("step")
    fig.tight_layout()
    out = os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
