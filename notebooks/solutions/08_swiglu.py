"""Solutions to the exercises of 08_swiglu.ipynb."""
import math

import torch.nn.functional as F


def ffn_hidden_dim(dim, multiple_of, ffn_dim_multiplier=None):
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)  # round up


def feed_forward(x, w1, w2, w3):
    gate = F.silu(x @ w1.T)
    up = x @ w3.T
    return (gate * up) @ w2.T
