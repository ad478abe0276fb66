"""The fast mode's attention (`fused=True`: torch's scaled_dot_product_attention) equals the exact mode's score
matrix: prefill, a cached chunk after earlier tokens, one-token decode, every GQA ratio; the whole model gives the
same tokens; and a long prompt never holds all heads' [T, T] float32 scores (measured in a fresh process)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import cast_weights, choose_mode, forward, generate, new_kv_cache, precompute_freqs_cis
from helpers import layers
from helpers.layers import attention, causal_mask

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
# (dim, n_heads, n_kv_heads): GQA ratios 1 (MHA), 4, n_heads (one KV head)
GQA = [(64, 4, 4), (128, 8, 2), (96, 6, 1)]
# (cached tokens before the call, new tokens in the call): prefill, a cached chunk, one-token decode
STEPS = [(0, 9), (5, 7), (11, 1), (0, 1)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def attention_call(dim, n_heads, n_kv_heads, start_pos, seqlen, fused, seed=0):
    """One attention call on the new tokens, with a cache already holding start_pos earlier tokens."""
    g = torch.Generator().manual_seed(seed)
    head_dim = dim // n_heads
    wq, wo = torch.randn(dim, dim, generator=g) / dim**0.5, torch.randn(dim, dim, generator=g) / dim**0.5
    wk, wv = (torch.randn(n_kv_heads * head_dim, dim, generator=g) / dim**0.5 for _ in range(2))
    earlier = torch.randn(start_pos, dim, generator=g)
    x = torch.randn(seqlen, dim, generator=g)
    freqs_cis = precompute_freqs_cis(head_dim, start_pos + seqlen, 500000.0)
    cache = (torch.zeros(start_pos + seqlen, n_kv_heads, head_dim), torch.zeros(start_pos + seqlen, n_kv_heads, head_dim))
    if start_pos:  # fill the cache the exact way, the same for both modes
        attention(earlier, wq, wk, wv, wo, freqs_cis[:start_pos], causal_mask(start_pos), n_heads, n_kv_heads, cache, 0)
    return attention(x, wq, wk, wv, wo, freqs_cis[start_pos:], causal_mask(seqlen, start_pos), n_heads, n_kv_heads,
                     cache, start_pos, fused=fused)


@pytest.mark.parametrize("start_pos, seqlen", STEPS)
@pytest.mark.parametrize("dim, n_heads, n_kv_heads", GQA)
def test_fused_equals_exact_attention(dim, n_heads, n_kv_heads, start_pos, seqlen):
    exact = attention_call(dim, n_heads, n_kv_heads, start_pos, seqlen, fused=False)
    fused = attention_call(dim, n_heads, n_kv_heads, start_pos, seqlen, fused=True)
    assert fused.shape == exact.shape == (seqlen, dim) and fused.dtype == torch.float32
    assert rel_err(fused, exact) <= 1e-5


def test_fused_without_cache_equals_exact():
    g = torch.Generator().manual_seed(3)
    x, wq, wk, wv, wo = (torch.randn(*s, generator=g) / 8 for s in [(6, 64), (64, 64), (32, 64), (32, 64), (64, 64)])
    args = (x, wq, wk, wv, wo, precompute_freqs_cis(16, 6, 500000.0), causal_mask(6), 4, 2)
    assert rel_err(attention(*args, fused=True), attention(*args)) <= 1e-5


def top_left_causal(xq, xk, xv, mask, start_pos=0):
    """The tempting mistake: is_causal=True whenever there are several new tokens, cache offset or not."""
    seqlen, n_heads, head_dim = xq.shape
    q, k, v = (t.transpose(0, 1)[None] for t in (xq, xk, xv))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=seqlen > 1, enable_gqa=True)
    return out[0].transpose(0, 1).reshape(seqlen, n_heads * head_dim)


@pytest.mark.parametrize("dim, n_heads, n_kv_heads", GQA)
def test_is_causal_with_a_cache_offset_is_caught(monkeypatch, dim, n_heads, n_kv_heads):
    """The tests above can fail: with is_causal=True (top-left aligned) a cached chunk's queries lose the keys
    after their own index, though they may see them; prefill is still right, so only the chunk test catches it."""
    monkeypatch.setattr(layers, "fused_attention", top_left_causal)
    exact = attention_call(dim, n_heads, n_kv_heads, 5, 7, fused=False)
    assert rel_err(attention_call(dim, n_heads, n_kv_heads, 5, 7, fused=True), exact) > 1e-2
    exact = attention_call(dim, n_heads, n_kv_heads, 0, 9, fused=False)
    assert rel_err(attention_call(dim, n_heads, n_kv_heads, 0, 9, fused=True), exact) <= 1e-5


def test_fused_forward_and_generate_give_the_exact_tokens(tiny):
    """The fused attention alone: on weights already in float32 (bf16 ones, kept as stored, would also change the
    products in the fast mode: tests/test_stored.py)."""
    stored, params, tokenizer = tiny
    weights = cast_weights(stored, torch.float32)
    prompt = tokenizer.encode("the answer to the ultimate question of life, the universe, and everything is ",
                              bos=True, eos=False)
    exact, fused = forward(weights, params, prompt), forward(weights, params, prompt, fused=True)
    assert rel_err(fused, exact) <= 1e-5 and torch.equal(fused.argmax(-1), exact.argmax(-1))
    # a cached chunk of several tokens after the prompt: start_pos > 0 and T > 1
    caches = [new_kv_cache(params, len(prompt) + 4) for _ in range(2)]
    for cache, fuse in zip(caches, (False, True)):
        forward(weights, params, prompt, 0, cache, fused=fuse)
    chunk = [forward(weights, params, prompt[-4:], len(prompt), cache, fused=fuse) for cache, fuse in zip(caches, (False, True))]
    assert rel_err(chunk[1], chunk[0]) <= 1e-5
    greedy = generate(weights, params, prompt, 12, stop_tokens=[])
    assert generate(weights, params, prompt, 12, stop_tokens=[], fused=True) == greedy


def test_choose_mode_fuses_in_the_fast_mode_only(tiny):
    weights, _, _ = tiny
    assert choose_mode(weights)[1:] == (torch.float32, False)  # small: the exact mode
    assert choose_mode(weights, exact_below_gb=0.0)[2] is True  # "real": the fast mode
    assert choose_mode(weights, "float32")[1:] == (torch.float32, True)  # a dtype asked for: the fast mode


PEAK = """
import json, sys, torch
from helpers.layers import attention, causal_mask, precompute_freqs_cis
torch.set_num_threads(1)
T, dim, H, KV, fused = int(sys.argv[1]), 64, 8, 2, sys.argv[2] == "1"
g = torch.Generator().manual_seed(0)
x, wq, wo = torch.randn(T, dim, generator=g), torch.randn(dim, dim, generator=g), torch.randn(dim, dim, generator=g)
wk, wv = torch.randn(KV * dim // H, dim, generator=g), torch.randn(KV * dim // H, dim, generator=g)
freqs_cis = precompute_freqs_cis(dim // H, T, 500000.0)
mask = causal_mask(T) if not fused else None  # the fast mode's prefill needs no mask


def status(key):  # kB -> bytes, from Linux's /proc/self/status
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))


with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size: the imports' peak does not count
before = status("VmRSS")
with torch.inference_mode():
    attention(x, wq, wk, wv, wo, freqs_cis, mask, H, KV, fused=fused)
print(json.dumps(status("VmHWM") - before))
"""


def peak_growth(T: int, fused: bool) -> int:
    out = subprocess.run([sys.executable, "-c", PEAK, str(T), "1" if fused else "0"], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_long_prompt_never_holds_all_heads_scores():
    """T = 4096, 8 heads: all heads' [T, T] float32 scores are 512 MiB. The exact path's peak grows by at least
    that (the test can fail); the fused path's by less than one head's [T, T] (64 MiB)."""
    T, H = 4096, 8
    scores = H * T * T * 4
    assert peak_growth(T, fused=False) >= scores
    assert peak_growth(T, fused=True) < scores // H
