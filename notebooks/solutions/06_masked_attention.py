"""Solutions to the exercises of 06_masked_attention.ipynb."""
import math

import torch


def causal_mask(seqlen, start_pos=0):
    mask = torch.zeros(seqlen, start_pos + seqlen)
    for i in range(seqlen):
        mask[i, start_pos + i + 1:] = float("-inf")  # new token i sits at position start_pos + i
    return mask


def scaled_dot_product_attention(q, k, v, attn_mask):
    scores = q @ k.T / math.sqrt(q.shape[-1]) + attn_mask
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return weights @ v
