"""Solutions to the exercises of 02_embed.ipynb."""
import json
from pathlib import Path

from helpers import LlamaError, ffn_hidden_dim

DEFAULTS = {"n_kv_heads": None, "ffn_dim_multiplier": None, "multiple_of": 256, "norm_eps": 1e-5, "use_scaled_rope": False}


def load_params(model_dir):
    path = Path(model_dir) / "params.json"
    params = json.loads(path.read_text(encoding="utf-8"))
    for key in ("dim", "n_layers", "n_heads", "rope_theta"):
        if key not in params:
            raise LlamaError(f"{path} has no {key}")
    return {**DEFAULTS, **params}  # the file's values win over the defaults


def check_weights(weights, params):
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv_heads = params.get("n_kv_heads") or n_heads
    head_dim = dim // n_heads
    hidden = ffn_hidden_dim(dim, params["multiple_of"], params.get("ffn_dim_multiplier"))
    vocab = weights["tok_embeddings.weight"].shape[0]
    want = {"tok_embeddings.weight": (vocab, dim), "norm.weight": (dim,)}
    if "output.weight" in weights:  # absent when tied to the embedding
        want["output.weight"] = (vocab, dim)
    for i in range(params["n_layers"]):
        want[f"layers.{i}.attention_norm.weight"] = (dim,)
        want[f"layers.{i}.ffn_norm.weight"] = (dim,)
        want[f"layers.{i}.attention.wq.weight"] = (n_heads * head_dim, dim)
        want[f"layers.{i}.attention.wk.weight"] = (n_kv_heads * head_dim, dim)
        want[f"layers.{i}.attention.wv.weight"] = (n_kv_heads * head_dim, dim)
        want[f"layers.{i}.attention.wo.weight"] = (dim, n_heads * head_dim)
        want[f"layers.{i}.feed_forward.w1.weight"] = (hidden, dim)
        want[f"layers.{i}.feed_forward.w2.weight"] = (dim, hidden)
        want[f"layers.{i}.feed_forward.w3.weight"] = (hidden, dim)
    for name, shape in want.items():
        if name not in weights:
            raise LlamaError(f"{name} is missing")
        if tuple(weights[name].shape) != shape:
            raise LlamaError(f"{name} is {tuple(weights[name].shape)}, params.json says {shape}")
    if params.get("vocab_size", vocab) not in (vocab, -1):
        raise LlamaError(f"vocab_size {params['vocab_size']} != {vocab} rows")
