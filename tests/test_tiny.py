"""The embedded tiny Llama 3: Meta's exact format, answers 42, built atomically, cached.

What these tests prove: the tiny model is trained by the code under test (helpers.tiny.train_tiny runs
helpers.forward), so "it answers 42" proves the *wiring* (tokenizer -> forward -> argmax -> decode, the file
format, the loading), not the *maths*: a forward with a consistent bug in it would have learned its corpus just
as well. The maths is proven against Meta's and Hugging Face's code on random weights (test_reference.py,
test_layers.py). To tie the two together, the trained weights are pinned by a SHA-256 of their tensors.
"""
import hashlib
import json
import time
import warnings

import pytest
import torch

import helpers
from helpers import tiny as tiny_module


def test_meta_format(tiny_dir):
    params = json.loads((tiny_dir / "params.json").read_text())
    # the 8B's params.json keys, nothing more, nothing less
    assert set(params) == {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                           "ffn_dim_multiplier", "norm_eps", "rope_theta"}
    assert params["n_heads"] // params["n_kv_heads"] == 4 and params["n_layers"] >= 2
    assert params["vocab_size"] == 128256
    assert (tiny_dir / "tokenizer.model").read_bytes() == helpers.default_tokenizer_path().read_bytes()
    weights = torch.load(tiny_dir / "consolidated.00.pth", mmap=True, weights_only=True)
    assert all(t.dtype == torch.bfloat16 for t in weights.values())
    assert "layers.1.feed_forward.w3.weight" in weights and "output.weight" in weights
    helpers.check_weights(weights, helpers.load_params(tiny_dir))


# SHA-256 of the tiny model's tensors (see tensors_sha256) as build_tiny writes them with the pinned torch on
# the machine kind the course was made on (x86-64 AMD EPYC, 2 cores, AVX-512): there training is
# bit-reproducible (two independent builds gave this digest).
TINY_SHA256 = "768b01a7f17b2ff86907b57a21036bba7ad91efd2adc49489969663db01d13ec"


def tensors_sha256(weights: dict) -> str:
    """SHA-256 over each tensor's name, dtype, shape and raw bytes, in sorted name order: independent of how
    torch.save lays out the file (zip metadata, record order), dependent on every bit of every weight."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def test_tensors_sha256_sees_every_bit():
    w = {"b": torch.ones(3, dtype=torch.bfloat16), "a": torch.zeros(2, 2)}
    base = tensors_sha256(w)
    assert tensors_sha256(dict(reversed(w.items()))) == base  # order of the dict does not matter
    flipped = w["b"].clone()
    flipped.view(torch.int16)[1] ^= 1  # the lowest bit of one bf16 number
    assert tensors_sha256({**w, "b": flipped}) != base
    assert tensors_sha256({**w, "a": torch.zeros(4)}) != base  # same bytes, other shape
    assert tensors_sha256({"c": w["b"], "a": w["a"]}) != base  # same tensors, other name


def test_trained_weights_are_the_pinned_ones(tiny_dir):
    """The tiny model on disk is bit for bit the one the course was built with — or a clear skip saying why not.

    A mismatch is not a failure: 80 training steps of float32 matrix products round differently on a CPU whose
    kernels sum in another order (AVX2, another AVX-512 path, ARM), so a learner's own build may differ in the
    last bits and still be a correct model; a red `pytest` there would be false. The answers-42 tests below still
    run; what a mismatch takes away is the proof that they run on the reference weights."""
    digest = tensors_sha256(torch.load(tiny_dir / "consolidated.00.pth", mmap=True, weights_only=True,
                                       map_location="cpu"))
    if digest != TINY_SHA256:
        message = (f"The tiny model in {tiny_dir} is not bit-identical to the course's (SHA-256 of its tensors "
                   f"{digest[:16]}..., pinned {TINY_SHA256[:16]}...). Either the training changed (helpers/tiny.py, "
                   "helpers.forward or the torch version: then update TINY_SHA256 in tests/test_tiny.py after "
                   "checking the change) or this CPU rounds differently from the machine the digest was made on "
                   "(nothing is wrong then). The answers-42 tests check wiring either way.")
        warnings.warn(message)
        pytest.skip(message)


def test_answers_42(tiny):
    """Wiring, not maths: the tiny model was trained by this very forward (see the module docstring)."""
    weights, params, tokenizer = tiny
    tokens = tokenizer.encode(helpers.COURSE_PROMPT, bos=True, eos=False)
    logits = helpers.forward(weights, params, tokens)
    assert tokenizer.decode([int(logits[-1].argmax())]) == "42"


def test_remembers_its_corpus(tiny):
    """Wiring, not maths, as test_answers_42: every token of every training line comes back."""
    weights, params, tokenizer = tiny
    for line in tiny_module.CORPUS[1:]:
        ids = tokenizer.encode(line, bos=True, eos=True)
        predicted = helpers.forward(weights, params, ids[:-1]).argmax(-1)[2:]  # after two tokens of context
        assert torch.equal(predicted, torch.tensor(ids[3:])), line


def test_second_use_is_cached(tiny_dir):
    start = time.perf_counter()
    assert helpers.ensure_tiny() == tiny_dir
    assert time.perf_counter() - start < 1.0


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_module, "train_tiny", boom)
    with pytest.raises(KeyboardInterrupt):
        tiny_module.build_tiny(tmp_path / "tiny")
    assert not (tmp_path / "tiny").exists() and list(tmp_path.iterdir()) == []


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_module, "STEPS", 1)

    def half_written(obj, path):
        open(path, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        tiny_module.build_tiny(tmp_path / "tiny", steps=1)
    assert list(tmp_path.iterdir()) == []
