"""Solutions to the exercises of 01_tokenize.ipynb (one way to write each; the checkers accept any correct one)."""
import base64


def load_bpe_ranks(path):
    ranks = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue  # the file ends with a newline
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64)] = int(rank)  # the key stays bytes: half a character is allowed
    return ranks


def bpe_encode(piece, ranks):
    if piece in ranks:  # tiktoken's rule: a whole piece that is a token is that token
        return [ranks[piece]]
    parts = [bytes([b]) for b in piece]
    while len(parts) > 1:
        best = None  # (rank, index) of the pair to merge
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best is None or rank < best[0]):  # strict <: the leftmost wins a tie
                best = (rank, i)
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


def split_long_runs(text, max_run=25_000):
    start = 0
    run = 0
    previous_is_space = None
    for i, ch in enumerate(text):
        if ch.isspace() == previous_is_space:
            run += 1
        else:
            run = 1
            previous_is_space = ch.isspace()
        if run > max_run:
            yield text[start:i]
            start = i
            run = 1
    yield text[start:]
