"""Text in and out: the checkpoint's tokenizer on tiktoken, chat templates, and dataset records.

    python data.py stats deepscaler.json --model DIR   # rows, empty solutions, token lengths

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

Datasets: `load_records` reads a JSON list (deepscaler.json), JSONL, parquet (the hub's
data/train-*.parquet, through pyarrow when installed) or a folder of such shards into dicts
with `problem`, `answer` and `solution` strings, every other field kept. Bad rows are errors
naming file, line and field, or are skipped and listed when asked. A file that cannot be read
as a whole (not UTF-8, a JSON object where a list belongs) is a DataError naming it; a UTF-8
byte-order mark is accepted. Text fields are checked for lone surrogates ("\\ud800" in JSON),
which are not text. Missing or malformed tokenizer files are model.ModelFileError.
"""
import argparse
import codecs
import contextlib
import errno
import glob
import json
import math
import os
import random
import re
import signal
import sys
import threading
import unicodedata
from dataclasses import dataclass

import tiktoken

from model import ModelFileError, model_folder, one_line, read_json

# ----------------------------------------------------------------------------- chat templates and prompts

# One user turn and the assistant's generation prompt in the two template families the
# supported checkpoints use, written out instead of run through jinja. {system} is the system
# text: the R1 template writes it bare after the BOS, ChatML as a turn of its own
# (CHATML_SYSTEM; nothing at all when there is no system text). The R1 prompt ends with
# "<think>\n", as the template revised on 2025-02-09 renders it and as DeepSeek recommends for
# every R1 model (a reply then never skips its reasoning).
R1_TEMPLATE = "<｜begin▁of▁sentence｜>{system}<｜User｜>{content}<｜Assistant｜><think>\n"
CHATML_TEMPLATE = "{system}<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
CHATML_SYSTEM = "<|im_start|>system\n{system}<|im_end|>\n"
TEMPLATES = {"deepseek-r1": R1_TEMPLATE, "chatml": CHATML_TEMPLATE}
# The token that ends an assistant turn in each template: a reply stops there (sample.stop_ids)
# and a demonstration ends with it (train.py's warm-up).
END_OF_TURN = {"deepseek-r1": "<｜end▁of▁sentence｜>", "chatml": "<|im_end|>"}
# A ChatML template's default system turn: the literal it renders when the messages bring no
# system message, e.g. Qwen2.5's '<|im_start|>system\nYou are Qwen, ...<|im_end|>\n'. The
# newline is "\n" inside a jinja string literal or a real newline; no quote may occur in between,
# which keeps out the branch that renders the caller's own system message.
DEFAULT_SYSTEM = re.compile(r"""<\|im_start\|>system(?:\\n|\n)([^'"]*?)<\|im_end\|>""")


@dataclass(frozen=True)
class ChatTemplate:
    """What the project renders for a checkpoint's chat template (see read_chat_template)."""
    name: str | None           # "deepseek-r1", "chatml", or None: neither is known for this tokenizer
    default_system: str = ""   # the system text the checkpoint's template adds when none is given
    note: str = ""             # one line for the user when our rendering may differ from the checkpoint's


def _jinja_unescape(literal: str) -> str:
    """The text of a jinja string literal's body (\\n, \\t, \\', \\\\ as Python reads them)."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), literal)


def _template_text(path: str) -> str:
    """The checkpoint's jinja chat template: chat_template.jinja (newer transformers write it
    beside the tokenizer) or tokenizer_config.json's chat_template, a string or a list of named
    templates (the one named "default"); "" when there is none."""
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read()
    where = os.path.join(path, "tokenizer_config.json")
    text = read_json(where).get("chat_template") if os.path.isfile(where) else None
    if isinstance(text, list):
        text = next((t.get("template") for t in text if isinstance(t, dict) and t.get("name") == "default"), None)
    if text is not None and not isinstance(text, str):
        raise ModelFileError(f"{where}: chat_template must be a string or a list of {{name, template}}, "
                             f"found {json.dumps(text)[:80]}")
    return text or ""


def template_by_tokens(specials: dict) -> str | None:
    """The template family whose role tokens the tokenizer has: R1's, ChatML's, or None."""
    if "<｜User｜>" in specials and "<｜Assistant｜>" in specials:
        return "deepseek-r1"
    if "<|im_start|>" in specials and "<|im_end|>" in specials:
        return "chatml"
    return None


def read_chat_template(path: str, specials: dict) -> ChatTemplate:
    """Which of TEMPLATES renders this checkpoint's prompts, and its default system text.

    The checkpoint's own jinja template is recognised by its role tokens, not run: R1's
    <｜User｜>/<｜Assistant｜>, or ChatML's <|im_start|>, whose default system turn (Qwen2.5,
    Qwen2.5-Math, SmolLM2 carry one) is read from the literal that renders it. Without a
    template the tokenizer's special tokens decide, as before templates were read. A template
    of another family falls back to those tokens with a note; an R1 template whose generation
    prompt lacks "<think>\n" (the first revision) gets a note saying that it is added."""
    by_tokens = template_by_tokens(specials)
    text = _template_text(path)
    if not text:
        return ChatTemplate(by_tokens)
    if "<｜User｜>" in text and "<｜Assistant｜>" in text and by_tokens == "deepseek-r1":
        note = "" if "<think>" in text else ("the checkpoint's chat template ends its generation prompt at "
                                             "<｜Assistant｜>; prompts here end with <think>\\n, as DeepSeek "
                                             "recommends for R1 models and the template revised on 2025-02-09 does")
        return ChatTemplate("deepseek-r1", note=note)
    if "<|im_start|>" in text and by_tokens == "chatml":
        found = DEFAULT_SYSTEM.search(text)
        return ChatTemplate("chatml", _jinja_unescape(found.group(1)) if found else "")
    return ChatTemplate(by_tokens, note=f"the checkpoint's chat template is neither DeepSeek-R1's nor ChatML; "
                                        f"prompts are rendered as {by_tokens or 'nothing known'} (its special "
                                        f"tokens), which may differ from what it was tuned with: choose with "
                                        f"--template and --system")


# --think: must a reply close its reasoning with </think> to earn reward 1?
THINK_CHOICES = ("auto", "yes", "no")


def requires_think(think: str, template: str | None) -> bool:
    """The one rule for train.py's reward, sample.py's accuracy and polish.py's pass rates.

    An R1-style model that never writes </think> is still reasoning when it stops, so its
    "answer" is an accident of truncation: with think "auto" the R1 template (the one the
    prompts are actually rendered with) requires the tag, other templates do not.
    """
    if think not in THINK_CHOICES:
        raise ValueError(f"think must be one of {THINK_CHOICES}, not {think!r}")
    if think == "auto":
        return template == "deepseek-r1"
    return think == "yes"


def reference_answers(rec: dict):
    """What a reply is graded against: the record's list of accepted forms where it has one
    (data.py keeps every variant a source gives), else its single answer."""
    return rec.get("answers") or rec["answer"]


def deepscaler_prompt(problem: str) -> str:
    """The user turn DeepScaleR trains and evaluates with."""
    return f"{problem} Let's think step by step and output the final answer within \\boxed{{}}."


# ----------------------------------------------------------------------------- tokenizer

# Pre-tokenizer regexes. GPT-2's is the one ByteLevel(use_regex=true) applies. The digits
# variant is GPT-2's after Digits(individual_digits=true) has isolated every \p{N} character:
# digits become single pieces, and the whitespace lookahead treats a digit as a boundary.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_DIGITS_PATTERN = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""


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
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre] if pre else []
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise ModelFileError(f"{where}: pre_tokenizer must be an object (or a Sequence of objects), found "
                             f"{json.dumps(pre)[:80]}")
    kinds = [s.get("type") for s in steps]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    if len(byte_level) != 1 or kinds[-1] != "ByteLevel":
        raise ModelFileError(f"{where}: pre_tokenizer {kinds} has no final ByteLevel step; only byte-level "
                             "BPE tokenizers can be represented")
    if byte_level[0].get("add_prefix_space"):
        raise ModelFileError(f"{where}: ByteLevel add_prefix_space=true is not supported")
    rest, use_regex = steps[:-1], byte_level[0].get("use_regex", True)
    if not rest and use_regex:
        return GPT2_PATTERN
    if len(rest) == 1 and rest[0].get("type") == "Split" and not use_regex:
        split = rest[0]
        pattern = split.get("pattern")
        regex = pattern.get("Regex") if isinstance(pattern, dict) else None
        if split.get("behavior") != "Isolated" or split.get("invert") or not isinstance(regex, str):
            raise ModelFileError(f"{where}: Split pre-tokenizer {split} is not an isolated regex split")
        return regex
    if len(rest) == 1 and rest[0] == {"type": "Digits", "individual_digits": True} and use_regex:
        return GPT2_DIGITS_PATTERN
    raise ModelFileError(f"{where}: pre_tokenizer sequence {kinds} (ByteLevel use_regex={use_regex}) "
                         "is not one tiktoken can represent")


def _tokenizer_json(path: str) -> tuple[str, dict]:
    """(path of tokenizer.json, its contents), checked for the shape the rest of the build
    reads, so that a malformed file is a ModelFileError naming it, not a KeyError."""
    where = os.path.join(model_folder(path), "tokenizer.json")
    if not os.path.isfile(where):
        raise ModelFileError(f"{where}: no tokenizer.json (expected an HF model folder)")
    tj = read_json(where)
    model = tj.get("model")
    if not isinstance(model, dict):
        raise ModelFileError(f"{where}: no \"model\" object (the tokenizer's vocab and merges)")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab or not all(_is_id(i) for i in vocab.values()):
        raise ModelFileError(f"{where}: model.vocab must be a non-empty object of token -> integer id")
    if not isinstance(model.get("merges", []), list):
        raise ModelFileError(f"{where}: model.merges must be a list")
    added = tj.get("added_tokens", [])
    if not isinstance(added, list) or not all(
            isinstance(t, dict) and isinstance(t.get("content"), str) and _is_id(t.get("id")) for t in added):
        raise ModelFileError(f"{where}: added_tokens must be a list of {{\"content\": string, \"id\": integer}}")
    return where, tj


def _is_id(i) -> bool:
    return isinstance(i, int) and not isinstance(i, bool) and i >= 0


def _added_tokens(tj: dict, where: str) -> dict[str, int]:
    """Added (special) tokens by content; the options tiktoken cannot express are refused."""
    specials = {}
    for t in tj.get("added_tokens", []):
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            raise ModelFileError(f"{where}: added token {t['content']!r} uses lstrip/rstrip/single_word, "
                                 "which is not supported")
        specials[t["content"]] = t["id"]
    return specials


def _ranks(model: dict, specials: dict[str, int], where: str) -> dict[bytes, int]:
    """Vocab -> tiktoken ranks. tiktoken merges the adjacent pair whose result has the lowest
    rank and returns ranks as ids, so id order must agree with the merge order HF applies."""
    bd = _byte_decoder()
    ranks = {}
    for token, i in model["vocab"].items():
        if token in specials:
            continue
        try:
            ranks[bytes(bd[c] for c in token)] = i
        except KeyError:
            raise ModelFileError(f"{where}: vocab entry {token!r} (id {i}) is not byte-level encoded") from None
    last, merged = -1, set()
    for m in model.get("merges", []):
        pair = m.split(" ", 1) if isinstance(m, str) else m
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise ModelFileError(f"{where}: merge {m!r} is neither \"a b\" nor [\"a\", \"b\"]")
        a, b = pair
        i = model["vocab"].get(a + b)
        if i is None:
            raise ModelFileError(f"{where}: merge {a!r} + {b!r} makes a token missing from the vocab")
        if i <= last:
            raise ModelFileError(f"{where}: merge {a!r} + {b!r} -> id {i} comes after id {last}: "
                                 "ids do not follow merge order, which tiktoken cannot represent")
        last = i
        merged.add(i)
    # A multi-byte token no merge produces would be reachable in tiktoken but not in HF.
    orphans = [t for t, i in ranks.items() if len(t) > 1 and i not in merged]
    if orphans:
        raise ModelFileError(f"{where}: {len(orphans)} vocab entries (e.g. {orphans[0]!r}) are not "
                             "produced by any merge, which tiktoken cannot represent")
    return ranks


def _bos_eos(path: str) -> tuple[str | None, str | None]:
    """bos and eos token texts from tokenizer_config.json, when the folder has one. A token
    may be written as a string or as an AddedToken object with "content"."""
    where = os.path.join(path, "tokenizer_config.json")
    if not os.path.isfile(where):
        return None, None
    cfg = read_json(where)
    names = []
    for key in ("bos_token", "eos_token"):
        t = cfg.get(key)
        name = t.get("content") if isinstance(t, dict) else t
        if name is not None and not isinstance(name, str):
            raise ModelFileError(f"{where}: {key} must be a string or {{\"content\": string}}, "
                                 f"found {json.dumps(t)[:80]}")
        names.append(name)
    return names[0], names[1]


class Tokenizer:
    def __init__(self, enc: tiktoken.Encoding, specials: dict[str, int], nfc: bool,
                 bos: str | None = None, eos: str | None = None, unk: tuple[int, int] | None = None,
                 template: ChatTemplate | None = None):
        self.enc, self.specials, self.nfc = enc, specials, nfc
        self._unk = unk  # (first placeholder id, unk id) when some bytes have no token
        self.id_to_special = {i: s for s, i in specials.items()}
        # Longest first, so an added token that contains another one wins (HF matches longest).
        alts = sorted(specials, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, alts)) + ")") if alts else None
        self.bos_id = specials.get(bos) if bos else None
        self.eos_id = specials.get(eos) if eos else None
        # the checkpoint's chat template as read from its folder; without one, its special tokens decide
        self.template = template or ChatTemplate(template_by_tokens(specials))
        self.chat_template = self.template.name          # "deepseek-r1", "chatml" or None

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
        """Build from a checkpoint folder's tokenizer.json (+ tokenizer_config.json for bos/eos).
        A file that is missing, malformed or not representable is a one-line ModelFileError."""
        where, tj = _tokenizer_json(path)
        model = tj["model"]
        if model.get("type") != "BPE" or model.get("byte_fallback"):
            raise ModelFileError(f"{where}: model type {model.get('type')!r} (byte_fallback="
                                 f"{model.get('byte_fallback')}) is not byte-level BPE; tiktoken cannot represent it")
        norm = tj.get("normalizer")
        if norm not in (None, {"type": "NFC"}):
            raise ModelFileError(f"{where}: normalizer {norm} is not supported (none or NFC are)")
        pattern = _pattern(tj.get("pre_tokenizer"), where)
        specials = _added_tokens(tj, where)
        ranks = _ranks(model, specials, where)
        # tiktoken needs a rank for every byte. A byte the vocab lacks is HF's unk token: give it
        # a placeholder rank above all ids (no merge can involve it) and map it to unk on encode.
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        unk = model.get("unk_token")
        if missing and not (isinstance(unk, str) and unk in model["vocab"]):
            raise ModelFileError(f"{where}: no token for bytes {missing[:8]} and no unk_token to map them to")
        first_placeholder = max(max(ranks.values()), max(specials.values(), default=0)) + 1
        for k, b in enumerate(missing):
            ranks[bytes([b])] = first_placeholder + k
        try:
            enc = tiktoken.Encoding(name=os.path.basename(os.path.abspath(path)), pat_str=pattern,
                                    mergeable_ranks=ranks, special_tokens=specials)
        except ValueError as e:   # the pre-tokenizer's regex does not compile
            raise ModelFileError(f"{where}: pre_tokenizer regex {pattern!r} is not usable ({e})") from None
        bos, eos = _bos_eos(path)
        return cls(enc, specials, nfc=norm is not None, bos=bos, eos=eos,
                   unk=(first_placeholder, model["vocab"][unk]) if missing else None,
                   template=read_chat_template(path, specials))

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
        ids = list(ids)
        try:
            data = self.enc.decode_bytes(ids)
        except KeyError:  # ids with no token (embedding rows past the vocab, which a model can sample)
            data = self.enc.decode_bytes([i for i in ids if self._known(i)])
        return data.decode("utf-8", errors="replace")

    def _known(self, i: int) -> bool:
        try:
            self.enc.decode_single_token_bytes(i)
            return True
        except KeyError:
            return False

    def render_chat(self, content: str, template: str | None = None, system: str | None = None) -> str:
        """One user turn plus the assistant's generation prompt, in the named or the checkpoint's
        template. system: the system text; None: the checkpoint's default (when the template is
        the checkpoint's own; Qwen2.5's "You are Qwen, ..."), "": no system text at all."""
        name = template or self.chat_template
        if name not in TEMPLATES:
            raise ValueError(f"chat template {name!r} is not known; choose one of {sorted(TEMPLATES)}"
                             if name else "this tokenizer has neither the DeepSeek-R1 nor the ChatML "
                             f"special tokens; pass template= one of {sorted(TEMPLATES)}")
        if system is None:
            system = self.template.default_system if name == self.chat_template else ""
        if name == "chatml" and system:
            system = CHATML_SYSTEM.format(system=system)
        return TEMPLATES[name].format(system=system, content=content)

    def encode_chat(self, content: str, template: str | None = None, system: str | None = None) -> list[int]:
        return self.encode(self.render_chat(content, template, system))

    def end_of_turn(self, template: str | None = None) -> int | None:
        """The id of the token that ends an assistant turn in the named or the checkpoint's
        template (END_OF_TURN), when this tokenizer has it."""
        return self.specials.get(END_OF_TURN.get(template or self.chat_template, ""))


# ----------------------------------------------------------------------------- datasets

class DataError(ValueError):
    """A data file or row that cannot be used, with its location (file, file:line or file row N)
    in a one-line message."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's stop, `timeout`, `kill`), raised where the program is, so that
    it unwinds as Ctrl-C does: files closed, parts synced, clean_exit's line."""


def _terminate(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def clean_exit(program: str, on_interrupt: str = ""):
    """Around an entry point's work: a bad input file or model folder (DataError,
    ModelFileError) ends the program with one line naming the file; Ctrl-C and SIGTERM with one
    line saying what was kept (`on_interrupt`: what survives and the command that continues)
    and exit status 130 or 143 (128 + the signal, as a shell reports it); a full disk with one
    line naming the file being written and, again, what was kept. DEBUG=1 in the environment
    shows the full traceback instead. A SIGTERM handler set inside (train.py's fail_fast, which
    must not wait on a lost rank) takes precedence while it is set."""
    debug = bool(os.environ.get("DEBUG"))
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        yield
    except (DataError, ModelFileError) as e:
        if debug:
            raise
        print(f"{program}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:
        if debug:
            raise
        how = "stopped by SIGTERM" if isinstance(e, Terminated) else "interrupted"
        print(f"{program}: {how}{': ' + on_interrupt if on_interrupt else ''}", file=sys.stderr)
        raise SystemExit(143 if isinstance(e, Terminated) else 130) from None
    except OSError as e:
        if debug or e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"{program}: error: no space left on the device writing {e.filename or 'an output'}"
              f"{'; ' + on_interrupt if on_interrupt else ''}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# What load_records reads, said whenever a file has some other shape.
EXPECTED = "expected a JSON list of objects, JSONL (one object a line), parquet, or a folder of them"
# The longest JSONL line and the largest JSON-list file read. A problem row is kilobytes; a
# multi-GB file without newlines (a binary dump, a JSON object per file) would otherwise be
# read whole into memory before anything says what it is.
MAX_LINE = 64 << 20
MAX_JSON_LIST = 1 << 30


def _read_rows(path: str):
    """Yield (location, row) for every row of a JSON list, JSONL or parquet file. A row that
    is not valid JSON is yielded as a DataError (skip_bad may drop it); a file that cannot be
    read as a whole (not UTF-8, not a list, not parquet) raises one."""
    if path.endswith(".parquet"):
        yield from _parquet_rows(path)
        return
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16).removeprefix(codecs.BOM_UTF8).lstrip()
            f.seek(0)
            if head.startswith(b"["):
                size = os.fstat(f.fileno()).st_size
                if size > MAX_JSON_LIST:
                    raise DataError(f"{path}: a JSON list of {size / 2**30:.1f} GiB, over the {MAX_JSON_LIST >> 30} GiB "
                                    f"read whole; write it as JSONL (one object a line)")
                yield from _json_list_rows(path, f.read())
            else:
                yield from _jsonl_rows(path, f)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None


def _utf8(path: str, raw: bytes, offset: int = 0, lineno: int = 1) -> str:
    """raw (which starts at byte `offset`, line `lineno` of the file) as text, or a DataError
    naming the line and byte offset of the first byte that is not UTF-8 (a latin-1 or binary
    file), instead of a bare UnicodeDecodeError that names no file."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = lineno + raw.count(b"\n", 0, e.start)
        raise DataError(f"{path}:{line}: not UTF-8 text (byte offset {offset + e.start}: {e.reason}, "
                        f"byte 0x{raw[e.start]:02x}); save the file as UTF-8") from None


def _json_list_rows(path: str, raw: bytes):
    """The rows of a file holding one JSON list (a UTF-8 byte-order mark is allowed)."""
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        rows = json.loads(_utf8(path, raw[bom:], offset=bom))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    for i, row in enumerate(rows):
        yield f"{path} row {i}", row


def _jsonl_rows(path: str, f):
    """The rows of a JSONL file read from the binary file f, one JSON value a line."""
    offset, first = 0, True
    for lineno, line in enumerate(iter(lambda: f.readline(MAX_LINE + 1), b""), 1):
        if len(line) > MAX_LINE:
            raise DataError(f"{path}:{lineno}: a line over {MAX_LINE >> 20} MiB (starts {line[:40]!r}); a problem row "
                            f"is kilobytes, so this is not JSONL; {EXPECTED}")
        bom = len(codecs.BOM_UTF8) if lineno == 1 and line.startswith(codecs.BOM_UTF8) else 0
        text = _utf8(path, line[bom:], offset + bom, lineno)
        offset += len(line)
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            if first:   # a pretty-printed object fails on its first line: say what the file is
                _refuse_whole_value(path)
            row = DataError(f"{path}:{lineno}: not valid JSON ({e.msg})")
        if first and _is_wrapper(row):   # {"train": [...]} on one line
            raise DataError(f"{path}: {_shape(row)}; {EXPECTED}")
        first = False
        yield f"{path}:{lineno}", row


def _refuse_whole_value(path: str) -> None:
    """When the whole file is one JSON value that is not a list (an object spread over many
    lines), raise a DataError saying so; otherwise return and let the line be reported."""
    with open(path, "rb") as f:
        raw = f.read().removeprefix(codecs.BOM_UTF8)
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return
    raise DataError(f"{path}: {_shape(value)}; {EXPECTED}")


def _is_wrapper(row) -> bool:
    """A row that is a dataset in a wrapper ({"train": [{...}, ...]}, {"data": {...}}), not a
    problem: it has none of the fields of a row and holds objects."""
    if not isinstance(row, dict) or {"problem", "question", "answer"} & set(row):
        return False
    return any(isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict)) for v in row.values())


def _shape(value) -> str:
    """What a JSON value is, in the words of an error message."""
    if not isinstance(value, dict):
        kinds = {str: "string", int: "number", float: "number", bool: "true/false", type(None): "null"}
        return f"found a single JSON {kinds.get(type(value), type(value).__name__)}"
    keys = ", ".join(repr(k) for k in list(value)[:5]) + (", ..." if len(value) > 5 else "")
    lists = [k for k, v in value.items() if isinstance(v, list)]
    hint = f" (is the list under {lists[0]!r} the data?)" if lists else ""
    return f"found a JSON object with keys {keys}{hint}"


def _parquet_rows(path: str):
    """The rows of a parquet file, through pyarrow (imported only when a parquet file is read)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({one_line(e)})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path} row {i}", row


def _text(value) -> str | None:
    """A field as text: numbers kept as written (AMC's 27.0 stays "27.0"), lists of parts joined."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        parts = [_text(v) for v in value]
        return None if any(p is None for p in parts) else "\n\n".join(parts)
    return value.strip() if isinstance(value, str) else None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate_field(value, name: str = "") -> tuple[str, str] | None:
    """(field, character) for the first string of a row (nested fields dotted: 'meta.source')
    holding a lone surrogate. JSON's "\\ud800" decodes to one; it is no character, so the
    tokenizer and every UTF-8 writer downstream (polish.py's output) fail on it, far from the
    row that holds it."""
    if isinstance(value, str):
        found = None if value.isascii() else _SURROGATE.search(value)   # isascii: the fast path
        return (name, found.group()) if found else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        inner = f"{name}.{key}" if name else str(key)
        found = _surrogate_field(key, inner) if isinstance(key, str) else None
        found = found or _surrogate_field(item, inner)
        if found:
            return found
    return None


def refuse_unreadable_answer(form, where: str):
    """A DataError for an answer no grader can hold to: a list inside the list of accepted forms
    ([[2, -2]] would be joined into "2 -2", which reads as 2 - 2 = 0, so \\boxed{0} would be
    rewarded), an object, or a number that is not finite (NaN matches the text NaN)."""
    if isinstance(form, (list, dict)):
        raise DataError(f"{where}: field 'answer' holds a nested {type(form).__name__} {form!r}; give the answer as "
                        f"text, or a list of texts each of which is right")
    if isinstance(form, float) and not math.isfinite(form):
        raise DataError(f"{where}: field 'answer' is {form!r}, not a finite number")


def to_record(row, where: str) -> dict:
    """Map a source row (DeepScaleR, MATH, AIME, GSM8K, Minerva, OlympiadBench) to a record."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with problem and answer, got {type(row).__name__}")
    bad = _surrogate_field(row)
    if bad:
        field, char = bad
        raise DataError(f"{where}: field {field!r} holds {char!r}, a lone UTF-16 surrogate, which is "
                        "not a character: the row can be neither tokenized nor written as UTF-8")
    rec = dict(row)
    problem = rec.pop("question", None) if "problem" not in rec else rec["problem"]
    rec["problem"] = _text(problem)
    if not rec["problem"]:
        raise DataError(f"{where}: field 'problem' (or 'question') is missing or empty: {problem!r}")
    answer, solution = rec.get("answer"), _text(rec.get("solution")) or ""
    # GSM8K puts the worked solution and "#### N" in one field; keep both parts apart.
    for text in (answer, solution):
        if isinstance(text, str) and "\n#### " in "\n" + text:
            worked, _, final = text.rpartition("#### ")
            answer, solution = final.strip(), worked.strip()
            break
    forms = answer if isinstance(answer, list) else [answer]
    for form in forms:
        refuse_unreadable_answer(form, where)
    if isinstance(answer, list) and len(answer) > 1:
        rec["answers"] = [_text(a) for a in answer]  # equivalent forms (Minerva): any is right
        answer = answer[0]
    elif isinstance(answer, list) and answer:
        answer = answer[0]
    rec["answer"], rec["solution"] = _text(answer), solution
    if not rec["answer"]:
        raise DataError(f"{where}: field 'answer' is missing or empty: {row.get('answer')!r}")
    return rec


def load_records(path: str, skip_bad: bool = False) -> list[dict]:
    """Records from a file or a folder of shards (*.json, *.jsonl, *.parquet, in name order).

    A bad row raises DataError naming file, line (or row) and field. With skip_bad=True bad
    rows are dropped instead and every one is listed on stderr. A file that cannot be read as
    a whole (missing, not UTF-8, not a list of rows) is a DataError even then.
    """
    if os.path.isdir(path):
        files = sorted(f for ext in ("json", "jsonl", "parquet") for f in glob.glob(os.path.join(path, f"*.{ext}")))
        if not files:
            raise DataError(f"{path}: folder holds no .json, .jsonl or .parquet files; {EXPECTED}")
    elif os.path.isfile(path):
        files = [path]
    elif os.path.exists(path):   # a FIFO, /dev/zero, a socket: reading it would block or never end
        raise DataError(f"{path}: not a regular file or a folder; {EXPECTED}")
    else:
        raise DataError(f"{path}: no such file or folder")
    records, bad = [], []
    for fn in files:
        for where, row in _read_rows(fn):
            try:
                if isinstance(row, DataError):
                    raise row
                records.append(to_record(row, where))
            except DataError as e:
                if not skip_bad:
                    raise
                bad.append(str(e))
    if bad:
        print(f"skipped {len(bad)} bad rows of {len(records) + len(bad)}:", *bad[:50], file=sys.stderr, sep="\n  ")
    return records


def problem_key(problem: str) -> str:
    """Normalised problem text for deduplication: NFKC, case-folded, whitespace and $ removed."""
    return re.sub(r"[\s$]+", "", unicodedata.normalize("NFKC", problem).casefold())


def dedupe(records: list[dict]) -> list[dict]:
    """First occurrence of each normalised problem, in order."""
    seen, out = set(), []
    for r in records:
        k = problem_key(r["problem"])
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of range(n) that depends only on (seed, epoch): resumable and the same on every rank."""
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def shard(items: list, rank: int, world_size: int) -> list:
    """This rank's share: every world_size-th item starting at rank."""
    return items[rank::world_size]


def take(recs: list, seed: int, pos: int, count: int) -> list:
    """The records at global positions pos .. pos + count - 1 of the training stream (GRPO's prompt
    batches and the warm-up's batches both read it).

    Position p is index p % n of epoch p // n, whose order is epoch_order(n, seed, p // n). A
    batch that crosses an epoch boundary finishes the old epoch's permutation and continues
    with the new one, so every record is seen exactly once per epoch. The order depends only on
    (seed, pos), so every rank draws the same batch and a resumed run continues where it left off.
    """
    n = len(recs)
    orders = {}   # one permutation per epoch the batch touches (a batch may span several)
    picked = []
    for p in range(pos, pos + count):
        epoch = p // n
        if epoch not in orders:
            orders[epoch] = epoch_order(n, seed, epoch)
        picked.append(recs[orders[epoch][p % n]])
    return picked


def prompt_ids(tok: "Tokenizer", problem: str, template: str | None = None, system: str | None = None) -> list[int]:
    """Token ids of the DeepScaleR user turn in the chat template, ready for generation
    (system: Tokenizer.render_chat's; None is the checkpoint's default system text)."""
    return tok.encode_chat(deepscaler_prompt(problem), template, system)


@dataclass
class Problems:
    """A problem file as the entry points use it: what fits the prompt budget, ready to sample."""
    kept: list[dict]           # records whose prompt fits, each with its prompt_ids added
    where: list[int]           # each kept record's index in `records`
    records: list[dict]        # every record read (deduplicated when asked), in file order
    prompts: list[list[int]]   # the prompt ids of every record, kept or not


def load_problems(path: str, tok: "Tokenizer", prompt_budget: int, template: str | None = None,
                  dedup: bool = True, skip_bad: bool = False, system: str | None = None) -> Problems:
    """The one loader of problem files for train.py, polish.py and evaluation: read the records
    (load_records), drop repeated problems when dedup, render each problem's DeepScaleR prompt
    in the chat template and keep those of at most prompt_budget tokens. Dropping happens before
    any model loads: one 200 KB problem (~100K tokens) would otherwise reserve its length in
    every KV row and spend minutes in a quadratic prefill; tokenizing it takes milliseconds.
    A file with no problem, or none within the budget, is a DataError naming it."""
    recs = load_records(path, skip_bad)   # a missing file or pyarrow: DataError
    if dedup:
        recs = dedupe(recs)
    if not recs:
        raise DataError(f"{path}: no problems")
    prompts = [prompt_ids(tok, r["problem"], template, system) for r in recs]
    where = [i for i, ids in enumerate(prompts) if len(ids) <= prompt_budget]
    if not where:
        raise DataError(f"{path}: no problem fits the {prompt_budget}-token prompt budget (--prompt-budget); "
                        f"the shortest prompt has {min(map(len, prompts))} tokens")
    kept = [dict(recs[i], prompt_ids=prompts[i]) for i in where]
    return Problems(kept=kept, where=where, records=recs, prompts=prompts)


# ----------------------------------------------------------------------------- stats CLI

def _percentiles(xs: list[int], ps=(10, 25, 50, 75, 90, 99)) -> str:
    xs = sorted(xs)
    return ", ".join(f"p{p} {xs[min(len(xs) - 1, len(xs) * p // 100)]:,}" for p in ps) if xs else "-"


POLISH_METHODS = ("free", "guided", "none")   # how polish.py obtained a row's solution


def polish_method(meta: dict) -> str:
    """A polish.py row's method; rows written before the guided pass have none: free if polished."""
    return meta.get("method") or ("free" if meta.get("polished") else "none")


def polish_report(metas: list[dict]) -> list[str]:
    """polish.py's coverage by method, chain lengths by method against the length floor, and the
    guided pass's leak-check and copy-check rejections: lines for polish.py's summary and
    `data.py stats`. Rows of versions before the copy check have no `copied`: counted as 0, and said."""
    by = {m: [x for x in metas if polish_method(x) == m] for m in POLISH_METHODS}
    n = max(len(metas), 1)
    out = ["by method: " + ", ".join(f"{m} {len(by[m]):,} ({100 * len(by[m]) / n:.1f}%)" for m in POLISH_METHODS)]
    for m in ("free", "guided"):
        if by[m]:
            out.append(_length_line(m, by[m]))
    tried = [x for x in metas if x.get("guided_rounds")]
    if tried:
        samples, leaked = sum(x["guided_samples"] for x in tried), sum(x.get("leaked", 0) for x in tried)
        copied, unchecked = sum(x.get("copied", 0) for x in tried), sum("copied" not in x for x in tried)
        out.append(f"guided pass: {len(tried):,} problems, {samples:,} chains, "
                   f"{sum(x['guided_correct'] for x in tried):,} correct, {len(by['guided']):,} problems "
                   f"covered; leak check rejected {leaked:,} chains ({100 * leaked / max(samples, 1):.1f}%), "
                   f"copy check {copied:,} ({100 * copied / max(samples, 1):.1f}%), that were otherwise acceptable"
                   + (f"; {unchecked:,} problems predate the copy check" if unchecked else ""))
    return out


def _length_line(method: str, metas: list[dict]) -> str:
    """Chosen-chain lengths of one method against each row's floor (min_tokens)."""
    tokens = [x["tokens"] for x in metas]
    floors = sorted({x.get("min_tokens", 0) for x in metas})
    ratio = min(x["tokens"] / max(x.get("min_tokens", 0), 1) for x in metas)
    under = sum(x["tokens"] < x.get("min_tokens", 0) for x in metas)
    floor = f"{floors[0]:,}" if len(floors) == 1 else f"{floors[0]:,}-{floors[-1]:,}"
    return (f"{method} chains: {len(tokens):,}, tokens min {min(tokens):,}, mean {sum(tokens) / len(tokens):,.0f}, "
            f"{_percentiles(tokens, (50, 90))}; floor {floor}: shortest {ratio:.2f}x its floor, {under:,} under it")


def stats(path: str, model: str, skip_bad: bool = False) -> None:
    recs, tok = load_records(path, skip_bad), Tokenizer.from_pretrained(model)
    lengths = [len(tok.encode(r["solution"])) for r in recs if r["solution"]]
    empty = len(recs) - len(lengths)
    print(f"{path}: {len(recs):,} rows, {len(recs) - len(dedupe(recs)):,} duplicate problems")
    print(f"empty solutions: {empty:,} ({100 * empty / max(1, len(recs)):.1f}%)")
    mean = sum(lengths) / max(1, len(lengths))
    print(f"solution tokens ({len(lengths):,} non-empty): mean {mean:,.0f}, {_percentiles(lengths)}")
    polished = [r["polish"] for r in recs if isinstance(r.get("polish"), dict)]
    if polished:  # polish.py's output: coverage and how often the sampler solved each problem
        done = sum(1 for p in polished if p.get("polished"))
        print(f"polished: {done:,} of {len(recs):,} ({100 * done / len(recs):.1f}%)")
        print(*polish_report(polished), sep="\n")
        hist = [0] * 11
        for p in polished:
            hist[round(10 * p.get("pass_rate", 0.0))] += 1
        print("pass rate (free pass):", "  ".join(f"{i / 10:.1f}:{n}" for i, n in enumerate(hist)))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Dataset tools.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stats", help="rows, empty solutions, solution token lengths (and polish coverage)")
    st.add_argument("file", help="JSON list, JSONL, parquet file or a folder of shards")
    st.add_argument("--model", required=True, help="checkpoint folder whose tokenizer.json counts tokens")
    st.add_argument("--skip-bad", action="store_true", help="drop rows without a problem or answer (listed on stderr)")
    args = ap.parse_args(argv)
    with clean_exit("data.py"):
        stats(args.file, args.model, args.skip_bad)


if __name__ == "__main__":
    main()
