"""Random Meta-format Llama 3 checkpoints of any shape, for tests (params.json + consolidated.00.pth + tokenizer.model)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from helpers import default_tokenizer_path
from helpers.tiny import init_weights

# Odd shapes on purpose: GQA ratios 1 (MQA-like: n_kv_heads=1), 2, 4 and n_heads (plain MHA),
# ffn_dim_multiplier present or absent, n_kv_heads absent, other thetas and epsilons.
SHAPES = {
    "gqa4": {"dim": 64, "n_layers": 2, "n_heads": 8, "n_kv_heads": 2, "multiple_of": 32,
             "ffn_dim_multiplier": 1.3, "norm_eps": 1e-5, "rope_theta": 500000.0},
    "mqa": {"dim": 48, "n_layers": 3, "n_heads": 6, "n_kv_heads": 1, "multiple_of": 16,
            "norm_eps": 1e-6, "rope_theta": 10000.0},
    "mha_no_kv_key": {"dim": 40, "n_layers": 1, "n_heads": 5, "multiple_of": 8,
                      "ffn_dim_multiplier": 0.7, "norm_eps": 1e-5, "rope_theta": 250.0},
    "gqa2_scaled": {"dim": 96, "n_layers": 2, "n_heads": 12, "n_kv_heads": 6, "multiple_of": 64,
                    "ffn_dim_multiplier": 1.5, "norm_eps": 1e-5, "rope_theta": 500000.0,
                    "use_scaled_rope": True,
                    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 8192}},
}


def random_weights(params: dict, vocab_size: int, seed: int, tied: bool = False) -> dict:
    """Float32 weights of Meta's names/shapes with a scale that gives lively logits."""
    g = torch.Generator().manual_seed(seed + 1)
    w = init_weights(params, vocab_size, seed)
    for k, v in w.items():
        if k.endswith("norm.weight"):
            w[k] = 1 + 0.3 * torch.randn(v.shape, generator=g)  # non-trivial gains
        else:
            w[k] = v / (0.02 * v.shape[-1] ** 0.5)  # init_weights gives std 0.02; make it 1/sqrt(fan_in)
    if tied:
        del w["output.weight"]
    return w


def make_checkpoint(folder: Path, params: dict, vocab_size: int = 512, seed: int = 0,
                    dtype: torch.dtype = torch.bfloat16, tied: bool = False) -> Path:
    """Write a random Meta-format model folder and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = random_weights(params, vocab_size, seed, tied)
    torch.save({k: v.to(dtype) for k, v in weights.items()}, folder / "consolidated.00.pth")
    (folder / "params.json").write_text(json.dumps({**params, "vocab_size": vocab_size}, indent=2))
    shutil.copyfile(default_tokenizer_path(), folder / "tokenizer.model")
    return folder


def make_sharded_checkpoint(folder: Path, params: dict, n_shards: int, vocab_size: int = 512, seed: int = 0,
                            dtype: torch.dtype = torch.bfloat16, tied: bool = False) -> Path:
    """Write a random Meta-format model folder cut into n_shards files as Meta cuts the 70B, and return it."""
    from helpers.shards import save_shards

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = random_weights(params, vocab_size, seed, tied)
    save_shards({k: v.to(dtype) for k, v in weights.items()}, params, n_shards, folder)
    (folder / "params.json").write_text(json.dumps({**params, "vocab_size": vocab_size}, indent=2))
    shutil.copyfile(default_tokenizer_path(), folder / "tokenizer.model")
    return folder
