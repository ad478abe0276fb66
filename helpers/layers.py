"""The layer functions of Llama 3, one small pure function each.

Every function needs only `torch`, `math`, its arguments and the other functions of this module, so the module's
functions can be pasted into any notebook (tests/test_pasteable.py checks it).
Shapes: T = tokens in this call, dim = model width, H = n_heads, KV = n_kv_heads, D = head_dim.
Weights are Meta's tensors as stored ([out_features, in_features]); `x @ w.T` (`linear`) applies one.
"""
from __future__ import annotations

import math

import torch


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x: [T, in], w: [out, in] (as Meta stores it) -> x @ w.T: [T, out]. One token (T = 1, every step of a
    KV-cached decode) is computed as the matrix-vector product w @ x[0]: the same product, another kernel.
    A weight stored in another dtype than x (the fast mode keeping Meta's bf16 weights): `linear_stored`."""
    if w.dtype != x.dtype:
        return linear_stored(x, w)
    if x.shape[0] == 1:
        return (w @ x[0])[None]
    return x @ w.T


def linear_stored(x: torch.Tensor, w: torch.Tensor, block_elements: int = 2**20) -> torch.Tensor:
    """x: [T, in] in the compute dtype, w: [out, in] in its stored dtype -> [T, out] in x's dtype, without ever
    converting all of w (a float32 copy of a bf16 weight is twice its size).

    One token: the matrix-vector product in w's dtype (x rounded to it; the product's result back to x's): a
    step of decode reads every weight once, so fewer bytes per weight is a faster step. Several tokens: w is
    converted to x's dtype one block of rows (block_elements entries, 4 MB in float32) at a time, each block
    multiplied while it is still in the CPU's cache, so the product runs at x's dtype's speed and reads w's bytes."""
    if x.shape[0] == 1:
        return (w @ x[0].to(w.dtype)).to(x.dtype)[None]
    return linear_converting(x, w, block_elements)


def linear_converting(x: torch.Tensor, w: torch.Tensor, block_elements: int = 2**20,
                      few_tokens: int = 256) -> torch.Tensor:
    """x: [T, in], w: [out, in] in another dtype -> x @ w.T in x's dtype: [T, out], w converted to x's dtype one
    block of rows (block_elements entries) at a time, for any T (linear_stored's rule for several tokens).
    Under `few_tokens` tokens each block is the left operand, (block @ x.T).T: the same dot products, in the order
    measured faster for short prompts (`python tests/operand_order.py` measures where it crosses over; the README's
    speed section quotes it). To move the crossover, change the default."""
    rows = max(1, block_elements // max(1, w.shape[1]))
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):  # autograd keeps each block: no reuse
        return torch.cat([x @ w[r : r + rows].to(x.dtype).T for r in range(0, w.shape[0], rows)], dim=1)
    block = torch.empty(min(rows, w.shape[0]), w.shape[1], dtype=x.dtype, device=x.device)  # reused by each block
    out = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype, device=x.device)
    for r in range(0, w.shape[0], rows):
        rows_here = w[r : r + rows]
        converted_rows = block[: rows_here.shape[0]].copy_(rows_here)
        out[:, r : r + rows] = (converted_rows @ x.T).T if x.shape[0] < few_tokens else x @ converted_rows.T
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [..., dim], weight: [dim] -> [..., dim]. Normalised in float32 (as Meta does), then cast back."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return normed.type_as(x) * weight


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """The SwiGLU hidden size exactly as Meta computes it: 2/3 of 4*dim, scaled, rounded up to multiple_of."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def apply_rope_scaling(
    freqs: torch.Tensor,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
) -> torch.Tensor:
    """freqs: [D/2] -> [D/2]. Llama 3.1's long-context rule: slow the low frequencies down by `factor`,
    keep the high ones, blend smoothly in between."""
    low_freq_wavelen = original_max_position_embeddings / low_freq_factor
    high_freq_wavelen = original_max_position_embeddings / high_freq_factor
    wavelen = 2 * math.pi / freqs
    new_freqs = torch.where(wavelen > low_freq_wavelen, freqs / factor, freqs)
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    return torch.where(
        (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen),
        (1 - smooth) * new_freqs / factor + smooth * new_freqs,
        new_freqs,
    )


def precompute_freqs_cis(head_dim: int, end: int, theta: float, scaling: dict | None = None,
                         device: torch.device | str | None = None, real: bool = False) -> torch.Tensor:
    """-> complex64 [end, D/2]: entry (m, j) is e^{i·m·θ_j}, θ_j = theta^(-2j/D), for position m < end and pair j.

    `scaling`: None, or the four numbers of `apply_rope_scaling` as a dict (Llama 3.1 / 3.2). `device`: where to
    make it (None: the default device). `real=True`: float32 [end, D/2, 2], the (cos, sin) of the same angles,
    for a device without complex numbers (complex_supported)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim))
    if scaling is not None:
        freqs = apply_rope_scaling(freqs, **scaling)
    angles = torch.outer(torch.arange(end, dtype=torch.float32, device=device), freqs)
    if real:
        return torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, D], freqs_cis: [T, D/2] -> [T, heads, D]. Each adjacent pair (x0, x1) of a head is
    read as the complex number x0 + i·x1 and multiplied elementwise by e^{i·m·θ}: a rotation.

    A real freqs_cis ([T, D/2, 2], cos and sin) does the same rotation without complex numbers."""
    if not freqs_cis.is_complex():
        return apply_rotary_emb_real(x, freqs_cis)
    x_complex = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    rotated = x_complex * freqs_cis[:, None, :]  # broadcast over the heads
    return torch.view_as_real(rotated).flatten(-2).type_as(x)


def apply_rotary_emb_real(x: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, D], cos_sin: [T, D/2, 2] -> [T, heads, D]. The rotation of apply_rotary_emb written out:
    (x0 + i·x1)(cos + i·sin) = (x0·cos - x1·sin) + i·(x0·sin + x1·cos), in float32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos_sin[:, None, :, 0], cos_sin[:, None, :, 1]  # broadcast over the heads
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2).type_as(x)


def complex_supported(device: torch.device | str) -> bool:
    """True when torch can multiply complex numbers on `device` (Apple's MPS cannot in many torch versions)."""
    try:
        z = torch.view_as_complex(torch.ones(1, 2, device=device))
        torch.view_as_real(z * z)
        return True
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def causal_mask(seqlen: int, start_pos: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """-> [seqlen, start_pos + seqlen] on `device`: row i is new token i (position start_pos + i); 0 where it may
    look at position j (j <= start_pos + i), -inf after it.

    The first start_pos columns are tokens already in the KV cache: every new token sees them."""
    future = torch.triu(torch.full((seqlen, seqlen), float("-inf"), device=device), diagonal=1)
    return torch.hstack([torch.zeros(seqlen, start_pos, device=device), future])


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """x: [T, KV, D] -> [T, KV*n_rep, D]: each KV head repeated for the n_rep query heads that share it."""
    if n_rep == 1:
        return x
    seqlen, n_kv_heads, head_dim = x.shape
    return x[:, :, None, :].expand(seqlen, n_kv_heads, n_rep, head_dim).reshape(seqlen, n_kv_heads * n_rep, head_dim)


def attention(
    x: torch.Tensor,
    wq: torch.Tensor,
    wk: torch.Tensor,
    wv: torch.Tensor,
    wo: torch.Tensor,
    freqs_cis: torch.Tensor,
    mask: torch.Tensor | None,
    n_heads: int,
    n_kv_heads: int,
    cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    start_pos: int = 0,
    fused: bool = False,
) -> torch.Tensor:
    """x: [T, dim] (already normalised) -> [T, dim]. Grouped-query causal self-attention with RoPE.

    wq: [H*D, dim], wk/wv: [KV*D, dim], wo: [dim, H*D]; freqs_cis: [T, D/2] for positions
    start_pos..start_pos+T-1; mask: [T, start_pos+T] (fused: None where no mask is needed). `cache`: optional
    (cache_k, cache_v), each [max_len, KV, D]; the new keys/values are written at start_pos and all earlier ones
    are used.
    `fused`: torch's fused kernel (`fused_attention`) instead of the full [H, T, start_pos+T] score matrix."""
    seqlen = x.shape[0]
    head_dim = wq.shape[0] // n_heads
    xq = linear(x, wq).view(seqlen, n_heads, head_dim)
    xk = linear(x, wk).view(seqlen, n_kv_heads, head_dim)
    xv = linear(x, wv).view(seqlen, n_kv_heads, head_dim)
    xq, xk = apply_rotary_emb(xq, freqs_cis), apply_rotary_emb(xk, freqs_cis)
    if cache is not None:
        cache_k, cache_v = cache
        cache_k[start_pos : start_pos + seqlen] = xk
        cache_v[start_pos : start_pos + seqlen] = xv
        xk, xv = cache_k[: start_pos + seqlen], cache_v[: start_pos + seqlen]
    if fused:
        return linear(fused_attention(xq, xk, xv, mask, start_pos), wo)
    keys = repeat_kv(xk, n_heads // n_kv_heads).transpose(0, 1)  # [H, start_pos+T, D]
    values = repeat_kv(xv, n_heads // n_kv_heads).transpose(0, 1)  # [H, start_pos+T, D]
    scores = xq.transpose(0, 1) @ keys.transpose(1, 2) / math.sqrt(head_dim)  # [H, T, start_pos+T]
    scores = torch.softmax(scores.float() + mask, dim=-1).type_as(xq)  # softmax in float32
    out = (scores @ values).transpose(0, 1).reshape(seqlen, n_heads * head_dim)  # heads side by side
    return linear(out, wo)


def fused_attention(xq: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor, mask: torch.Tensor | None,
                    start_pos: int = 0) -> torch.Tensor:
    """xq: [T, H, D], xk/xv: [start_pos+T, KV, D], mask: [T, start_pos+T] -> [T, H*D]: the same attention
    as the score matrix above, by torch's fused kernel, which never holds all heads' [T, start_pos+T] scores.

    is_causal=True aligns the triangle top-left (query i sees keys 0..i), right only without a cache offset;
    with one, the mask says it (query i sees keys 0..start_pos+i). One new token sees every key: no mask."""
    seqlen, n_heads, head_dim = xq.shape
    causal = start_pos == 0 and seqlen > 1
    attn_mask = mask.to(xq.dtype) if start_pos > 0 and seqlen > 1 else None
    # [1, H or KV, T, D]: a batch of one, the layout of torch's fused CPU kernel (without it, a slow fallback)
    q, k, v = (t.transpose(0, 1)[None] for t in (xq, xk, xv))
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, is_causal=causal, enable_gqa=True,  # each KV head serves H/KV query heads
    )
    return out[0].transpose(0, 1).reshape(seqlen, n_heads * head_dim)  # heads side by side


def feed_forward(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """x: [T, dim] (already normalised) -> [T, dim]. SwiGLU: w2(silu(w1·x) * w3·x); w1, w3: [hidden, dim]."""
    return linear(torch.nn.functional.silu(linear(x, w1)) * linear(x, w3), w2)
