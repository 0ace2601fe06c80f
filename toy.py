r"""A miniature of the real setup, built from nothing: a tiny Qwen2 model, its tokenizer, a task.

    python train.py            # uses this: warm-up, then GRPO, on 2 CPU cores in minutes

The tokenizer is a real tokenizer.json (byte-level BPE with the DeepSeek-R1 special tokens and
Qwen2's pre-tokenizer), so data.Tokenizer, the R1 chat template and the `</think>` reward rule
run exactly as they do for DeepSeek-R1-Distill-Qwen. Its merges only spell out the words of
the fixed prompt, which keeps sequences short.

The task is the sum of three single digits, "What is 5 + 8 + 4?", solved with a short chain
of thought, one addition per line ("5+8=13\n13+4=17\n</think>\n\nThe answer is \boxed{17}.").
A fixed random 200 of the 1,000 digit triples are held out: training never sees them, so the
accuracy train.py reports is on sums the model has not seen (each step of their chains it has).

What GRPO has to learn here, and why the warm-up leaves room for it:
- The format. Only one warm-up solution in four (BOX_EVERY) boxes its total; the others
  state it bare. The reward is 1 only for a right boxed answer after </think>, so a
  warmed-up model that boxes about a quarter of the time earns reward on about a quarter of
  its right sums. Boxing is one token's choice after "The answer is" (a backslash or a
  space), with a probability near 0.25, far from a coin flip: the starting accuracy does
  not hinge on float rounding, and GRPO has a clear signal that pushes it towards 1.
- The arithmetic. After the short warm-up a sampled chain is right only part of the time;
  GRPO sharpens the steps that earn reward.
Accuracy is measured as training samples: temperature 1, four samples per held-out problem
(pass@1 is their mean), the same reward rule. A greedy evaluation would turn "boxes 45% of
the time" into 0% and "boxes 55%" into 100%, so its starting point would depend on the last
bit of a matmul; the mean over samples moves smoothly.
"""
import itertools
import json
import os
import random
import shutil

import torch.distributed as dist

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


TERMS = 3          # digits per problem
BOX_EVERY = 4      # one warm-up solution in BOX_EVERY boxes its answer
HELDOUT_SIZE = 200 # digit tuples held out of training, a fixed random fifth of the 1,000


def split_tuples() -> tuple[list, list]:
    """All digit tuples, split once into (train, held-out) by a fixed shuffle.

    A random split rather than a rule on the digits: a rule such as "the number they spell is
    a multiple of 5" would hold out every tuple ending in 0 or 5, and training would never see
    a last step "+0" or "+5"."""
    tuples = list(itertools.product(range(10), repeat=TERMS))
    random.Random("toy split").shuffle(tuples)
    return sorted(tuples[HELDOUT_SIZE:]), sorted(tuples[:HELDOUT_SIZE])


def make_task(n: int, seed: int, split: str = "train") -> list[dict]:
    """n problems "What is 3 + 5 + 8?" from one split, with the record fields train.py reads.

    Each split's tuples come once each, in a seeded order, before any repeats. Row i's
    solution boxes its total when i % BOX_EVERY == 0 and states it bare otherwise."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be train or heldout, not {split!r}")
    train, heldout = split_tuples()
    tuples = train if split == "train" else heldout
    random.Random(seed).shuffle(tuples)
    rows = []
    for i in range(n):
        digits = tuples[i % len(tuples)]
        total = sum(digits)
        final = f"\\boxed{{{total}}}" if i % BOX_EVERY == 0 else f"{total}"
        rows.append({"problem": "What is " + " + ".join(map(str, digits)) + "?", "answer": str(total),
                     "solution": running_sums(digits) + f"</think>\n\nThe answer is {final}."})
    return rows


def running_sums(digits: tuple) -> str:
    """The chain of thought: one addition per line, "5+8=13\n13+4=17\n".

    Each line is a small addition seen in many training problems, so a held-out triple is
    new only as a whole, never in its steps."""
    lines = []
    total = digits[0]
    for d in digits[1:]:
        lines.append(f"{total}+{d}={total + d}\n")
        total += d
    return "".join(lines)


def paths(out: str) -> tuple[str, str, str]:
    """Where the toy's set-up lives under a run folder: (model_dir, train_path, heldout_path)."""
    return os.path.join(out, "toy_model"), os.path.join(out, "train.jsonl"), os.path.join(out, "heldout.jsonl")


def prepare(out: str, seed: int) -> tuple[str, str, str]:
    """The toy's model folder, training set and held-out set under `out`; built only if missing.

    Every piece is written to a temporary name and renamed into place, so a run killed
    while building leaves nothing that the next run would take for a finished file.
    Returns (model_dir, train_path, heldout_path)."""
    model_dir, train_path, heldout_path = paths(out)
    os.makedirs(out, exist_ok=True)
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        tmp_dir = model_dir + ".tmp"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        build_model_dir(tmp_dir, seed=seed)
        shutil.rmtree(model_dir, ignore_errors=True)   # a folder left without config.json
        os.replace(tmp_dir, model_dir)
    train_size = 10 ** TERMS - HELDOUT_SIZE    # every tuple once
    heldout_size = HELDOUT_SIZE
    for path, size, split in ((train_path, train_size, "train"), (heldout_path, heldout_size, "heldout")):
        if os.path.isfile(path):
            continue
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in make_task(size, seed=1, split=split))
        os.replace(path + ".tmp", path)
    return model_dir, train_path, heldout_path


# train.py's defaults for the toy: what `python train.py` runs when no --model is given (flags
# given on the command line override them).
TRAIN_DEFAULTS = dict(
    # rollouts: 32 prompts x 8 samples at temperature 1; a chain and its answer fit in 40 tokens
    prompts_per_step=32, samples=8, ctx=40, prompt_budget=64, temperature=1.0,
    # a tiny model takes a large constant rate; no KL or entropy term, one update per batch
    lr=3e-4, weight_decay=0.0, updates_per_step=1, kl_coef=0.0, entropy_coef=0.0, old_logp="sampler",
    micro_tokens=8192, grad_ckpt=False, steps=30,
    # supervised warm-up on the records' solutions: 600 steps of 32
    sft_steps=600, sft_lr=3e-3, sft_batch=32,
    # held-out accuracy as training samples: 4 samples per problem at temperature 1, top_p 1
    eval_every=10, eval_samples=4, eval_temperature=1.0, eval_top_p=1.0,
    save_every=10, show_every=30, out="runs/toy")


def use_in(cfg, rank: int, world: int):
    """No --model: build the toy's model, tokenizer and task under --out (once), and point
    --model, --data and --eval-data at them."""
    if rank == 0:
        prepare(cfg.out, seed=cfg.seed)     # builds what is missing, atomically
    if world > 1:
        dist.barrier()
    model_dir, train_path, heldout_path = paths(cfg.out)
    cfg.model = model_dir
    cfg.data = cfg.data or train_path
    cfg.eval_data = cfg.eval_data or heldout_path
