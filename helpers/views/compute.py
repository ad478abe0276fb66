"""The numbers behind the live views: small pure functions over Meta's tensors, each covered by tests/test_views.py.

Everything runs on the device of the weights and returns float32 tensors there (ids as int64). Shapes: T = prompt
tokens, H = n_heads, D = head_dim, L = n_layers, V = vocab, k = how many top tokens.
"""
from __future__ import annotations

import math

import torch

from ..generate import new_kv_cache
from ..layers import apply_rotary_emb, causal_mask, linear, precompute_freqs_cis, repeat_kv, rms_norm
from ..model import forward, rope_scaling, transformer_block


def _setup(weights: dict, params: dict, tokens):
    """-> (ids [T] on the weights' device, freqs_cis [T, D/2], mask [T, T]) for a prompt."""
    device = weights["tok_embeddings.weight"].device
    ids = torch.as_tensor(tokens, dtype=torch.long).reshape(-1).to(device)
    head_dim = params["dim"] // params["n_heads"]
    freqs_cis = precompute_freqs_cis(head_dim, len(ids), params["rope_theta"], rope_scaling(params)).to(device)
    return ids, freqs_cis, causal_mask(len(ids)).to(device)


def residual_stream(weights: dict, params: dict, tokens, n_blocks: int | None = None) -> list[torch.Tensor]:
    """tokens: [T] -> n_blocks + 1 float32 tensors [T, dim] (all L blocks by default): the stream after the
    embedding, then after each block."""
    ids, freqs_cis, mask = _setup(weights, params, tokens)
    h = weights["tok_embeddings.weight"][ids].float()
    stream, buffers = [h], {}  # buffers: where each block's bf16 weights are converted (helpers.model.converted)
    for layer in range(params["n_layers"] if n_blocks is None else n_blocks):
        h = transformer_block(h, weights, layer, params, freqs_cis, mask, buffers=buffers)
        stream.append(h)
    return stream


def attention_probs(weights: dict, params: dict, tokens, layer: int) -> torch.Tensor:
    """tokens: [T] -> [H, T, T] float32: row i of head h holds how much token i attends to each token j <= i in
    `layer` (softmax of q·k/√D + the causal mask); each row sums to 1."""
    h = residual_stream(weights, params, tokens, n_blocks=layer)[-1]  # the stream that enters `layer`
    _, freqs_cis, mask = _setup(weights, params, tokens)

    def w(name):
        return weights[f"layers.{layer}.{name}.weight"].to(h.dtype)

    n_heads = params["n_heads"]
    n_kv_heads = params.get("n_kv_heads") or n_heads
    head_dim, seqlen = params["dim"] // n_heads, h.shape[0]
    x = rms_norm(h, w("attention_norm"), params["norm_eps"])
    xq = apply_rotary_emb(linear(x, w("attention.wq")).view(seqlen, n_heads, head_dim), freqs_cis)
    xk = apply_rotary_emb(linear(x, w("attention.wk")).view(seqlen, n_kv_heads, head_dim), freqs_cis)
    keys = repeat_kv(xk, n_heads // n_kv_heads).transpose(0, 1)  # [H, T, D]
    scores = xq.transpose(0, 1) @ keys.transpose(1, 2) / math.sqrt(head_dim)  # [H, T, T]
    return torch.softmax(scores.float() + mask, dim=-1)


def logit_lens(weights: dict, params: dict, tokens, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens: [T] -> (ids [L + 1, T, k], probs [L + 1, T, k]): the final norm and the output layer applied to the
    stream after 0, 1, …, L blocks; entry (l, t) holds the k tokens the model would predict after token t if it
    stopped after l blocks (0: the embeddings alone). The last row is what forward predicts."""
    output = weights.get("output.weight", weights["tok_embeddings.weight"]).float()  # converted once, not per row
    ids, probs = [], []
    for h in residual_stream(weights, params, tokens):
        logits = linear(rms_norm(h, weights["norm.weight"].float(), params["norm_eps"]), output)
        top = torch.softmax(logits.float(), dim=-1).topk(k, dim=-1)
        ids.append(top.indices)
        probs.append(top.values)
    return torch.stack(ids), torch.stack(probs)


def rope_scores(q: torch.Tensor, k: torch.Tensor, positions: int, theta: float) -> torch.Tensor:
    """q, k: [D] -> [P, P] float32 (P = positions): entry (m, n) is the score of q rotated to position m against
    k rotated to position n, (R_m q)·(R_n k). RoPE makes it depend on m − n only: constant along each diagonal."""
    head_dim = q.shape[-1]
    freqs_cis = precompute_freqs_cis(head_dim, positions, theta).to(q.device)
    rq = apply_rotary_emb(q.float().expand(positions, 1, head_dim), freqs_cis)[:, 0]  # [P, D]
    rk = apply_rotary_emb(k.float().expand(positions, 1, head_dim), freqs_cis)[:, 0]  # [P, D]
    return rq @ rk.T


def rotate_pair(x: torch.Tensor, pair: int, position: int, theta: float) -> tuple[float, float]:
    """x: [D] -> dimensions (2·pair, 2·pair + 1) of x rotated to `position`: the point a RoPE view draws."""
    freqs_cis = precompute_freqs_cis(x.shape[-1], position + 1, theta)[position:].to(x.device)
    rotated = apply_rotary_emb(x.float().reshape(1, 1, -1), freqs_cis)[0, 0]
    return float(rotated[2 * pair]), float(rotated[2 * pair + 1])


def nucleus_distribution(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """logits: [V] -> [V] float32: the distribution sample_next draws from. softmax(logits / temperature), then
    Meta's top-p rule: a token stays while the mass of the more likely ones is at most top_p; the rest get 0 and
    the kept ones are renormalised. Temperature 0 is greedy: all the mass on the argmax."""
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(), logits.shape[-1]).float()
    probs = torch.softmax(logits / temperature, dim=-1)
    probs_sort, probs_idx = torch.sort(probs, descending=True)
    cut = torch.cumsum(probs_sort, dim=-1) - probs_sort > top_p
    kept = probs_sort.masked_fill(cut, 0.0)
    return torch.zeros_like(probs).scatter(-1, probs_idx, kept / kept.sum())


def decode_steps(weights: dict, params: dict, tokens, max_new_tokens: int, k: int = 5, stop_tokens=(),
                 dtype: torch.dtype = torch.float32, fused: bool = False) -> list[dict]:
    """Greedy decoding through a KV cache, step by step -> one dict per step: `start_pos` (tokens already in the
    cache), `fed` (the ids this step feeds: the whole prompt first, then one), `top_ids`/`top_probs` (the k most
    likely next tokens), `token` (the chosen one) and `cached` (positions filled after the step). `dtype`, `fused`:
    the mode, as helpers.choose_mode returns it."""
    device = weights["tok_embeddings.weight"].device
    prompt = torch.as_tensor(tokens, dtype=torch.long, device="cpu").reshape(-1).tolist()
    caches = new_kv_cache(params, len(prompt) + max_new_tokens, dtype, device)
    steps, fed, start_pos = [], prompt, 0
    buffers = {}  # weights stored in another dtype, converted into the same buffers step after step (as generate)
    for _ in range(max_new_tokens):
        with torch.inference_mode():
            logits = forward(weights, params, fed, start_pos, caches, dtype, True, fused, buffers)[-1].float().cpu()
        top = torch.softmax(logits, dim=-1).topk(k)
        token = int(logits.argmax())  # as generate chooses: the first of tied logits (topk may order ties otherwise)
        steps.append({"start_pos": start_pos, "fed": list(fed), "top_ids": top.indices.tolist(),
                      "top_probs": top.values.tolist(), "token": token, "cached": start_pos + len(fed)})
        if token in stop_tokens:
            break
        start_pos, fed = start_pos + len(fed), [token]
    return steps
