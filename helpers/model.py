"""One transformer block and the whole forward pass, from Meta's raw tensors and params.json.

`weights` is the plain dict Meta ships (`tok_embeddings.weight`, `layers.{i}.attention.wq.weight`, ...,
`norm.weight`, `output.weight`); `params` is params.json as a dict. Every size is read from them.
"""
from __future__ import annotations

import torch

from .layers import (attention, causal_mask, complex_supported, feed_forward, linear, linear_converting,
                     precompute_freqs_cis, rms_norm)


def rope_scaling(params: dict) -> dict | None:
    """The four RoPE-scaling numbers for this checkpoint (notebook 05), or None when it uses plain RoPE.

    Meta's params.json carries only the flag `use_scaled_rope`. A Hugging Face-style `rope_scaling` dict in
    params wins; otherwise, with the flag on, the factor is 32 for dim <= 3072 (Llama 3.2's 1B and 3B text
    models) and 8 for anything wider (Llama 3.1's 8B, 70B, 405B, and 3.2's vision models built on them), as
    Meta and HF publish them."""
    given = params.get("rope_scaling")
    if given:
        return {
            "factor": float(given["factor"]),
            "low_freq_factor": float(given.get("low_freq_factor", 1.0)),
            "high_freq_factor": float(given.get("high_freq_factor", 4.0)),
            "original_max_position_embeddings": int(given.get("original_max_position_embeddings", 8192)),
        }
    if not params.get("use_scaled_rope", False):
        return None
    factor = 32.0 if params["dim"] <= 3072 else 8.0
    return {"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def converted(t: torch.Tensor, dtype: torch.dtype, buffers: dict | None = None, key: str = "") -> torch.Tensor:
    """t in `dtype`: t itself when it already is; else a converted copy, written into buffers[key] when a dict is
    given (made on first use, reused by every later call with the same key, shape, dtype and device).

    Allocating is what makes converting a large tensor slow on a CPU: the pages of a large new tensor are zeroed
    by the operating system first (notebook 09 times the output table both ways). One buffer per weight name
    serves all the layers: each layer's `wq` is used up before the next one's is written. So a buffer must not be
    used where autograd keeps the weight for the backward pass (`recording`: callers pass None then), nor shared
    between threads. A tensor that requires grad is never written into one."""
    if t.dtype == dtype:
        return t
    if buffers is None or t.requires_grad:
        return t.to(dtype)
    buffer = buffers.get(key)
    if (buffer is None or buffer.shape != t.shape or buffer.dtype != dtype or buffer.device != t.device
            or buffer.is_inference() != torch.is_inference_mode_enabled()):  # inference tensors stay in that mode
        buffer = buffers[key] = torch.empty(t.shape, dtype=dtype, device=t.device)
    return buffer.copy_(t)


def recording(*tensors: torch.Tensor) -> bool:
    """True when autograd records operations on these tensors: grad mode on and one of them requires grad. A
    product recorded for backward keeps its weight, so each layer then needs its own converted copy."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def transformer_block(
    x: torch.Tensor,
    weights: dict,
    layer: int,
    params: dict,
    freqs_cis: torch.Tensor,
    mask: torch.Tensor | None,
    cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    start_pos: int = 0,
    fused: bool = False,
    buffers: dict | None = None,
) -> torch.Tensor:
    """x: [T, dim] -> [T, dim]. Pre-norm block: each residual adds to the un-normalised stream x.
    `buffers`: where weights stored in another dtype are converted (see `converted`); None: new tensors.
    `fused`: the fast mode (see `forward`): its weight matrices are used as given, never converted whole."""
    if buffers is not None and recording(x, *(t for k, t in weights.items() if k.startswith(f"layers.{layer}."))):
        buffers = None  # autograd keeps this layer's weights for the backward pass: no shared buffers

    def w(name):  # this layer's tensor, in the compute dtype (itself when they already agree)
        t = weights[f"layers.{layer}.{name}.weight"]
        if fused and t.dim() == 2:  # the fast mode: a matrix as given (layers.linear_stored if its dtype differs)
            return t
        return converted(t, x.dtype, buffers, name)

    n_heads = params["n_heads"]
    n_kv_heads = params.get("n_kv_heads") or n_heads
    eps = params["norm_eps"]
    h = x + attention(
        rms_norm(x, w("attention_norm"), eps),
        w("attention.wq"), w("attention.wk"), w("attention.wv"), w("attention.wo"),
        freqs_cis, mask, n_heads, n_kv_heads, cache, start_pos, fused,
    )
    return h + feed_forward(rms_norm(h, w("ffn_norm"), eps), w("feed_forward.w1"), w("feed_forward.w2"), w("feed_forward.w3"))


def forward(
    weights: dict,
    params: dict,
    tokens,
    start_pos: int = 0,
    caches: list | None = None,
    dtype: torch.dtype = torch.float32,
    last_only: bool = False,
    fused: bool = False,
    buffers: dict | None = None,
) -> torch.Tensor:
    """tokens: [T] ids -> float32 logits [T, vocab], one row per token (row t predicts token t+1).

    `dtype` is the compute dtype: float32 is the exact mode. `caches`: optional per-layer
    (cache_k, cache_v) for tokens already seen; then `tokens` are the new ones, at positions start_pos..
    `last_only`: logits for the last token only ([1, vocab]), all that choosing the next token needs.
    `fused`: the fast mode: attention by torch's fused kernel, not the full score matrix, and each weight matrix
    used as given: one stored in another dtype than `dtype` (Meta's bf16, kept by helpers.choose_mode where that
    is faster) is multiplied by layers.linear_stored, never converted whole; then the last row of the logits, the
    one that chooses the next token, is always the one-token product (bf16 numbers), with or without last_only.
    False: the exact mode.
    `buffers`: a dict to keep between calls (a decode loop does) for converting weights stored in another dtype
    (`converted`); None: a fresh one for this call, shared by its layers. Kept, it holds one layer's weights and
    the output table in `dtype` (for the 8B in float32: 0.87 GB and 2.1 GB) as long as the caller keeps it.
    Computed on the weights' device (RoPE without complex numbers where the device has none: Apple's MPS)."""
    device = weights["tok_embeddings.weight"].device  # everything is made where the weights are
    tokens = torch.as_tensor(tokens, dtype=torch.long, device=device).reshape(-1)
    seqlen = tokens.shape[0]
    head_dim = params["dim"] // params["n_heads"]
    freqs_cis = precompute_freqs_cis(head_dim, start_pos + seqlen, params["rope_theta"], rope_scaling(params),
                                     device, real=not complex_supported(device))
    freqs_cis = freqs_cis[start_pos:]
    # The fused kernel needs a mask only for several new tokens after cached ones (is_causal covers a prefill)
    mask = causal_mask(seqlen, start_pos, device) if not fused or (start_pos > 0 and seqlen > 1) else None
    buffers = {} if buffers is None else buffers
    h = weights["tok_embeddings.weight"][tokens].to(dtype)  # [T, dim]: rows of the stored table, no copy of it
    for layer in range(params["n_layers"]):
        cache = caches[layer] if caches is not None else None
        h = transformer_block(h, weights, layer, params, freqs_cis, mask, cache, start_pos, fused, buffers)
    if last_only:
        h = h[-1:]
    h = rms_norm(h, weights["norm.weight"].to(dtype), params["norm_eps"])
    output = weights.get("output.weight", weights["tok_embeddings.weight"])  # 3.2 1B/3B tie the two
    if fused and output.dtype != h.dtype and h.shape[0] > 1:  # the fast mode on weights kept as stored: the rows
        # before the last by the prompt's rule (blocks converted to float32); the last row, the one that chooses the
        # next token, by the one-token rule, as with last_only, so that last_only changes no number
        logits = linear_converting(h, output)  # [T, vocab] (its last row replaced: no second [T, vocab] tensor)
        logits[-1:] = linear(h[-1:], output)
        return logits.float()
    if fused:  # the fast mode: the table as given (layers.linear_stored when its dtype differs)
        return linear(h, output).float()
    # Free when the table is already in `dtype` (helpers.cast_weights converts once); otherwise, e.g. bf16
    # weights in the exact float32 mode, a converted copy of the whole [vocab, dim] table on every call,
    # last_only or not (4 bytes per entry: 2.1 GB for the 8B, notebook 09), into a buffer kept in `buffers`.
    return linear(h, converted(output, dtype, None if recording(h) else buffers, "output")).float()
