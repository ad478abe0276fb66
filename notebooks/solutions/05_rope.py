"""Solutions to the exercises of 05_rope.ipynb."""
import math

import torch


def precompute_freqs_cis(head_dim, end, theta):
    j = torch.arange(head_dim // 2, dtype=torch.float32)
    freqs = theta ** (-2 * j / head_dim)  # one speed per pair
    angles = torch.arange(end, dtype=torch.float32)[:, None] * freqs[None, :]  # [end, D/2]
    return torch.complex(torch.cos(angles), torch.sin(angles))


def apply_rotary_emb(x, freqs_cis):
    pairs = x.float().reshape(x.shape[0], x.shape[1], -1, 2)  # [T, heads, D/2, 2]
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = freqs_cis.real[:, None, :], freqs_cis.imag[:, None, :]  # broadcast over the heads
    rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)  # (a + ib)(cos + i sin)
    return rotated.flatten(-2).to(x.dtype)


def apply_rope_scaling(freqs, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings):
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < original_max_position_embeddings / high_freq_factor:
            out.append(f)  # fast pairs: unchanged
        elif wavelen > original_max_position_embeddings / low_freq_factor:
            out.append(f / factor)  # slow pairs: slowed down
        else:
            smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * f / factor + smooth * f)
    return torch.tensor(out, dtype=freqs.dtype)
