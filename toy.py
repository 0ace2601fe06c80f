"""A miniature of the real setup, built from nothing: a tiny Qwen2 model, its tokenizer, a task.

    python train.py            # uses this: warm-up, then GRPO, on 2 CPU cores in minutes

The tokenizer is a real tokenizer.json (byte-level BPE with the DeepSeek-R1 special tokens and
Qwen2's pre-tokenizer), so data.Tokenizer, the R1 chat template and the `</think>` reward rule
run exactly as they do for DeepSeek-R1-Distill-Qwen. Its merges only spell out the words of
the fixed prompt, which keeps sequences short. The task is the sum of a few single
digits: easy enough that a minute of supervised warm-up makes the model right some of the
time, which is what GRPO needs to start from.
"""
import json
import os
import random

from data import Tokenizer, _byte_decoder
from model import ModelConfig, Transformer

R1_SPECIALS = ["<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜begin▁of▁sentence｜>",
               "<think>", "</think>"]
# Pre-tokenized pieces of the prompt and answer text; each gets one token through a merge chain.
WORDS = ["What", " is", " Let", "'s", " think", " step", " by", " and", " output", " the", " final",
         " answer", " within", " \\", "boxed", "{}.", " digits", " add", " up", " to", " So", " The"]


def write_tokenizer(path: str) -> None:
    """tokenizer.json + tokenizer_config.json for bytes, WORDS and the R1 special tokens."""
    to_char = {b: c for c, b in _byte_decoder().items()}
    vocab = {to_char[b]: b for b in range(256)}  # id = byte value
    merges = []
    for word in WORDS:
        chars = "".join(to_char[b] for b in word.encode())
        for k in range(2, len(chars) + 1):      # w+o, wo+r, wor+d: one new token per merge
            if chars[:k] not in vocab:
                merges.append([chars[:k - 1], chars[k - 1]])
                vocab[chars[:k]] = len(vocab)
    added = [{"id": len(vocab) + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(R1_SPECIALS)]
    split = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
             "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")  # Qwen2's pre-tokenizer: every digit on its own
    tj = {"version": "1.0", "added_tokens": added, "normalizer": {"type": "NFC"},
          "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
              {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False},
              {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
          "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
          "model": {"type": "BPE", "dropout": None, "unk_token": None, "byte_fallback": False,
                    "vocab": vocab, "merges": merges}}
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}, f, ensure_ascii=False)


def build_model_dir(path: str, seed: int = 0, hidden: int = 128, layers: int = 4) -> str:
    """A randomly initialised tiny Qwen2 checkpoint folder with its tokenizer."""
    import torch
    write_tokenizer(path)
    tok = Tokenizer.from_pretrained(path)
    cfg = ModelConfig(model_type="qwen2", vocab_size=(tok.vocab_size + 63) // 64 * 64, hidden_size=hidden,
                      intermediate_size=3 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=1024, torch_dtype="float32",
                      rope_theta=10000.0, eos_token_id=[tok.eos_id])
    torch.manual_seed(seed)
    Transformer(cfg).save_pretrained(path)
    return path


def make_task(n: int, seed: int, terms: int = 4) -> list[dict]:
    """n problems "What is 3 + 5 + 8 + 1?" with the record fields train.py reads.

    Summing single digits needs only attention that averages over the digit tokens, which a
    small model learns in a minute. Every other reference solution states the total without
    \\boxed{}: a model warmed up on them boxes its answer about half the time, and the reward
    (1 only for a right boxed answer after </think>) has that to teach as well as the sums."""
    rng, rows = random.Random(seed), []
    for i in range(n):
        xs = [rng.randint(0, 9) for _ in range(terms)]
        s = sum(xs)
        final = f"\\boxed{{{s}}}" if i % 2 == 0 else f"{s}"
        rows.append({"problem": "What is " + " + ".join(map(str, xs)) + "?", "answer": str(s),
                     "solution": f"The digits add up to {s}.\n</think>\n\nThe answer is {final}."})
    return rows
