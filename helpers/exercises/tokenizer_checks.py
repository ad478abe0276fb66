"""Checkers for notebook 01: reading tokenizer.model, byte-pair encoding one piece, Meta's cutting of long runs."""
from __future__ import annotations

import base64
import functools
import math
import tempfile
from pathlib import Path

from .. import tokenizer
from .core import outcome, run_checks, wrapping


@functools.cache
def real_ranks() -> dict[bytes, int]:
    """Meta's 128,000 ranks (read once per process)."""
    return tokenizer.load_bpe_ranks(tokenizer.default_tokenizer_path())


# --- reading tokenizer.model -----------------------------------------------------------------------------

# (token bytes, rank): a token that is not valid UTF-8 on its own, a space, a newline, ranks out of line order.
SMALL_TABLE = [(b"!", 0), (b"\xe2\x80", 1), (b" ", 2), (b"\n", 3), (b" the", 4), (b"\xf0\x9f\xa6\x99", 5)]


def _write_model(folder: Path, name: str, rows, trailing: str = "\n") -> Path:
    path = folder / name
    path.write_text("\n".join(f"{base64.b64encode(t).decode()} {r}" for t, r in rows) + trailing, encoding="utf-8")
    return path


def check_load_bpe_ranks(fn) -> bool:
    """fn(path) -> {token bytes: rank} like helpers.tokenizer.load_bpe_ranks, on small tokenizer.model files."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shuffled = [SMALL_TABLE[i] for i in (3, 0, 5, 1, 4, 2)]
        cases = [("a file of 6 tokens (one is half a UTF-8 character)", (_write_model(folder, "a.model", SMALL_TABLE),)),
                 ("the same 6 tokens, not in rank order", (_write_model(folder, "b.model", shuffled),)),
                 ("ranks 0, 1, 2 given as a str path", (str(_write_model(folder, "c.model", SMALL_TABLE[:3])),)),
                 ("a file that ends without a newline", (_write_model(folder, "d.model", SMALL_TABLE[2:], trailing=""),))]

        def read_lines(path):
            return [line.split() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]

        def every_line(path):
            ranks = {}
            for line in Path(path).read_text(encoding="utf-8").split("\n"):
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            return ranks

        mistakes = [
            ("tokens kept as text? A token is raw bytes (some hold half a UTF-8 character): base64.b64decode(token) "
             "is the key, not its .decode().",
             outcome(lambda p: {base64.b64decode(t).decode("utf-8"): int(r) for t, r in read_lines(p)})),
            ("ranks kept as strings? int(rank).", outcome(lambda p: {base64.b64decode(t): r for t, r in read_lines(p)})),
            ("the tokens still base64? Decode them: base64.b64decode(token).",
             outcome(lambda p: {t.encode(): int(r) for t, r in read_lines(p)})),
            ("the rank taken from the line number? Read it from the line: each line is `base64(token) rank`.",
             outcome(lambda p: {base64.b64decode(t): i for i, (t, _) in enumerate(read_lines(p))})),
            ("an empty last line read as a token? The file ends with a newline: skip blank lines.", outcome(every_line)),
        ]
        return run_checks("load_bpe_ranks", outcome(fn), outcome(tokenizer.load_bpe_ranks), cases, mistakes)


# --- byte-pair encoding of one piece ---------------------------------------------------------------------

def _merge(piece: bytes, ranks: dict, pick) -> list[bytes]:
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        found = [(ranks[a + b], i) for i, (a, b) in enumerate(zip(parts, parts[1:])) if a + b in ranks]
        if not found:
            break
        _, i = pick(found)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def _bpe_variant(lookup=True, pick=min, as_bytes=False):
    def encode(piece, ranks):
        parts = [piece] if lookup and piece in ranks else _merge(piece, ranks, pick)
        return parts if as_bytes else [ranks[p] for p in parts]
    return encode


# A toy table in which the leftmost of two equal pairs must merge first: b"aaa" -> [b"aa", b"a"].
TOY_RANKS = {b"a": 0, b"b": 1, b"c": 2, b"aa": 3, b"bc": 4, b"ab": 5, b"abc": 6}


def check_bpe_encode(fn) -> bool:
    """fn(piece: bytes, ranks) -> list[int] like helpers.tokenizer.bpe_encode, with Meta's ranks and a toy table."""
    ranks = real_ranks()
    words = [" ultimate", " důležité", " důležitého", " hợp", "ıldı", "Çekoslovakyalılaştıramadıklarımızdan", "🦙",
             " например", "x"]
    cases = [(f"piece {w!r} (as UTF-8 bytes), Meta's ranks", (w.encode("utf-8"), ranks)) for w in words]
    cases += [(f"piece {p!r}, ranks {TOY_RANKS}", (p, TOY_RANKS)) for p in (b"aaa", b"abcc", b"cab")]
    mistakes = [
        ("no whole-piece lookup first? tiktoken returns [ranks[piece]] when the whole piece is a token: 588 of "
         "Meta's tokens (\" důležité\") cannot be reached by merging.", _bpe_variant(lookup=False)),
        ("merged the rightmost of two equal pairs? On a tie the leftmost pair merges first.",
         _bpe_variant(pick=lambda found: min(found, key=lambda ri: (ri[0], -ri[1])))),
        ("merged the highest rank instead of the lowest? The lowest rank is the earliest-learned merge: it goes first.",
         _bpe_variant(pick=max)),
        ("returned the byte strings? Return their ids: [ranks[part] for part in parts].", _bpe_variant(as_bytes=True)),
    ]
    return run_checks("bpe_encode", fn, tokenizer.bpe_encode, cases, mistakes)


# --- Meta's cutting of long runs -------------------------------------------------------------------------

def _split_variant(cut_exact=False, restart=True, spaces=True, last=True, every=False):
    """split_long_runs with one known mistake switched on."""
    def split(text, max_run=tokenizer.MAX_NO_WHITESPACES_CHARS):
        if every:  # cut every max_run characters, whatever they are
            return [text[i : i + max_run] for i in range(0, max(len(text), 1), max_run)]
        pieces, start, run, is_space = [], 0, 0, text[:1].isspace()
        for i, ch in enumerate(text):
            if ch.isspace() != is_space:
                run, is_space = 1, ch.isspace()
                continue
            run += 1
            if (run >= max_run if cut_exact else run > max_run) and (spaces or not ch.isspace()):
                pieces.append(text[start:i])
                start, run = i, (1 if restart else run)
        return pieces + [text[start:]] if last else pieces
    return split


def check_split_long_runs(fn) -> bool:
    """fn(text, max_run=25_000) -> pieces (a list or a generator) like helpers.tokenizer.split_long_runs."""
    texts = [("aaaaaaa bb", 3), ("ab      cd", 3), ("abc def", 3), ("aaaaaaaaaa", 3), ("x\n\n\n\n\ny", 2), ("abcd", 4),
             ("7" * (tokenizer.MAX_NO_WHITESPACES_CHARS + 1), None)]
    cases = [(f"text {t[:12]!r}{'…' if len(t) > 12 else ''} ({len(t):,} chars), "
              + ("default max_run" if m is None else f"max_run {m}"), (t,) if m is None else (t, m)) for t, m in texts]
    mistakes = [
        ("cut a run of exactly max_run characters? Only runs longer than max_run are cut.", _split_variant(cut_exact=True)),
        ("the run count not restarted at 1 after a cut? Each new chunk starts a new run.", _split_variant(restart=False)),
        ("cut every max_run characters? Only a run of whitespace or of non-whitespace that grows longer than "
         "max_run is cut; a change of kind starts a new run.", _split_variant(every=True)),
        ("whitespace runs not cut? Meta cuts long runs of either kind.", _split_variant(spaces=False)),
        ("the text after the last cut left out? Yield text[start:] at the end.", _split_variant(last=False)),
        ("the default max_run is not Meta's 25,000 (MAX_NO_WHITESPACES_CHARS)?",
         lambda t, m=math.inf: [t] if m == math.inf else tokenizer.split_long_runs(t, m)),
    ]
    as_list = wrapping(fn, lambda *a: list(fn(*a)))
    reference = (lambda *a: list(tokenizer.split_long_runs(*a)))
    return run_checks("split_long_runs", as_list, reference, cases,
                      [(h, (lambda w: lambda *a: list(w(*a)))(w)) for h, w in mistakes])

