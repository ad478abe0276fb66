"""Solutions to the exercises of 10_decode.ipynb."""
from helpers import forward


def greedy_decode(weights, params, tokens, max_new_tokens, stop_tokens=()):
    ids = list(tokens)
    new = []
    for _ in range(max_new_tokens):
        logits = forward(weights, params, ids + new)  # [T, vocab]: the whole text again
        next_id = int(logits[-1].argmax())
        if next_id in stop_tokens:
            break
        new.append(next_id)
    return new


def context_length(params):
    if params.get("max_seq_len"):
        return params["max_seq_len"]
    if params.get("use_scaled_rope"):
        return 128 * 1024  # Llama 3.1 and 3.2
    return 8 * 1024  # Llama 3
