"""Mutation check: does the suite notice plausible one-line bugs? (minutes; not part of pytest)

    python tests/mutation.py                 # every mutant; the last line is `killed K of N mutants`
    python tests/mutation.py --only train.py # the mutants of one file (or whose text contains a word)
    python tests/mutation.py --list          # the mutants and their test selections, nothing run
    python tests/mutation.py --workers 1 --no-baseline

Each mutant is (file, original text, replacement, tests, what the bug is). The repository is
copied to a temporary folder once per worker (beside a link to ../shared, so the tests that
read it still run); a worker writes one mutant into its copy, runs only that mutant's tests
(`pytest -x -q -p no:cacheprovider` on a few node ids), and puts the file back. A mutant is
killed when the tests fail or time out, and survives when they pass. The original text must
occur exactly once in its file: a refactor that removes or duplicates it is reported as an
error (and the script exits 2), never silently skipped. Before the mutants, a baseline run of
every selected test on the unmodified copy must pass, or a "kill" would mean nothing.

Each test run is a forked child of this process, which has imported torch, pytest and
transformers once (the project's own modules are imported fresh from the copy in every child):
that import is most of a small test run's cost. Linux only (fork).

EQUIVALENT lists changes that cannot alter behaviour, with the reason; they are not counted.
The mutants of verify.py are listed last, in VERIFY_MUTANTS.
"""
import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300          # per mutant; a mutant that hangs its tests counts as killed


@dataclass
class Mutant:
    file: str            # path relative to the repository root
    old: str             # text that must occur exactly once in the file
    new: str             # what it becomes
    tests: tuple         # pytest node ids (tests/x.py or tests/x.py::test_name)
    bug: str             # the bug in words


def mutant(file, old, new, tests, bug):
    """A Mutant, with tests given as one node id or a sequence of them."""
    return Mutant(file, old, new, (tests,) if isinstance(tests, str) else tuple(tests), bug)


LOOP = "tests/test_train_loop.py::"
RESUME = "tests/test_train.py::test_resume_is_exact"
GRPO = "tests/test_grpo.py"
MODEL = "tests/test_model.py::"
SAMPLE = "tests/test_sample.py::"
EVALUATE = "tests/test_evaluate.py::"
RUNFOLDER = "tests/test_runfolder.py::"
GAP = "tests/test_gap.py::"
POLISH = "tests/test_polish.py::"
DATA = "tests/test_data.py::"
TOKENIZER = "tests/test_tokenizer.py::"
PRECISION = "tests/test_precision.py::"
GUIDED = "tests/test_polish_guided.py::"
TEMPLATE = "tests/test_chat_template.py::"
ETA = "tests/test_eta.py::"
FSDP = "tests/test_fsdp.py::"
STEP = "tests/test_train.py::test_two_process_ddp_step_equals_one_process"

MUTANTS = [
    # ------------------------------------------------------------------ train.py
    mutant("train.py", "    return kept, within_budget", "    return kept, kept",
           LOOP + "test_warm_up_pool_takes_accepted_chains_and_guided_ones_on_request",
           "the warm-up pool filtered by pass rate: guided chains (pass rate 0) never imitated"),
    mutant("train.py", 'allowed = {"input", "free"} | ({"guided"} if sft_guided else set())',
           'allowed = {"input", "free", "guided"}',
           LOOP + "test_warm_up_pool_takes_accepted_chains_and_guided_ones_on_request",
           "--no-sft-guided ignored"),
    mutant("update.py", "pick += range(start + P - 1, start + P - 1 + len(s.tokens))",
           "pick += range(start + P, start + P + len(s.tokens))",
           LOOP + "test_packed_logprobs_equal_the_samplers",
           "completion token j scored from hidden state P + j instead of P - 1 + j"),
    mutant("update.py", "h = ddp_model(ids, positions=pos, seq_lens=lens, return_hidden=True)[0]",
           "h = ddp_model(ids, positions=pos, return_hidden=True)[0]",
           LOOP + "test_packed_logprobs_equal_the_samplers",
           "packed sequences attend to each other (seq_lens not passed)"),
    mutant("train.py", "m = train_minibatch(models.ddp, models.policy, mini, loss_fn=grpo_loss, temperature=cfg.temperature,",
           "m = train_minibatch(models.ddp, models.policy, mini, loss_fn=grpo_loss, temperature=1.0,",
           LOOP + "test_the_update_scores_tokens_at_the_sampling_temperature",
           "training log-probs at T = 1 instead of the sampling temperature"),
    mutant("update.py", "logp, ent = forward_logprobs(ddp_model, model, mb, temperature, device, amp)",
           "logp, ent = forward_logprobs(ddp_model, model, mb, cfg.temperature, device, amp)",
           LOOP + "test_warm_up_loss_is_the_mean_negative_log_likelihood",
           "the supervised warm-up scored at the sampling temperature"),
    mutant("update.py", "return grpo.aggregate(tok_loss, idx, lens, cfg.loss_agg, cfg.ctx, *batch), parts",
           "return grpo.aggregate(tok_loss, idx, lens, cfg.loss_agg, cfg.ctx), parts",
           LOOP + "test_loss_and_gradients_do_not_depend_on_the_micro_batch_split",
           "token-mean loss divided by the micro-batch's tokens instead of the whole batch's"),
    mutant("update.py", "sum(len(s.tokens) for s in seqs), len(seqs)]",
           "sum(len(s.prompt) + len(s.tokens) for s in seqs), len(seqs)]",
           LOOP + "test_fresh_samples_give_ratio_one_and_loss_minus_token_mean_advantage",
           "the loss divided by prompt and completion tokens, not completion tokens"),
    mutant("update.py", "return (-logp).sum() / max(1, batch[0]), {}", "return logp.sum() / max(1, batch[0]), {}",
           LOOP + "test_warm_up_loss_is_the_mean_negative_log_likelihood",
           "the warm-up maximises the negative log-likelihood"),
    mutant("update.py", "old = torch.tensor([x for s in mb for x in s.old_logp], device=device)",
           "old = torch.tensor([x for s in mb for x in s.logprobs], device=device)",
           LOOP + "test_loss_and_gradients_do_not_depend_on_the_micro_batch_split",
           "the ratio's denominator taken from the sampler whatever --old-logp says"),
    mutant("train.py", "advantage=float(adv[i])", "advantage=float(adv[i // cfg.samples])",
           LOOP + "test_each_sample_gets_its_groups_advantage",
           "the advantage of sample i taken from group i's slot"),
    mutant("train.py", "adv = grpo.group_advantages(rewards, cfg.samples, scale=cfg.scale_adv)",
           "adv = grpo.group_advantages(rewards, cfg.samples)",
           LOOP + "test_each_sample_gets_its_groups_advantage",
           "--no-scale-adv (Dr. GRPO) ignored"),
    mutant("train.py", "data_pos += cfg.prompts_per_step", "data_pos += 0",
           LOOP + "test_every_step_trains_on_new_prompts",
           "data_pos never advanced: every step trains on the same prompts"),
    mutant("data.py", "picked.append(recs[orders[epoch][p % n]])", "picked.append(recs[orders[epoch][(p - pos) % n]])",
           LOOP + "test_every_step_trains_on_new_prompts",
           "the batch picked without the data position"),
    mutant("data.py", "        epoch = p // n\n", "        epoch = pos // n\n",
           "tests/test_train.py::test_data_order_visits_each_epoch_once_in_uneven_steps",
           "a batch that crosses an epoch boundary keeps drawing from the old epoch's order"),
    mutant("runfolder.py", 'kept = [line for line, row in read_metrics(path) if row["step"] <= step]',
           "kept = [line for line, row in read_metrics(path)]",
           "tests/test_train.py::test_resume_drops_the_metrics_rows_past_its_checkpoint",
           "resume keeps the metrics rows past its checkpoint (steps logged twice)"),
    mutant("train.py", "    if not cfg.resume:\n        runfolder.refuse_used_out(cfg.out)",
           "    if False:\n        runfolder.refuse_used_out(cfg.out)",
           "tests/test_train.py::test_fresh_run_into_a_used_folder_is_refused",
           "a fresh run appends to another run's metrics and checkpoints"),
    mutant("train.py", '"temperature": (0.0, False),', '"temperature": (0.0, True),',
           "tests/test_train.py::test_bad_flags_are_explained",
           "--temperature 0 accepted for training (every GRPO step NaN)"),
    mutant("train.py", 'store_logprobs(models.ref, rollouts, "ref_logp"', 'store_logprobs(models.policy, rollouts, "ref_logp"',
           LOOP + "test_old_and_reference_logprobs_come_from_the_right_weights",
           "reference log-probs scored with the policy (KL identically 0)"),
    mutant("update.py", "logp = forward_logprobs(model, model, mb, cfg.temperature, device, amp, with_entropy=False)",
           "logp = forward_logprobs(model, model, mb, 1.0, device, amp, with_entropy=False)",
           LOOP + "test_old_and_reference_logprobs_come_from_the_right_weights",
           "old and reference log-probs scored at T = 1"),
    mutant("train.py", "    sync_sampler(models)\n    return Update(", "    return Update(",
           LOOP + "test_sampling_copy_equals_the_policy_after_every_update",
           "the bf16 sampling copy never re-synced after an update"),
    mutant("train.py", "part = set(groups[u::cfg.updates_per_step])", "part = set(groups)",
           LOOP + "test_mini_batches_are_whole_groups_covering_the_step",
           "every mini-batch trains on the whole batch"),
    mutant("update.py", "    opt.step()\n    opt.zero_grad(set_to_none=True)\n", "    opt.step()\n",
           LOOP + "test_optimizer_step_clips_steps_and_clears",
           "gradients not cleared after a step: they leak into the next mini-batch"),
    mutant("update.py", "clip_grad_norm_(model.parameters(), grad_clip)",
           'clip_grad_norm_(model.parameters(), float("inf"))',
           LOOP + "test_optimizer_step_clips_steps_and_clears",
           "--grad-clip ignored"),
    mutant("update.py", "if cur and n + L > micro_tokens:", "if cur and n > micro_tokens:",
           LOOP + "test_pack_keeps_every_sequence_once_within_the_budget",
           "micro-batches overflow the token budget"),
    mutant("update.py", "return batches + ([cur] if cur else [])", "return batches",
           [LOOP + "test_pack_keeps_every_sequence_once_within_the_budget",
            LOOP + "test_loss_and_gradients_do_not_depend_on_the_micro_batch_split"],
           "the last micro-batch dropped"),
    mutant("train.py", "        opt.load_state_dict(fsdp.shard_optimizer_state(state.optimizer, opt) if cfg.shard else state.optimizer)",
           "        pass",
           RESUME, "resume does not restore the optimizer state"),
    mutant("train.py", "data_pos=state.data_pos if state else 0,", "data_pos=0,",
           RESUME, "resume restarts the data from the beginning"),
    mutant("train.py", 'ref_src = os.path.join(src, "reference") if ref_step else cfg.model',
           'ref_src = os.path.join(src, "reference") if ref_step else src',
           RESUME, "after a resume the reference model is the checkpoint, not the initial policy"),
    # ------------------------------------------------------------------ runfolder.py: nothing lost, nothing silently wrong
    mutant("runfolder.py", "    write_manifest(tmp)        # last: a folder with a manifest was written in full",
           "    pass", RUNFOLDER + "test_zeroed_bytes_are_caught_and_auto_falls_back",
           "checkpoints saved without digests: a damaged file is resumed from"),
    mutant("runfolder.py", "        if file_digest(where) != digests[name]:", "        if False:",
           RUNFOLDER + "test_zeroed_bytes_are_caught_and_auto_falls_back", "digests written but never compared"),
    mutant("runfolder.py", "    if m and int(m.group(1)) != state.step:", "    if False:",
           RUNFOLDER + "test_a_state_whose_step_is_not_its_folders_is_refused",
           "a trainer state trusted in a folder of another step"),
    mutant("runfolder.py", "    except UNREADABLE as e:", "    except EOFError as e:",
           RUNFOLDER + "test_an_unreadable_trainer_state_is_one_line_even_when_its_digest_matches",
           "a damaged trainer_state.pt ends in a traceback"),
    mutant("runfolder.py", "        set_aside_later(cfg.out, state.step)", "        pass",
           RUNFOLDER + "test_resuming_an_older_checkpoint_sets_the_newer_ones_aside_with_the_rows",
           "an abandoned history's checkpoints stay for --resume auto after its rows are gone"),
    mutant("runfolder.py", "        return \"\", None\n", "        raise SystemExit(\"no checkpoint\")\n",
           RUNFOLDER + "test_resume_auto_before_the_first_checkpoint_starts_from_step_0",
           "--resume auto before the first save refuses, while a fresh run refuses the used folder"),
    mutant("runfolder.py", "        elif n < len(lines) or line.endswith(\"\\n\"):", "        elif False:",
           RUNFOLDER + "test_metrics_lines_that_are_not_rows_are_named_and_a_torn_last_line_is_dropped",
           "metrics lines that are not rows dropped without a word"),
    mutant("runfolder.py", "        shutil.rmtree(tmp, ignore_errors=True)\n        last = complete_checkpoints(root)",
           "        last = complete_checkpoints(root)",
           RUNFOLDER + "test_a_full_disk_during_a_save_leaves_the_last_checkpoint_and_says_so",
           "a save cut short by a full disk leaves its partial copy"),
    mutant("common.py", "        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)", "        pass",
           RUNFOLDER + "test_a_second_writer_on_one_output_stops_at_once_naming_the_holder",
           "two writers on one run folder"),
    mutant("common.py", "    differ = [k for k in values if any(other.get(k) != values[k] for other in seen)]",
           "    differ = []", RUNFOLDER + "test_ranks_started_with_different_flags_are_refused",
           "ranks started with different flags run on as diverged replicas"),
    mutant("verify.py", "                if left <= 0:", "                if False:",
           "tests/test_verify_budget.py", "grade_batch has no overall budget"),
    mutant("verify.py", "            _cache[job] = (False, failure)", "            pass",
           "tests/test_verify_budget.py", "a timed-out answer is run again every time it is sampled"),
    mutant("data.py", "    for form in forms:\n        refuse_unreadable_answer(form, where)", "    pass",
           DATA + "test_an_answer_no_grader_can_hold_to_is_refused_with_file_and_line",
           "a nested list answer joined into text that reads as another number"),
    mutant("data.py", "        if len(line) > MAX_LINE:", "        if False:", DATA + "test_a_huge_line_is_not_read_whole",
           "a file without newlines read whole into memory"),
    mutant("data.py", "    elif os.path.exists(path):   # a FIFO", "    elif False:   # a FIFO",
           DATA + "test_a_fifo_or_device_is_not_a_regular_file", "a FIFO reported as a missing file"),
    mutant("answers.py", '    "\\uff0d": "-", ', "    ", RUNFOLDER + "test_every_minus_sign_reads_as_minus",
           "a fullwidth minus unreadable while fullwidth digits are read"),
    # ------------------------------------------------------------------ the sampler-trainer gap and the loss options
    mutant("grpo.py", "        return torch.exp(torch.clamp(d, max=math.log(cap)))", "        return torch.exp(d)",
           GAP + "test_tis_weights_by_hand", "token-level TIS weights never capped"),
    mutant("grpo.py", "        log_w = per_sequence_sum(d, seq_index, num_seqs).clamp(max=math.log(cap))",
           "        log_w = per_sequence_sum(d, seq_index, num_seqs).clamp(max=cap)",
           GAP + "test_tis_weights_by_hand", "sequence-level TIS capped in log space at the cap itself"),
    mutant("grpo.py", "    d = (old_logp - sampler_logp).detach()", "    d = old_logp - sampler_logp",
           GAP + "test_tis_weights_by_hand", "gradient flows through the TIS weight"),
    mutant("grpo.py", "    log_ratio = logp - logp.detach() + log_s[seq_index]", "    log_ratio = logp - old_logp",
           GAP + "test_gspo_by_hand_value_clip_and_gradient", "GSPO with PPO's per-token ratio"),
    mutant("grpo.py", "seq_index, seq_lens.numel()) / seq_lens.clamp(min=1)", "seq_index, seq_lens.numel())",
           GAP + "test_gspo_by_hand_value_clip_and_gradient", "GSPO's sequence ratio not normalised by length"),
    mutant("grpo.py", '"outside": d.abs() > math.log(2.0)}', '"outside": d.abs() > 2.0}',
           GAP + "test_logp_gap_by_hand", "the ratio band [0.5, 2] taken on log-probs"),
    mutant("grpo.py", '"k3": ratio - d - 1.0', '"k3": torch.exp(-d) + d - 1.0',
           GAP + "test_logp_gap_by_hand", "the gap's k3 KL in the other direction"),
    mutant("grpo.py", "        pg = pg * is_weights", "        pass", GAP + "test_tis_weights_only_the_policy_gradient",
           "--tis-cap computes weights and never applies them"),
    mutant("train.py", "and not (cfg.mask_truncated and r.truncated)]", "]",
           GAP + "test_masked_truncated_responses_take_no_part_in_the_update", "--mask-truncated ignored"),
    mutant("metrics.py", '    if not limit or row.get("gap_mean", 0.0) <= limit:', "    if True:",
           (GAP + "test_the_guard_stops_a_run_whose_sampling_copy_is_not_synced",
            GAP + "test_the_guard_stops_a_run_that_tempers_one_side_only"), "--max-logp-gap never stops a run"),
    mutant("metrics.py", "    sampler = torch.tensor([x for r in rollouts for x in r.logprobs], dtype=torch.float64)",
           "    sampler = torch.tensor([x for r in rollouts for x in r.old_logp], dtype=torch.float64)",
           GAP + "test_gap_is_zero_on_cpu_fp32_and_exactly_a_planted_shift", "the gap measured against itself"),
    mutant("update.py", "        sampled = torch.tensor([x for s in mb for x in s.logprobs], device=device)",
           "        sampled = torch.tensor([x for s in mb for x in s.old_logp], device=device)",
           LOOP + "test_loss_and_gradients_do_not_depend_on_the_micro_batch_split",
           "TIS weights from the old policy against itself (always 1)"),
    mutant("update.py", "policy_loss=cfg.policy_loss,", 'policy_loss="grpo",',
           LOOP + "test_loss_and_gradients_do_not_depend_on_the_micro_batch_split", "--policy-loss gspo ignored"),
    mutant("update.py", "    if world > 1 and not mbs and not sharded:\n        join_gradient_all_reduce(ddp_model, device, amp, scaler)",
           "    if False:\n        join_gradient_all_reduce(ddp_model, device, amp, scaler)",
           "tests/test_train.py::test_two_process_ddp_step_equals_one_process",
           "a rank with no sequence never joins the gradient all-reduce (the others wait forever)"),
    # ------------------------------------------------------------------ grpo.py
    mutant("grpo.py", "centred = centred / (r.std(dim=1, unbiased=True, keepdim=True) + eps)",
           "centred = centred / (r.var(dim=1, unbiased=True, keepdim=True) + eps).sqrt()",
           GRPO, "eps inside the square root of the advantage normaliser"),
    mutant("grpo.py", "centred = centred / (r.std(dim=1, unbiased=True, keepdim=True) + eps)",
           "centred = centred / (r.std(dim=1, unbiased=False, keepdim=True) + eps)",
           GRPO, "biased group std"),
    mutant("grpo.py", "if scale and group_size > 1:", "if group_size > 1:", GRPO, "scale=False still divides by the std"),
    mutant("grpo.py", "clipped_surrogate(torch.exp(logp - old_logp),", "clipped_surrogate(torch.exp(old_logp - logp),", GRPO,
           "inverted ratio"),
    mutant("grpo.py", "torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)", "torch.clamp(ratio, 1.0 - clip_high, 1.0 + clip_low)",
           GRPO, "clip bounds swapped (clip-higher lost)"),
    mutant("grpo.py", "return -torch.minimum(unclipped, clipped), clipped < unclipped",
           "return -torch.maximum(unclipped, clipped), clipped < unclipped", GRPO, "pessimistic bound inverted"),
    mutant("grpo.py", "return -torch.minimum(unclipped, clipped), clipped < unclipped",
           "return -torch.minimum(unclipped, clipped), clipped != unclipped", GRPO, "clip flag set when the clip is inactive"),
    mutant("grpo.py", "d = torch.clamp(ref_logp - logp, -20.0, 20.0)", "d = torch.clamp(logp - ref_logp, -20.0, 20.0)",
           GRPO, "k3 of the reverse direction"),
    mutant("grpo.py", "return torch.clamp(torch.exp(d) - d - 1.0, max=10.0)", "return torch.exp(d) - d - 1.0",
           GRPO, "k3 not capped"),
    mutant("grpo.py", "return (values / seq_lens[seq_index].clamp(min=1)).sum() / S", "return values.sum() / S",
           GRPO, "seq-mean-token-mean without the per-sequence mean"),
    mutant("grpo.py", "loss, parts[\"entropy\"] = loss - entropy_coef * entropy", "loss, parts[\"entropy\"] = loss + entropy_coef * entropy",
           GRPO, "entropy penalised instead of rewarded"),
    # ------------------------------------------------------------------ model.py
    mutant("model.py", "h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)",
           "h = h * torch.rsqrt(h.pow(2).sum(-1, keepdim=True) + self.eps)",
           MODEL + "test_logits_match_transformers", "RMSNorm over the sum of squares"),
    mutant("model.py", "rotated = torch.cat([-x2, x1], dim=-1)", "rotated = torch.cat([x2, -x1], dim=-1)",
           MODEL + "test_logits_match_transformers", "RoPE rotates the wrong way"),
    mutant("model.py", "rope_theta=float(theta)", "rope_theta=10000.0",
           MODEL + "test_logits_match_transformers", "config rope_theta ignored"),
    mutant("model.py", "return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))",
           "return self.down_proj(F.silu(self.up_proj(x)) * self.gate_proj(x))",
           MODEL + "test_logits_match_transformers", "SwiGLU gate and up swapped"),
    mutant("model.py", "y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)",
           "y = F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=gqa)",
           MODEL + "test_logits_match_transformers", "attention not causal"),
    mutant("model.py", "self.index = torch.cat([torch.arange(n, device=device) + i * self.L",
           "self.index = torch.cat([torch.arange(n, device=device) + i * n",
           MODEL + "test_packed_rows_equal_separate_sequences", "packed grid rows overlap"),
    mutant("model.py", "logits = self.lm_head(hc).float() / temperature", "logits = self.lm_head(hc).float()",
           MODEL + "test_token_logprobs_chunked_equals_full_log_softmax", "token_logprobs ignores the temperature"),
    mutant("model.py", "return logp, lse - (p * logits).sum(-1)", "return logp, (p * logits).sum(-1) - lse",
           MODEL + "test_token_logprobs_chunked_equals_full_log_softmax", "entropy with the wrong sign"),
    mutant("model.py", 'state = {("" if k == "lm_head.weight" else "model.") + k:', 'state = {"model." + k:',
           MODEL + "test_save_pretrained_loads_in_transformers", "lm_head saved under model."),
    mutant("model.py", "if self.gradient_checkpointing and self.training and torch.is_grad_enabled():",
           "if self.gradient_checkpointing and not self.training and torch.is_grad_enabled():",
           MODEL + "test_gradient_checkpointing_gives_the_same_gradients", "activation checkpointing never runs in training"),
    mutant("model.py", "if not (_SLOW_BF16_CPU and x.dtype == torch.bfloat16 and", "if not (_SLOW_BF16_CPU and x.dtype == torch.float16 and",
           MODEL + "test_cpu_bf16_linear_route_matches_bf16_matmul", "the CPU bf16 route never taken"),
    mutant("model.py", "x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, pack)",
           "x = self.self_attn(self.input_layernorm(x), cos, sin, cache, pack)",
           MODEL + "test_logits_match_transformers", "attention residual dropped"),
    # ------------------------------------------------------------------ data.py
    mutant("data.py", 'random.Random(f"{seed}:{epoch}").shuffle(order)', "random.Random(seed).shuffle(order)",
           DATA + "test_dedupe_shuffle_shard", "every epoch in the same order"),
    mutant("data.py", 'return re.sub(r"[\\s$]+", "", ', 'return re.sub(r"\\s+", "", ',
           DATA + "test_dedupe_shuffle_shard", "dedup key keeps $ signs"),
    mutant("data.py", "answer, solution = final.strip(), worked.strip()", "answer, solution = worked.strip(), final.strip()",
           DATA + "test_field_mapping_gsm8k_amc_lists", "GSM8K answer and worked solution swapped"),
    mutant("data.py", 'R1_TEMPLATE = "<｜begin▁of▁sentence｜>{system}<｜User｜>{content}<｜Assistant｜><think>\\n"',
           'R1_TEMPLATE = "<｜begin▁of▁sentence｜>{system}<｜User｜>{content}<｜Assistant｜><think>"',
           TOKENIZER + "test_r1_special_tokens_templates_and_round_trip", "R1 generation prompt without the newline"),
    mutant("data.py", 'self.enc.encode_ordinary(unicodedata.normalize("NFC", piece) if self.nfc else piece)',
           "self.enc.encode_ordinary(piece)",
           TOKENIZER + "test_r1_special_tokens_templates_and_round_trip", "NFC normaliser not applied"),
    # ------------------------------------------------------------------ sample.py
    mutant("sample.py", "self.mask = (self.slots[:window] <= lens[:, None])", "self.mask = (self.slots[:window] < lens[:, None])",
           SAMPLE + "test_greedy_with_cache_equals_full_forward", "decode does not attend to its own token"),
    mutant("sample.py", "positions=lens[:, None], cache=c)", "positions=lens[:, None] + 1, cache=c)",
           SAMPLE + "test_greedy_with_cache_equals_full_forward", "decode positions off by one"),
    mutant("sample.py", 'take, self.reason[s] = i + 1, "stop"', 'take, self.reason[s] = i, "stop"',
           SAMPLE + "test_stop_ids_and_max_new_tokens", "stop token dropped from the completion"),
    mutant("sample.py", "logp = (logits / temperature).log_softmax(-1)", "logp = logits.log_softmax(-1)",
           SAMPLE + "test_logprobs_equal_a_fresh_forward", "temperature ignored"),
    mutant("sample.py", "before = probs.cumsum(-1) - probs", "before = probs.cumsum(-1)",
           SAMPLE + "test_top_k_and_top_p_keep_only_their_sets", "top-p nucleus one token short"),
    mutant("sample.py", "kth = logp.topk(top_k, dim=-1).values[:, -1:]", "kth = logp.topk(top_k, dim=-1).values[:, :1]",
           SAMPLE + "test_top_k_and_top_p_keep_only_their_sets", "top-k keeps only the top token"),
    mutant("sample.py", "torch.searchsorted(cdf, u * cdf[:, -1:], right=True)", "torch.searchsorted(cdf, u, right=True)",
           SAMPLE + "test_top_k_and_top_p_keep_only_their_sets", "inverse CDF ignores the truncated mass"),
    mutant("sample.py", "rows_of.setdefault(s // self.n, []).append((r, s))", "rows_of.setdefault(s % self.n, []).append((r, s))",
           SAMPLE + "test_continuous_batching_equals_one_at_a_time", "sample rows given the wrong prompt"),
    mutant("sample.py", "if kv_budget is None or kv_budget >= per_row:", "if kv_budget is None or kv_budget > per_row:",
           "tests/test_sample_checks.py::test_kv_budget_rule_is_one_reading_of_gib_and_one_check",
           "a KV budget of exactly one row refused"),
    mutant("sample.py", "return int(kv_gib * 2**30) if kv_gib else None",
           "return int(kv_gib * 2**30) if kv_gib is not None else None",
           "tests/test_sample_checks.py::test_kv_budget_rule_is_one_reading_of_gib_and_one_check",
           "--kv-gib 0 read as a budget of 0 bytes instead of the default"),
    mutant("sample.py", "problem = kv_budget_problem(read_config(a.model), budget, tokens, dtype)",
           "problem = kv_budget_problem(read_config(a.model), None, tokens, dtype)",
           ("tests/test_sample_checks.py::test_cli_kv_gib_0_is_the_default_and_too_little_fails_before_loading",
            EVALUATE + "test_cli_too_small_kv_budget_fails_before_loading"),
           "a --kv-gib too small for one row found only after the weights load"),
    # ------------------------------------------------------------------ evaluate.py
    mutant("evaluate.py", 'texts = [tok.decode(o.tokens[:-1] if o.finish_reason == "stop" else o.tokens) for o in outs]',
           "texts = [tok.decode(o.tokens) for o in outs]", EVALUATE + "test_evaluate_grades_rows_in_problem_order",
           "the stop token decoded into the graded reply"),
    mutant("evaluate.py", '(t, reference_answers(r), r["problem"])', "(t, reference_answers(r))",
           EVALUATE + "test_evaluate_grades_rows_in_problem_order",
           "the problem's text not passed to the grader (a bare choice letter never maps to its value)"),
    mutant("evaluate.py", '(t, reference_answers(r), r["problem"])', '(t, r["answer"], r["problem"])',
           EVALUATE + "test_evaluate_grades_rows_in_problem_order", "only the first of a record's answers accepted"),
    mutant("evaluate.py", "rewards = [reward_of(ok, t, require_think) for ok, t in zip(correct, texts)]",
           "rewards = [reward_of(ok, t, False) for ok, t in zip(correct, texts)]",
           EVALUATE + "test_evaluate_grades_rows_in_problem_order", "evaluation ignores the </think> requirement"),
    mutant("evaluate.py", "sd = math.sqrt(sum((x - mean) ** 2 for x in p1) / (P - 1)) if P > 1 else 0.0",
           "sd = math.sqrt(sum((x - mean) ** 2 for x in p1) / P) if P > 1 else 0.0",
           EVALUATE + "test_pass_at_k_and_summary", "biased standard deviation in the pass@1 confidence interval"),
    mutant("evaluate.py", "if n - c < k:", "if n - c <= k:", EVALUATE + "test_pass_at_k_and_summary",
           "pass@k is 1 one sample too early"),
    mutant("evaluate.py", 'r["index"] = problems.where[r["index"]]', 'r["index"] = r["index"]',
           EVALUATE + "test_cli_drops_prompts_over_the_budget_before_generating",
           "output rows numbered among the kept problems, not by their line in the file"),
    mutant("evaluate.py", "load_problems(a.data, tok, a.prompt_budget, a.template, dedup=False, system=a.system)",
           "load_problems(a.data, tok, a.prompt_budget, a.template)",
           EVALUATE + "test_problems_are_not_deduplicated_so_rows_keep_their_file_index",
           "evaluation drops repeated problems, so rows lose their file index"),
    # ------------------------------------------------------------------ polish.py
    mutant("polish.py", 'return len(MARKERS.findall(text.split("</think>", 1)[0]))', "return len(MARKERS.findall(text))",
           POLISH + "test_selection_rule_prefers_exploratory_chains", "markers counted after </think> too"),
    mutant("polish.py", "key=lambda i: (cands[i][0], cands[i][1], -i))", "key=lambda i: (cands[i][0], -cands[i][1], -i))",
           POLISH + "test_selection_rule_prefers_exploratory_chains", "ties go to the shorter chain"),
    mutant("polish.py", "return 1000.0 * markers(text) / max(tokens, 1)", "return markers(text) / max(tokens, 1)",
           POLISH + "test_selection_rule_prefers_exploratory_chains", "score per token, not per 1,000"),
    mutant("polish.py", "return min(max_positions, max_new_tokens) // 4", "return max(max_positions, max_new_tokens) // 4",
           POLISH + "test_floor_default_and_cap", "length floor not capped"),
    mutant("polish.py", 'if c and fin == "stop" and n >= floor:', "if c and n >= floor:",
           POLISH + "test_rows_schema_acceptance_and_selection", "truncated chains accepted"),
    mutant("polish.py", "c = bool(reward_of(c, x, think))", "c = bool(c)",
           POLISH + "test_rows_schema_acceptance_and_selection", "</think> not required with the R1 template"),
    mutant("parts.py", "good += len(line) + 1", "good += len(line)",
           POLISH + "test_torn_line_and_resume", "torn-line repair cuts into the last good row"),
    mutant("polish.py", "if not tally.accepted and rnd < self.cfg.rounds:", "if not tally.accepted and rnd <= self.cfg.rounds:",
           POLISH + "test_rounds_resample_only_unsolved", "one round more than --rounds"),
    # ------------------------------------------------------------------ precision (fp16 loss scaling)
    mutant("update.py", "    if scaler is not None:\n        scaler.unscale_(opt)\n        scaler.update()\n"
           "    norm = fsdp.whole_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))",
           "    norm = fsdp.whole_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))\n"
           "    if scaler is not None:\n        scaler.unscale_(opt)\n        scaler.update()",
           PRECISION + "test_optimizer_step_unscales_before_clipping_and_an_overflow_halves_the_scale",
           "fp16: gradients clipped (and their norm taken) before the loss scale is divided out"),
    mutant("update.py", "    if not torch.isfinite(norm):", "    if scaler is None and not torch.isfinite(norm):",
           PRECISION + "test_optimizer_step_unscales_before_clipping_and_an_overflow_halves_the_scale",
           "fp16: a step whose gradients overflowed is taken anyway"),
    mutant("update.py", "        scaler.unscale_(opt)\n        scaler.update()\n", "        scaler.unscale_(opt)\n",
           PRECISION + "test_optimizer_step_unscales_before_clipping_and_an_overflow_halves_the_scale",
           "fp16: the loss scale never updated (not halved after an overflow)"),
    mutant("update.py", "            (scaled if scaler is None else scaler.scale(scaled)).backward()",
           "            scaled.backward()",
           PRECISION + "test_a_planted_overflow_is_skipped_counted_and_halves_the_scale",
           "fp16: backward of the unscaled loss (small gradients underflow; the unscale divides them again)"),
    mutant("train.py", "            overflows += math.isfinite(token_means(m, run.world, run.device)[\"loss\"])",
           "            overflows += 0",
           PRECISION + "test_a_planted_overflow_is_skipped_counted_and_halves_the_scale",
           "fp16: an overflow is not counted (it reads as a broken step)"),
    mutant("train.py", "        bad = bad + 1 if update.skipped > update.overflows else 0",
           "        bad = bad + 1 if update.skipped else 0",
           PRECISION + "test_a_planted_overflow_is_skipped_counted_and_halves_the_scale",
           "fp16: an overflow counted towards --max-bad-steps"),
    mutant("train.py", "        if precision.scale_of(start.scaler) < precision.MIN_LOSS_SCALE:", "        if False:",
           PRECISION + "test_gradients_that_overflow_at_any_scale_stop_the_run",
           "fp16: a run whose gradients overflow at every scale goes on halving it forever"),
    mutant("train.py", "        if scaler is not None and state.loss_scaler:", "        if False:",
           PRECISION + "test_resume_is_exact_in_fp16", "resume does not restore fp16's loss scale"),
    mutant("runfolder.py", "loss_scaler=scaler.state_dict() if scaler is not None else None)", "loss_scaler=None)",
           PRECISION + "test_resume_is_exact_in_fp16", "checkpoints do not save fp16's loss scale"),
    mutant("update.py", "    with precision.autocast(device, amp):      # amp: the autocast dtype",
           "    with precision.autocast(device, amp and torch.bfloat16):      # amp: the autocast dtype",
           PRECISION + "test_fp16_gap_is_well_below_bf16s_and_fp32s_is_noise",
           "the trainer's autocast is bf16 whatever --precision says"),
    mutant("train.py", "sampler = copy.deepcopy(policy).to(run.amp or torch.bfloat16)",
           "sampler = copy.deepcopy(policy).to(torch.bfloat16)",
           PRECISION + "test_a_planted_overflow_is_skipped_counted_and_halves_the_scale",
           "the sampling copy is bf16 whatever --precision says"),
    mutant("precision.py", '    return None if name == "fp32" else DTYPES[name]', '    return None if name == "fp32" else torch.bfloat16',
           [PRECISION + "test_precision_names_and_the_amp_flag_it_replaced",
            PRECISION + "test_fp16_gap_is_well_below_bf16s_and_fp32s_is_noise"],
           "--precision fp16 runs in bf16"),
    mutant("update.py", "    (zero if scaler is None else scaler.scale(zero)).backward()", "    zero.backward()",
           "tests/test_train.py::test_two_process_ddp_step_equals_one_process",
           "fp16 under DDP: a rank without sequences never scales, and its unscale_ fails"),
    mutant("grpo.py", '"clip": (ratio < 1.0 - clip_low) | (ratio > 1.0 + clip_high),',
           '"clip": (ratio < 1.0 - clip_low),',
           "tests/test_gap.py::test_gap_clip_column_by_hand",
           "gap_clip counts only ratios below the clip range"),
    # ------------------------------------------------------------------ fsdp.py (--shard)
    mutant("fsdp.py", "        unit.unshard()\n        for name, p in own_parameters(prefix, unit):\n            whole[name].copy_(p)",
           "        for name, p in own_parameters(prefix, unit):\n            whole[name].copy_(p)",
           FSDP + "test_the_sampling_copy_is_the_gathered_policy_after_every_update",
           "the sampling copy takes each rank's slices without the all-gather"),
    mutant("train.py", "        fsdp.gather_into(models.sampler, models.policy)\n        return",
           "        return", FSDP + "test_the_sampling_copy_is_the_gathered_policy_after_every_update",
           "--shard: the sampling copy never re-synced after an update"),
    mutant("update.py", "            model(torch.zeros((1, 1), dtype=torch.long, device=device))\n        fsdp.release(model)",
           "            model(torch.zeros((1, 1), dtype=torch.long, device=device))",
           FSDP + "test_the_sampling_copy_is_the_gathered_policy_after_every_update",
           "--shard: the root stays gathered after the no-grad log-probs (the reference whole on every rank)"),
    mutant("update.py", "    idle = fsdp.most_passes(len(mbs), device) - len(mbs) if sharded else 0", "    idle = 0",
           STEP, "--shard: a rank with fewer micro-batches runs no idle passes (the other waits on its gathers)"),
    mutant("fsdp.py", "    return chunks[rank] if rank < len(chunks) else full[:0]", "    return chunks[0]",
           [FSDP + "test_the_sampling_copy_is_the_gathered_policy_after_every_update",
            FSDP + "test_a_sharded_run_equals_the_ddp_run"],
           "every rank loads rank 0's rows"),
    mutant("fsdp.py", "                part = local_slice(value, mesh.get_local_rank(), mesh.size()).to(p.to_local().device)",
           "                part = local_slice(value, 0, mesh.size()).to(p.to_local().device)",
           FSDP + "test_a_sharded_resume_is_exact", "a sharded resume gives every rank rank 0's AdamW moments"),
    mutant("fsdp.py", "            whole = value.full_tensor() if isinstance(value, DTensor) else value",
           "            whole = value.to_local() if isinstance(value, DTensor) else value",
           FSDP + "test_a_sharded_checkpoint_is_a_whole_hf_folder",
           "rank 0 saves its slice of AdamW's moments instead of the whole tensors"),
    mutant("runfolder.py", "        weights = fsdp.full_state_dict(models.policy, run.rank)", "        weights = None",
           FSDP + "test_a_sharded_checkpoint_is_a_whole_hf_folder",
           "rank 0 writes its own slices of the policy, not the gathered weights"),
    mutant("runfolder.py", "        ref_weights = fsdp.full_state_dict(models.ref, run.rank) if holds_ref else None",
           "        ref_weights = None", FSDP + "test_a_sharded_checkpoint_is_a_whole_hf_folder",
           "rank 0 writes its own slices of a switch's reference"),
    mutant("train.py", "    if cfg.shard and fsdp.refusal(world):", "    if False:",
           FSDP + "test_shard_in_one_process_is_refused", "--shard in one process is not refused up front"),
    # ------------------------------------------------------------------ guided.py (copy check, prompt)
    mutant("guided.py", 'return copied_share(text, original_solution(rec), rec["problem"]) >= COPY_MAX',
           'return copied_share(text, original_solution(rec), rec["problem"]) > COPY_MAX',
           GUIDED + "test_copy_measure_by_hand", "a chain with exactly COPY_MAX of its 6-grams copied passes"),
    mutant("guided.py", 'return copied_share(text, original_solution(rec), rec["problem"]) >= COPY_MAX',
           'return copied_share(text, original_solution(rec), rec["problem"]) < COPY_MAX',
           GUIDED + "test_copy_check_rejects_a_restyled_solution_and_counts_it",
           "copy check flipped: copies accepted, chains of their own rejected"),
    mutant("guided.py", 'grams = [g for g in ngrams(chain.split("</think>", 1)[0]) if g not in in_problem]',
           "grams = [g for g in ngrams(chain) if g not in in_problem]",
           GUIDED + "test_copy_measure_by_hand", "the answer after </think> measured as reasoning"),
    mutant("guided.py", 'grams = [g for g in ngrams(chain.split("</think>", 1)[0]) if g not in in_problem]',
           'grams = ngrams(chain.split("</think>", 1)[0])',
           GUIDED + "test_copy_measure_by_hand", "restating the problem counts as copying the solution"),
    mutant("guided.py", 'WORD = re.compile(r"[^\\W_]+")', 'WORD = re.compile(r"\\S+")',
           GUIDED + "test_copy_measure_by_hand", "words keep their LaTeX delimiters: a restyled copy passes"),
    mutant("guided.py", "for solution in (True, False) if with_solution else (False,):",
           "for solution in (True, False):",
           GUIDED + "test_guided_prompt_exact_text_per_template", "an answer-only guided prompt still gets the solution"),
    # ------------------------------------------------------------------ polish.py (copy check, phase lines)
    mutant("polish.py", "            if guided and copies(x, rec):", "            if False and copies(x, rec):",
           GUIDED + "test_copy_check_rejects_a_restyled_solution_and_counts_it", "the copy check never runs"),
    mutant("polish.py", "                tally.copied += 1", "                tally.copied += 0",
           GUIDED + "test_copy_check_rejects_a_restyled_solution_and_counts_it", "copied chains rejected, not counted"),
    mutant("polish.py", "leaked=tally.leaked, copied=tally.copied)", "leaked=tally.leaked, copied=0)",
           GUIDED + "test_copy_check_rejects_a_restyled_solution_and_counts_it", "the row's copied count lost"),
    mutant("polish.py", "    guided_solution: bool = False", "    guided_solution: bool = True",
           GUIDED + "test_copy_check_rejects_a_restyled_solution_and_counts_it",
           "the guided prompt carries the solution by default"),
    mutant("guided.py", "cfg.prompt_budget, cfg.guided_solution, cfg.system)", "cfg.prompt_budget, False, cfg.system)",
           GUIDED + "test_copy_check_rejects_a_restyled_solution_and_counts_it", "--no-guided-solution ignored"),
    mutant("polish.py", "        if c.free:\n            return", "        if False:\n            return",
           GUIDED + "test_a_line_ends_each_pass", "the free pass's end said after every problem's free rounds"),
    mutant("polish.py", "        self.say(line)", "        pass",
           GUIDED + "test_a_line_ends_each_pass", "the end of the free pass not said"),
    mutant("polish.py", "            c.entered += 1", "            pass",
           GUIDED + "test_a_line_ends_each_pass", "problems entering the guided pass not counted"),
    mutant("polish.py", "self.free_over(p, bool(tally.accepted), to_guided)", "self.free_over(p, False, to_guided)",
           GUIDED + "test_a_line_ends_each_pass", "the free pass's accepted problems not counted"),
    mutant("polish.py", "        if not c.free and not c.guided:", "        if not c.guided:",
           GUIDED + "test_a_line_ends_each_pass", "the guided pass's end said while free rounds are still to come"),
    mutant("polish.py", "        c.copied += tally.copied", "        pass",
           GUIDED + "test_copy_check_rejects_a_restyled_solution_and_counts_it",
           "the guided pass's end line leaves out the copy check's rejections"),
    # ------------------------------------------------------------------ data.py (polish_report)
    mutant("data.py", 'copied, unchecked = sum(x.get("copied", 0) for x in tried), sum(',
           "copied, unchecked = 0, sum(",
           GUIDED + "test_copy_check_rejects_a_restyled_solution_and_counts_it", "stats report no copy rejections"),
    mutant("data.py", 'sum("copied" not in x for x in tried)', "0",
           GUIDED + "test_rows_without_the_copy_count_still_read",
           "rows older than the copy check reported as checked"),
    # ------------------------------------------------------------------ chat templates, stop set, SIGTERM, ETA
    mutant("data.py", 'system = self.template.default_system if name == self.chat_template else ""', 'system = ""',
           TEMPLATE + "test_default_system_text_is_read_and_can_be_dropped_or_replaced",
           "the checkpoint's default system turn left out"),
    mutant("data.py", '''DEFAULT_SYSTEM = re.compile(r"""<\\|im_start\\|>system(?:\\\\n|\\n)([^'"]*?)<\\|im_end\\|>""")''',
           '''DEFAULT_SYSTEM = re.compile(r"""<\\|im_start\\|>system(?:\\\\n|\\n)(.*?)<\\|im_end\\|>""")''',
           TEMPLATE + "test_chatml_templates_render_as_transformers", "the caller's system branch read as the default"),
    mutant("data.py", 'lambda m: {"n": "\\n", "t": "\\t"}.get(m.group(1), m.group(1))', "lambda m: m.group(0)",
           TEMPLATE + "test_default_system_text_is_read_and_can_be_dropped_or_replaced",
           "jinja escapes in the default system text kept"),
    mutant("data.py", 'note = "" if "<think>" in text else (', 'note = "" if True else (',
           TEMPLATE + "test_the_published_r1_templates", "no note for the first R1 revision"),
    mutant("sample.py", "        ids.append(turn_end)", "        pass",
           TEMPLATE + "test_stop_ids_join_config_generation_config_and_the_end_of_turn",
           "the template's end-of-turn token not a stop id"),
    mutant("sample.py", "ids = list(eos) + (read_generation_eos(folder) if folder else [])", "ids = list(eos)",
           TEMPLATE + "test_stop_ids_join_config_generation_config_and_the_end_of_turn",
           "generation_config.json's eos ids ignored"),
    mutant("evaluate.py", "kw = dict(generation_kwargs(a, rank), stop_ids=stops)", "kw = generation_kwargs(a, rank)",
           TEMPLATE + "test_evaluate_samples_with_the_stop_set_and_the_system_text",
           "evaluate.py samples with config.json's eos only"),
    mutant("data.py", "raise SystemExit(143 if isinstance(e, Terminated) else 130)", "raise SystemExit(130)",
           DATA + "test_clean_exit_turns_input_errors_and_ctrl_c_into_one_line", "SIGTERM exits as Ctrl-C"),
    mutant("common.py", "            return max(left) * step_s", "            return sum(left) * step_s",
           ETA + "test_one_wave_is_never_underestimated_and_never_past_the_budget",
           "one wave's time left summed over rows"),
    mutant("common.py", "return (sum(longer) + self.budget * running) / (len(longer) + running)",
           "return (sum(longer) + 0 * running) / (len(longer) + running)",
           ETA + "test_estimate_within_1p5x_of_the_time_left_at_half_the_run",
           "live rows expected to stop where they are"),
    mutant("train.py", "cuda_graphs=cfg.cuda_graphs, stop_ids=stop_ids)", "cuda_graphs=cfg.cuda_graphs)",
           TEMPLATE + "test_train_samples_and_warms_up_with_the_template_the_stop_set_and_the_system_text",
           "rollouts stop at config.json's eos only"),
    mutant("train.py", "eos = [end] if end is not None else run.tok.eos_ids[:1]", "eos = run.tok.eos_ids[:1]",
           TEMPLATE + "test_train_samples_and_warms_up_with_the_template_the_stop_set_and_the_system_text",
           "warm-up demonstrations end with the eos, not the turn's end"),
    mutant("train.py", "found = load_problems(path, tok, cfg.prompt_budget, cfg.template or None, system=cfg.system)",
           "found = load_problems(path, tok, cfg.prompt_budget, cfg.template or None)",
           TEMPLATE + "test_train_samples_and_warms_up_with_the_template_the_stop_set_and_the_system_text",
           "--system ignored by train.py"),
    mutant("train.py", "    if len(train_recs) < cfg.prompts_per_step:", "    if False:",
           "tests/test_train_fail_fast.py::test_fewer_problems_than_prompts_per_step_is_said_once",
           "problems drawn twice in a step without a word"),
    mutant("polish.py", "generate(self.model, prompts, n=cfg.samples, stop_ids=self.stops,",
           "generate(self.model, prompts, n=cfg.samples, stop_ids=None,",
           TEMPLATE + "test_polish_samples_with_the_stop_set_and_the_system_text_in_both_passes",
           "polish.py samples with config.json's eos only"),
    mutant("guided.py", "ids = tok.encode_chat(guided_text(rec, solution), template, system)",
           "ids = tok.encode_chat(guided_text(rec, solution), template)",
           TEMPLATE + "test_polish_samples_with_the_stop_set_and_the_system_text_in_both_passes",
           "--system ignored by the guided prompt"),
    mutant("data.py", 'how = "stopped by SIGTERM" if isinstance(e, Terminated) else "interrupted"', 'how = "interrupted"',
           "tests/test_polish.py::test_kill_and_restart", "SIGTERM's line says interrupted"),
    mutant("runfolder.py", '"chat_template.jinja", "generation_config.json"):', '"chat_template.jinja"):',
           TEMPLATE + "test_train_samples_and_warms_up_with_the_template_the_stop_set_and_the_system_text",
           "a checkpoint loses generation_config.json's stop ids"),
]

# ------------------------------------------------------------------ verify.py (and forms.py, answers.py, beneath it)
VERIFY = ("tests/test_verify.py", "tests/test_verify_hostile.py")
EMPTY = "tests/test_verify_empty.py"
FORMS = "tests/test_verify_forms.py"
VERIFY_MUTANTS = [
    mutant("answers.py", 's = response[response.rfind("</think>") + 8:]', 's = response[response.find("</think>") + 8:]',
           VERIFY, "the answer read after the first </think> instead of the last"),
    mutant("verify.py", 'return 1.0 if correct and (not require_think or "</think>" in response) else 0.0',
           "return 1.0 if correct else 0.0", VERIFY, "the reward ignores the </think> requirement"),
    mutant("verify.py", "    if answer is None or (isinstance(answer, float) and math.isnan(answer)):\n        return []\n",
           '    if answer is None:\n        return [normalize("None")]\n', VERIFY,
           "a None reference matches an answer that says None"),
    mutant("answers.py", 'if len(letters) < 2 or letters != list("ABCDE"[:len(letters)]):', "if len(letters) < 2:",
           VERIFY, "choices accepted out of order, so a letter maps to the wrong value"),
    mutant("verify.py", "    for r in refs:\n        if not r or len(r) > MAX_LEN:",
           "    for r in refs[:1]:\n        if not r or len(r) > MAX_LEN:", VERIFY,
           "only the first of several equivalent reference forms is compared"),
    # a box that holds nothing: each guard planted back to the old vacuous rule, one at a time
    mutant("verify.py", "        if len(A) < 2 or not all(A):\n            return False\n        why = list(self.why)",
           "        why = list(self.why)", EMPTY,
           "the repeated-value rule accepts no items (all() of nothing is True): \\boxed{.} scores"),
    mutant("verify.py", "    if not ans:   #", "    if False:   #", EMPTY,
           "an answer that normalises to nothing goes on to the comparison"),
    mutant("verify.py", "        if not a:\n            self.note(NO_ANSWER)", "        if False:\n            self.note(NO_ANSWER)",
           EMPTY, "a part of the answer that holds nothing is compared"),
    mutant("verify.py", "        if not A:   #", "        if False:   #", EMPTY,
           "an answer that is only list separators ('and', ', ;') has no items and is compared"),
    mutant("forms.py", "    if named and named[1]:\n        return named[1]\n", "    if named:\n        return named[1]\n",
           EMPTY, "'x =' reduced to its empty right side"),
    mutant("verify.py", "        if not all(ap):", "        if not any(ap):", EMPTY,
           "a relation with a side missing ('x <') compared as an inequality"),
    mutant("verify.py", "return len(R) == len(A) > 0 and all(", "return len(R) == len(A) and all(", EMPTY,
           "two empty item lists compared pairwise are equal"),
    mutant("verify.py", "        if not R or not A:\n            return False", "        if not A:\n            return False",
           EMPTY, "an empty reference list matches any answer as a set"),
    # the answer forms of tests/test_verify_forms.py: each rule planted back to what it replaced
    mutant("latex.py", "        if self.k[self.i][0] == _NUMBER and self.k[self.i - 1][0] == _NUMBER:", "        if False:",
           FORMS, "two plain numbers side by side read as a product: \\boxed{1 000} is 0"),
    mutant("answers.py", r'(r"(?<![\d.])(?<!\d )\d{1,3}(?: \d{3})+(?!\d| \d)", _no_spaces),', r'(r"(?!)", _no_spaces),',
           FORMS, "'1 000' is not read as a thousands separator"),
    mutant("answers.py", r'(r"(?<![\w.^_}/\\])(?<!\d )(\d+) (\d+)/(\d+)(?![\d.^])", _mixed)', r'(r"(?!)(\d)(\d)(\d)", _mixed)',
           FORMS, "'2 1/2' is not read as a mixed number"),
    mutant("forms.py", '        return None if _has_letters(p[-1]) else ("", p[-1])', '        return "", p[-1]',
           FORMS, "'7 = 11a+c' reduced to the value 11a+c"),
    mutant("forms.py", "    glue = _NAME_SUM_GLUE if sums else _NAME_GLUE", "    glue = _NAME_SUM_GLUE",
           FORMS, "a reference plane 'x + y + z = 0' reduced to the value 0"),
    mutant("verify.py", '        if _single_name(r[0]) or _single_name(a[0]) or r[0].replace(" ", "") == a[0].replace(" ", ""):',
           "        if True:", FORMS, "'x:y = 3:5' equals 'y:x = 3:5': names ignored where they say what is given"),
    mutant("verify.py", "        groups = _solutions(a, k) if all(len(s[2]) == k for s in seqs) else None", "        groups = None",
           FORMS, "solutions grouped by ';' ('x=2, y=3; x=3, y=2') not read as tuples"),
    mutant("forms.py", "    if len(items) == 1:   # coordinates separated by ';'", "    if False:   # coordinates separated by ';'",
           FORMS, "a tuple written '(2; 3)' not read"),
    mutant("forms.py", "        elif len(parts) > 1:\n            item = parts[0]", "        elif len(parts) > 1:\n            item = parts[-1]",
           FORMS, "the rounded part after \\approx graded instead of the exact part"),
    mutant("answers.py", '    ("\\\\simeq", "\\\\approx")]', "    ]", FORMS, "\\simeq not read as \\approx"),
    mutant("forms.py", "    return out[::-1], ops[::-1]", "    return out, ops",
           FORMS, "'-x > -1' multiplied by -1 without turning the relation round"),
    mutant("verify.py", "        if (sr or sa) and not (_split(r, _REL)[1] and _split(a, _REL)[1]):", "        if sr or sa:",
           FORMS, "'2x < 2' against 'x < 1' refused because only one side reads as an interval"),
    mutant("forms.py", "    if _MATRIX.match(s[1:-1].strip()):", "    if False:",
           FORMS, "a bracketed array is not a matrix"),
    mutant("answers.py", "        s = s[1:-1].strip()\n    return s", "        break\n    return s",
           FORMS, "grouping braces read as a set: \\boxed{{}} is the empty set"),
    mutant("answers.py", "    return _DOUBLED.sub(r\"\\\\\", s)", "    return s",
           FORMS, "a doubled backslash before a command name not folded"),
    mutant("answers.py", '    if "\\\\\\\\" not in s or _REAL_BEGIN.search(s):', '    if "\\\\\\\\" not in s:',
           FORMS, "a real matrix's line break folded into a command"),
    mutant("verify.py", "        if cr != ca:\n            return None", "        if False:\n            return None",
           FORMS, "powers of different bases compared by their exponents: 3^{65536} is 2^{65536}"),
    mutant("verify.py", '        er = pr[1] if kr == 1 else f"{kr}\\\\cdot({pr[1]})"', "        er = pr[1]",
           FORMS, "4^{32768} compared as if it were 2^{32768}"),
    mutant("verify.py", '        if (r + a).count("^") > MAX_DEPTH or max(depths(r + a), default=0) > MAX_DEPTH:',
           "        if max(depths(r + a), default=0) > MAX_DEPTH:",
           FORMS, "an unbraced tower of 490 powers recursed through until Python's recursion limit"),
    mutant("verify.py", "        if _ELLIPSIS in R or _ELLIPSIS in A:", "        if False:",
           FORMS, "a sequence with an ellipsis compared as a set: '10, 2, \\ldots, 1' is '1, 2, \\ldots, 10'"),
    mutant("answers.py", '    if "..." in s or "dots" in s:', "    if False:",
           FORMS, "'1, 2, 3, ...' graded as the list 1, 2, 3"),
]

# Changes that look like bugs and are not: listed with the reason, never run or counted.
EQUIVALENT = [
    (mutant("update.py", "pos += range(len(full))", "pos += range(start, start + len(full))", (),
            "positions run on across the packed row instead of restarting per sequence"),
     "each sequence attends only to itself, and RoPE's attention scores depend only on the distance "
     "between two positions, so shifting all of a sequence's positions by one offset changes nothing "
     "but rounding"),
    (mutant("sample.py", "return tok, logp.gather(-1, tok[:, None])[:, 0]", "return tok, filt.gather(-1, tok[:, None])[:, 0]",
            (), "log-prob taken after top-k/top-p truncation"),
     "filt is logp with the dropped tokens set to -inf and is never renormalised; the sampled token "
     "is always a kept one, so both read the same number"),
    (mutant("data.py", "return repr(value)", "return str(value)", (), "numbers read with str()"),
     "for int and float, str() and repr() are the same in Python 3 (27.0 stays '27.0')"),
    (mutant("fsdp.py", "    return norm.full_tensor() if DTensor is not None and isinstance(norm, DTensor) else norm",
            "    return norm.to_local() if DTensor is not None and isinstance(norm, DTensor) else norm", (),
            "--shard: the gradient norm read from this rank's local tensor"),
     "clip_grad_norm_ over FSDP2's gradients returns the norm already reduced over the ranks "
     "(placement Replicate, torch 2.13), so the local tensor is the whole norm; full_tensor() is "
     "for a torch that returns it unreduced"),
]


def check_texts(mutants, need_tests: bool = True) -> list:
    """Problems with the mutants' original texts: each must occur exactly once in its file."""
    problems = []
    for m in mutants:
        text = (REPO / m.file).read_text(encoding="utf-8")
        n = text.count(m.old)
        if n != 1:
            problems.append(f"{m.file}: the original text of '{m.bug}' occurs {n} times (must be once): {m.old!r}")
        if need_tests and not m.tests:
            problems.append(f"{m.file}: '{m.bug}' selects no tests")
    return problems


def make_copy(root: Path) -> Path:
    """A copy of the repository under root (no .git, caches or runs), with ../shared linked."""
    dest = root / REPO.name
    ignore = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "runs", "*.pyc")
    shutil.copytree(REPO, dest, ignore=ignore)
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (root / "shared").symlink_to(shared)
    return dest


def preload():
    """Import the heavy libraries once, before forking; none of them imports the project's files."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"          # also for the tests' own subprocesses
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"   # no third-party pytest plugin is used
    import pytest  # noqa: F401
    import torch  # noqa: F401
    try:
        import transformers
        # transformers imports lazily: touching the classes loads their modules now
        transformers.AutoModelForCausalLM, transformers.Qwen2ForCausalLM, transformers.LlamaForCausalLM
    except ImportError:
        pass


def child(copy: Path, tests, log: Path):
    """In a forked child: run pytest on tests inside copy, output to log; never returns."""
    code = 3
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.setpgid(0, 0)                 # its own process group, so a timeout kills what it started
        os.chdir(copy)
        here = {str(REPO), str(REPO / "tests")}
        sys.path[:] = [str(copy)] + [x for x in sys.path if x and os.path.abspath(x) not in here]
        sys.dont_write_bytecode = True
        import pytest
        code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests]))
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def start(copy: Path, tests, log: Path) -> int:
    """Fork a child running tests in copy; returns its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        child(copy, tests, log)
    return pid


def verdict(code) -> str:
    """pytest's exit code -> killed (tests failed, collection broke, or timeout), survived, or error
    (a selection that ran nothing or was not understood: the mutant list needs fixing)."""
    if code == 0:
        return "survived"
    if code in (1, 2, "timeout"):
        return "killed"
    return "error"


def tail(log: Path, n: int = 2000) -> str:
    """The end of a child's output, for a report."""
    return log.read_text(errors="replace")[-n:] if log.exists() else ""


def run_all(chosen, root: Path, workers: int) -> list:
    """Test every mutant, `workers` at a time, each worker in its own copy. Returns
    (verdict, seconds) per mutant and prints a line as each finishes."""
    slots = []
    for k in range(max(1, workers)):
        (root / f"w{k}").mkdir()
        slots.append(dict(copy=make_copy(root / f"w{k}"), log=root / f"w{k}.log", pid=None))
    todo = list(range(len(chosen)))
    results = [None] * len(chosen)
    while todo or any(sl["pid"] for sl in slots):
        for sl in slots:
            if sl["pid"] is None and todo:
                i = todo.pop(0)
                m = chosen[i]
                path = sl["copy"] / m.file
                sl.update(i=i, path=path, original=path.read_text(encoding="utf-8"), t0=time.time())
                if sl["original"].count(m.old) != 1:     # the file changed since the check: never a silent no-op
                    results[i] = ("error", 0.0)
                    print(f"ERROR    {m.file}: the original text of '{m.bug}' is not in the copy once", flush=True)
                    continue
                path.write_text(sl["original"].replace(m.old, m.new, 1), encoding="utf-8")
                sl["pid"] = start(sl["copy"], m.tests, sl["log"])
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for sl in slots:
                if sl["pid"] and time.time() - sl["t0"] > TIMEOUT_S and not sl.get("timed_out"):
                    sl["timed_out"] = True
                    try:
                        os.killpg(sl["pid"], signal.SIGKILL)
                    except ProcessLookupError:   # it ended meanwhile; waitpid collects it next
                        pass
            time.sleep(0.05)
            continue
        sl = next(x for x in slots if x["pid"] == pid)
        code = "timeout" if sl.pop("timed_out", False) else os.waitstatus_to_exitcode(status)
        sl["path"].write_text(sl["original"], encoding="utf-8")
        sl["pid"] = None
        m, secs, v = chosen[sl["i"]], time.time() - sl["t0"], verdict(code)
        results[sl["i"]] = (v, secs)
        print(f"{v.upper():8} {secs:5.1f}s  {m.file:9} {m.bug}", flush=True)
        if v == "error":
            print(tail(sl["log"]), flush=True)
    return results


def main(argv=None):
    """Check every mutant's text, run the baseline, run the mutants, report; exit 2 on errors."""
    ap = argparse.ArgumentParser(description="Apply plausible one-line bugs one at a time and run the tests that should catch them.")
    ap.add_argument("--only", default="", help="run only the mutants whose file, bug or tests contain this text")
    ap.add_argument("--workers", type=int, default=2, help="mutants tested in parallel, each in its own copy")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run of every selected test on unmodified code")
    ap.add_argument("--list", action="store_true", help="print the mutants and the equivalent changes, run nothing")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS + VERIFY_MUTANTS
              if not args.only or any(args.only in x for x in (m.file, m.bug, *m.tests))]
    problems = check_texts(chosen) + check_texts([m for m, _ in EQUIVALENT], need_tests=False)
    if not chosen:
        problems.append(f"no mutant matches --only {args.only!r}")
    if args.list:
        for m in chosen:
            print(f"{m.file:9} {m.bug}\n          {m.old!r} -> {m.new!r}\n          {' '.join(m.tests)}")
        for m, why in EQUIVALENT:
            print(f"equivalent: {m.file} {m.old!r} -> {m.new!r}: {why}")
    if problems:
        print("\n".join(problems))
        sys.exit(2)
    if args.list:
        return
    preload()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        root = Path(tmp)
        if not args.no_baseline:
            tests = sorted({t for m in chosen for t in m.tests})
            (root / "baseline").mkdir()
            pid = start(make_copy(root / "baseline"), tests, root / "baseline.log")
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            print(f"baseline: {len(tests)} test selections on unmodified code, {time.time() - t0:.0f}s: "
                  f"{'pass' if code == 0 else 'FAIL'}", flush=True)
            if code != 0:
                print(tail(root / "baseline.log"))
                sys.exit(2)
        results = run_all(chosen, root, args.workers)
    verdicts = [r[0] for r in results]
    survivors = [m for m, v in zip(chosen, verdicts) if v == "survived"]
    errors = [m for m, v in zip(chosen, verdicts) if v == "error"]
    print(f"\n{len(EQUIVALENT)} equivalent changes, not counted:")
    for m, why in EQUIVALENT:
        print(f"  {m.file}: {m.bug}: {why}")
    if survivors:
        print("survivors:")
        for m in survivors:
            print(f"  {m.file}: {m.bug} ({' '.join(m.tests)})")
    if errors:
        print("errors (fix the selection):", *[f"{m.file}: {m.bug}" for m in errors], sep="\n  ")
    print(f"{time.time() - t0:.0f}s, {args.workers} workers")
    print(f"killed {verdicts.count('killed')} of {len(chosen)} mutants")
    if errors:
        sys.exit(2)


if __name__ == "__main__":
    main()
