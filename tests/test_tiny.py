"""The embedded tiny Llama 3: Meta's exact format, answers 42, built atomically, cached."""
import json
import time

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


def test_answers_42(tiny):
    weights, params, tokenizer = tiny
    tokens = tokenizer.encode(helpers.COURSE_PROMPT, bos=True, eos=False)
    logits = helpers.forward(weights, params, tokens)
    assert tokenizer.decode([int(logits[-1].argmax())]) == "42"


def test_remembers_its_corpus(tiny):
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
