"""forward converts weights stored in another dtype into reused buffers (helpers.model.converted): the same numbers
as converting into new tensors, one buffer per weight name shared by every layer, and never for autograd."""
import importlib

import pytest
import torch

import helpers.model
from helpers import forward, generate
from helpers.model import converted

from checkpoints import SHAPES, random_weights

TOKENS = [1, 7, 300, 42, 5, 9, 11, 200, 3]


def bf16_model(shape: str, tied: bool = False):
    params = {**SHAPES[shape], "vocab_size": 512}
    weights = {k: v.to(torch.bfloat16) for k, v in random_weights(params, 512, 0, tied).items()}
    return weights, params


def test_converted_is_the_conversion_itself():
    t = torch.randn(37, 11).to(torch.bfloat16)
    buffers = {}
    first = converted(t, torch.float32, buffers, "w")
    assert first.dtype == torch.float32 and torch.equal(first, t.to(torch.float32))
    again = converted(t * 2, torch.float32, buffers, "w")  # the same buffer, new contents
    assert again.data_ptr() == first.data_ptr() and torch.equal(again, (t * 2).float())
    assert converted(t, torch.bfloat16, buffers, "w") is t  # already in the dtype: the tensor itself
    other = converted(torch.randn(3, 4).to(torch.bfloat16), torch.float32, buffers, "w")  # another shape: new buffer
    assert other.shape == (3, 4) and buffers["w"] is other
    assert converted(t, torch.float32).data_ptr() != first.data_ptr()  # no dict: a new tensor


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("tied", [False, True])
def test_forward_with_buffers_equals_converting_every_tensor(shape, tied):
    weights, params = bf16_model(shape, tied)
    exact = forward({k: v.float() for k, v in weights.items()}, params, TOKENS)  # converted once, beforehand
    buffers = {}
    assert torch.equal(forward(weights, params, TOKENS, buffers=buffers), exact)
    made = {k: b.data_ptr() for k, b in buffers.items()}
    assert torch.equal(forward(weights, params, TOKENS, buffers=buffers), exact)
    assert {k: b.data_ptr() for k, b in buffers.items()} == made  # the second call wrote into the same buffers
    names = {k.split(".", 2)[2].rsplit(".", 1)[0] for k in weights if k.startswith("layers.")}
    assert set(buffers) == (names - {"attention_norm", "ffn_norm"}) | {"attention_norm", "ffn_norm", "output"}


def test_generation_keeps_its_buffers_and_matches_float32_weights(monkeypatch):
    weights, params = bf16_model("gqa4")
    as_float = {k: v.float() for k, v in weights.items()}
    dicts = []
    real = helpers.model.forward

    def spy(*args, **kwargs):
        dicts.append(id(args[8] if len(args) > 8 else kwargs.get("buffers")))
        return real(*args, **kwargs)

    monkeypatch.setattr(importlib.import_module("helpers.generate"), "forward", spy)  # the module, not the function
    assert generate(weights, params, TOKENS, 6, stop_tokens=[]) == generate(as_float, params, TOKENS, 6, stop_tokens=[])
    assert len(dicts) == 12 and len(set(dicts[:6])) == 1  # one dict for all 6 steps of a generation


def test_one_buffer_for_all_names_would_be_wrong(monkeypatch):
    """The check above can fail: with one buffer for every name, a tensor of the same shape overwrites the one
    before it while that is still to be used (wk by wv, w1 by w3)."""
    weights, params = bf16_model("gqa4")
    exact = forward({k: v.float() for k, v in weights.items()}, params, TOKENS)
    real = helpers.model.converted
    monkeypatch.setattr(helpers.model, "converted", lambda t, dtype, buffers=None, key="": real(t, dtype, buffers, "one"))
    assert not torch.allclose(forward(weights, params, TOKENS), exact, atol=1e-3)


@pytest.mark.parametrize("trainable", ["layers.0.attention.wq.weight", "tok_embeddings.weight", "layers.0.ffn_norm.weight"])
def test_frozen_bf16_weights_still_get_their_own_copies_when_anything_else_trains(trainable):
    """Autograd keeps a product's weight to compute the gradient of its input: if anything before or in a layer
    requires grad, that layer's frozen weights must not share buffers (else backward finds them overwritten)."""
    weights, params = bf16_model("gqa4")
    weights = {k: v.float().requires_grad_(True) if k == trainable else v for k, v in weights.items()}
    logits = forward(weights, params, TOKENS, buffers={})
    logits.logsumexp(-1).mean().backward()
    plain = {k: v.detach().float().requires_grad_(k == trainable) for k, v in weights.items()}
    forward(plain, params, TOKENS).logsumexp(-1).mean().backward()
    assert torch.allclose(weights[trainable].grad, plain[trainable].grad, atol=1e-6, rtol=1e-5)


def test_buffers_made_in_inference_mode_are_remade_outside_it():
    weights, params = bf16_model("mqa")
    buffers = {}
    with torch.inference_mode():
        inside = forward(weights, params, TOKENS, buffers=buffers)
    assert torch.equal(forward(weights, params, TOKENS, buffers=buffers), inside)


def test_weights_that_need_gradients_are_never_written_into_a_buffer():
    weights, params = bf16_model("mqa")
    leaves = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
    buffers = {}
    loss = forward(leaves, params, TOKENS, buffers=buffers).logsumexp(-1).mean()
    loss.backward()  # a buffer overwritten by the next layer would make autograd fail here
    assert not buffers
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for k, t in leaves.items()
               if k != "tok_embeddings.weight" or "output.weight" not in leaves)
