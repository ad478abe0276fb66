"""Greedy decoding the simplest way: re-run the whole forward pass for every new token (notebook 10).

Correct but wasteful: step k recomputes all T + k positions to use only the last row of logits.
The KV cache of notebook 11 keeps what earlier steps computed and feeds the model one new token per step.
"""
from __future__ import annotations

import torch

from .model import forward


def greedy_decode(weights: dict, params: dict, tokens, max_new_tokens: int, stop_tokens=(),
                  dtype: torch.dtype = torch.float32, fused: bool = False) -> list[int]:
    """tokens: [T] prompt ids -> at most max_new_tokens new ids (the prompt and any stop token left out).

    Each step runs `forward` over all T + k ids so far ([T + k, vocab] logits), appends the argmax of the
    last row, and stops early when that id is in `stop_tokens`. Keep T + max_new_tokens within the model's
    context length (helpers.context_length). `dtype`, `fused`: the mode, as helpers.choose_mode returns it."""
    ids = torch.as_tensor(tokens, dtype=torch.long, device="cpu").reshape(-1).tolist()  # ids, on the host
    new, buffers = [], {}  # buffers: where bf16 weights are converted, reused by every step (model.converted)
    for _ in range(max_new_tokens):
        next_token = int(forward(weights, params, ids + new, dtype=dtype, fused=fused, buffers=buffers)[-1].argmax())
        if next_token in stop_tokens:
            break
        new.append(next_token)
    return new
