"""Llama 3's tokenizer: tiktoken BPE over Meta's `tokenizer.model`, plus 256 special tokens.

Encodes exactly as Meta's `llama_models.llama3.tokenizer.Tokenizer` (tests/test_tokenizer.py proves it).
`bpe_encode` is the same BPE written out in Python (notebook 01): it gives tiktoken's ids, piece by piece.
"""
from __future__ import annotations

import base64
import importlib.resources
import math
from pathlib import Path

import tiktoken

from .errors import LlamaError

# The split regex Meta uses before BPE: contractions, letter runs (with one leading non-letter),
# numbers of at most 3 digits, punctuation runs, newlines, other whitespace.
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_RESERVED_SPECIAL_TOKENS = 256
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",  # end of message
    "<|eot_id|>",  # end of turn
    "<|python_tag|>",
    "<|image|>",
]
# Meta's tokenizer.py encodes at most 400,000 characters at a time ("The tiktoken tokenizer can handle <=400k
# chars without pyo3_runtime.PanicException") and cuts runs of whitespace or non-whitespace longer than
# 25,000 characters (tiktoken issue #195: slow on long runs). We cut exactly as Meta does so that our ids
# equal Meta's: a cut can change the ids around it ("7" * 25_001 gives one token more than uncut). The cuts
# still matter for tiktoken 0.14 too: long letter runs are fast now, but one run of 1,000,000 spaces makes
# it panic (notebook 01, section 10; tests/test_tokenizer.py).
MAX_ENCODE_CHARS = 400_000
MAX_NO_WHITESPACES_CHARS = 25_000


def default_tokenizer_path() -> Path:
    """Meta's real Llama 3 `tokenizer.model`, as shipped inside the `llama-models` package."""
    try:
        return Path(str(importlib.resources.files("llama_models.llama3") / "tokenizer.model"))
    except ModuleNotFoundError:
        raise LlamaError(
            "The package llama-models is not installed, and it carries Llama 3's tokenizer.model: "
            "run `pip install -r requirements.txt`."
        ) from None


def load_bpe_ranks(path: Path) -> dict[bytes, int]:
    """Read `tokenizer.model`: one `base64(token) rank` pair per line -> {token bytes: rank}."""
    ranks = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def bpe_encode(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """One piece cut by the split regex -> its token ids, exactly as tiktoken encodes it."""
    if piece in ranks:  # tiktoken looks the whole piece up first: some tokens cannot be reached by merging
        return [ranks[piece]]
    parts = [piece[i : i + 1] for i in range(len(piece))]  # start from single bytes
    while len(parts) > 1:
        # merge the adjacent pair whose joined bytes have the lowest rank (the leftmost one on a tie)
        rank, i = min((ranks.get(a + b, math.inf), i) for i, (a, b) in enumerate(zip(parts, parts[1:])))
        if rank == math.inf:  # no adjacent pair joins into a token: done
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


def split_long_runs(text: str, max_run: int = MAX_NO_WHITESPACES_CHARS):
    """Yield pieces of `text` with no run of more than `max_run` whitespace or non-whitespace chars."""
    start, run, is_space = 0, 0, text[:1].isspace()
    for i, ch in enumerate(text):
        if ch.isspace() != is_space:
            run, is_space = 1, ch.isspace()
        else:
            run += 1
            if run > max_run:
                yield text[start:i]
                start, run = i, 1
    yield text[start:]


class Tokenizer:
    """`encode(text, bos=, eos=) -> ids`, `decode(ids) -> text`, and the special-token ids."""

    def __init__(self, path: str | Path | None = None):
        path = Path(path) if path is not None else default_tokenizer_path()
        if path.is_dir():
            path = path / "tokenizer.model"
        if not path.is_file():
            raise LlamaError(f"No tokenizer.model at {path}: give the file or the folder that holds it.")
        try:
            ranks = load_bpe_ranks(path)
        except (ValueError, UnicodeDecodeError):
            raise LlamaError(f"{path} is not a tiktoken BPE file (base64 token and rank on each line).") from None
        n_base = len(ranks)
        reserved = [
            f"<|reserved_special_token_{2 + i}|>"
            for i in range(NUM_RESERVED_SPECIAL_TOKENS - len(SPECIAL_TOKENS))
        ]
        self.special_tokens = {tok: n_base + i for i, tok in enumerate(SPECIAL_TOKENS + reserved)}
        self.model = tiktoken.Encoding(
            name=path.name, pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )
        self.n_words = n_base + len(self.special_tokens)
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.eot_id = self.special_tokens["<|eot_id|>"]
        self.eom_id = self.special_tokens["<|eom_id|>"]
        self.pad_id = self.special_tokens["<|finetune_right_pad_id|>"]
        self.stop_tokens = [self.eos_id, self.eom_id, self.eot_id]

    def encode(self, text: str, *, bos: bool, eos: bool, allowed_special=frozenset()) -> list[int]:
        """Text -> token ids. Text that looks like a special token stays plain text unless it is
        named in `allowed_special` (a set of strings, or "all")."""
        if not isinstance(text, str):
            raise LlamaError(f"encode() takes a str, not {type(text).__name__}.")
        ids = []
        for i in range(0, len(text), MAX_ENCODE_CHARS):
            for piece in split_long_runs(text[i : i + MAX_ENCODE_CHARS]):
                ids += self.model.encode(piece, allowed_special=allowed_special, disallowed_special=())
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids) -> str:
        """Token ids -> text (bytes that do not form whole UTF-8 characters become U+FFFD)."""
        return self.model.decode([int(i) for i in ids])

    def token_bytes(self, i: int) -> bytes:
        """The raw bytes of one token (a token may hold part of a UTF-8 character)."""
        return self.model.decode_single_token_bytes(int(i))


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """Llama 3's tokenizer from a `tokenizer.model` file or a folder holding one (default: llama-models')."""
    return Tokenizer(path)
