"""Loading Meta-format folders, and one clear sentence for each mistake a user can make."""
import json
import shutil

import pytest
import torch

from checkpoints import SHAPES, make_checkpoint
from helpers import LlamaError, context_length, default_model_dir, ffn_hidden_dim, is_tied, load_model, load_params
from helpers.weights import PARAM_DEFAULTS


def mapped_file(address: int):
    """The file mapped at this address in our process (Linux /proc/self/maps), or None."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= address < hi:
                return parts[5] if len(parts) > 5 else None
    return None


@pytest.fixture
def folder(tmp_path):
    return make_checkpoint(tmp_path / "m", SHAPES["gqa4"])


def test_load_is_memory_mapped_and_untouched(folder):
    weights, params = load_model(folder)
    emb = weights["tok_embeddings.weight"]
    assert emb.dtype == torch.bfloat16  # as stored: no float32 copy
    # mmap=True: the tensor's memory is a mapping of the checkpoint file, not a copy in fresh memory
    assert mapped_file(emb.data_ptr()) == str((folder / "consolidated.00.pth").resolve())
    assert set(weights) >= {"tok_embeddings.weight", "norm.weight", "output.weight", "layers.0.attention.wq.weight"}


def test_optional_keys_get_metas_defaults(tmp_path):
    params = {k: v for k, v in SHAPES["mha_no_kv_key"].items() if k not in ("multiple_of", "norm_eps")}
    params["multiple_of"] = PARAM_DEFAULTS["multiple_of"]  # so the tensors match Meta's default
    folder = make_checkpoint(tmp_path / "m", params)
    p = json.loads((folder / "params.json").read_text())
    del p["multiple_of"]
    (folder / "params.json").write_text(json.dumps(p))
    loaded = load_params(folder)
    assert loaded["n_kv_heads"] is None and loaded["norm_eps"] == 1e-5 and loaded["multiple_of"] == 256
    load_model(folder)


def test_ffn_hidden_dim_is_metas_rule():
    # Llama 3 8B: dim 4096, multiple_of 1024, ffn_dim_multiplier 1.3 -> 14336; LLaMA 7B: 11008
    assert ffn_hidden_dim(4096, 1024, 1.3) == 14336
    assert ffn_hidden_dim(4096, 256, None) == 11008
    assert ffn_hidden_dim(2048, 256, 1.5) == 8192  # Llama 3.2 1B
    assert ffn_hidden_dim(8192, 4096, 1.3) == 28672  # Llama 3 70B


def test_context_length():
    assert context_length({"use_scaled_rope": False}) == 8192
    assert context_length({"use_scaled_rope": True}) == 131072
    assert context_length({"max_seq_len": 16}) == 16


def test_tied_embeddings(tmp_path):
    weights, params = load_model(make_checkpoint(tmp_path / "t", SHAPES["gqa4"], tied=True))
    assert "output.weight" not in weights and is_tied(weights)
    untied, _ = load_model(make_checkpoint(tmp_path / "u", SHAPES["gqa4"]))
    assert not is_tied(untied)
    untied["output.weight"] = untied["tok_embeddings.weight"].clone()
    assert is_tied(untied)


# --- bad input: one clear sentence each -------------------------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(LlamaError, match="does not exist"):
        load_model(tmp_path / "nope")


@pytest.mark.parametrize("missing", ["params.json", "consolidated.00.pth", "tokenizer.model"])
def test_missing_file(folder, missing):
    (folder / missing).unlink()
    with pytest.raises(LlamaError, match=f"lacks {missing}"):
        load_model(folder)


def test_hugging_face_folder(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model-00001-of-00004.safetensors").write_bytes(b"")
    with pytest.raises(LlamaError, match="Hugging Face-format folder.*original/"):
        load_model(hf)


def test_repo_folder_points_to_original(tmp_path):
    make_checkpoint(tmp_path / "repo" / "original", SHAPES["gqa4"])
    with pytest.raises(LlamaError, match="original/ subfolder"):
        load_model(tmp_path / "repo")


def test_sharded_checkpoint(folder):
    shutil.copyfile(folder / "consolidated.00.pth", folder / "consolidated.01.pth")
    with pytest.raises(LlamaError, match="2 shards"):
        load_model(folder)


def test_params_disagree_with_tensors(folder):
    p = json.loads((folder / "params.json").read_text())
    p["n_kv_heads"] = 4
    (folder / "params.json").write_text(json.dumps(p))
    with pytest.raises(LlamaError, match="wk.weight is .* params.json implies .*different models"):
        load_model(folder)


def test_params_with_too_many_layers(folder):
    p = json.loads((folder / "params.json").read_text())
    p["n_layers"] += 1
    (folder / "params.json").write_text(json.dumps(p))
    with pytest.raises(LlamaError, match="no layers.2"):
        load_model(folder)


def test_broken_params_json(folder):
    (folder / "params.json").write_text('{"dim": 64,')
    with pytest.raises(LlamaError, match="not valid JSON"):
        load_model(folder)


def test_truncated_checkpoint(folder):
    path = folder / "consolidated.00.pth"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(LlamaError, match="truncated or corrupt"):
        load_model(folder)


def test_garbage_checkpoint(folder):
    (folder / "consolidated.00.pth").write_bytes(b"\x00" * 1000)
    with pytest.raises(LlamaError, match="truncated or corrupt"):
        load_model(folder)


def test_llama3_dir_is_honoured(folder, monkeypatch, capsys):
    monkeypatch.setenv("LLAMA3_DIR", str(folder))
    assert default_model_dir() == folder
    assert "from LLAMA3_DIR" in capsys.readouterr().out
    monkeypatch.setenv("LLAMA3_DIR", str(folder / "missing"))
    with pytest.raises(LlamaError, match="does not exist"):
        default_model_dir()


def test_relative_llama3_dir_is_taken_from_the_repo_root(monkeypatch, tmp_path, tiny_dir, capsys):
    # A user sets LLAMA3_DIR=weights/tiny in the repo's root; the notebook kernel runs inside notebooks/.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLAMA3_DIR", "weights/tiny")
    assert default_model_dir().resolve() == tiny_dir.resolve()


def test_default_is_the_tiny_model(monkeypatch, capsys, tiny_dir):
    monkeypatch.delenv("LLAMA3_DIR", raising=False)
    import helpers.weights as w

    monkeypatch.setattr(w, "REAL_8B_DIR", tiny_dir.parent / "no-8b-here")
    assert default_model_dir() == tiny_dir
    assert capsys.readouterr().out.startswith("Model: tiny")
