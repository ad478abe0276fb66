"""Solutions to the exercises of 07_multi_head.ipynb."""
import math

import torch

from helpers import apply_rotary_emb


def linear(x, w):
    return x @ w.T


def attention(x, wq, wk, wv, wo, freqs_cis, mask, n_heads, n_kv_heads):
    T = x.shape[0]
    head_dim = wq.shape[0] // n_heads
    n_rep = n_heads // n_kv_heads
    q = apply_rotary_emb((x @ wq.T).view(T, n_heads, head_dim), freqs_cis)
    k = apply_rotary_emb((x @ wk.T).view(T, n_kv_heads, head_dim), freqs_cis)
    v = (x @ wv.T).view(T, n_kv_heads, head_dim)  # values are not rotated
    outputs = []
    for h in range(n_heads):
        kv = h // n_rep  # consecutive query heads share a KV head
        scores = q[:, h] @ k[:, kv].T / math.sqrt(head_dim) + mask
        outputs.append(torch.softmax(scores.float(), dim=-1).to(x.dtype) @ v[:, kv])
    return torch.cat(outputs, dim=-1) @ wo.T
