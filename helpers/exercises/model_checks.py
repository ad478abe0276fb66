"""Checkers for notebooks 09–11: one transformer block, greedy decoding, the KV cache, top-p sampling."""
from __future__ import annotations

import torch

from .. import layers
from ..decode import greedy_decode
from ..generate import new_kv_cache, sample_top_p
from ..model import forward, transformer_block
from ..tiny import init_weights
from .core import not_done, outcome, randn, run_checks, wrapping

SMALL = {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 16, "ffn_dim_multiplier": 1.3,
         "norm_eps": 1e-5, "rope_theta": 10000.0, "use_scaled_rope": False}


def small_model(seed: int, vocab_size: int = 64) -> tuple[dict, dict]:
    """A random Meta-format model, small enough to check with: weights scaled to 1/sqrt(fan_in), gains near 1."""
    g = torch.Generator().manual_seed(seed)
    weights = init_weights(SMALL, vocab_size, seed)
    for k, v in weights.items():
        weights[k] = 1 + 0.3 * torch.randn(v.shape, generator=g) if k.endswith("norm.weight") else v / (0.02 * v.shape[-1] ** 0.5)
    return weights, SMALL


# --- 09 one block ----------------------------------------------------------------------------------------

def as_bf16(weights: dict) -> dict:
    """The same model stored in bf16, as the course's checkpoints are (the tiny model, Meta's 8B)."""
    return {k: v.to(torch.bfloat16) for k, v in weights.items()}


BF16_WEIGHTS = ("the weights are stored in bf16: convert each one to x's dtype (float32) as you use it, as "
                "helpers.transformer_block does (weights[...].to(x.dtype)).")
BF16_COMPUTE = ("computed in bf16? The weights are stored in bf16, but the block computes in x's dtype (float32): "
                "convert each weight to x.dtype as you use it, not x to the weights' dtype.")


def _block_variant(residual="x", norms=("attention_norm", "ffn_norm"), parallel=False, eps=None, cast="x"):
    """The course's block (no cache) with one known mistake switched on. cast: "x" converts each weight to x's
    dtype (right), "none" uses the stored tensors as they are, "bf16" computes in the weights' dtype."""
    def block(x, weights, layer, params, freqs_cis, mask):
        dtype = x.dtype
        if cast == "bf16":
            x = x.to(weights[f"layers.{layer}.attention.wq.weight"].dtype)

        def w(name):
            t = weights[f"layers.{layer}.{name}.weight"]
            return t if cast == "none" else t.to(x.dtype)
        n_heads, norm_eps = params["n_heads"], params["norm_eps"] if eps is None else eps
        n_kv_heads = params.get("n_kv_heads") or n_heads
        normed = layers.rms_norm(x, w(norms[0]), norm_eps)
        attn = layers.attention(normed, w("attention.wq"), w("attention.wk"), w("attention.wv"), w("attention.wo"),
                                freqs_cis, mask, n_heads, n_kv_heads)
        h = {"x": x, "normed": normed, "none": 0}[residual] + attn
        ffn_in = layers.rms_norm(x if parallel else h, w(norms[1]), norm_eps)
        out = layers.feed_forward(ffn_in, w("feed_forward.w1"), w("feed_forward.w2"), w("feed_forward.w3"))
        out = {"x": h, "normed": h, "none": 0}[residual] + out
        return out.to(dtype) if cast == "bf16" else out
    return block


def check_transformer_block(fn) -> bool:
    """fn(x [T, dim], weights, layer, params, freqs_cis, mask) -> [T, dim] like helpers.transformer_block (no cache);
    on float32 weights, then on the same model stored in bf16 (as the course's checkpoints are) with float32 x."""
    weights, params = small_model(9)
    head_dim = params["dim"] // params["n_heads"]
    g = torch.Generator().manual_seed(9)
    cases = [(f"layer {layer}, T {t}", (randn(t, params["dim"], g=g), weights, layer, params,
                                         layers.precompute_freqs_cis(head_dim, t, params["rope_theta"]), layers.causal_mask(t)))
             for layer, t in [(0, 5), (1, 7), (1, 1)]]
    x = randn(6, params["dim"], g=g, scale=0.1)  # small inputs: the mean square is near eps, a wrong eps shows
    cases.append(("layer 0, T 6, inputs of size 0.1, norm_eps 1e-3", (x, weights, 0, {**params, "norm_eps": 1e-3},
                  layers.precompute_freqs_cis(head_dim, 6, params["rope_theta"]), layers.causal_mask(6))))
    bf16 = as_bf16(weights)  # last: a learner's other mistakes show on the float32 cases first
    cases += [(f"weights stored in bf16 (as the course's checkpoints), float32 x, layer {layer}, T {t}",
               (randn(t, params["dim"], g=g), bf16, layer, params,
                layers.precompute_freqs_cis(head_dim, t, params["rope_theta"]), layers.causal_mask(t)))
              for layer, t in [(0, 5), (1, 1)]]
    mistakes = [
        (BF16_WEIGHTS, _block_variant(cast="none")),
        (BF16_COMPUTE, _block_variant(cast="bf16")),
        ("the residual adds the normalised x? The stream that is added to is the un-normalised x: "
         "h = x + attention(attention_norm(x)).", _block_variant(residual="normed")),
        ("no residual connections? Each sub-layer's output is added to its input.", _block_variant(residual="none")),
        ("attention_norm and ffn_norm swapped?", _block_variant(norms=("ffn_norm", "attention_norm"))),
        ("the feed-forward fed from x instead of h? The block is sequential: the FFN reads the stream after attention.",
         _block_variant(parallel=True)),
        *[("norm_eps hard-coded? Read it from params['norm_eps'].", _block_variant(eps=eps)) for eps in (1e-5, 1e-6)],
    ]
    return run_checks("transformer_block", outcome(fn), outcome(transformer_block), cases,
                      [(h, outcome(w)) for h, w in mistakes],
                      dtype_hint="keep x's dtype (float32): convert each weight to x.dtype as you use it")


# --- 10 greedy decoding ----------------------------------------------------------------------------------

def _greedy_variant(keep_prompt=False, keep_stop=False, row=-1):
    def decode(weights, params, tokens, max_new_tokens, stop_tokens=()):
        ids = list(tokens)
        for _ in range(max_new_tokens):
            next_token = int(forward(weights, params, ids)[row].argmax())
            if next_token in stop_tokens and not keep_stop:
                break
            ids.append(next_token)
            if next_token in stop_tokens:
                break
        return ids if keep_prompt else ids[len(tokens):]
    return decode


def check_greedy_decode(fn) -> bool:
    """fn(weights, params, tokens, max_new_tokens, stop_tokens=()) -> new ids, like helpers.greedy_decode."""
    weights, params = small_model(18)  # a seed whose greedy run has no repeats: the stop case bites mid-run
    free_run = greedy_decode(weights, params, [1, 2, 3], 6)
    stop = free_run[3]  # a token this model really produces: the run must stop before it
    cases = [("prompt [1, 2, 3], 6 new tokens", (weights, params, [1, 2, 3], 6, ())),
             (f"prompt [1, 2, 3], stop token {stop}", (weights, params, [1, 2, 3], 6, (stop,))),
             ("prompt [5], 0 new tokens", (weights, params, [5], 0, ())),
             ("prompt [7, 8, 9, 10, 11], 4 new tokens", (weights, params, [7, 8, 9, 10, 11], 4, ()))]
    mistakes = [
        ("the prompt returned too? Return only the new ids.", _greedy_variant(keep_prompt=True)),
        ("the stop token kept? Stop before it: it is not part of the text.", _greedy_variant(keep_stop=True)),
        ("the first row's logits used? The next token is predicted by the last row (logits[-1]).", _greedy_variant(row=0)),
    ]
    return run_checks("greedy_decode", fn, greedy_decode, cases, mistakes)


# --- 11 the KV cache and sampling ------------------------------------------------------------------------

def check_new_kv_cache(fn) -> bool:
    """fn(params, max_seq_len, dtype) -> [(cache_k, cache_v)] per layer, like helpers.new_kv_cache."""
    shapes = [dict(SMALL), {**SMALL, "n_kv_heads": 1, "n_layers": 3}, {k: v for k, v in SMALL.items() if k != "n_kv_heads"}]
    cases = [(f"n_layers {p['n_layers']}, n_heads {p['n_heads']}, n_kv_heads {p.get('n_kv_heads')}, L {n}, {dt}", (p, n, dt))
             for p, n, dt in zip(shapes, (8, 5, 3), (torch.float32, torch.bfloat16, torch.float32))]
    cases.append(("n_layers 3, L 4, no dtype given (the default)", ({**SMALL, "n_layers": 3}, 4)))
    for label, args in cases:  # zeros compare equal: a cache whose layers share one tensor passes the value check
        try:
            tensors = [t for pair in fn(*args) for t in pair]
            shared = (len({id(t) for t in tensors}) < len(tensors)
                      or len({t.data_ptr() for t in tensors}) < len(tensors))
        except NotImplementedError as e:
            print(not_done("new_kv_cache", fn, e))
            return False
        except Exception:  # noqa: BLE001 - run_checks below reports it
            break
        if shared:
            print(f"✗ new_kv_cache is wrong on {label}: its {len(tensors)} tensors are not all distinct (the layers "
                  "would write into each other's keys and values). `[…] * n_layers` repeats the same tensors: "
                  "make a new pair per layer.")
            return False

    def as_tensor(caches):  # [n_layers, 2, L, KV, D]
        return torch.stack([torch.stack(list(c)) for c in caches])

    def sized_by_heads(p, n, dt):
        return new_kv_cache({**p, "n_kv_heads": p["n_heads"]}, n, dt)

    mistakes = [("sized by n_heads? With grouped-query attention the cache holds n_kv_heads heads: that is the saving.",
                 lambda *a: as_tensor(sized_by_heads(*a)))]
    return run_checks("new_kv_cache", wrapping(fn, lambda *a: as_tensor(fn(*a))), lambda *a: as_tensor(new_kv_cache(*a)),
                      cases, mistakes, dtype_hint="make the tensors with dtype=dtype (default torch.float32)")


def check_sample_top_p(fn, draws: int = 500) -> bool:
    """fn(probs [vocab], p, generator) -> [1] id, like helpers.sample_top_p (Meta's rule: keep a token while the
    mass of the more likely ones is at most p). Checked by drawing many times from seeded generators."""
    probs = torch.tensor([0.15, 0.05, 0.5, 0.25, 0.05])  # sorted: ids 2, 3, 0 …; 0.5 + 0.25 = 0.75 exactly
    for p, nucleus in [(0.75, {2, 3, 0}), (0.4, {2}), (1.0, {0, 1, 2, 3, 4})]:
        try:
            repeat = {int(fn(probs.clone(), p, torch.Generator().manual_seed(0))) for _ in range(3)}
            gen = torch.Generator().manual_seed(1)
            seen = {int(fn(probs.clone(), p, gen)) for _ in range(draws)}
        except NotImplementedError as e:
            print(not_done("sample_top_p", fn, e))
            return False
        except Exception as e:  # noqa: BLE001 - the learner's code may raise anything
            print(f"✗ sample_top_p raised {type(e).__name__} ({e}) on p = {p}.")
            return False
        if len(repeat) > 1:
            print("✗ sample_top_p: the same seed gave different draws. Pass the generator to torch.multinomial.")
            return False
        if seen == nucleus:
            continue
        hint = ""
        if seen == set(range(len(nucleus))):
            hint = " Those are positions in the sorted order: map them back to ids through the sort's indices."
        elif p == 0.75 and seen == {2, 3}:
            hint = (" That is the ≥ p rule of Holtzman et al. (2019) and Hugging Face; Meta keeps a token while the "
                    "mass of the more likely ones is at most p (it cuts where probs_sum - probs_sort > p).")
        elif seen == {0, 1, 2, 3, 4}:
            hint = " Nothing was cut off: tokens outside the nucleus must get probability 0."
        print(f"✗ sample_top_p with p = {p} drew ids {sorted(seen)}; Meta's nucleus is {sorted(nucleus)}.{hint}")
        return False
    print("✓ sample_top_p keeps Meta's nucleus for p = 0.75 (the tie), 0.4 and 1.0, and follows its generator.")
    return True
