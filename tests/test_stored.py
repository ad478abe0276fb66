"""The fast mode on the weights as stored (helpers.layers.linear_stored, helpers.fast.keeps_stored): float32
compute on bf16 weights without a float32 copy. Several tokens: blocks of rows converted as they are used, the
same numbers as converting the whole weight; one token: the product in bf16; choose_mode keeps the weights as
stored only where a bf16 matrix-vector product measured faster (or the copy does not fit)."""
import inspect

import pytest
import torch
from torch.overrides import TorchFunctionMode

from helpers import COURSE_PROMPT, choose_mode, forward, generate, new_kv_cache
from helpers import fast
from helpers.layers import linear, linear_converting, linear_stored

BF16, F32 = torch.bfloat16, torch.float32
FEW_TOKENS = inspect.signature(linear_converting).parameters["few_tokens"].default  # the order flips here
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def example(tokens: int, out: int = 10, inner: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, inner, generator=g), torch.randn(out, inner, generator=g).to(BF16)


@pytest.mark.parametrize("block_elements", [1, 6, 18, 24, 59, 60, 10_000])  # rows 1, 1, 3, 4, 9, 10, all
@pytest.mark.parametrize("tokens", [2, 7, FEW_TOKENS - 1, FEW_TOKENS, FEW_TOKENS + 3])
def test_several_tokens_equal_converting_the_whole_weight(tokens, block_elements):
    """10 rows in blocks of 1, 3 (a last block of 1), 4 (of 2), 9 (of 1), 10, or all: each output column is the
    same dot product as with the whole converted weight, with each block on the left (under few_tokens tokens)
    or on the right."""
    x, w = example(tokens)
    got = linear_stored(x, w, block_elements)
    assert got.dtype == F32 and got.shape == (tokens, 10)
    torch.testing.assert_close(got, x @ w.float().T, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("block_elements", [6, 18, 24, 10_000])  # rows 1, 3 (a last block of 1), 4 (of 2), all
@pytest.mark.parametrize("tokens", [1, 2, 7])
@pytest.mark.parametrize("order", ["right", "left"])
def test_both_orders_of_operands_equal_converting_the_whole_weight(order, tokens, block_elements):
    """linear_converting called directly, each order forced by few_tokens (0: the block always on the right; above
    T: on the left), for any T, one token included (converted, not rounded to bf16)."""
    x, w = example(tokens)
    few_tokens = 0 if order == "right" else tokens + 1
    got = linear_converting(x, w, block_elements, few_tokens=few_tokens)
    assert got.shape == (tokens, 10) and got.is_contiguous()
    torch.testing.assert_close(got, x @ w.float().T, rtol=1e-6, atol=1e-6)


class MatmulLeftShapes(TorchFunctionMode):
    """Records the shape of the left operand of every `@` computed while it is active."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("matmul", "__matmul__", "mm"):
            self.shapes.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("tokens", [2, FEW_TOKENS - 1, FEW_TOKENS, FEW_TOKENS + 3])
def test_few_tokens_puts_the_block_on_the_left(tokens):
    """The default few_tokens chooses the order: under it each block [rows, in] is the left operand, from it on x."""
    x, w = example(tokens)
    with torch.inference_mode(), MatmulLeftShapes() as record:
        linear_converting(x, w, 24)  # blocks of 4 rows
    expected = (4, 6) if tokens < FEW_TOKENS else (tokens, 6)
    assert record.shapes and record.shapes[0] == expected, record.shapes


def test_one_token_is_the_bf16_product():
    x, w = example(1)
    got = linear(x, w)  # linear hands a weight in another dtype to linear_stored
    assert got.dtype == F32 and torch.equal(got, (w @ x[0].to(BF16)).float()[None])
    assert not torch.equal(got, x @ w.float().T)  # x was rounded to bf16: not the float32 product


def test_a_broken_rule_fails():
    """The check above catches a product of the right shape with the wrong numbers: several tokens rounded to bf16
    (the one-token rule applied to a prompt), or a last partial block that multiplies stale rows."""
    x, w = example(5)

    def rounded(x, w):
        return (x.to(BF16) @ w.T).float()

    def stale_last_block(x, w, rows=3):  # the partial last block reuses the buffer whole, written where it fits
        block, out = torch.zeros(rows, w.shape[1]), torch.empty(x.shape[0], w.shape[0])
        for r in range(0, w.shape[0], rows):
            n = w[r : r + rows].shape[0]
            block[:n] = w[r : r + rows].float()  # rows 9, then the stale 7 and 8 of the block before
            start = min(r, w.shape[0] - rows)
            out[:, start : start + rows] = x @ block.T
        return out

    for broken in (rounded, stale_last_block):
        assert broken(x, w).shape == (5, 10)
        with pytest.raises(AssertionError):
            torch.testing.assert_close(broken(x, w), x @ w.float().T, rtol=1e-6, atol=1e-6)


def test_gradients_flow_through_the_blocks():
    """Training through a frozen bf16 weight: fresh blocks (a reused block would be overwritten before backward)."""
    x, w = example(4)
    x.requires_grad_(True)
    linear_stored(x, w, 18).pow(2).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    (x_ref @ w.float().T).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-6)


def stored_mode(tiny, monkeypatch):
    """choose_mode on the tiny model's bf16 weights as for a real model, on a CPU where float32 matrix products
    and bf16 matrix-vector products are measured faster: -> (weights, dtype, fused)."""
    weights, params, _ = tiny
    monkeypatch.delenv("LLAMA3_DTYPE", raising=False)
    monkeypatch.setattr(fast, "gemm_gflops", lambda dtype, **kw: 5.0 if dtype is BF16 else 27.0)
    monkeypatch.setattr(fast, "gemv_seconds", lambda dtype, **kw: 1.0 if dtype is BF16 else 2.0)
    return choose_mode(weights, exact_below_gb=0.0, device="cpu")


def test_choose_mode_keeps_the_weights_where_bf16_products_read_faster(tiny, monkeypatch):
    weights = tiny[0]
    assert weights["layers.0.attention.wq.weight"].dtype == BF16  # the tiny model is stored as Meta stores: bf16
    kept, dtype, fused = stored_mode(tiny, monkeypatch)
    assert dtype is F32 and fused is True and all(kept[k] is weights[k] for k in weights)  # nothing copied
    assert fast.describe_mode(kept, dtype, fused) == "float32 on the stored bfloat16 weights (one-token products in bfloat16)"
    monkeypatch.setattr(fast, "gemv_seconds", lambda dtype, **kw: 2.0 if dtype is BF16 else 1.0)  # float32 faster
    copied, dtype, _ = choose_mode(weights, exact_below_gb=0.0, device="cpu")
    assert dtype is F32 and copied["layers.0.attention.wq.weight"].dtype == F32
    assert fast.describe_mode(copied, dtype, True) == "float32"
    monkeypatch.setattr(fast, "memory_available", lambda device: 1000)  # the copy does not fit: as stored
    assert all(t is weights[k] for k, t in choose_mode(weights, exact_below_gb=0.0, device="cpu")[0].items())


def test_a_dtype_asked_for_is_a_copy(tiny, monkeypatch):
    monkeypatch.setattr(fast, "gemv_seconds", lambda dtype, **kw: 1.0 if dtype is BF16 else 2.0)
    copied, dtype, fused = choose_mode(tiny[0], "float32", device="cpu")
    assert dtype is F32 and copied["layers.0.feed_forward.w1.weight"].dtype == F32


def test_the_stored_mode_matches_the_exact_mode(tiny, monkeypatch):
    """Prefill: the exact mode's logits up to float32 rounding, but for the last row (the one-token product, bf16
    numbers: test_last_only_changes_no_number); decode: the same greedy tokens ("42" included)."""
    weights, params, tokenizer = tiny
    kept, dtype, fused = stored_mode(tiny, monkeypatch)
    prompt = tokenizer.encode(COURSE_PROMPT, bos=True, eos=False)
    with torch.inference_mode():
        exact = forward(weights, params, prompt)
        fast_logits = forward(kept, params, prompt, dtype=dtype, fused=fused)
        torch.testing.assert_close(fast_logits[:-1], exact[:-1], rtol=0, atol=1e-4)
        assert int(fast_logits[-1].argmax()) == int(exact[-1].argmax())
        caches = new_kv_cache(params, len(prompt) + 1)
        forward(kept, params, prompt[:-1], 0, caches, dtype, True, fused)
        step = forward(kept, params, prompt[-1:], len(prompt) - 1, caches, dtype, True, fused)[0]
    # one token's products in bf16: close to the exact row, not equal to it
    assert 0 < (step - exact[-1]).abs().max() < 0.05 * exact[-1].abs().max()
    want = generate(weights, params, prompt, 12)
    assert generate(kept, params, prompt, 12, dtype=dtype, fused=fused) == want
    assert tokenizer.decode(want).startswith("42")


def test_the_stored_mode_follows_the_weights_device(tiny):
    weights, params, _ = tiny
    on_meta = {k: t.to("meta") for k, t in weights.items()}
    logits = forward(on_meta, params, [1, 2, 3], dtype=F32, fused=True)
    assert logits.device.type == "meta" and logits.shape == (3, params["vocab_size"])
    caches = new_kv_cache(params, 4, F32, "meta")
    one = forward(on_meta, params, [1], 3, caches, F32, True, True)  # one token: the bf16 product, on meta too
    assert one.device.type == "meta" and one.shape == (1, params["vocab_size"])


def test_last_only_changes_no_number(tiny, monkeypatch):
    """With the weights kept as stored, the last row of the logits (the one that chooses the next token) is the
    one-token product whether or not the other rows are computed: last_only changes no number. The rows before it
    follow the prompt's rule (float32 blocks) and differ visibly from the one-token product (the check can fail)."""
    weights, params, tokenizer = tiny
    kept, dtype, fused = stored_mode(tiny, monkeypatch)
    prompt = tokenizer.encode(COURSE_PROMPT, bos=True, eos=False)
    with torch.inference_mode():
        every_row = forward(kept, params, prompt, dtype=dtype, fused=fused)
        last_row = forward(kept, params, prompt, dtype=dtype, last_only=True, fused=fused)
        exact = forward(weights, params, prompt)
    assert torch.equal(last_row, every_row[-1:])
    assert (every_row[-1:] - exact[-1:]).abs().max() > 1e-3  # bf16 numbers in the last row
    torch.testing.assert_close(every_row[:-1], exact[:-1], rtol=0, atol=1e-4)  # float32 ones before it
