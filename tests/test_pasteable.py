"""Each layer-level function runs on its own: pasted into an empty namespace with only torch and math."""
import inspect
import math

import torch

import helpers
from helpers import layers, model

PASTED = [
    layers.linear, layers.rms_norm, layers.ffn_hidden_dim, layers.apply_rope_scaling, layers.precompute_freqs_cis,
    layers.apply_rotary_emb, layers.causal_mask, layers.repeat_kv, layers.attention, layers.feed_forward,
    model.rope_scaling, model.transformer_block, model.forward,
]


def paste(functions) -> dict:
    """A fresh namespace holding only torch, math and the functions' source, as a user's notebook would."""
    namespace = {"torch": torch, "math": math, "__name__": "pasted"}
    exec("from __future__ import annotations\n", namespace)
    for fn in functions:
        exec(compile("from __future__ import annotations\n" + inspect.getsource(fn), f"<{fn.__name__}>", "exec"), namespace)
    return namespace


def test_pasted_functions_run_a_forward_pass(tiny):
    weights, params, tokenizer = tiny
    ns = paste(PASTED)
    assert ns["forward"] is not helpers.forward
    tokens = tokenizer.encode(helpers.COURSE_PROMPT, bos=True, eos=False)
    pasted = ns["forward"](weights, params, tokens)
    assert torch.equal(pasted, helpers.forward(weights, params, tokens))
    assert tokenizer.decode([int(pasted[-1].argmax())]) == "42"


def test_each_layer_function_needs_nothing_else():
    for fn in PASTED[:10]:  # the layer functions: no helper besides torch/math and each other
        names = set(fn.__code__.co_names) - set(dir(__builtins__))
        module_globals = {n for n in names if n in vars(layers) and n not in ("torch", "math")}
        allowed = {f.__name__ for f in PASTED}
        assert module_globals <= allowed, f"{fn.__name__} uses {module_globals - allowed}"
