"""Text in and out: the checkpoint's tokenizer on tiktoken, chat templates, and dataset records.

    from data import Tokenizer, deepscaler_prompt
    tok = Tokenizer.from_pretrained("DeepSeek-R1-Distill-Qwen-1.5B")  # reads tokenizer.json
    ids = tok.encode("Hello world")       # == HF tokenizers' encode(text, add_special_tokens=False).ids
    text = tok.decode(ids)
    prompt_ids = tok.encode_chat(deepscaler_prompt("What is 1+1?"))  # R1 or ChatML template

The tokenizer is rebuilt from the checkpoint's own tokenizer.json, so it gives the ids the
model was trained on without depending on `tokenizers` or `transformers` at run time:
the byte-level BPE vocab becomes tiktoken's mergeable ranks (a token's id is its rank, which
is right when ids follow merge order, and that is checked), the pre-tokenizer becomes one
tiktoken regex, the NFC normaliser is applied, and added tokens are matched in the text first,
as HF does. What tiktoken cannot express (SentencePiece/Unigram models, byte fallback, other
normalisers or pre-tokenizers, merges out of id order) is refused with a message naming it.
Chat templates are the two the supported checkpoints use, written out, not run through jinja.
"""
import json
import os
import re
import unicodedata

import tiktoken

# ----------------------------------------------------------------------------- tokenizer

# Pre-tokenizer regexes. GPT-2's is the one ByteLevel(use_regex=true) applies. The digits
# variant is GPT-2's after Digits(individual_digits=true) has isolated every \p{N} character:
# digits become single pieces, and the whitespace lookahead treats a digit as a boundary.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_DIGITS_PATTERN = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""

R1_TEMPLATE = "<｜begin▁of▁sentence｜><｜User｜>{content}<｜Assistant｜><think>\n"
CHATML_TEMPLATE = "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
TEMPLATES = {"deepseek-r1": R1_TEMPLATE, "chatml": CHATML_TEMPLATE}


def deepscaler_prompt(problem: str) -> str:
    """The user turn DeepScaleR trains and evaluates with."""
    return f"{problem} Let's think step by step and output the final answer within \\boxed{{}}."


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE writes each byte as a printable unicode character; this inverts that map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:  # unprintable bytes are shifted past 255, in byte order
            chars[chr(256 + n)] = b
            n += 1
    return chars


def _pattern(pre: dict | None, where: str) -> str:
    """Turn a tokenizer.json pre_tokenizer into one tiktoken regex (or refuse it by name)."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [s.get("type") for s in steps]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    if len(byte_level) != 1 or kinds[-1] != "ByteLevel":
        raise ValueError(f"{where}: pre_tokenizer {kinds} has no final ByteLevel step; only byte-level "
                         "BPE tokenizers can be represented")
    if byte_level[0].get("add_prefix_space"):
        raise ValueError(f"{where}: ByteLevel add_prefix_space=true is not supported")
    rest, use_regex = steps[:-1], byte_level[0].get("use_regex", True)
    if not rest and use_regex:
        return GPT2_PATTERN
    if len(rest) == 1 and rest[0].get("type") == "Split" and not use_regex:
        split = rest[0]
        if split.get("behavior") != "Isolated" or split.get("invert") or "Regex" not in split.get("pattern", {}):
            raise ValueError(f"{where}: Split pre-tokenizer {split} is not an isolated regex split")
        return split["pattern"]["Regex"]
    if len(rest) == 1 and rest[0] == {"type": "Digits", "individual_digits": True} and use_regex:
        return GPT2_DIGITS_PATTERN
    raise ValueError(f"{where}: pre_tokenizer sequence {kinds} (ByteLevel use_regex={use_regex}) "
                     "is not one tiktoken can represent")


class Tokenizer:
    def __init__(self, enc: tiktoken.Encoding, specials: dict[str, int], nfc: bool,
                 bos: str | None = None, eos: str | None = None, unk: tuple[int, int] | None = None):
        self.enc, self.specials, self.nfc = enc, specials, nfc
        self._unk = unk  # (first placeholder id, unk id) when some bytes have no token
        self.id_to_special = {i: s for s, i in specials.items()}
        # Longest first, so an added token that contains another one wins (HF matches longest).
        alts = sorted(specials, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, alts)) + ")") if alts else None
        self.bos_id = specials.get(bos) if bos else None
        self.eos_id = specials.get(eos) if eos else None
        if "<｜User｜>" in specials and "<｜Assistant｜>" in specials:
            self.chat_template = "deepseek-r1"
        elif "<|im_start|>" in specials and "<|im_end|>" in specials:
            self.chat_template = "chatml"
        else:
            self.chat_template = None

    @property
    def vocab_size(self) -> int:
        return self._unk[0] if self._unk else self.enc.n_vocab

    @property
    def eos_ids(self) -> list[int]:
        """Ids that end an assistant turn: the declared eos, and ChatML's <|im_end|>."""
        ids = [self.eos_id] if self.eos_id is not None else []
        if self.chat_template == "chatml" and self.specials["<|im_end|>"] not in ids:
            ids.append(self.specials["<|im_end|>"])
        return ids

    @classmethod
    def from_pretrained(cls, path: str) -> "Tokenizer":
        """Build from a checkpoint folder's tokenizer.json (+ tokenizer_config.json for bos/eos)."""
        where = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(where):
            raise FileNotFoundError(f"{where}: no tokenizer.json (expected an HF model folder)")
        with open(where, encoding="utf-8") as f:
            tj = json.load(f)
        model = tj.get("model", {})
        if model.get("type") != "BPE" or model.get("byte_fallback"):
            raise ValueError(f"{where}: model type {model.get('type')!r} (byte_fallback="
                             f"{model.get('byte_fallback')}) is not byte-level BPE; tiktoken cannot represent it")
        norm = tj.get("normalizer")
        if norm not in (None, {"type": "NFC"}):
            raise ValueError(f"{where}: normalizer {norm} is not supported (none or NFC are)")
        pattern = _pattern(tj.get("pre_tokenizer"), where)

        specials = {}
        for t in tj.get("added_tokens", []):
            if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
                raise ValueError(f"{where}: added token {t['content']!r} uses lstrip/rstrip/single_word, "
                                 "which is not supported")
            specials[t["content"]] = t["id"]

        # Vocab -> ranks. tiktoken merges the adjacent pair whose result has the lowest rank and
        # returns ranks as ids, so id order must agree with the merge order HF applies.
        bd = _byte_decoder()
        ranks = {}
        for token, i in model["vocab"].items():
            if token in specials:
                continue
            try:
                ranks[bytes(bd[c] for c in token)] = i
            except KeyError:
                raise ValueError(f"{where}: vocab entry {token!r} (id {i}) is not byte-level encoded") from None
        last, merged = -1, set()
        for m in model.get("merges", []):
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            i = model["vocab"].get(a + b)
            if i is None:
                raise ValueError(f"{where}: merge {a!r} + {b!r} makes a token missing from the vocab")
            if i <= last:
                raise ValueError(f"{where}: merge {a!r} + {b!r} -> id {i} comes after id {last}: "
                                 "ids do not follow merge order, which tiktoken cannot represent")
            last = i
            merged.add(i)
        # A multi-byte token no merge produces would be reachable in tiktoken but not in HF.
        orphans = [t for t, i in ranks.items() if len(t) > 1 and i not in merged]
        if orphans:
            raise ValueError(f"{where}: {len(orphans)} vocab entries (e.g. {orphans[0]!r}) are not "
                             "produced by any merge, which tiktoken cannot represent")
        # tiktoken needs a rank for every byte. A byte the vocab lacks is HF's unk token: give it
        # a placeholder rank above all ids (no merge can involve it) and map it to unk on encode.
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        unk = model.get("unk_token")
        if missing and unk not in model["vocab"]:
            raise ValueError(f"{where}: no token for bytes {missing[:8]} and no unk_token to map them to")
        first_placeholder = max(max(ranks.values()), max(specials.values(), default=0)) + 1
        for k, b in enumerate(missing):
            ranks[bytes([b])] = first_placeholder + k

        enc = tiktoken.Encoding(name=os.path.basename(os.path.abspath(path)), pat_str=pattern,
                                mergeable_ranks=ranks, special_tokens=specials)
        bos = eos = None
        cfg_path = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(cfg_path):
            with open(cfg_path, encoding="utf-8") as f:
                cfg = json.load(f)
            # A token may be written as a string or as an AddedToken dict with "content".
            bos, eos = [(t or {}).get("content") if isinstance(t, dict) else t
                        for t in (cfg.get("bos_token"), cfg.get("eos_token"))]
        return cls(enc, specials, nfc=norm is not None, bos=bos, eos=eos,
                   unk=(first_placeholder, model["vocab"][unk]) if missing else None)

    def encode(self, text: str) -> list[int]:
        """Token ids of text; added tokens written in the text become their ids, as in HF."""
        pieces = self._special_re.split(text) if self._special_re else [text]
        ids = []
        for k, piece in enumerate(pieces):
            if k % 2:  # odd pieces are the captured added tokens
                ids.append(self.specials[piece])
            elif piece:
                ids.extend(self.enc.encode_ordinary(unicodedata.normalize("NFC", piece) if self.nfc else piece))
        if self._unk and ids and max(ids) >= self._unk[0]:
            ids = [self._unk[1] if i >= self._unk[0] else i for i in ids]
        return ids

    def decode(self, ids) -> str:
        # Invalid UTF-8 (a sequence cut inside a character) shows as U+FFFD, as HF does.
        return self.enc.decode_bytes(list(ids)).decode("utf-8", errors="replace")

    def render_chat(self, content: str, template: str | None = None) -> str:
        """One user turn plus the assistant's generation prompt, in the named or detected template."""
        name = template or self.chat_template
        if name not in TEMPLATES:
            raise ValueError(f"chat template {name!r} is not known; choose one of {sorted(TEMPLATES)}"
                             if name else "this tokenizer has neither the DeepSeek-R1 nor the ChatML "
                             f"special tokens; pass template= one of {sorted(TEMPLATES)}")
        return TEMPLATES[name].format(content=content)

    def encode_chat(self, content: str, template: str | None = None) -> list[int]:
        return self.encode(self.render_chat(content, template))
