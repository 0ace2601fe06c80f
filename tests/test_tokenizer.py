"""data.Tokenizer against HF `tokenizers` (an independent implementation): ids must be identical."""
import glob
import json
from pathlib import Path

import pytest

from data import CHATML_TEMPLATE, R1_TEMPLATE, Tokenizer, deepscaler_prompt
from model import ModelFileError

SHARED = Path(__file__).resolve().parents[2] / "shared"
R1_DIR = SHARED / "tokenizers" / "deepseek-r1-distill-qwen"
needs_shared = pytest.mark.skipif(not R1_DIR.is_dir(), reason="../shared is not present")

AWKWARD = [
    "", " ", "\n", "  \n\n \t ", "a  b   c    d", "\r\n\r\n", "x\n\n\n\ny", "   leading and trailing   ",
    "中文测试：数学题。", "日本語のテキスト", "한국어 텍스트", "emoji 🦙🦙 and 👩‍👩‍👧 family", "🤖",
    "e\u0301 vs \u00e9", "A\u030a ångström Å", "\u1e0b\u0323 (NFC reorders marks)", "ﬁ ligature stays",
    "$\\frac{1}{2}$ and \\boxed{42}", "x^2 + y^2 = z^2", "1234567890 12,345.6789", "²³½ ٣٤ numbers",
    "don't I'll we've THEY'RE", "tabs\tand\u00a0nbsp\u2009thin", "\x00\x01\x7f control",
    "<think>\nreasoning</think> answer", "<｜User｜>hi<｜Assistant｜>", "<|im_start|>user\nhi<|im_end|>",
    "<think><think></think>", "text<｜end▁of▁sentence｜>more", "<|endoftext|> partial <|im_sta",
]


def data_texts() -> list[str]:
    """Every string field of every row in ../shared/data (problems, solutions, answers)."""
    texts = set()
    for fn in glob.glob(str(SHARED / "data" / "*" / "*.json*")):
        with open(fn, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f] if fn.endswith(".jsonl") else json.load(f)
        texts.update(v for r in rows for v in r.values() if isinstance(v, str))
    return sorted(texts)


def assert_same_ids(tok: Tokenizer, hf, texts):
    expected = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    mismatches = [t for t, e in zip(texts, expected) if tok.encode(t) != e]
    assert not mismatches, f"{len(mismatches)}/{len(texts)} texts differ, e.g. {mismatches[0][:200]!r}"


@pytest.fixture(scope="module")
def r1():
    if not R1_DIR.is_dir():
        pytest.skip("../shared is not present")
    return Tokenizer.from_pretrained(str(R1_DIR))


@pytest.fixture(scope="module")
def r1_hf():
    tokenizers = pytest.importorskip("tokenizers")
    if not R1_DIR.is_dir():
        pytest.skip("../shared is not present")
    return tokenizers.Tokenizer.from_file(str(R1_DIR / "tokenizer.json"))


@needs_shared
def test_r1_test_vectors(r1):
    texts = (R1_DIR / "vocab-qwen2.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    ids = (R1_DIR / "vocab-qwen2.out").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(texts) == len(ids) == 46
    for text, expected in zip(texts, ids):
        assert r1.encode(text) == [int(i) for i in expected.split()], repr(text)


@needs_shared
def test_r1_every_dataset_text_and_awkward_text(r1, r1_hf):
    texts = data_texts()
    assert len(texts) > 30_000  # 35,027 distinct strings today
    assert_same_ids(r1, r1_hf, texts + AWKWARD)


@needs_shared
def test_r1_special_tokens_templates_and_round_trip(r1):
    assert (r1.bos_id, r1.eos_ids, r1.chat_template) == (151646, [151643], "deepseek-r1")
    assert r1.encode("<think>\n") == [151648, 198]
    ids = r1.encode_chat(deepscaler_prompt("What is $1+1$?"))
    assert ids[:2] == [151646, 151644] and ids[-2:] == [151648, 198] and 151645 in ids
    assert r1.decode(ids) == R1_TEMPLATE.format(system="", content=deepscaler_prompt("What is $1+1$?"))
    assert r1.render_chat("hi", template="chatml") == CHATML_TEMPLATE.format(system="", content="hi")
    for t in AWKWARD:
        import unicodedata
        assert r1.decode(r1.encode(t)) == unicodedata.normalize("NFC", t)


def test_deepscaler_prompt():
    assert deepscaler_prompt("Find $x$.") == \
        "Find $x$. Let's think step by step and output the final answer within \\boxed{}."


# ----------------------------------------------------------------------------- GPT-2 style tokenizers

TRAIN_TEXT = ["The quick brown fox jumps over 12 lazy dogs; 3.14159 is pi, 2718 is e.",
              "Ünïcödé ½ ² and   spaces\n\n\tnewlines", "ChatML <|im_start|>user\nhi<|im_end|>"] * 20


def trained_tokenizer(tmp_path, digits: bool):
    """A small byte-level BPE trained by HF tokenizers, saved as tokenizer.json (GPT-2 / SmolLM2 style)."""
    tk = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, decoders, trainers
    t = tk.Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) \
        if digits else byte_level
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(TRAIN_TEXT, trainer)
    t.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<|im_start|>"}, "eos_token": "<|im_end|>"}))
    return t


@pytest.mark.parametrize("digits", [False, True], ids=["gpt2-regex", "individual-digits"])
def test_gpt2_style_tokenizers_match_hf(tmp_path, digits):
    hf = trained_tokenizer(tmp_path, digits)
    tok = Tokenizer.from_pretrained(str(tmp_path))
    texts = AWKWARD + TRAIN_TEXT[:3] + ["a  5", "x 12  34\n 5", "  ²x", "9 9  9   9", "abc123def 4 5"]
    assert_same_ids(tok, hf, texts)
    assert tok.chat_template == "chatml" and tok.eos_ids == [2] and tok.bos_id == 1


# ----------------------------------------------------------------------------- refusals

def edit_tokenizer(tmp_path, **changes):
    trained_tokenizer(tmp_path, digits=False)
    tj = json.loads((tmp_path / "tokenizer.json").read_text())
    for key, value in changes.items():
        if key == "model_type":
            tj["model"]["type"] = value
        elif key == "swap_merges":
            tj["model"]["merges"][0], tj["model"]["merges"][1] = tj["model"]["merges"][1], tj["model"]["merges"][0]
        elif key == "lstrip":
            tj["added_tokens"][1]["lstrip"] = True
        else:
            tj[key] = value
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))


@pytest.mark.parametrize("changes,message", [
    ({"model_type": "Unigram"}, "model type 'Unigram' .* is not byte-level BPE"),
    ({"normalizer": {"type": "NFKC"}}, r"normalizer \{'type': 'NFKC'\} is not supported"),
    ({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}, r"pre_tokenizer \['Metaspace'\] has no final ByteLevel"),
    ({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Whitespace"},
      {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]}}, "is not one tiktoken can represent"),
    ({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True}}, "add_prefix_space=true is not supported"),
    ({"swap_merges": True}, "ids do not follow merge order"),
    ({"lstrip": True}, "added token '<|im_start|>' uses lstrip"),
])
def test_unrepresentable_tokenizers_are_refused(tmp_path, changes, message):
    edit_tokenizer(tmp_path, **changes)
    with pytest.raises(ModelFileError, match=message):
        Tokenizer.from_pretrained(str(tmp_path))


def test_missing_tokenizer_and_unknown_template(tmp_path):
    with pytest.raises(ModelFileError, match="no tokenizer.json"):
        Tokenizer.from_pretrained(str(tmp_path))
    trained_tokenizer(tmp_path, digits=False)
    tok = Tokenizer.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="chat template 'llama3' is not known"):
        tok.render_chat("hi", template="llama3")
