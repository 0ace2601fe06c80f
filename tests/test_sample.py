"""sample.py on tiny random models (CPU, seconds): the cached, batched sampler against plain
full forward passes, its log-probs against model.token_logprobs, and its sampling options.
Real checkpoints against transformers' generate() are tests/test_real_models.py's.
"""
from collections import Counter

import pytest
import torch

from model import ModelConfig, Transformer
import sample
from sample import generate

BASE = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, eos_token_id=[3])
CONFIGS = {"qwen2": dict(BASE, model_type="qwen2"),
           "llama": dict(BASE, model_type="llama", num_key_value_heads=1, head_dim=12,
                         tie_word_embeddings=True)}
PROMPTS = [[5, 6, 7], [8] * 11, [1], list(range(10, 60)), [9, 10, 11, 12, 13]]


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def tiny(kind="qwen2", seed=0):
    """A float32 model with weights large enough that its next-token distributions are peaked."""
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(**CONFIGS[kind])).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.4)
    return m


@torch.no_grad()
def greedy_reference(m, prompt, steps, stops=()):
    """Greedy decoding by a full forward over the whole sequence at every step (no cache)."""
    seq = list(prompt)
    for _ in range(steps):
        seq.append(int(m(torch.tensor([seq]))[0, -1].argmax()))
        if seq[-1] in stops:
            break
    return seq[len(prompt):]


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_greedy_with_cache_equals_full_forward(kind):
    m = tiny(kind)
    # check_every=5 and a 50-token prompt: chunks of uneven size, windows that grow past 64
    outs = generate(m, PROMPTS, max_new_tokens=30, temperature=0, stop_ids=[], check_every=5)
    for p, o in zip(PROMPTS, outs):
        assert o.tokens == greedy_reference(m, p, 30)
        assert o.finish_reason == "length" and len(o.logprobs) == 30


def test_continuous_batching_equals_one_at_a_time():
    m = tiny("qwen2", seed=1)
    free = [greedy_reference(m, p, 24) for p in PROMPTS]
    # a stop id that ends some completions early and not others, so rows free at different times
    common = Counter(t for f in free for t in f[2:]).most_common()
    stop = next(t for t, _ in common if 0 < sum(t in f for f in free) < len(free))
    alone = [generate(m, [p], max_new_tokens=24, temperature=0, stop_ids=[stop])[0] for p in PROMPTS]
    assert {o.finish_reason for o in alone} == {"stop", "length"}
    # 3 rows for 10 sequences (n=2): rows are refilled, a pending prefill reused, the tail compacted
    batched = generate(m, PROMPTS, n=2, max_new_tokens=24, temperature=0, stop_ids=[stop],
                       max_rows=3, check_every=3)
    assert len(batched) == 2 * len(PROMPTS)
    for i, a in enumerate(alone):
        for b in batched[2 * i: 2 * i + 2]:                          # prompt-major order
            assert (b.tokens, b.finish_reason) == (a.tokens, a.finish_reason)
            torch.testing.assert_close(b.logprobs, a.logprobs, rtol=0, atol=1e-5)
        assert a.tokens == free[i][:len(a.tokens)]


@pytest.mark.parametrize("temperature,top_p,top_k", [(0.7, 0.9, 20), (1.3, 1.0, 0), (0.0, 1.0, 0)])
def test_logprobs_equal_a_fresh_forward(temperature, top_p, top_k):
    """The sampler/trainer identity: .logprobs == model.token_logprobs over the final sequence,
    at the sampling temperature and before top-p/top-k (temperature 0 -> T = 1)."""
    m = tiny("llama", seed=2)
    outs = generate(m, PROMPTS, n=3, max_new_tokens=20, temperature=temperature, top_p=top_p,
                    top_k=top_k, seed=0, max_rows=4)
    for i, o in enumerate(outs):
        p = PROMPTS[i // 3]
        ids = torch.tensor([p + o.tokens])
        with torch.no_grad():
            h = m(ids, return_hidden=True)
            ref = m.token_logprobs(h[:, len(p) - 1:-1], ids[:, len(p):], temperature=temperature or 1.0)
        torch.testing.assert_close(torch.tensor([o.logprobs]), ref, rtol=0, atol=1e-5)


def first_token_dist(m, prompt, temperature):
    with torch.no_grad():
        return torch.softmax(m(torch.tensor([prompt]))[0, -1] / temperature, -1)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampled_frequencies_match_the_distribution(temperature):
    """N = 4000 first tokens vs softmax(logits / T). Each token's count is checked within
    5 binomial standard deviations (+1 count); under the normal approximation a correct sampler
    fails one token with probability < 6e-7, so this test (96 tokens) fails falsely with
    probability < 6e-5 per seed."""
    m, N = tiny("qwen2", seed=3), 4000
    p = first_token_dist(m, PROMPTS[0], temperature)
    outs = generate(m, [PROMPTS[0]], n=N, max_new_tokens=1, temperature=temperature, seed=11)
    counts = torch.bincount(torch.tensor([o.tokens[0] for o in outs]), minlength=96).double()
    tol = 5 * (N * p * (1 - p)).sqrt() + 1
    assert ((counts - N * p).abs() <= tol).all(), (counts - N * p).abs().max()


def test_top_k_and_top_p_keep_only_their_sets():
    """Deterministic containment: no sample may fall outside the top-k set or the nucleus."""
    m, N = tiny("qwen2", seed=4), 2000
    p = first_token_dist(m, PROMPTS[1], 1.0)
    order = p.argsort(descending=True).tolist()
    top5 = set(order[:5])
    outs = generate(m, [PROMPTS[1]], n=N, max_new_tokens=1, top_k=5, seed=1)
    got = Counter(o.tokens[0] for o in outs)
    assert set(got) <= top5 and len(got) >= 3
    cum = p[order].cumsum(0)
    nucleus = set(order[:int((cum < 0.6).sum()) + 1])               # smallest set with mass >= 0.6
    outs = generate(m, [PROMPTS[1]], n=N, max_new_tokens=1, top_p=0.6, seed=2)
    got = Counter(o.tokens[0] for o in outs)
    assert set(got) <= nucleus and len(got) == len(nucleus)
    q = p[order[:5]] / p[order[:5]].sum()                           # top-p acts on the top-k renormalised
    both = set(order[:int((q.cumsum(0) - q < 0.3).sum())])
    outs = generate(m, [PROMPTS[1]], n=200, max_new_tokens=1, top_k=5, top_p=0.3, seed=3)
    assert {o.tokens[0] for o in outs} <= both


def test_stop_ids_and_max_new_tokens():
    m = tiny("qwen2", seed=5)
    m.config.eos_token_id = [0, 24, 48, 72]                         # 4 of 96 ids end a sequence
    outs = generate(m, PROMPTS, n=4, max_new_tokens=40, temperature=1.5, seed=0, max_rows=7)
    stops = set(m.config.eos_token_id)
    assert {o.finish_reason for o in outs} == {"stop", "length"}
    for o in outs:
        assert not stops & set(o.tokens[:-1]) and len(o.tokens) == len(o.logprobs)
        if o.finish_reason == "stop":
            assert o.tokens[-1] in stops and len(o.tokens) <= 40
        else:
            assert len(o.tokens) == 40 and o.tokens[-1] not in stops
    outs = generate(m, PROMPTS, n=2, max_new_tokens=40, temperature=1.5, seed=0, stop_ids=[])
    assert all(o.finish_reason == "length" and len(o.tokens) == 40 for o in outs)
    outs = generate(m, PROMPTS, max_new_tokens=1, temperature=1.5, seed=0, stop_ids=[])
    assert all(len(o.tokens) == 1 for o in outs)


def test_seed_reproducible_and_samples_differ():
    m = tiny("llama", seed=6)
    kw = dict(n=4, max_new_tokens=16, temperature=1.0, stop_ids=[], max_rows=5)
    a, b, c = (generate(m, PROMPTS, seed=s, **kw) for s in (7, 7, 8))
    assert [(o.tokens, o.logprobs) for o in a] == [(o.tokens, o.logprobs) for o in b]
    assert [o.tokens for o in a] != [o.tokens for o in c]
    assert len({tuple(o.tokens) for o in a[:4]}) > 1                # n samples of one prompt differ


def test_bad_input_is_refused_clearly():
    m = tiny()
    with pytest.raises(ValueError, match="holds no sequence of 300 tokens"):
        generate(m, [list(range(50)) * 4], max_new_tokens=100, kv_budget=10_000)
    with pytest.raises(ValueError, match="non-empty"):
        generate(m, [[1, 2], []])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(m, [[1, 96]])
    with pytest.raises(ValueError, match="temperature"):
        generate(m, [[1]], temperature=-1)


def test_cli_help_documents_flags(capsys):
    with pytest.raises(SystemExit):
        sample.main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--model", "--prompt", "--temperature", "--top-p", "--top-k", "--max-new-tokens", "--kv-gib",
                 "--cuda-graphs", "evaluate.py"):
        assert flag in out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_equal_eager():
    m = tiny("qwen2").cuda()
    kw = dict(n=3, max_new_tokens=40, temperature=1.0, top_p=0.9, seed=0, max_rows=5)
    a = generate(m, PROMPTS, **kw)
    b = generate(m, PROMPTS, cuda_graphs=True, **kw)
    assert [o.tokens for o in a] == [o.tokens for o in b]


def test_default_kv_budget_frees_the_allocators_cache_first(monkeypatch):
    """On a GPU the budget is 60% of free memory, read after the allocator's cache is handed
    back (the device is faked here: the order of the two calls is what matters)."""
    from sample import default_kv_budget
    free = [10 * 2**30]
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: free.__setitem__(0, 30 * 2**30))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (free[0], 80 * 2**30))
    assert default_kv_budget(torch.device("cuda", 0)) == int(0.6 * 30 * 2**30)
    assert default_kv_budget(torch.device("cpu")) == 4 * 2**30
