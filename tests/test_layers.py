"""Each layer function equals Meta's own, from llama_models.llama3.model, on random inputs of several shapes
and dtypes. Meta's functions work batch-first ([B, T, ...]); ours take one sequence ([T, ...]), so Meta's
get a batch of one. The elementwise functions (RMSNorm, RoPE, the mask, repeat_kv) must be exactly equal: same
operations, same order. The modules with matrix products (feed-forward, attention, block) are exactly equal here
too, and are allowed a last-bit margin for another CPU's BLAS (assert_matches_meta).
"""
import pytest
import torch
from llama_models.llama3 import model as meta

from helpers import (
    apply_rope_scaling,
    apply_rotary_emb,
    attention,
    causal_mask,
    feed_forward,
    ffn_hidden_dim,
    precompute_freqs_cis,
    repeat_kv,
    rms_norm,
    transformer_block,
)
from helpers.reference import init_model_parallel

DTYPES = [torch.float32, torch.bfloat16]
# (T, dim, n_heads, n_kv_heads): GQA ratios 1 (MHA), 2, 4, n_heads (one KV head); odd widths
CONFIGS = [(1, 32, 4, 4), (7, 64, 8, 2), (13, 48, 6, 1), (5, 96, 12, 6), (9, 40, 5, 5)]
META_ROPE_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192}  # the numbers Meta's apply_scaling hard-codes


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rows_near_eps(n: int, dim: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """[n, dim] random rows at scales 1e-3 .. 10: a row at 1e-3 has mean square ~1e-6, the size of
    norm_eps, so where eps goes (inside the square root or outside) changes the result."""
    scales = torch.tensor([1e-3, 2e-3, 1e-2, 1.0, 10.0]).repeat(n // 5 + 1)[:n, None]
    return (torch.randn(n, dim, generator=gen(seed)) * scales).to(dtype)


def meta_module(module: torch.nn.Module, state: dict) -> torch.nn.Module:
    """Meta's module (built on the meta device: no init cost) holding our tensors."""
    module.load_state_dict(state, assign=True)
    return module.eval()


def assert_matches_meta(got: torch.Tensor, expected: torch.Tensor) -> None:
    """For the modules, whose matrix products may take different BLAS kernels (ours: matrix-vector for one
    token). Measured here: identical, max |Δ| 0.0, for every config and both dtypes. The margin is for a CPU
    whose BLAS sums in another order: 1e-6 of the largest value in float32, two bf16 steps (2^-7) in bf16."""
    assert got.dtype == expected.dtype
    tol = 1e-6 if got.dtype == torch.float32 else 2**-7
    err = ((got.float() - expected.float()).abs().max() / expected.float().abs().max()).item()
    assert err <= tol, f"max |Δ| {err:.2e} of the largest value (tolerance {tol:.0e})"


def meta_mask(seqlen: int, start_pos: int) -> torch.Tensor:
    """The mask exactly as Meta's Transformer.forward builds it (inline there, so repeated here)."""
    mask = torch.full((seqlen, seqlen), float("-inf"))
    mask = torch.triu(mask, diagonal=1)
    return torch.hstack([torch.zeros((seqlen, start_pos)), mask])


# --- RMSNorm ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim, eps", [(64, 1e-5), (48, 1e-6), (4096, 1e-5), (7, 1e-5)])
def test_rms_norm_equals_metas(dim, eps, dtype):
    x = rows_near_eps(20, dim, dtype, seed=dim)
    weight = (1 + 0.3 * torch.randn(dim, generator=gen(1))).to(dtype)
    norm = meta.RMSNorm(dim, eps=eps)
    norm.weight = torch.nn.Parameter(weight)
    expected = norm(x[None])[0]
    ours = rms_norm(x, weight, eps)
    assert ours.dtype == dtype
    assert torch.equal(ours, expected)
    # the small rows make the check sensitive to eps: without eps they would come out >= 1.4x larger
    no_eps = rms_norm(x, weight, 0.0)
    assert no_eps[:1].float().abs().max() > 1.2 * ours[:1].float().abs().max(), "eps does not matter here"


def test_rms_norm_equals_torchs():
    """torch.nn.functional.rms_norm (float32): same definition, eps inside the square root."""
    x = rows_near_eps(30, 64, torch.float32, seed=3)
    weight = 1 + 0.3 * torch.randn(64, generator=gen(4))
    ours, theirs = rms_norm(x, weight, 1e-5), torch.nn.functional.rms_norm(x, (64,), weight, 1e-5)
    # measured 0.0 here; the margin is for a torch kernel that sums in another order on another CPU
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() <= 1e-6


def test_rms_norm_keeps_the_mean():
    """RMSNorm divides by the root mean square; it never subtracts the mean (that would be LayerNorm)."""
    x = torch.randn(4, 32, generator=gen(5)) + 3.0  # rows with a large mean
    ones = torch.ones(32)
    out = rms_norm(x, ones, 1e-5)
    torch.testing.assert_close(out, x / x.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt(), atol=1e-6, rtol=1e-6)
    assert (out.mean(-1) > 0.9).all()


# --- RoPE ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head_dim", [4, 16, 64, 128])
@pytest.mark.parametrize("theta", [250.0, 10000.0, 500000.0])
@pytest.mark.parametrize("scaled", [False, True])
def test_precompute_freqs_cis_equals_metas(head_dim, theta, scaled):
    end = 300
    ours = precompute_freqs_cis(head_dim, end, theta, META_ROPE_SCALING if scaled else None)
    expected = meta.precompute_freqs_cis(head_dim, end, theta, scaled)
    assert ours.dtype == expected.dtype == torch.complex64 and ours.shape == (end, head_dim // 2)
    assert torch.equal(ours, expected)


def test_apply_rope_scaling_equals_metas():
    freqs = 1.0 / (500000.0 ** (torch.arange(0, 128, 2).float() / 128))
    assert torch.equal(apply_rope_scaling(freqs, **META_ROPE_SCALING), meta.apply_scaling(freqs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, dim, n_heads, n_kv_heads", CONFIGS)
@pytest.mark.parametrize("start_pos", [0, 37])
def test_apply_rotary_emb_equals_metas(T, dim, n_heads, n_kv_heads, start_pos, dtype):
    head_dim = dim // n_heads
    g = gen(T * dim + start_pos)
    xq = torch.randn(T, n_heads, head_dim, generator=g).to(dtype)
    xk = torch.randn(T, n_kv_heads, head_dim, generator=g).to(dtype)
    freqs_cis = meta.precompute_freqs_cis(head_dim, start_pos + T, 500000.0)[start_pos:]
    meta_q, meta_k = meta.apply_rotary_emb(xq[None], xk[None], freqs_cis)
    ours_q, ours_k = apply_rotary_emb(xq, freqs_cis), apply_rotary_emb(xk, freqs_cis)
    assert ours_q.dtype == ours_k.dtype == dtype
    assert torch.equal(ours_q, meta_q[0]) and torch.equal(ours_k, meta_k[0])


def test_rotary_emb_is_a_rotation_of_adjacent_pairs():
    """Dimensions (0, 1), (2, 3), ... turn together, by angle m·θ_i: norms of the pairs are kept."""
    head_dim, T = 8, 5
    x = torch.randn(T, 1, head_dim, generator=gen(6))
    rotated = apply_rotary_emb(x, precompute_freqs_cis(head_dim, T, 10000.0))
    pair_norms = lambda t: t.reshape(T, 1, head_dim // 2, 2).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(pair_norms(rotated), pair_norms(x))
    torch.testing.assert_close(rotated[0], x[0])  # position 0: angle 0
    angle = torch.tensor(1.0)  # position 1, pair 0: θ_0 = 1
    c, s = torch.cos(angle), torch.sin(angle)
    torch.testing.assert_close(rotated[1, 0, :2], torch.stack([c * x[1, 0, 0] - s * x[1, 0, 1],
                                                                s * x[1, 0, 0] + c * x[1, 0, 1]]))


# --- the mask and the KV heads ---------------------------------------------------------------------

@pytest.mark.parametrize("seqlen, start_pos", [(1, 0), (1, 9), (6, 0), (5, 4), (17, 0)])
def test_causal_mask_equals_metas(seqlen, start_pos):
    ours = causal_mask(seqlen, start_pos)
    assert ours.shape == (seqlen, start_pos + seqlen)
    assert torch.equal(ours, meta_mask(seqlen, start_pos))
    # -inf, not 0: softmax gives the future exactly zero weight
    weights = torch.softmax(torch.randn(seqlen, start_pos + seqlen, generator=gen(7)) + ours, dim=-1)
    future = torch.ones_like(ours, dtype=torch.bool).triu(start_pos + 1)
    assert (weights[future] == 0).all() and (weights[~future] > 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_kv_heads, n_rep", [(1, 1), (1, 6), (2, 4), (3, 2), (8, 1)])
def test_repeat_kv_equals_metas(n_kv_heads, n_rep, dtype):
    x = torch.randn(7, n_kv_heads, 16, generator=gen(n_kv_heads * n_rep)).to(dtype)
    ours = repeat_kv(x, n_rep)
    assert torch.equal(ours, meta.repeat_kv(x[None], n_rep)[0])
    for h in range(n_kv_heads * n_rep):  # query head h reads KV head h // n_rep
        assert torch.equal(ours[:, h], x[:, h // n_rep])


# --- the modules: feed-forward, attention, block ----------------------------------------------------

@pytest.fixture(scope="module")
def model_parallel():
    init_model_parallel()  # fairscale's layers (inside Meta's modules) need it, world size 1


def layer_weights(dim: int, n_heads: int, n_kv_heads: int, hidden: int, dtype: torch.dtype, seed: int) -> dict:
    """One layer's tensors with Meta's names, scaled 1/sqrt(fan_in), norm gains around 1."""
    head_dim = dim // n_heads
    g = gen(seed)
    shapes = {"attention.wq": (n_heads * head_dim, dim), "attention.wk": (n_kv_heads * head_dim, dim),
              "attention.wv": (n_kv_heads * head_dim, dim), "attention.wo": (dim, n_heads * head_dim),
              "feed_forward.w1": (hidden, dim), "feed_forward.w2": (dim, hidden), "feed_forward.w3": (hidden, dim)}
    w = {f"{k}.weight": (torch.randn(*s, generator=g) / s[1] ** 0.5).to(dtype) for k, s in shapes.items()}
    for norm in ("attention_norm", "ffn_norm"):
        w[f"{norm}.weight"] = (1 + 0.3 * torch.randn(dim, generator=g)).to(dtype)
    return w


def meta_args(dim, n_heads, n_kv_heads, max_seq_len, **extra):
    from llama_models.llama3.args import ModelArgs

    return ModelArgs(dim=dim, n_heads=n_heads, n_kv_heads=n_kv_heads, max_batch_size=1, max_seq_len=max_seq_len,
                     norm_eps=1e-5, **extra)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim, multiple_of, ffn_dim_multiplier", [(32, 16, None), (64, 32, 1.3), (48, 64, 0.7)])
def test_feed_forward_equals_metas(model_parallel, dim, multiple_of, ffn_dim_multiplier, dtype):
    with torch.device("meta"):
        module = meta.FeedForward(dim, 4 * dim, multiple_of, ffn_dim_multiplier)  # as TransformerBlock calls it
    hidden = ffn_hidden_dim(dim, multiple_of, ffn_dim_multiplier)
    assert module.w1.weight.shape == (hidden, dim)
    w = layer_weights(dim, 4, 4, hidden, dtype, seed=dim)
    ffn = {k.removeprefix("feed_forward."): v for k, v in w.items() if k.startswith("feed_forward.")}
    module = meta_module(module, ffn)
    for T in (1, 11):
        x = torch.randn(T, dim, generator=gen(T)).to(dtype)
        with torch.inference_mode():
            expected = module(x[None])[0]
        ours = feed_forward(x, ffn["w1.weight"], ffn["w2.weight"], ffn["w3.weight"])
        assert ours.dtype == dtype
        assert_matches_meta(ours, expected)


def run_meta_and_ours(block: bool, ours_fn, T, dim, n_heads, n_kv_heads, dtype):
    """Meta's Attention (block False) or TransformerBlock (block True) and ours: prefill T tokens, then decode 3 tokens one at a time with the KV cache, in Meta's module and in ours;
    -> list of (ours, Meta's) outputs for each call."""
    head_dim = dim // n_heads
    max_len = T + 3
    w = layer_weights(dim, n_heads, n_kv_heads, ffn_hidden_dim(dim, 32, 1.3), dtype, seed=T * dim)
    args = meta_args(dim, n_heads, n_kv_heads, max_len, multiple_of=32, ffn_dim_multiplier=1.3)
    with torch.device("meta"):
        module = meta.TransformerBlock(0, args) if block else meta.Attention(args)
    module = meta_module(module, w if block else
                         {k.removeprefix("attention."): v for k, v in w.items() if k.startswith("attention.")})
    attn = module.attention if block else module
    attn.cache_k = torch.zeros(1, max_len, n_kv_heads, head_dim)
    attn.cache_v = torch.zeros(1, max_len, n_kv_heads, head_dim)
    cache = (torch.zeros(max_len, n_kv_heads, head_dim, dtype=dtype),
             torch.zeros(max_len, n_kv_heads, head_dim, dtype=dtype))
    freqs_cis = meta.precompute_freqs_cis(head_dim, max_len, 500000.0)
    x = torch.randn(max_len, dim, generator=gen(dim)).to(dtype)
    results, start = [], 0
    for n in (T, 1, 1, 1):
        chunk, fc = x[start:start + n], freqs_cis[start:start + n]
        with torch.inference_mode():
            expected = module(chunk[None], start, fc, meta_mask(n, start).type_as(chunk) if n > 1 else None)[0]
        results.append((ours_fn(chunk, w, fc, causal_mask(n, start), cache, start), expected))
        start += n
    return results


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, dim, n_heads, n_kv_heads", CONFIGS)
def test_attention_equals_metas_with_the_kv_cache(model_parallel, T, dim, n_heads, n_kv_heads, dtype):
    def ours(x, w, freqs_cis, mask, cache, start_pos):
        return attention(x, w["attention.wq.weight"], w["attention.wk.weight"], w["attention.wv.weight"],
                         w["attention.wo.weight"], freqs_cis, mask, n_heads, n_kv_heads, cache, start_pos)

    for got, expected in run_meta_and_ours(False, ours, T, dim, n_heads, n_kv_heads, dtype):
        assert got.dtype == dtype
        assert_matches_meta(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, dim, n_heads, n_kv_heads", CONFIGS)
def test_transformer_block_equals_metas(model_parallel, T, dim, n_heads, n_kv_heads, dtype):
    params = {"dim": dim, "n_heads": n_heads, "n_kv_heads": n_kv_heads, "norm_eps": 1e-5}

    def ours(x, w, freqs_cis, mask, cache, start_pos):
        weights = {f"layers.0.{k}": v for k, v in w.items()}
        return transformer_block(x, weights, 0, params, freqs_cis, mask, cache, start_pos)

    for got, expected in run_meta_and_ours(True, ours, T, dim, n_heads, n_kv_heads, dtype):
        assert got.dtype == dtype
        assert_matches_meta(got, expected)
