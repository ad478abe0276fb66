"""More checkers for notebooks 03–07: LayerNorm (next to RMSNorm), `linear`, Llama 3.1's RoPE scaling, one head's
masked attention."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import layers
from .core import randn, run_checks

# --- 03 LayerNorm, the norm RMSNorm simplifies ------------------------------------------------------------


def _layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [..., dim] -> [..., dim]: (x - mean) / sqrt(var + eps) over the last dimension, var with 1/n (no gain)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def check_layer_norm(fn) -> bool:
    """fn(x, eps) -> [..., dim] like torch.nn.functional.layer_norm(x, x.shape[-1:], eps=eps): LayerNorm without
    its gain and bias (notebook 03 puts it next to RMSNorm). Inputs include rows whose variance is close to eps."""
    g = torch.Generator().manual_seed(30)
    cases = []
    for shape, scale, shift in [((4, 16), 1.0, 0.0), ((2, 3, 32), 2.0, 5.0), ((5, 8), 3e-3, 0.0), ((3, 64), 1.0, -2.0)]:
        x = randn(*shape, g=g, scale=scale) + shift
        cases.append((f"x {list(shape)} (variance ≈ {scale ** 2:.0e}, mean ≈ {shift:g})", (x, 1e-5)))

    def norm(center=True, unbiased=False, eps_inside=True, dim=-1):
        def f(x, eps):
            centred = x - x.mean(dim, keepdim=True) if center else x
            var = x.var(dim, keepdim=True, unbiased=unbiased) if center else x.pow(2).mean(dim, keepdim=True)
            return centred / (torch.sqrt(var + eps) if eps_inside else torch.sqrt(var) + eps)
        return f

    mistakes = [
        ("variance divided by n − 1? torch.var and torch.std do that by default (Bessel's correction); LayerNorm "
         "divides by n: x.var(-1, unbiased=False), or ((x - mean) ** 2).mean(-1).", norm(unbiased=True)),
        ("eps outside the square root? LayerNorm adds eps to the variance: (x - mean) / sqrt(var + eps).",
         norm(eps_inside=False)),
        ("mean not subtracted? Then it is RMSNorm: x / sqrt(mean(x²) + eps).", norm(center=False)),
        ("normalised over the wrong dimension? Each token's row is normalised on its own: dim=-1.", norm(dim=0)),
    ]
    return run_checks("layer_norm", fn, _layer_norm, cases, mistakes)


# --- 04 / 07 applying one of Meta's weight matrices -------------------------------------------------------

def check_linear(fn) -> bool:
    """fn(x [T, in], w [out, in]) -> [T, out] like helpers.linear: x @ w.T, with w as Meta stores it."""
    g = torch.Generator().manual_seed(40)
    cases = [(f"x [{t}, {i}], w [{o}, {i}] {dt}", (randn(t, i, g=g, dtype=dt), randn(o, i, g=g, scale=i ** -0.5, dtype=dt)))
             for t, i, o, dt in [(5, 16, 16, torch.float32), (3, 16, 24, torch.float32), (1, 32, 8, torch.float32),
                                 (4, 16, 16, torch.bfloat16)]]
    mistakes = [
        ("multiplied by w instead of w.T? Meta stores a weight as [out_features, in_features]: x @ w.T.",
         lambda x, w: x @ w),
        ("the result transposed? w @ x.T is [out, T]; the rows must stay tokens: x @ w.T is [T, out].",
         lambda x, w: w @ x.T),
        ("the token dimension squeezed away for one token? Keep [1, out]: every caller indexes rows.",
         lambda x, w: (x @ w.T).squeeze(0)),
        ("computed in float32 and not cast back? The result keeps x's dtype.", lambda x, w: x.float() @ w.float().T),
    ]
    return run_checks("linear", fn, layers.linear, cases, mistakes)


# --- 05 Llama 3.1's RoPE scaling --------------------------------------------------------------------------

def _scaling_variant(all_divided=False, swap_blend=False, two_pi=True, fixed_factor=None):
    """Meta's apply_scaling (llama_models/llama3/model.py) with one known mistake switched on."""
    def scale(freqs, factor, low_freq_factor, high_freq_factor, old_context):
        factor = fixed_factor or factor
        if all_divided:
            return freqs / factor
        wavelen = (2 * math.pi if two_pi else 1.0) / freqs
        low_wavelen, high_wavelen = old_context / low_freq_factor, old_context / high_freq_factor
        smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        if swap_blend:
            smooth = 1 - smooth
        blended = (1 - smooth) * freqs / factor + smooth * freqs
        return torch.where(wavelen < high_wavelen, freqs, torch.where(wavelen > low_wavelen, freqs / factor, blended))
    return scale


def check_apply_rope_scaling(fn) -> bool:
    """fn(freqs [D/2], factor, low_freq_factor, high_freq_factor, original_max_position_embeddings) -> [D/2] like
    helpers.apply_rope_scaling: Llama 3.1's long-context rule (Llama 3.1 8B: factor 8; Llama 3.2 1B/3B: 32)."""
    def freqs(head_dim, theta):
        return 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)

    cases = [("Llama 3.1 8B: head_dim 128, theta 500000, factor 8", (freqs(128, 500000.0), 8.0, 1.0, 4.0, 8192)),
             ("Llama 3.2 1B: head_dim 64, theta 500000, factor 32", (freqs(64, 500000.0), 32.0, 1.0, 4.0, 8192)),
             ("head_dim 64, theta 10000, factor 4, low 2, high 8, 2048 positions", (freqs(64, 10000.0), 4.0, 2.0, 8.0, 2048))]
    mistakes = [
        ("every frequency divided by factor? Only the slow ones (wavelength above original_max_position_embeddings / "
         "low_freq_factor) are; the fast ones stay, and those between are blended.", _scaling_variant(all_divided=True)),
        ("factor fixed at 8, as Meta's own apply_scaling writes it? Llama 3.2's 1B and 3B use 32: use the argument.",
         _scaling_variant(fixed_factor=8.0)),
        ("the blend turned around? smooth = (old_context / wavelen − low_freq_factor) / (high_freq_factor − "
         "low_freq_factor) is the weight of the unscaled frequency: (1 − smooth) · freq / factor + smooth · freq.",
         _scaling_variant(swap_blend=True)),
        ("wavelength taken as 1 / freq? A pair turns by freq radians per position: its wavelength is 2π / freq.",
         _scaling_variant(two_pi=False)),
    ]
    return run_checks("apply_rope_scaling", fn, layers.apply_rope_scaling, cases, mistakes)


# --- 06 one head: scores, mask, softmax, weighted sum -----------------------------------------------------

def _one_head(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
    """q: [T, D], k, v: [S, D], attn_mask: [T, S] (0 or -inf, added) -> [T, D]; softmax in float32, as Meta."""
    scores = q @ k.T / math.sqrt(q.shape[-1])
    return torch.softmax(scores.float() + attn_mask, dim=-1).type_as(q) @ v


def check_scaled_dot_product_attention(fn) -> bool:
    """fn(q [T, D], k [S, D], v [S, D], attn_mask [T, S]) -> [T, D]: one head of masked attention, what
    torch.nn.functional.scaled_dot_product_attention computes with an additive mask (notebook 06). S = T, or
    more with tokens already in a KV cache (the mask from helpers.causal_mask(T, S - T))."""
    g = torch.Generator().manual_seed(60)
    cases = []
    for t, start, d, dt in [(5, 0, 8, torch.float32), (4, 3, 16, torch.float32), (1, 6, 8, torch.float32),
                            (6, 0, 16, torch.bfloat16)]:
        s = start + t
        cases.append((f"T {t}, {start} cached, head_dim {d}, {dt}",
                      (randn(t, d, g=g, scale=2.0, dtype=dt), randn(s, d, g=g, scale=2.0, dtype=dt),
                       randn(s, d, g=g, dtype=dt), layers.causal_mask(t, start))))

    def variant(scale=math.sqrt, mask="add", dim=-1):
        def attn(q, k, v, m):
            scores = (q @ k.T / scale(q.shape[-1])).float()
            top_left = torch.full(m.shape, float("-inf")).triu(1)  # F.scaled_dot_product_attention's is_causal=True
            scores = {"add": scores + m, "zero": scores.masked_fill(torch.isinf(m), 0.0), "none": scores,
                      "top_left": scores + top_left}[mask]
            return torch.softmax(scores, dim=dim).type_as(q) @ v
        return attn

    mistakes = [
        ("scores not divided by √head_dim?", variant(scale=lambda d: 1.0)),
        ("divided by head_dim instead of √head_dim?", variant(scale=lambda d: d)),
        ("future scores set to 0 instead of −inf (or multiplied by a 0/1 mask)? A score of 0 still gets weight e⁰ "
         "after softmax: add the mask (0 or −inf) to the scores.", variant(mask="zero")),
        ("the mask not used? Each token would see the tokens after it.", variant(mask="none")),
        ("is_causal=True / triu(1) is top-left aligned: with cached keys pass the explicit mask (attn_mask): "
         "its −inf entries sit start_pos columns further right.", variant(mask="top_left")),
        ("softmax over the queries? Each query's weights over the keys sum to 1: softmax(dim=-1).", variant(dim=0)),
    ]
    return run_checks("scaled_dot_product_attention", fn, _one_head, cases, mistakes)
