"""The checkpoint's own chat template, read without jinja (data.read_chat_template), against
transformers' apply_chat_template(add_generation_prompt=True) token for token; --system; and the
stop set (sample.stop_ids) that every entry point samples with.

The templates written here are this project's own, shaped like the families it supports (a
ChatML template with a default system turn as Qwen2.5 / Qwen2.5-Math / SmolLM2 ship one, one
without, an R1 template). The real checkpoints' templates are compared when their folders are
at hand: QWEN2_DIR (Qwen2.5-Coder-0.5B-Instruct), SMOLLM2_DIR (SmolLM2-135M-Instruct), and
../shared's DeepSeek-R1-Distill template file."""
import json
import os
from pathlib import Path

import pytest
import torch

import evaluate
import toy
from data import ChatTemplate, Tokenizer, deepscaler_prompt, read_chat_template
from model import ModelConfig, ModelFileError, Transformer
from sample import Completion, stop_ids
from test_tokenizer import trained_tokenizer

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
R1_JINJA = REPO.parent / "shared" / "tokenizers" / "deepseek-r1-distill-qwen" / "chat_template_2025-01.jinja"
REAL = {"qwen2": os.environ.get("QWEN2_DIR"), "smollm2": os.environ.get("SMOLLM2_DIR")}

# ChatML with a default system turn whose literal holds jinja escapes (\n, \\boxed), as
# Qwen2.5-Math's does; the caller's system message replaces it.
CHATML_DEFAULT = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nReason it out, then put the result in \\\\boxed{}.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] != 'system' %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
# ChatML with a real newline inside the default's literal (SmolLM2 writes it that way)
CHATML_NEWLINE = CHATML_DEFAULT.replace("system\\nReason it out", "system\nReason it out")
# ChatML that renders a system turn only when the messages bring one
CHATML_PLAIN = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
# Neither family: refused as a template, the special tokens decide (with a note)
OTHER = ("{%- for message in messages %}{{- '[' + message['role'] + '] ' + message['content'] + '\\n' }}"
         "{%- endfor %}{%- if add_generation_prompt %}{{- '[assistant] ' }}{%- endif %}")
CONTENTS = [deepscaler_prompt("What is $1+1$?"), "Two lines,\n{braces} and \\boxed{} in a problem."]


def chatml_folder(tmp_path, template: str | None, **config) -> str:
    """A ChatML tokenizer (trained by HF tokenizers: <|endoftext|> 0, <|im_start|> 1, <|im_end|> 2)
    with `template` as tokenizer_config.json's chat_template; eos <|endoftext|>."""
    trained_tokenizer(tmp_path, digits=False)
    cfg = {"bos_token": None, "eos_token": "<|endoftext|>", **config}
    if template is not None:
        cfg["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


def hf_ids(folder: str, messages: list, template: str | None = None) -> list[int]:
    """transformers' rendering of messages with the generation prompt, as token ids."""
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
    if template is None:
        template = json.loads(Path(folder, "tokenizer_config.json").read_text())["chat_template"]
    text = hf.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False)
    return hf.encode(text, add_special_tokens=False)


def assert_renders_as_transformers(folder: str, template: str | None = None):
    """Our prompt ids equal transformers' for a user turn alone (the checkpoint's default system
    text) and with a system message of the caller's."""
    tok = Tokenizer.from_pretrained(folder)
    for content in CONTENTS:
        assert tok.encode_chat(content) == hf_ids(folder, [{"role": "user", "content": content}], template)
        with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]
        assert tok.encode_chat(content, system="Be brief.") == hf_ids(folder, with_system, template)


# ----------------------------------------------------------------------------- templates

@pytest.mark.parametrize("template", [CHATML_DEFAULT, CHATML_NEWLINE, CHATML_PLAIN],
                         ids=["default-system", "default-system-newline", "no-default"])
def test_chatml_templates_render_as_transformers(tmp_path, template):
    assert_renders_as_transformers(chatml_folder(tmp_path, template))


def test_default_system_text_is_read_and_can_be_dropped_or_replaced(tmp_path):
    tok = Tokenizer.from_pretrained(chatml_folder(tmp_path, CHATML_DEFAULT))
    assert tok.template == ChatTemplate("chatml", "Reason it out, then put the result in \\boxed{}.")
    assert tok.render_chat("hi") == ("<|im_start|>system\nReason it out, then put the result in \\boxed{}."
                                     "<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.render_chat("hi", system="") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.render_chat("hi", system="S").startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user")
    # another template than the checkpoint's own gets no default system text
    assert tok.render_chat("hi", template="deepseek-r1") == \
        "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>\n"
    assert Tokenizer.from_pretrained(chatml_folder(tmp_path, CHATML_PLAIN)).template == ChatTemplate("chatml")


def test_template_file_and_named_templates_and_bad_values(tmp_path):
    folder = chatml_folder(tmp_path, [{"name": "tool_use", "template": OTHER},
                                      {"name": "default", "template": CHATML_DEFAULT}])
    assert Tokenizer.from_pretrained(folder).template.default_system.startswith("Reason it out")
    (tmp_path / "chat_template.jinja").write_text(CHATML_PLAIN)       # newer transformers' own file wins
    assert Tokenizer.from_pretrained(folder).template == ChatTemplate("chatml")
    (tmp_path / "chat_template.jinja").unlink()
    chatml_folder(tmp_path, 7)
    with pytest.raises(ModelFileError, match="tokenizer_config.json: chat_template must be a string"):
        Tokenizer.from_pretrained(folder)


def test_a_template_of_another_family_falls_back_to_the_tokens_with_a_note(tmp_path):
    t = Tokenizer.from_pretrained(chatml_folder(tmp_path, OTHER)).template
    assert t.name == "chatml" and t.default_system == ""
    assert "neither DeepSeek-R1's nor ChatML" in t.note and "--template and --system" in t.note
    assert read_chat_template("", {}) == ChatTemplate(None)


def r1_tokenizer(tmp_path, template: str | None) -> str:
    """The toy's R1-style tokenizer with `template` as its chat_template."""
    toy.write_tokenizer(str(tmp_path))
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    if template is not None:
        cfg["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False))
    return str(tmp_path)


# An R1-style template of our own: the system text bare after the BOS, the revised generation prompt
R1_OWN = ("{{ bos_token }}{%- for message in messages %}{%- if message['role'] == 'system' %}"
          "{{ message['content'] }}{%- endif %}{%- endfor %}"
          "{%- for message in messages %}{%- if message['role'] == 'user' %}"
          "{{ '<｜User｜>' + message['content'] }}{%- endif %}{%- endfor %}"
          "{%- if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{%- endif %}")


def test_r1_template_renders_as_transformers(tmp_path):
    folder = r1_tokenizer(tmp_path, R1_OWN)
    tok = Tokenizer.from_pretrained(folder)
    assert tok.template == ChatTemplate("deepseek-r1")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"),
                                              bos_token="<｜begin▁of▁sentence｜>")
    for messages, system in (([], None), ([{"role": "system", "content": "Be brief."}], "Be brief.")):
        for content in CONTENTS:
            text = hf.apply_chat_template(messages + [{"role": "user", "content": content}], chat_template=R1_OWN,
                                          add_generation_prompt=True, tokenize=False)
            assert tok.encode_chat(content, system=system) == hf.encode(text, add_special_tokens=False)


@pytest.mark.skipif(not R1_JINJA.is_file(), reason="needs ../shared's DeepSeek-R1-Distill chat template")
def test_the_published_r1_templates(tmp_path):
    """The first revision ends its generation prompt at <｜Assistant｜>: our prompt adds
    "<think>\\n" and says so once; the revision since 2025-02-09 adds it too: equal ids."""
    first = R1_JINJA.read_text(encoding="utf-8")
    revised = first.replace("{{'<｜Assistant｜>'}}{% endif %}", "{{'<｜Assistant｜><think>\\n'}}{% endif %}")
    assert revised != first
    for template, extra in ((first, "<think>\n"), (revised, "")):
        folder = r1_tokenizer(tmp_path, template)
        tok = Tokenizer.from_pretrained(folder)
        assert tok.template.name == "deepseek-r1" and bool(tok.template.note) == bool(extra)
        hf = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"),
                                                  bos_token="<｜begin▁of▁sentence｜>")
        for content in CONTENTS:
            text = hf.apply_chat_template([{"role": "user", "content": content}], chat_template=template,
                                          add_generation_prompt=True, tokenize=False)
            assert tok.encode_chat(content) == hf.encode(text + extra, add_special_tokens=False)


@pytest.mark.parametrize("name", ["qwen2", "smollm2"])
def test_real_checkpoint_templates(name, tmp_path):
    """Qwen2.5's template (default system "You are Qwen, ..."), the same with Qwen2.5-Math's
    default text put in its place, and SmolLM2's."""
    if not REAL[name]:
        pytest.skip(f"set {name.upper()}_DIR to the checkpoint folder")
    assert_renders_as_transformers(REAL[name])
    assert Tokenizer.from_pretrained(REAL[name]).template.default_system
    if name == "qwen2":
        own = json.loads(Path(REAL[name], "tokenizer_config.json").read_text())["chat_template"]
        default = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        math_text = "Please reason step by step, and put your final answer within \\\\boxed{}."
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (tmp_path / f).write_bytes(Path(REAL[name], f).read_bytes())
        cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
        cfg["chat_template"] = own.replace(default, math_text)
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
        assert Tokenizer.from_pretrained(str(tmp_path)).template.default_system == \
            "Please reason step by step, and put your final answer within \\boxed{}."
        assert_renders_as_transformers(str(tmp_path))


# ----------------------------------------------------------------------------- the stop set

def test_stop_ids_join_config_generation_config_and_the_end_of_turn(tmp_path):
    """A ChatML folder whose config.json says <|endoftext|> (0) still stops at <|im_end|> (2)."""
    tok = Tokenizer.from_pretrained(chatml_folder(tmp_path, CHATML_DEFAULT))
    assert tok.end_of_turn() == 2 and tok.end_of_turn("deepseek-r1") is None
    assert stop_ids(tok, [0]) == [0, 2]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 5]}))
    assert stop_ids(tok, [0], str(tmp_path)) == [0, 2, 5]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    assert stop_ids(tok, [], str(tmp_path)) == [2, 7]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": "<|im_end|>"}))
    with pytest.raises(ModelFileError, match="generation_config.json: eos_token_id must be an integer"):
        stop_ids(tok, [0], str(tmp_path))


def tiny_chatml_checkpoint(tmp_path) -> str:
    """A random tiny Qwen2 on the ChatML tokenizer, config.json's eos <|endoftext|>."""
    folder = chatml_folder(tmp_path, CHATML_DEFAULT)
    cfg = ModelConfig(model_type="qwen2", vocab_size=448, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, torch_dtype="float32", eos_token_id=[0])
    torch.manual_seed(0)
    Transformer(cfg).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("system", [None, ""], ids=["default-system", "no-system"])
def test_evaluate_samples_with_the_stop_set_and_the_system_text(tmp_path, monkeypatch, capsys, system):
    folder = tiny_chatml_checkpoint(tmp_path)
    (tmp_path / "d.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    seen = {}

    def fake_generate(model, prompts, n, callback=None, **kw):
        seen.update(kw, prompts=prompts)
        return [Completion([5, 2], [0.0, 0.0], "stop") for _ in range(len(prompts) * n)]
    monkeypatch.setattr(evaluate, "generate", fake_generate)
    flags = ["--model", folder, "--data", str(tmp_path / "d.jsonl"), "--workers", "1"]
    evaluate.main(flags + ([] if system is None else ["--system", system]))
    tok = Tokenizer.from_pretrained(folder)
    assert seen["stop_ids"] == [0, 2]
    assert seen["prompts"] == [tok.encode_chat(deepscaler_prompt("1+1?"), system=system)]
    assert ("<|im_start|>system" in tok.decode(seen["prompts"][0])) == (system is None)
    capsys.readouterr()


def test_train_samples_and_warms_up_with_the_template_the_stop_set_and_the_system_text(tmp_path, monkeypatch):
    """train.py on the ChatML checkpoint whose config.json says <|endoftext|>: replies stop at
    <|im_end|> too, warm-up demonstrations end with <|im_end|> (the turn's end, not the eos),
    and prompts carry the checkpoint's default system turn unless --system '' drops it."""
    import train
    folder = tiny_chatml_checkpoint(tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{i}+{i}?", "answer": str(2 * i), "solution": "\\boxed{0}"})
                            + "\n" for i in range(2)))
    seen = {"stop_ids": [], "prompts": [], "demo_ends": []}
    real_generate, real_minibatch = train.generate, train.train_minibatch

    def spy_generate(model, prompts, **kw):
        seen["stop_ids"].append(kw["stop_ids"])
        seen["prompts"].extend(prompts)
        return real_generate(model, prompts, **kw)

    def spy_minibatch(ddp, model, seqs, **kw):
        if kw["loss_fn"] is train.sft_loss:
            seen["demo_ends"].extend(s.tokens[-1] for s in seqs)
        return real_minibatch(ddp, model, seqs, **kw)
    monkeypatch.setattr(train, "generate", spy_generate)
    monkeypatch.setattr(train, "train_minibatch", spy_minibatch)
    flags = ["--model", folder, "--data", str(data), "--prompts-per-step", "2", "--samples", "2", "--ctx", "4",
             "--steps", "1", "--updates-per-step", "1", "--kl-coef", "0", "--eval-every", "0", "--save-every", "0",
             "--show-every", "1000", "--micro-tokens", "256", "--no-grad-ckpt", "--sft-steps", "1", "--sft-batch", "2"]
    tok = Tokenizer.from_pretrained(folder)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 5]}))
    for system, out in ((None, "a"), ("", "b")):
        seen["prompts"].clear()
        train.main(flags + ["--out", str(tmp_path / out)] + ([] if system is None else ["--system", system]))
        assert seen["stop_ids"][-1] == [0, 2, 5] and set(seen["demo_ends"]) == {2}
        assert sorted(map(tuple, seen["prompts"])) == sorted(
            tuple(tok.encode_chat(deepscaler_prompt(f"{i}+{i}?"), system=system)) for i in range(2))
    # a checkpoint samples as its --model did: the template and generation_config.json travel with it
    train.main(flags[:flags.index("--save-every")] + ["--save-every", "1", "--out", str(tmp_path / "c")]
               + flags[flags.index("--save-every") + 2:])
    ckpt = str(tmp_path / "c" / "checkpoints" / "step_000001")
    assert Tokenizer.from_pretrained(ckpt).template == tok.template
    assert stop_ids(tok, [0], ckpt) == [0, 2, 5]


@pytest.mark.parametrize("system", [None, ""], ids=["default-system", "no-system"])
def test_polish_samples_with_the_stop_set_and_the_system_text_in_both_passes(tmp_path, monkeypatch, system):
    """polish.py on the ChatML checkpoint whose config.json says <|endoftext|>: the free and the
    guided prompts carry the checkpoint's default system turn (or none with --system ''), and
    every generate call stops at <|im_end|> too."""
    import polish
    folder = tiny_chatml_checkpoint(tmp_path)
    (tmp_path / "d.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    tok = Tokenizer.from_pretrained(folder)
    calls = []

    def fake_generate(model, prompts, n, callback, stop_ids, **kw):
        calls.append((prompts, stop_ids))
        for s in range(len(prompts) * n):                  # a wrong answer: the problem goes on to the guided pass
            callback(s, tok.encode("\\boxed{3}") + [2], "stop")
    monkeypatch.setattr(polish, "generate", fake_generate)
    polish.main(["--model", folder, "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                 "--samples", "1", "--max-new-tokens", "8", "--workers", "1"] + ([] if system is None else
                                                                                 ["--system", system]))
    (free, free_stops), (guided, guided_stops) = calls
    assert free == [tok.encode_chat(deepscaler_prompt("1+1?"), system=system)] and free_stops == guided_stops == [0, 2]
    assert tok.decode(guided[0]).startswith("<|im_start|>system") == (system is None)
    assert "The correct final answer is 2." in tok.decode(guided[0])
