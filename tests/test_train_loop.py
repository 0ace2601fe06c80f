"""train.py's GRPO arithmetic against quantities computed another way (CPU, fp32, seconds).

- the trainer's log-probs of a packed micro-batch == the sampler's Completion.logprobs;
- on fresh samples the ratio is 1, nothing is clipped, the loss is -token-mean(A) and its
  gradient is that of -sum(A * log p) / tokens over plain unpacked forwards;
- loss and gradients do not depend on how a mini-batch is packed into micro-batches;
- each sample's advantage is grpo.group_advantages of its group's (canned) rewards;
- one in-process train.main run: every step trains on new prompts, mini-batches are whole
  groups, old and reference log-probs come from the right weights, the bf16 sampling copy
  equals the policy after every update.
"""
import copy
import json

import pytest
import torch

import grpo
import toy
import train
from data import Tokenizer
from model import ModelConfig, Packing, Transformer
from sample import generate

CPU = torch.device("cpu")
T = 0.7                      # the sampling temperature; the trainer must score at the same one
N_SAMPLES = 2
TINY = dict(model_type="qwen2", vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, eos_token_id=[3])
PROMPTS = [[5, 6, 7], [8] * 11, [1], list(range(10, 40)), [9, 10, 11, 12, 13], [20, 21, 22, 23]]
# Canned rewards, two samples per prompt; groups differ so that one group's slot is not another's.
REWARDS = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 3.0, 0.0, 2.0, 0.5]


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def tiny_model(seed=0):
    """A float32 model whose weights are large enough that its distributions are far from uniform
    (so that scoring at the wrong temperature or position changes every log-prob)."""
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(**TINY))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def fresh_rollout(model):
    """Rollouts as train.rollout leaves them: prompt, sampled tokens, the sampler's log-probs
    (also as old_logp: fresh samples), canned rewards and their advantages; lengths differ (a
    stop id ends some)."""
    outs = generate(model, PROMPTS, n=N_SAMPLES, max_new_tokens=9, temperature=T, seed=5)
    adv = grpo.group_advantages(torch.tensor(REWARDS), N_SAMPLES)
    seqs = []
    for i, o in enumerate(outs):
        seqs.append(train.Rollout(prompt=PROMPTS[i // N_SAMPLES], tokens=o.tokens, logprobs=o.logprobs,
                                  reward=REWARDS[i], correct=REWARDS[i] > 0, advantage=float(adv[i]),
                                  truncated=o.finish_reason == "length", group=i // N_SAMPLES, text="",
                                  old_logp=list(o.logprobs)))
    assert len({len(s.tokens) for s in seqs}) > 1
    return seqs


def plain_logprobs(model, s, temperature, with_entropy=False):
    """log p of s's completion tokens from one unpacked forward over prompt + tokens, (n,),
    and the entropy of each of those tempered distributions if asked."""
    ids = torch.tensor([s.prompt + s.tokens])
    P = len(s.prompt)
    logp_all = (model(ids)[0, P - 1:-1].float() / temperature).log_softmax(-1)   # (n, V)
    logp = logp_all.gather(-1, torch.tensor(s.tokens)[:, None])[:, 0]
    if not with_entropy:
        return logp
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def expected_loss(model, seqs, cfg):
    """The mini-batch loss written out from plain forwards: grpo_token_loss per sequence, then
    the aggregation of cfg.loss_agg spelled out over the whole mini-batch."""
    per_seq = []
    for s in seqs:
        logp, ent = plain_logprobs(model, s, cfg.temperature, with_entropy=True)
        adv = torch.full_like(logp, s.advantage)
        one = torch.zeros(len(logp), dtype=torch.long)            # every token is this one response's
        old = torch.tensor(s.old_logp)
        weights = None
        if cfg.tis_cap:
            weights = grpo.tis_weights(old, torch.tensor(s.logprobs), cfg.tis_cap, cfg.tis_level, one, 1)
        tok_loss, _ = grpo.grpo_token_loss(logp, old, torch.tensor(s.ref_logp), ent, adv,
                                           cfg.clip_low, cfg.clip_high, cfg.kl_coef, cfg.entropy_coef,
                                           policy_loss=cfg.policy_loss, seq_index=one,
                                           seq_lens=torch.tensor([len(logp)]), is_weights=weights)
        per_seq.append(tok_loss)
    n_tok, n_seq = sum(len(x) for x in per_seq), len(per_seq)
    if cfg.loss_agg == "token-mean":
        return sum(x.sum() for x in per_seq) / n_tok
    if cfg.loss_agg == "seq-mean-token-mean":
        return sum(x.mean() for x in per_seq) / n_seq
    return sum(x.sum() for x in per_seq) / (n_seq * cfg.ctx)


def grads_of(model):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


# ----------------------------------------------------------------------------- the arithmetic

@pytest.mark.parametrize("layout", ["ragged", "similar"])
def test_packed_logprobs_equal_the_samplers(layout):
    """forward_logprobs over several sequences packed in one row (prompt lengths 1 to 30) gives
    exactly the log-probs the sampler reported, which are of the tempered distribution."""
    model = tiny_model()
    seqs = fresh_rollout(model)
    mb = seqs if layout == "ragged" else [s for s in seqs if len(s.prompt) in (3, 4, 5)]
    lens = [len(s.prompt) + len(s.tokens) for s in mb]
    assert Packing(lens, CPU).grid == (layout == "similar")   # both attention paths of a packed row
    with torch.no_grad():
        logp = train.forward_logprobs(model, model, mb, T, CPU, amp=False, with_entropy=False)
    want = torch.tensor([x for s in mb for x in s.logprobs])
    torch.testing.assert_close(logp, want, rtol=0, atol=1e-5)


def test_fresh_samples_give_ratio_one_and_loss_minus_token_mean_advantage():
    """train_minibatch on fresh samples (old_logp = the sampler's): nothing clipped, loss ==
    -sum(A_i * n_i) / sum(n_i), and the gradient equals that of -sum_i A_i sum_t log p_it / N
    written out over plain per-sequence forwards."""
    model = tiny_model()
    seqs = fresh_rollout(model)
    cfg = train.Config(temperature=T, kl_coef=0.0, entropy_coef=0.0, loss_agg="token-mean", micro_tokens=60)
    assert len(train.pack(seqs, cfg.micro_tokens)) > 2                     # several micro-batches
    model.zero_grad()
    m = train.train_minibatch(model, model, seqs, loss_fn=train.grpo_loss, temperature=cfg.temperature, cfg=cfg,
                              device=CPU, world=1, amp=False)
    got = grads_of(model)
    n_tok = sum(len(s.tokens) for s in seqs)
    want = -sum(s.advantage * len(s.tokens) for s in seqs) / n_tok
    assert m["loss"] == pytest.approx(want, abs=1e-6)
    assert m["clipped"] == 0.0 and m["tokens"] == n_tok                      # clipped tokens, tokens
    model.zero_grad()
    ref = -sum(s.advantage * plain_logprobs(model, s, T).sum() for s in seqs) / n_tok
    ref.backward()
    for a, b in zip(got, grads_of(model)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert sum(float(g.abs().sum()) for g in got) > 0


def test_the_update_scores_tokens_at_the_sampling_temperature():
    """update_policy, as the GRPO step calls it, on fresh samples: the policy's log-probs equal the
    sampler's only at the sampling temperature, so the ratio is 1, nothing is clipped and the
    loss is minus the token-mean advantage."""
    model = tiny_model()
    seqs = fresh_rollout(model)
    cfg = train.Config(temperature=T, kl_coef=0.0, entropy_coef=0.0, updates_per_step=1, lr=0.0)
    run = train.Run(cfg=cfg, rank=0, world=1, device=CPU, amp=False, tok=None, require_think=False)
    models = train.Models(policy=model, ddp=model, sampler=model, ref=None)
    update = train.update_policy(run, models, torch.optim.AdamW(model.parameters(), lr=0.0), seqs)
    means = train.token_means(update.sums, 1, CPU)
    n_tok = sum(len(s.tokens) for s in seqs)
    assert means["clip_frac"] == 0.0
    assert means["loss"] == pytest.approx(-sum(s.advantage * len(s.tokens) for s in seqs) / n_tok, abs=1e-6)


@pytest.mark.parametrize("loss_agg", grpo.AGGREGATIONS)
@pytest.mark.parametrize("variant", [dict(), dict(policy_loss="gspo", clip_low=3e-4, clip_high=4e-4),
                                     dict(tis_cap=2.0), dict(tis_cap=1.5, tis_level="sequence")],
                         ids=["grpo", "gspo", "tis", "tis-seq"])
def test_loss_and_gradients_do_not_depend_on_the_micro_batch_split(loss_agg, variant):
    """The same mini-batch packed as one micro-batch, a few, or one sequence each: the same
    summed loss, clip count and gradients (clipping, KL and entropy all active), for GRPO's
    ratio, GSPO's, and both levels of truncated importance sampling."""
    model = tiny_model()
    seqs = fresh_rollout(model)
    g = torch.Generator().manual_seed(0)
    for s in seqs:  # an old policy and a reference that differ from the current one
        n = len(s.tokens)
        s.old_logp = (torch.tensor(s.logprobs) + 0.3 * torch.randn(n, generator=g)).tolist()
        s.ref_logp = (torch.tensor(s.logprobs) + 0.3 * torch.randn(n, generator=g)).tolist()
    results = []
    for micro_tokens in (10**6, 60, 1):
        cfg = train.Config(temperature=T, kl_coef=0.1, entropy_coef=0.01, loss_agg=loss_agg, ctx=9,
                           micro_tokens=micro_tokens, **variant)
        model.zero_grad()
        m = train.train_minibatch(model, model, seqs, loss_fn=train.grpo_loss, temperature=cfg.temperature, cfg=cfg,
                                  device=CPU, world=1, amp=False)
        results.append((len(train.pack(seqs, micro_tokens)), m, grads_of(model)))
    assert [r[0] for r in results] == [1, len(train.pack(seqs, 60)), len(seqs)] and results[1][0] > 2
    (_, m0, g0), rest = results[0], results[1:]
    assert 0 < m0["clipped"] < m0["tokens"]                                 # some tokens (responses) clipped
    with torch.no_grad():
        want = expected_loss(model, seqs, cfg)
    assert m0["loss"] == pytest.approx(float(want), abs=1e-5)
    for _, m, grads in rest:
        torch.testing.assert_close(m, m0, rtol=1e-5, atol=1e-6)
        for a, b in zip(grads, g0):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_warm_up_loss_is_the_mean_negative_log_likelihood():
    """sft=True: -sum(log p) / tokens under the untempered model, gradients included."""
    model = tiny_model()
    seqs = [train.Sequence(prompt=s.prompt, tokens=s.tokens) for s in fresh_rollout(model)]
    cfg = train.Config(temperature=T, micro_tokens=60)
    model.zero_grad()
    m = train.train_minibatch(model, model, seqs, loss_fn=train.sft_loss, temperature=1.0, cfg=cfg, device=CPU,
                              world=1, amp=False)
    got = grads_of(model)
    n_tok = sum(len(s.tokens) for s in seqs)
    model.zero_grad()
    want = -sum(plain_logprobs(model, s, 1.0).sum() for s in seqs) / n_tok
    want.backward()
    assert m["loss"] == pytest.approx(float(want.detach()), abs=1e-5)
    for a, b in zip(got, grads_of(model)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scale_adv", [True, False])
def test_each_sample_gets_its_groups_advantage(monkeypatch, scale_adv):
    """train.rollout with grading replaced by canned rewards: sample i keeps its own completion,
    prompt, group, reward, and the advantage group_advantages gives it."""
    model = tiny_model()
    seen = {}

    def canned_grade(tok, outs, recs, require_think):
        """The rewards above, whatever was sampled; records what it was asked to grade."""
        seen.update(n=len(outs), refs=[r["answer"] for r in recs])
        return [""] * len(outs), [r > 0 for r in REWARDS], list(REWARDS)

    monkeypatch.setattr(train, "grade_samples", canned_grade)
    recs = [dict(prompt_ids=p, problem=f"problem {i}", answer=str(i)) for i, p in enumerate(PROMPTS)]
    cfg = train.Config(samples=N_SAMPLES, ctx=9, temperature=T, scale_adv=scale_adv)
    seqs, _ = train.rollout(model, None, recs, cfg, seed=5, require_think=False)
    outs = generate(model, PROMPTS, n=N_SAMPLES, max_new_tokens=9, temperature=T, seed=5)
    adv = grpo.group_advantages(torch.tensor(REWARDS), N_SAMPLES, scale=scale_adv)
    assert seen == dict(n=len(REWARDS), refs=[str(i // N_SAMPLES) for i in range(len(REWARDS))])
    assert len(seqs) == len(REWARDS)
    for i, s in enumerate(seqs):
        assert (s.prompt, s.tokens, s.logprobs) == (PROMPTS[i // N_SAMPLES], outs[i].tokens, outs[i].logprobs)
        assert (s.group, s.reward) == (i // N_SAMPLES, REWARDS[i])
        assert s.advantage == pytest.approx(float(adv[i]), abs=1e-6), i


def test_pack_keeps_every_sequence_once_within_the_budget():
    lengths = [(3, 4), (10, 9), (2, 1), (5, 5), (30, 2), (4, 4)]      # (prompt, completion)
    seqs = [train.Sequence(prompt=[1] * p, tokens=[2] * t) for p, t in lengths]
    mbs = train.pack(seqs, 20)
    assert sorted(id(s) for mb in mbs for s in mb) == sorted(id(s) for s in seqs)
    for mb in mbs:
        total = sum(len(s.prompt) + len(s.tokens) for s in mb)
        assert total <= 20 or len(mb) == 1                                 # a longer one goes alone
    assert len(mbs) == 4                                                   # 3|7|8 . 10 . 19 . 32
    assert [len(mb) for mb in train.pack(seqs, 10**6)] == [6]


def test_groups_with_signal_are_those_whose_rewards_differ():
    """The dynamic-sampling filter and the zero_var metric: a group with one distinct reward has
    all advantages 0, whatever its size."""
    rewards = {0: [1.0, 1.0, 1.0], 1: [0.0, 1.0], 2: [0.0], 3: [0.5, 0.0, 0.5], 4: [0.0, 0.0]}
    rollouts = [train.Rollout(prompt=[1], tokens=[2], logprobs=[-1.0], reward=r, correct=r > 0, advantage=0.0,
                              truncated=False, group=g, text="") for g, rs in rewards.items() for r in rs]
    assert train.groups_with_signal(rollouts) == {1, 3}


def test_rollout_seed_keeps_its_values():
    """The sampler's seed per (seed, step, refill round, rank): hand-computed, so that a refactor
    cannot change what a resumed run samples or the toy's curves."""
    assert train.rollout_seed(1, 2, 3, 4) == 1_002_316           # 1 * 1_000_003 + 2 * 1009 + 3 * 97 + 4
    assert train.rollout_seed(0, 0, 0, 0) == 0
    seeds = {train.rollout_seed(7, step, rnd, rank) for step in range(50) for rnd in range(10) for rank in range(97)}
    assert len(seeds) == 50 * 10 * 97                             # distinct within the documented ranges


def test_optimizer_step_clips_steps_and_clears():
    """The pre-clip norm is returned, the step uses the clipped gradient, no gradient is left
    for the next mini-batch; a non-finite gradient skips the step."""
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    lin.weight.grad = torch.tensor([[3.0, 4.0]])
    assert train.optimizer_step(lin, opt, grad_clip=1.0) == pytest.approx(5.0)
    torch.testing.assert_close(lin.weight.detach(), torch.tensor([[-0.6, -0.8]]))   # (3, 4) / 5
    assert lin.weight.grad is None
    lin.weight.grad = torch.tensor([[float("nan"), 1.0]])
    assert train.optimizer_step(lin, opt, grad_clip=1.0) is None
    torch.testing.assert_close(lin.weight.detach(), torch.tensor([[-0.6, -0.8]]))
    assert lin.weight.grad is None


# ----------------------------------------------------------------------------- one run of train.main

class Recorder:
    """Wraps train.py's step functions during a run of train.main and keeps what they saw."""

    def __init__(self):
        self.prompts = []        # per rollout: the prompt ids of its records
        self.synced = []         # per rollout after the first update: (sampler dtype, copy == policy)
        self.minibatches = []    # per train_minibatch call: (rollout index, copies of its sequences)
        self.norms = []          # pre-clip gradient norms of every optimizer step
        self.policy = None       # the policy module (train.main keeps it local)

    def rollout(self, real):
        def wrapped(sampler, tok, recs, cfg, seed, require_think, kv_budget=None, stop_ids=None):
            """Check the sampling copy against the policy, then roll out as train.py does."""
            if self.policy is not None:
                pairs = list(zip(sampler.parameters(), self.policy.parameters()))
                same = all(torch.equal(a, b.detach().to(a.dtype)) for a, b in pairs)
                self.synced.append((next(sampler.parameters()).dtype, sampler is not self.policy, same))
            self.prompts.append([r["prompt_ids"] for r in recs])
            return real(sampler, tok, recs, cfg, seed, require_think, kv_budget, stop_ids)
        return wrapped

    def train_minibatch(self, real):
        def wrapped(ddp_model, model, seqs, **kw):
            """Keep the mini-batch's sequences (with their old and reference log-probs)."""
            self.minibatches.append((len(self.prompts) - 1, [copy.deepcopy(s) for s in seqs]))
            return real(ddp_model, model, seqs, **kw)
        return wrapped

    def optimizer_step(self, real):
        def wrapped(model, opt, grad_clip, scaler=None):
            """Keep the policy and the gradient norm."""
            self.policy = model
            norm = real(model, opt, grad_clip, scaler)
            self.norms.append(norm)
            return norm
        return wrapped


def graded_by_parity(tok, outs, recs, require_think):
    """Canned rewards: 1 for a completion whose first token is even, so groups have spread."""
    rewards = [float(o.tokens[0] % 2 == 0) for o in outs]
    return [""] * len(outs), [r > 0 for r in rewards], rewards


RUN_STEPS, RUN_PROMPTS, RUN_SAMPLES, RUN_UPDATES = 3, 4, 4, 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """train.main on a tiny model and 12 problems: 3 steps of 4 prompts x 4 samples, 2 updates
    per step, KL and entropy on, old log-probs recomputed, the bf16 sampling copy kept on CPU."""
    tmp = tmp_path_factory.mktemp("run")
    model_dir = str(tmp / "model")
    toy.write_tokenizer(model_dir)
    tok = Tokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    cfg = ModelConfig(**dict(TINY, vocab_size=(tok.vocab_size + 63) // 64 * 64, eos_token_id=[tok.eos_id],
                             torch_dtype="float32"))
    Transformer(cfg).save_pretrained(model_dir)
    with open(tmp / "train.jsonl", "w") as f:
        for i in range(RUN_STEPS * RUN_PROMPTS):
            f.write(json.dumps({"problem": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)}) + "\n")
    rec = Recorder()
    argv = ["--model", model_dir, "--data", str(tmp / "train.jsonl"), "--out", str(tmp / "out"),
            "--prompts-per-step", str(RUN_PROMPTS), "--samples", str(RUN_SAMPLES), "--ctx", "6",
            "--steps", str(RUN_STEPS), "--updates-per-step", str(RUN_UPDATES), "--lr", "3e-2",
            "--temperature", str(T), "--kl-coef", "0.05", "--entropy-coef", "0.01", "--old-logp", "recompute",
            "--micro-tokens", "100", "--no-grad-ckpt", "--eval-every", "0", "--save-every", "0",
            "--sft-steps", "0", "--show-every", "1000", "--seed", "3"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "SAMPLER_COPY", True)
        mp.setattr(train, "grade_samples", graded_by_parity)
        mp.setattr(train, "rollout", rec.rollout(train.rollout))
        mp.setattr(train, "train_minibatch", rec.train_minibatch(train.train_minibatch))
        mp.setattr(train, "optimizer_step", rec.optimizer_step(train.optimizer_step))
        train.main(argv)
    torch.set_num_threads(threads)
    rows = [json.loads(line) for line in open(tmp / "out" / "metrics.jsonl")]
    initial = Transformer.from_pretrained(model_dir, dtype=torch.float32)
    return rec, rows, initial


def test_every_step_trains_on_new_prompts(run):
    rec, rows, _ = run
    assert len(rec.prompts) == RUN_STEPS
    seen = [tuple(p) for step in rec.prompts for p in step]
    assert len(seen) == len(set(seen)) == RUN_STEPS * RUN_PROMPTS          # one epoch, no repeats
    assert [r["data_pos"] for r in rows] == [RUN_PROMPTS * (k + 1) for k in range(RUN_STEPS)]


def test_mini_batches_are_whole_groups_covering_the_step(run):
    rec, _, _ = run
    assert len(rec.minibatches) == RUN_STEPS * RUN_UPDATES and len(rec.norms) == RUN_STEPS * RUN_UPDATES
    for step in range(RUN_STEPS):
        parts = [seqs for k, seqs in rec.minibatches if k == step]
        assert len(parts) == RUN_UPDATES
        groups = [{s.group for s in seqs} for seqs in parts]
        assert set.union(*groups) == set(range(RUN_PROMPTS)) and sum(map(len, groups)) == RUN_PROMPTS
        for seqs in parts:                                                 # every sample of a group
            assert len(seqs) == RUN_SAMPLES * len({s.group for s in seqs})
            for s in seqs:
                assert s.prompt == rec.prompts[step][s.group]
    assert all(n is not None and n > 0 for n in rec.norms)                # the weights really move


def test_old_and_reference_logprobs_come_from_the_right_weights(run):
    """old_logp (recomputed before the step's updates) is the policy's: at step 1 the initial
    model's. ref_logp is always the initial model's, so at later steps it differs from old_logp
    and the KL term is positive."""
    rec, rows, initial = run
    for step, seqs in rec.minibatches:
        for s in seqs:
            with torch.no_grad():
                want = plain_logprobs(initial, s, T)
            torch.testing.assert_close(torch.tensor(s.ref_logp), want, rtol=0, atol=1e-5)
            if step == 0:
                torch.testing.assert_close(torch.tensor(s.old_logp), want, rtol=0, atol=1e-5)
    later = [s for step, seqs in rec.minibatches if step > 0 for s in seqs]
    gap = max(abs(a - b) for s in later for a, b in zip(s.old_logp, s.ref_logp))
    assert gap > 1e-3
    assert all(r["kl"] > 0 for r in rows[1:])


def test_sampling_copy_equals_the_policy_after_every_update(run):
    rec, _, _ = run
    assert rec.synced == [(torch.bfloat16, True, True)] * (RUN_STEPS - 1)


def test_warm_up_pool_takes_accepted_chains_and_guided_ones_on_request(tmp_path):
    """The warm-up imitates the input's own solutions and polish.py's accepted chains; a problem
    only a guided chain solved (pass rate 0) stays in its pool although the pass-rate filter drops
    it from GRPO, and --no-sft-guided leaves guided chains out. A row polish.py found no chain for
    keeps its unfit original solution: never imitated."""
    import toy
    from data import Tokenizer
    rows = [dict(problem="1+1", answer="2", solution="raw"),
            dict(problem="1+2", answer="3", solution="free chain", polish=dict(method="free", pass_rate=0.5)),
            dict(problem="1+3", answer="4", solution="guided chain", polish=dict(method="guided", pass_rate=0.0)),
            dict(problem="1+4", answer="5", solution="summary", polish=dict(method="none", pass_rate=0.0)),
            dict(problem="1+5", answer="6", solution="old chain", polish=dict(polished=True, pass_rate=0.25))]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    toy.write_tokenizer(str(tmp_path / "m"))
    tok = Tokenizer.from_pretrained(str(tmp_path / "m"))
    cfg = train.Config(data=str(path))
    kept, pool = train.usable_problems(str(path), cfg, tok)
    assert [r["problem"] for r in kept] == ["1+1", "1+2", "1+5"]   # pass rates 0 filtered from GRPO
    assert [r["solution"] for r in train.warm_up_pool(pool, True)] == ["raw", "free chain", "guided chain", "old chain"]
    assert [r["solution"] for r in train.warm_up_pool(pool, False)] == ["raw", "free chain", "old chain"]
    assert [train.demonstration_source(r) for r in pool] == ["input", "free", "guided", "none", "free"]
