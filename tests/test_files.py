"""File problems: every unreadable model folder or data file is one line naming the file and
what is wrong with it (model.ModelFileError, data.DataError), never a traceback from deep inside.

    python -m pytest tests/test_files.py -q

Each test reads the message a user would see: it names the file, says what is wrong, and is
one line (data.clean_exit prints it as "program: error: MESSAGE").
"""
import json
import os
from pathlib import Path

import pytest
import torch

from data import DataError, Tokenizer, _byte_decoder, load_records, main
from model import ModelConfig, ModelFileError, Transformer

TINY = dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, torch_dtype="float32")


def message(error, load, *args) -> str:
    """The error's message, checked to be one line."""
    with pytest.raises(error) as e:
        load(*args)
    text = str(e.value)
    assert "\n" not in text and text.strip() == text, text
    return text


def tiny_model(folder: Path, **save) -> Path:
    torch.manual_seed(0)
    Transformer(ModelConfig(**TINY)).save_pretrained(folder, **save)
    return folder


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    for key in [k for k, v in changes.items() if v is ...]:   # ... removes the key
        del cfg[key]
    (folder / "config.json").write_text(json.dumps(cfg))


# ----------------------------------------------------------------------------- model folders

def test_missing_folder_and_a_file_for_a_folder(tmp_path):
    msg = message(ModelFileError, Transformer.from_pretrained, tmp_path / "nope")
    assert "nope: no such folder" in msg
    (tmp_path / "f").write_text("x")
    assert "f: is a file, not a folder" in message(ModelFileError, Transformer.from_pretrained, tmp_path / "f")
    assert "nope: no such folder" in message(ModelFileError, Tokenizer.from_pretrained, str(tmp_path / "nope"))


def test_malformed_config_json_names_line_and_column(tmp_path):
    tiny_model(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "qwen2",\n  "vocab_size": 64,,\n}')
    msg = message(ModelFileError, Transformer.from_pretrained, tmp_path)
    assert "config.json:2:20: not valid JSON (Expecting property name" in msg
    (tmp_path / "config.json").write_text("[1, 2]")
    assert "config.json: expected a JSON object" in message(ModelFileError, Transformer.from_pretrained, tmp_path)
    (tmp_path / "config.json").write_bytes(b'{"model_type": "qw\xe9n2"}')
    assert "config.json:1: not UTF-8 text (byte offset 18" in message(ModelFileError, Transformer.from_pretrained, tmp_path)


def test_config_json_with_a_bom_loads(tmp_path):
    tiny_model(tmp_path)
    text = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text("\ufeff" + text, encoding="utf-8")
    assert Transformer.from_pretrained(tmp_path).config.hidden_size == 32


@pytest.mark.parametrize("change,words", [
    ({"hidden_size": "32"}, 'hidden_size must be a positive integer, found "32"'),
    ({"num_hidden_layers": True}, "num_hidden_layers must be a positive integer, found true"),
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, found 0"),
    ({"vocab_size": ...}, "vocab_size is missing"),
    ({"rms_norm_eps": "1e-6"}, 'rms_norm_eps must be a number, found "1e-6"'),
    ({"tie_word_embeddings": "no"}, 'tie_word_embeddings must be true or false, found "no"'),
    ({"eos_token_id": ["2"]}, 'eos_token_id must be an integer or a list of integers, found ["2"]'),
    ({"rope_scaling": "yarn"}, 'rope_scaling must be an object, found "yarn"'),
    ({"torch_dtype": ["float32"]}, 'torch_dtype must be a string, found ["float32"]'),
    ({"rope_theta": ..., "rope_parameters": {"rope_theta": "1e6"}}, 'rope_theta must be a number, found "1e6"'),
    ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads=3"),
])
def test_config_values_of_the_wrong_type_are_named(tmp_path, change, words):
    tiny_model(tmp_path)
    edit_config(tmp_path, **change)
    msg = message(ModelFileError, Transformer.from_pretrained, tmp_path)
    assert msg.startswith(str(tmp_path / "config.json") + ": ") and words in msg


@pytest.mark.parametrize("damage,words", [
    ("truncate", "incomplete metadata"),
    ("header", "invalid header length"),
    ("garbage", "header too large"),
    ("empty", "header too small"),
])
def test_corrupt_safetensors_is_named(tmp_path, damage, words):
    st = tiny_model(tmp_path) / "model.safetensors"
    raw = st.read_bytes()
    st.write_bytes({"truncate": raw[:len(raw) // 2], "header": raw[:20], "garbage": b"\xff" * 100, "empty": b""}[damage])
    msg = message(ModelFileError, Transformer.from_pretrained, tmp_path)
    assert f"{st}: not a readable safetensors file" in msg and words in msg


def test_missing_weights_and_shards(tmp_path):
    tiny_model(tmp_path, max_shard_bytes=20_000)
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2
    shards[1].unlink()
    msg = message(ModelFileError, Transformer.from_pretrained, tmp_path)
    assert f"model.safetensors.index.json: names shards that are not there: ['{shards[1].name}'] (1 of" in msg
    index = tmp_path / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"a": 1}}')
    assert 'index.json: no "weight_map" object' in message(ModelFileError, Transformer.from_pretrained, tmp_path)
    index.write_text('{"weight_map": ')
    assert "index.json:1:16: not valid JSON" in message(ModelFileError, Transformer.from_pretrained, tmp_path)
    index.unlink()
    msg = message(ModelFileError, Transformer.from_pretrained, tmp_path)
    assert f"{tmp_path}: neither model.safetensors nor model.safetensors.index.json" in msg


def test_weights_that_do_not_fit_config_json(tmp_path):
    tiny_model(tmp_path)
    edit_config(tmp_path, intermediate_size=48)
    msg = message(ModelFileError, Transformer.from_pretrained, tmp_path)
    assert "model.safetensors: tensor layers.0.mlp.down_proj.weight has shape [32, 64] but config.json " \
           "implies [32, 48] (5 more differ)" in msg
    edit_config(tmp_path, intermediate_size=64, num_hidden_layers=3)
    msg = message(ModelFileError, Transformer.from_pretrained, tmp_path)
    assert "model.safetensors: checkpoint does not match the qwen2 architecture: missing keys ['layers.2." in msg


# ----------------------------------------------------------------------------- tokenizer files

def tiny_tokenizer(folder: Path, **changes) -> Path:
    """A byte-level BPE tokenizer.json with the 256 byte tokens and no merges, edited by changes."""
    folder.mkdir(exist_ok=True)
    vocab = {c: b for c, b in _byte_decoder().items()}
    tj = {"model": {"type": "BPE", "vocab": vocab, "merges": []}, "normalizer": None,
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
          "added_tokens": [{"id": 256, "content": "<|endoftext|>"}]}
    tj.update(changes)
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    return folder


def test_tiny_tokenizer_loads(tmp_path):
    (tiny_tokenizer(tmp_path) / "tokenizer_config.json").write_text('{"eos_token": {"content": "<|endoftext|>"}}')
    tok = Tokenizer.from_pretrained(str(tmp_path))
    assert tok.decode(tok.encode("hé<|endoftext|>")) == "hé<|endoftext|>" and tok.eos_id == 256


@pytest.mark.parametrize("changes,words", [
    ({"model": None}, 'tokenizer.json: no "model" object'),
    ({"model": {"type": "BPE", "vocab": {"a": "0"}}}, "tokenizer.json: model.vocab must be a non-empty object"),
    ({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": "a b"}}, "tokenizer.json: model.merges must be a list"),
    ({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["ab"]}},
     "tokenizer.json: merge 'ab' is neither \"a b\" nor"),
    ({"added_tokens": [{"id": "256", "content": "<s>"}]}, "tokenizer.json: added_tokens must be a list of"),
    ({"pre_tokenizer": "ByteLevel"}, 'tokenizer.json: pre_tokenizer must be an object (or a Sequence of objects), '
                                     'found "ByteLevel"'),
])
def test_malformed_tokenizer_json_is_named(tmp_path, changes, words):
    tiny_tokenizer(tmp_path, **changes)
    assert words in message(ModelFileError, Tokenizer.from_pretrained, str(tmp_path))


def test_unreadable_tokenizer_files_are_named(tmp_path):
    assert "tokenizer.json: no tokenizer.json" in message(ModelFileError, Tokenizer.from_pretrained, str(tmp_path))
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE",\n "vocab": {"a": 0}')
    msg = message(ModelFileError, Tokenizer.from_pretrained, str(tmp_path))
    assert "tokenizer.json:2:19: not valid JSON (Expecting ',' delimiter)" in msg
    tiny_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"')
    msg = message(ModelFileError, Tokenizer.from_pretrained, str(tmp_path))
    assert "tokenizer_config.json:1:30: not valid JSON" in msg
    (tmp_path / "tokenizer_config.json").write_text('{"bos_token": null, "eos_token": 256}')
    msg = message(ModelFileError, Tokenizer.from_pretrained, str(tmp_path))
    assert 'tokenizer_config.json: eos_token must be a string or {"content": string}, found 256' in msg


# ----------------------------------------------------------------------------- data files

ROW = '{"problem": "1+1?", "answer": "2"}'


def write_bytes(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_latin1_and_binary_files_name_line_and_byte(tmp_path):
    latin1 = (ROW + '\n{"problem": "caf\xe9?", "answer": "1"}\n').encode("latin-1")
    msg = message(DataError, load_records, write_bytes(tmp_path / "x.jsonl", latin1))
    offset = latin1.index(b"\xe9")
    assert f"x.jsonl:2: not UTF-8 text (byte offset {offset}: invalid continuation byte, byte 0xe9)" in msg
    as_list = b"\xef\xbb\xbf[" + latin1.replace(b"}\n{", b"},\n{").rstrip() + b"]"   # a BOM counts in the offset
    msg = message(DataError, load_records, write_bytes(tmp_path / "y.json", as_list))
    assert f"y.json:2: not UTF-8 text (byte offset {as_list.index(latin1[offset:offset + 1])}:" in msg
    # skip_bad does not hide it: a file in the wrong encoding is wrong as a whole
    binary = bytes(range(256)) * 4
    assert "z.json:2: not UTF-8 text (byte offset 128: invalid start byte" in message(
        DataError, load_records, write_bytes(tmp_path / "z.json", binary), True)


def test_a_utf8_bom_is_accepted(tmp_path):
    bom = "\ufeff".encode()
    a = load_records(write_bytes(tmp_path / "a.json", bom + f"[{ROW}, {ROW}]".encode()))
    b = load_records(write_bytes(tmp_path / "b.jsonl", bom + f"{ROW}\n{ROW}\n".encode()))
    assert a == b and len(a) == 2 and a[0]["problem"] == "1+1?"


@pytest.mark.parametrize("text,words", [
    ('{\n  "data": [\n    ' + ROW + '\n  ]\n}\n', "found a JSON object with keys 'data' (is the list under 'data' the data?)"),
    ('{"train": [' + ROW + '], "version": 2}\n', "found a JSON object with keys 'train', 'version'"),
    ('{\n  "problem": "1+1?",\n  "answer": "2"\n}\n', "found a JSON object with keys 'problem', 'answer'"),
    ('"just text"\n', None),
])
def test_a_json_object_instead_of_a_list_says_what_is_expected(tmp_path, text, words):
    path = tmp_path / "x.json"
    path.write_text(text)
    msg = message(DataError, load_records, str(path), words is not None)   # skip_bad keeps a file error
    if words:
        assert msg.startswith(f"{path}: {words}")
        assert msg.endswith("; expected a JSON list of objects, JSONL (one object a line), parquet, or a folder of them")
    else:   # one JSON string is a one-row JSONL with a bad row: that row is named instead
        assert "x.json:1: expected an object with problem and answer, got str" in msg


def test_a_first_row_without_a_problem_is_a_bad_row_not_a_wrapper(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"answer": "1", "meta": {"source": "amc"}}\n' + ROW + "\n")
    assert "x.jsonl:1: field 'problem' (or 'question') is missing" in message(DataError, load_records, str(path))
    assert len(load_records(str(path), skip_bad=True)) == 1


@pytest.mark.parametrize("field", ["problem", "answer", "solution", "question"])
def test_a_lone_surrogate_is_refused_at_load_time(tmp_path, field, capsys):
    bad = {"problem": "p", "answer": "1", field: "x \\ud800 y"}
    lines = [ROW, json.dumps(bad).replace("\\\\ud800", "\\ud800"), '{"problem": "\\ud83e\\udd99", "answer": "3"}']
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(lines) + "\n")
    msg = message(DataError, load_records, str(path))
    assert f"x.jsonl:2: field '{field}' holds '\\ud800', a lone UTF-16 surrogate" in msg
    kept = load_records(str(path), skip_bad=True)   # a surrogate pair (an emoji) is fine
    assert [r["problem"] for r in kept] == ["1+1?", "🦙"]
    assert "skipped 1 bad rows of 3" in capsys.readouterr().err


def test_a_lone_surrogate_in_a_nested_field_or_json_list(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('[' + ROW + ', {"problem": "p", "answer": "1", "meta": {"tags": ["ok", "\\udc00"]}}]')
    assert "x.json row 1: field 'meta.tags.1' holds '\\udc00'" in message(DataError, load_records, str(path))


def test_parquet_that_is_not_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    msg = message(DataError, load_records, write_bytes(tmp_path / "t.parquet", b"not parquet at all"))
    assert "t.parquet: not a readable parquet file (" in msg


def test_data_stats_cli_prints_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DEBUG", raising=False)
    path = write_bytes(tmp_path / "x.jsonl", b'{"problem": "\xff"}\n')
    with pytest.raises(SystemExit) as e:
        main(["stats", path, "--model", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == f"data.py: error: {path}:1: not UTF-8 text (byte offset 13: " \
                                        "invalid start byte, byte 0xff); save the file as UTF-8\n"
    os.remove(path)
    with pytest.raises(SystemExit) as e:
        main(["stats", str(tmp_path / "x.jsonl"), "--model", str(tmp_path)])
    assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1
