"""Real pretrained checkpoints against transformers (optional: they run when the folders are
given, and skip cleanly otherwise).

    QWEN2_DIR=path/to/qwen05-hf SMOLLM2_DIR=path/to/smollm2-hf python -m pytest -q tests/test_real_models.py

QWEN2_DIR: Qwen2.5-Coder-0.5B-Instruct (Qwen2: q/k/v biases, the Qwen2.5 byte-level BPE whose vocab
and merges are DeepSeek-R1-Distill-Qwen's, ChatML with a default system turn). SMOLLM2_DIR:
SmolLM2-135M-Instruct (Llama, tied embeddings, a GPT-2-style BPE). The README says how to make
both folders offline. Checked here, for each: fp32 logits, tokenizer ids on the bundled
datasets, greedy replies to chat prompts (rendered from the checkpoint's own template) token
for token against transformers' generate(), the sampler's log-probs against token_logprobs
on the same sequences, and one GRPO step whose checkpoint transformers loads."""
import glob
import json
import os
from pathlib import Path

import pytest
import torch

from data import Tokenizer, deepscaler_prompt
from model import Transformer
from sample import generate, stop_ids

transformers = pytest.importorskip("transformers")

SHARED = Path(__file__).resolve().parents[2] / "shared"
FOLDERS = {"qwen2": os.environ.get("QWEN2_DIR"), "smollm2": os.environ.get("SMOLLM2_DIR")}
CHATS = ["What is 7 * 8?", deepscaler_prompt("Find the remainder when $2^{10}$ is divided by 7."),
         "Write one sentence about the sea.", "List three prime numbers."]
MATH_TEXT = " ".join(["Reinforcement learning on reasoning models samples many answers to each problem,",
                      "grades them against a reference, and moves probability towards the ones that were",
                      "right: $\\frac{1}{2} + \\sqrt{3}$, 12,345.678 and \\boxed{42}."] * 4)


@pytest.fixture(scope="module", params=sorted(FOLDERS))
def real(request):
    """(folder, our fp32 model, our tokenizer, transformers' fp32 model, transformers' tokenizer)."""
    folder = FOLDERS[request.param]
    if not folder:
        pytest.skip(f"set {request.param.upper()}_DIR to an HF folder of the checkpoint")
    torch.manual_seed(0)
    return (folder, Transformer.from_pretrained(folder, dtype=torch.float32).eval(), Tokenizer.from_pretrained(folder),
            transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(),
            transformers.AutoTokenizer.from_pretrained(folder))


def test_logits_equal_transformers(real):
    _, m, tok, hf, _ = real
    ids = torch.tensor([tok.encode(MATH_TEXT)[:200]])
    with torch.no_grad():
        diff = (hf(ids).logits - m(ids)).abs().max().item()
    assert diff <= 1e-4, diff


def test_ids_equal_transformers_on_the_bundled_datasets(real):
    folder, _, tok, _, _ = real
    tokenizers = pytest.importorskip("tokenizers")     # what transformers' fast tokenizers run
    hf_tok = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    texts = {MATH_TEXT}
    for fn in glob.glob(str(SHARED / "data" / "test" / "*.json*")):   # MATH-500, GSM8K, AIME, AMC, ...
        with open(fn, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f] if fn.endswith(".jsonl") else json.load(f)
        texts.update(v for r in rows for v in r.values() if isinstance(v, str))
    texts = sorted(texts)
    expected = [e.ids for e in hf_tok.encode_batch(texts, add_special_tokens=False)]
    wrong = [t for t, e in zip(texts, expected) if tok.encode(t) != e]
    assert not wrong, f"{len(wrong)} of {len(texts)} texts differ, e.g. {wrong[0][:120]!r}"


def test_greedy_chat_replies_equal_transformers_generate(real):
    """Prompts from the checkpoint's own template (equal to apply_chat_template's), greedy
    replies of up to 48 tokens stopping where transformers stops."""
    folder, m, tok, hf, hf_tok = real
    prompts = [tok.encode_chat(c) for c in CHATS]
    assert prompts == [list(hf_tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True,
                                                       tokenize=True, return_dict=True)["input_ids"]) for c in CHATS]
    ours = generate(m, prompts, max_new_tokens=48, temperature=0, stop_ids=stop_ids(tok, m.config.eos_token_id, folder))
    for p, o in zip(prompts, ours):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              do_sample=False, max_new_tokens=48)[0, len(p):].tolist()
        assert o.tokens == ref


def test_sampler_logprobs_equal_token_logprobs(real):
    """What generate() records for each sampled token (T = 0.7) is what the trainer computes
    from the same sequence in one forward: model.token_logprobs."""
    _, m, tok, _, _ = real
    prompt = tok.encode_chat(CHATS[1])
    outs = generate(m, [prompt], n=2, max_new_tokens=24, temperature=0.7, seed=0, stop_ids=[])
    for o in outs:
        seq = torch.tensor([prompt + o.tokens])
        with torch.no_grad():
            h = m(seq, return_hidden=True)
            lp = m.token_logprobs(h[:, len(prompt) - 1:-1], seq[:, len(prompt):], temperature=0.7)[0]
        assert torch.allclose(lp, torch.tensor(o.logprobs), atol=2e-4), (lp - torch.tensor(o.logprobs)).abs().max()


def test_one_grpo_step_writes_a_checkpoint_transformers_loads(real, tmp_path):
    import train
    folder, m, tok, _, _ = real
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(2)))
    out = tmp_path / "run"
    train.main(["--model", folder, "--data", str(data), "--out", str(out), "--prompts-per-step", "2",
                "--samples", "2", "--ctx", "8", "--steps", "1", "--updates-per-step", "1", "--lr", "1e-5",
                "--kl-coef", "0", "--eval-every", "0", "--save-every", "1", "--show-every", "1000",
                "--micro-tokens", "512", "--no-grad-ckpt"])
    ckpt = str(out / "checkpoints" / "step_000001")
    hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    ours = Transformer.from_pretrained(ckpt, dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode(MATH_TEXT)[:64]])
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() <= 1e-4
        assert (ours(ids) - m(ids)).abs().max().item() > 0          # the step moved the weights
    assert Tokenizer.from_pretrained(ckpt).template == tok.template   # the template travels with it
