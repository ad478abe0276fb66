"""Checkers for the layer functions of notebooks 03–08: RMSNorm, GQA heads, RoPE, the causal mask, attention, SwiGLU."""
from __future__ import annotations

import math

import torch

from .. import layers
from .core import randn, run_checks

# --- 03 RMSNorm ------------------------------------------------------------------------------------------

def check_rms_norm(fn) -> bool:
    """fn(x, weight, eps) -> like helpers.rms_norm. Inputs include rows whose mean square is close to eps."""
    g = torch.Generator().manual_seed(3)
    cases = []
    for shape, scale, dtype in [((5, 16), 1.0, torch.float32), ((2, 3, 64), 3.0, torch.float32),
                                ((4, 32), 3e-3, torch.float32), ((6, 48), 1.0, torch.bfloat16)]:
        x, w = randn(*shape, g=g, scale=scale, dtype=dtype), (1 + randn(shape[-1], g=g, scale=0.3)).to(dtype)
        cases.append((f"x {list(shape)} {dtype} (mean square ≈ {scale ** 2:.0e})", (x, w, 1e-5)))

    def eps_outside(x, w, eps):
        x32 = x.float()
        return (x32 / (x32.pow(2).mean(-1, keepdim=True).sqrt() + eps)).type_as(x) * w

    def layer_norm(x, w, eps):
        x32 = x.float()
        return ((x32 - x32.mean(-1, keepdim=True)) * torch.rsqrt(x32.var(-1, keepdim=True, unbiased=False) + eps)).type_as(x) * w

    def all_bf16(x, w, eps):  # the mistake notebook 03 measures: the mean of squares summed in bf16
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    mistakes = [  # all_bf16 first: on bf16 inputs every float32 mistake below is within the loose bf16 tolerance too
        ("normalised in bf16? Meta computes RMSNorm in float32 and casts the result back: x.float(), then .type_as(x).",
         all_bf16),
        ("eps outside the square root? Meta adds eps to the mean square: x · rsqrt(mean(x²) + eps).", eps_outside),
        ("mean subtracted? That is LayerNorm; RMSNorm only divides by the root mean square.", layer_norm),
        ("the learned gain `weight` not applied?", lambda x, w, eps: layers.rms_norm(x, torch.ones_like(w), eps)),
        ("sum of squares instead of their mean?",
         lambda x, w, eps: (x.float() * torch.rsqrt(x.float().pow(2).sum(-1, keepdim=True) + eps)).type_as(x) * w),
        ("normalised over the wrong dimension? RMSNorm works on the last one (dim=-1).",
         lambda x, w, eps: (x.float() * torch.rsqrt(x.float().pow(2).mean(0, keepdim=True) + eps)).type_as(x) * w),
    ]
    # A correct float32 RMSNorm differs from the course's in bf16 by at most 2^-7 relative (gain applied before or
    # after the cast back); one computed in bf16 by about 1.4 %: so bf16 results are compared at 2^-7, not 2e-2.
    return run_checks("rms_norm", fn, layers.rms_norm, cases, mistakes, bf16_tol=dict(rtol=2 ** -7 + 1e-6, atol=1e-6))


# --- 04 grouped-query heads ------------------------------------------------------------------------------

def check_repeat_kv(fn) -> bool:
    """fn(x [T, KV, D], n_rep) -> [T, KV*n_rep, D] like helpers.repeat_kv."""
    g = torch.Generator().manual_seed(4)
    cases = [(f"x [{t}, {kv}, {d}], n_rep {r}", (randn(t, kv, d, g=g), r))
             for t, kv, d, r in [(3, 2, 4, 4), (5, 1, 8, 6), (2, 4, 2, 1), (4, 3, 4, 2)]]
    mistakes = [
        ("KV head chosen with h % n_kv instead of h // n_rep? Query heads 0 … n_rep-1 share KV head 0 "
         "(repeat_interleave order), so copies of one KV head must sit next to each other.",
         lambda x, r: x.repeat(1, r, 1)),
    ]
    return run_checks("repeat_kv", fn, layers.repeat_kv, cases, mistakes)


# --- 05 RoPE ---------------------------------------------------------------------------------------------

def check_precompute_freqs_cis(fn) -> bool:
    """fn(head_dim, end, theta) -> complex64 [end, head_dim/2] like helpers.precompute_freqs_cis (no scaling)."""
    cases = [(f"head_dim {d}, end {e}, theta {t:g}", (d, e, t)) for d, e, t in [(8, 5, 10000.0), (16, 12, 500000.0), (4, 3, 50.0)]]

    def freqs_variant(exponent, start=0):
        def f(d, e, t):
            freqs = 1.0 / (t ** (exponent(d) / d))
            return torch.polar(torch.ones(e, d // 2), torch.outer(torch.arange(start, start + e).float(), freqs))
        return f

    mistakes = [
        ("θ_j = theta^(−2j/D): the exponent steps by 2 per pair (0, 2, 4 … D−2), not by 1.",
         freqs_variant(lambda d: torch.arange(d // 2).float())),
        ("positions start at 0: the first token is not rotated.", freqs_variant(lambda d: torch.arange(0, d, 2).float(), 1)),
        ("θ_j = theta^(−2j/D) with a minus sign: the frequencies fall from 1 towards 1/theta.",
         lambda d, e, t: torch.polar(torch.ones(e, d // 2), torch.outer(torch.arange(e).float(), t ** (torch.arange(0, d, 2).float() / d)))),
    ]
    return run_checks("precompute_freqs_cis", fn, lambda d, e, t: layers.precompute_freqs_cis(d, e, t), cases, mistakes)


def check_apply_rotary_emb(fn) -> bool:
    """fn(x [T, heads, D], freqs_cis [T, D/2]) -> [T, heads, D] like helpers.apply_rotary_emb."""
    g = torch.Generator().manual_seed(5)
    cases = []
    for t, h, d, dtype in [(4, 2, 8, torch.float32), (7, 3, 16, torch.float32), (5, 2, 8, torch.bfloat16)]:
        cases.append((f"x [{t}, {h}, {d}] {dtype}", (randn(t, h, d, g=g, dtype=dtype), layers.precompute_freqs_cis(d, t, 100.0))))

    def half_split(x, f):  # Hugging Face's rotate_half pairing, with Meta's angles
        x32 = x.float()
        cos, sin = f.real.repeat(1, 2)[:, None, :], f.imag.repeat(1, 2)[:, None, :]
        x1, x2 = x32[..., : x.shape[-1] // 2], x32[..., x.shape[-1] // 2:]
        return (x32 * cos + torch.cat([-x2, x1], -1) * sin).type_as(x)

    mistakes = [
        ("paired dimension j with j + D/2 (Hugging Face's rotate_half)? Meta's checkpoint needs adjacent pairs "
         "(x0, x1), (x2, x3) … read as complex numbers.", half_split),
        ("rotated the wrong way? Multiply by freqs_cis = e^{+i·m·θ}, not by its conjugate.",
         lambda x, f: layers.apply_rotary_emb(x, f.conj())),
        ("freqs_cis indexed by head instead of by position? It must broadcast over the heads: freqs_cis[:, None, :].",
         lambda x, f: torch.view_as_real(torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * f[: x.shape[1]][None]).flatten(-2).type_as(x)),
    ]
    return run_checks("apply_rotary_emb", fn, layers.apply_rotary_emb, cases, mistakes)


# --- 06 the causal mask ----------------------------------------------------------------------------------

def check_causal_mask(fn) -> bool:
    """fn(seqlen, start_pos=0) -> [seqlen, start_pos + seqlen] like helpers.causal_mask."""
    cases = [(f"seqlen {t}, start_pos {s}", (t, s)) for t, s in [(4, 0), (1, 0), (3, 5), (1, 7), (6, 2)]]
    mistakes = [
        ("masked with 0 instead of −inf? The mask is added to the scores: a 0 there changes nothing, so the "
         "future stays visible. Future entries must be −inf, so that softmax gives them weight 0.",
         lambda t, s: torch.zeros(t, s + t)),
        ("a 0/1 mask? This mask is added to the scores, not multiplied: allowed entries 0, future ones −inf.",
         lambda t, s: torch.hstack([torch.ones(t, s), torch.ones(t, t).tril()])),
        ("the diagonal masked? A token may attend to itself: torch.triu(..., diagonal=1).",
         lambda t, s: torch.hstack([torch.zeros(t, s), torch.triu(torch.full((t, t), float("-inf")), diagonal=0)])),
        ("the past masked instead of the future? −inf goes above the diagonal (key j > query i).",
         lambda t, s: torch.hstack([torch.zeros(t, s), torch.tril(torch.full((t, t), float("-inf")), diagonal=-1)])),
        ("the cached positions left out? With start_pos tokens in the cache the mask is [seqlen, start_pos + seqlen] "
         "and every new token sees all cached ones.", lambda t, s: torch.triu(torch.full((t, t), float("-inf")), diagonal=1)),
        ("a finite minimum (torch.finfo(...).min, Hugging Face's fill) instead of −inf? It gives the same softmax "
         "weights, but Meta's mask uses float('-inf').",
         lambda t, s: layers.causal_mask(t, s).clamp(min=torch.finfo(torch.float32).min)),
    ]
    return run_checks("causal_mask", fn, layers.causal_mask, cases, mistakes,
                      dtype_hint="the mask is added to the scores: float 0/−inf, not a bool")


# --- 07 attention ----------------------------------------------------------------------------------------

def _attention_inputs(g, t, dim, n_heads, n_kv_heads):
    head_dim = dim // n_heads
    return (randn(t, dim, g=g), randn(n_heads * head_dim, dim, g=g, scale=dim ** -0.5),
            randn(n_kv_heads * head_dim, dim, g=g, scale=dim ** -0.5), randn(n_kv_heads * head_dim, dim, g=g, scale=dim ** -0.5),
            randn(dim, n_heads * head_dim, g=g, scale=dim ** -0.5), layers.precompute_freqs_cis(head_dim, t, 10000.0),
            layers.causal_mask(t), n_heads, n_kv_heads)


def _attention_variant(rotate_v=False, scale=None, gqa_tile=False, mask_fill=None, softmax_dim=-1):
    """The course's attention (no cache) with one known mistake switched on."""
    def attn(x, wq, wk, wv, wo, freqs_cis, mask, n_heads, n_kv_heads):
        t, head_dim = x.shape[0], wq.shape[0] // n_heads
        xq = layers.apply_rotary_emb((x @ wq.T).view(t, n_heads, head_dim), freqs_cis)
        xk = layers.apply_rotary_emb((x @ wk.T).view(t, n_kv_heads, head_dim), freqs_cis)
        xv = (x @ wv.T).view(t, n_kv_heads, head_dim)
        if rotate_v:
            xv = layers.apply_rotary_emb(xv, freqs_cis)
        n_rep = n_heads // n_kv_heads
        expand = (lambda a: a.repeat(1, n_rep, 1)) if gqa_tile else (lambda a: layers.repeat_kv(a, n_rep))
        keys, values = expand(xk).transpose(0, 1), expand(xv).transpose(0, 1)
        scores = xq.transpose(0, 1) @ keys.transpose(1, 2) / (math.sqrt(head_dim) if scale is None else scale(x, head_dim))
        if mask_fill is None:
            scores = scores + mask
        elif mask_fill == "none":
            pass
        else:
            scores = scores.masked_fill(torch.isinf(mask), mask_fill)
        out = torch.softmax(scores.float(), dim=softmax_dim).type_as(xq) @ values
        return out.transpose(0, 1).reshape(t, -1) @ wo.T
    return attn


def check_attention(fn) -> bool:
    """fn(x, wq, wk, wv, wo, freqs_cis, mask, n_heads, n_kv_heads) -> [T, dim] like helpers.attention (no cache)."""
    g = torch.Generator().manual_seed(7)
    cases = [(f"T {t}, dim {d}, n_heads {h}, n_kv_heads {kv}", _attention_inputs(g, t, d, h, kv))
             for t, d, h, kv in [(5, 32, 4, 2), (6, 48, 6, 1), (4, 32, 4, 4), (7, 64, 8, 2)]]
    mistakes = [
        ("rotated v as well as q and k? RoPE turns queries and keys only; values carry content, not position.",
         _attention_variant(rotate_v=True)),
        ("KV head chosen with h % n_kv instead of h // n_rep? Query heads 0 … n_rep-1 share KV head 0: use repeat_kv.",
         _attention_variant(gqa_tile=True)),
        ("scores not divided by √head_dim?", _attention_variant(scale=lambda x, d: 1.0)),
        ("divided by √dim instead of √head_dim? The scale belongs to one head's dot product.",
         _attention_variant(scale=lambda x, d: math.sqrt(x.shape[-1]))),
        ("masked with 0 instead of −inf? A 0 score still gets weight e⁰ after softmax.", _attention_variant(mask_fill=0.0)),
        ("the mask not added? Each token would see the future.", _attention_variant(mask_fill="none")),
        ("softmax over the queries? Each query's weights over the keys sum to 1: softmax(dim=-1).",
         _attention_variant(softmax_dim=-2)),
    ]
    return run_checks("attention", fn, lambda *a: layers.attention(*a), cases, mistakes)


# --- 08 SwiGLU -------------------------------------------------------------------------------------------

def check_ffn_hidden_dim(fn) -> bool:
    """fn(dim, multiple_of, ffn_dim_multiplier) -> int like helpers.ffn_hidden_dim (published params.json values
    of Llama 3 8B, 70B, 405B, 3.2 1B and 3B, LLaMA 1 7B, and odd ones). The last input, with multiple_of 1, shows
    the order: int(1.3 · int(⅔ · 16384)) = int(1.3 · 10922) = 14198, int(⅔ · int(1.3 · 16384)) = int(⅔ · 21299) = 14199."""
    values = [(4096, 1024, 1.3), (8192, 4096, 1.3), (16384, 4096, 1.2), (2048, 256, 1.5), (3072, 256, 1.0),
              (4096, 256, None), (100, 7, None), (96, 64, 1.5), (4096, 1, 1.3)]
    cases = [(f"dim {d}, multiple_of {m}, ffn_dim_multiplier {f}", (d, m, f)) for d, m, f in values]

    def variant(round_up=True, two_thirds=True, use_multiplier=True, multiplier_first=False):
        def f(dim, multiple_of, mult):
            hidden = 4 * dim
            if mult is not None and use_multiplier and multiplier_first:
                hidden = int(mult * hidden)
            hidden = int(2 * hidden / 3) if two_thirds else hidden
            if mult is not None and use_multiplier and not multiplier_first:
                hidden = int(mult * hidden)
            return multiple_of * ((hidden + multiple_of - 1) // multiple_of if round_up else hidden // multiple_of)
        return f

    mistakes = [
        ("a float or a tensor? Return an int (the rounding makes a whole number: use integer arithmetic).",
         lambda dim, multiple_of, mult: float(layers.ffn_hidden_dim(dim, multiple_of, mult))),
        ("rounded down? Meta rounds up to the next multiple_of: multiple_of * ceil(hidden / multiple_of).", variant(round_up=False)),
        ("ffn_dim_multiplier left out? Llama 2 and 3 scale the ⅔·4·dim size by it before rounding.", variant(use_multiplier=False)),
        ("the ⅔ forgotten? SwiGLU has three matrices instead of two, so Shazeer (2020) shrinks 4·dim to ⅔ of it.",
         variant(two_thirds=False)),
        ("ffn_dim_multiplier applied before the ⅔ was taken and truncated? Meta's order (FeedForward.__init__ in "
         "llama_models/llama3/model.py): hidden_dim = int(2 * hidden_dim / 3), then "
         "int(ffn_dim_multiplier * hidden_dim), then round up to multiple_of.", variant(multiplier_first=True)),
    ]
    return run_checks("ffn_hidden_dim", fn, layers.ffn_hidden_dim, cases, mistakes)


def check_feed_forward(fn) -> bool:
    """fn(x [T, dim], w1, w2, w3) -> [T, dim] like helpers.feed_forward."""
    g = torch.Generator().manual_seed(8)
    cases = []
    for t, d, h, dtype in [(3, 16, 40, torch.float32), (5, 32, 96, torch.float32), (4, 16, 48, torch.bfloat16)]:
        cases.append((f"x [{t}, {d}], hidden {h}, {dtype}", (randn(t, d, g=g, dtype=dtype), randn(h, d, g=g, scale=d ** -0.5, dtype=dtype),
                      randn(d, h, g=g, scale=h ** -0.5, dtype=dtype), randn(h, d, g=g, scale=d ** -0.5, dtype=dtype))))
    silu = torch.nn.functional.silu
    mistakes = [
        ("silu applied to w3·x instead of w1·x? w1 is the gate (HF: gate_proj), w3 the up projection (up_proj).",
         lambda x, w1, w2, w3: (silu(x @ w3.T) * (x @ w1.T)) @ w2.T),
        ("sigmoid instead of silu? silu(z) = z · sigmoid(z) (Swish with β = 1).",
         lambda x, w1, w2, w3: (torch.sigmoid(x @ w1.T) * (x @ w3.T)) @ w2.T),
        ("ReLU instead of silu?", lambda x, w1, w2, w3: (torch.relu(x @ w1.T) * (x @ w3.T)) @ w2.T),
        ("GELU instead of silu?", lambda x, w1, w2, w3: (torch.nn.functional.gelu(x @ w1.T) * (x @ w3.T)) @ w2.T),
        ("the w3 branch left out? SwiGLU multiplies the gate by a second projection of x.",
         lambda x, w1, w2, w3: silu(x @ w1.T) @ w2.T),
    ]
    return run_checks("feed_forward", fn, layers.feed_forward, cases, mistakes)
