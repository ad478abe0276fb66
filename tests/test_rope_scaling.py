"""Llama 3.1 / 3.2 checkpoints: scaled RoPE with the right factor, tied embeddings (long prompts)."""
import pytest
import torch

from checkpoints import make_checkpoint
from helpers import forward, load_model, rope_scaling
from helpers.reference import hf_logits, meta_logits

# max |Δlogits| relative to the logits' scale, as in test_reference.py. Measured at LONG tokens:
# vs Meta 0.0 (both checkpoints), vs Hugging Face 6.7e-7 (3.2-style, tied) and 7.9e-7 (3.1-style).
TOL_META = 1e-6
TOL_HF = 1e-5
LONG = 1600  # short prompts cannot tell factor 8 from 32: the scaled wavelengths only matter far apart
BASE = {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 32, "ffn_dim_multiplier": 1.5,
        "norm_eps": 1e-5, "rope_theta": 500000.0, "use_scaled_rope": True}


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_factor_rule():
    assert rope_scaling({"dim": 4096, "use_scaled_rope": False}) is None
    assert rope_scaling({"dim": 4096, "use_scaled_rope": True})["factor"] == 8  # 3.1 8B
    assert rope_scaling({"dim": 2048, "use_scaled_rope": True})["factor"] == 32  # 3.2 1B
    assert rope_scaling({"dim": 3072, "use_scaled_rope": True})["factor"] == 32  # 3.2 3B
    given = {"factor": 16, "low_freq_factor": 2, "high_freq_factor": 8, "original_max_position_embeddings": 4096}
    assert rope_scaling({"dim": 2048, "use_scaled_rope": True, "rope_scaling": given}) == {
        k: float(v) if k != "original_max_position_embeddings" else v for k, v in given.items()}


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 256, (LONG,), generator=torch.Generator().manual_seed(0))


def test_llama_3_2_factor_32_and_tied_equals_hf(tmp_path, tokens):
    # dim 64 <= 3072: a 3.2-style checkpoint, factor 32, no output.weight (tied to the embedding)
    weights, params = load_model(make_checkpoint(tmp_path / "m", {"dim": 64, **BASE}, vocab_size=256, tied=True))
    assert rope_scaling(params)["factor"] == 32
    ours, hf = forward(weights, params, tokens), hf_logits(weights, params, tokens)
    assert rel_err(ours, hf) <= TOL_HF
    # Meta's code with factor 32 patched into its apply_scaling (see helpers.reference): the rest of the model
    assert rel_err(ours, meta_logits(weights, params, tokens)) <= TOL_META
    # ... and factor 8 would have been measurably wrong here (measured 6.3e-2): the test can tell them apart
    wrong = forward(weights, {**params, "rope_scaling": {"factor": 8.0}}, tokens)
    assert rel_err(wrong, hf) > 100 * TOL_HF


def test_llama_3_1_factor_8_equals_meta_and_hf(tmp_path, tokens):
    # Meta's reference hard-codes factor 8: right for 3.1. Force 3.1's factor on a small checkpoint.
    params = {"dim": 64, **BASE, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 8192}}
    weights, params = load_model(make_checkpoint(tmp_path / "m", params, vocab_size=256))
    ours = forward(weights, params, tokens)
    assert rel_err(ours, meta_logits(weights, params, tokens)) <= TOL_META
    assert rel_err(ours, hf_logits(weights, params, tokens)) <= TOL_HF
