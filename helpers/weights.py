"""Find and load a Meta-format Llama 3 folder: params.json, consolidated.00.pth, tokenizer.model."""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import torch

from .errors import LlamaError
from .layers import ffn_hidden_dim

REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = REPO_ROOT / "weights"  # resolved from the package, never from the current directory
REAL_8B_DIR = WEIGHTS_DIR / "Meta-Llama-3-8B" / "original"
META_FILES = ("params.json", "consolidated.00.pth", "tokenizer.model")

# Defaults of Meta's `ModelArgs` for keys a params.json may leave out.
PARAM_DEFAULTS = {"n_kv_heads": None, "ffn_dim_multiplier": None, "multiple_of": 256, "norm_eps": 1e-5,
                  "use_scaled_rope": False}
# params.json does not say how long a context the model was trained for; Meta's model cards do.
CONTEXT_LLAMA_3 = 8 * 1024
CONTEXT_LLAMA_3_1 = 128 * 1024  # 3.1 and 3.2: the ones with use_scaled_rope


def _check_folder(model_dir: Path) -> None:
    """Raise LlamaError with advice when model_dir is not a Meta-format Llama 3 folder."""
    if not model_dir.is_dir():
        raise LlamaError(f"Model folder {model_dir} does not exist: check the path or LLAMA3_DIR.")
    if (model_dir / "original" / "params.json").is_file():
        raise LlamaError(f"{model_dir} holds Meta's files in its original/ subfolder: use {model_dir / 'original'}.")
    if not (model_dir / "params.json").is_file() and (
        (model_dir / "config.json").is_file() or any(model_dir.glob("*.safetensors"))
    ):
        raise LlamaError(
            f"{model_dir} is a Hugging Face-format folder (config.json + safetensors, q/k rows permuted); "
            "this course reads Meta's original files: params.json, consolidated.00.pth and tokenizer.model, "
            "which the Hugging Face repo keeps in its original/ folder (python download_weights.py fetches them)."
        )
    shards = sorted(model_dir.glob("consolidated.*.pth"))
    if len(shards) > 1:  # a 70B or larger, cut for tensor parallelism: helpers.shards reads it (notebook 14)
        from .shards import check_shard_count

        check_shard_count(model_dir)  # LlamaError when a shard is missing or does not belong
    missing = [f for f in META_FILES if not (model_dir / f).is_file()]
    if missing:
        raise LlamaError(f"{model_dir} lacks {', '.join(missing)}: a Meta-format folder needs {', '.join(META_FILES)}.")


def load_params(model_dir: str | Path) -> dict:
    """params.json as Meta writes it, with Meta's defaults filled in for the optional keys."""
    model_dir = Path(model_dir)
    _check_folder(model_dir)
    try:
        params = json.loads((model_dir / "params.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LlamaError(f"{model_dir / 'params.json'} is not valid JSON ({e}): download it again.") from None
    missing = [k for k in ("dim", "n_layers", "n_heads", "rope_theta") if k not in params]
    if missing:
        raise LlamaError(f"{model_dir / 'params.json'} lacks {', '.join(missing)}: it is not a Llama 3 params.json.")
    return {**PARAM_DEFAULTS, **params}


def load_weights(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """consolidated.00.pth as a dict of Meta's tensors, memory-mapped: nothing is copied into RAM up front."""
    path = Path(model_dir) / "consolidated.00.pth"
    _check_folder(Path(model_dir))
    try:
        weights = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise LlamaError(f"{path} is truncated or corrupt ({str(e).splitlines()[0][:120]}): download it again.") from None
    if not isinstance(weights, dict) or "tok_embeddings.weight" not in weights:
        raise LlamaError(f"{path} is not a Meta Llama checkpoint (no tok_embeddings.weight): check the folder.")
    return weights


def check_weights(weights: dict, params: dict) -> None:
    """Raise LlamaError unless every tensor's shape agrees with params.json."""
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv_heads = params.get("n_kv_heads") or n_heads
    if dim % n_heads or n_heads % n_kv_heads:
        raise LlamaError(f"params.json: dim {dim}, n_heads {n_heads}, n_kv_heads {n_kv_heads} do not divide evenly.")
    head_dim = dim // n_heads
    hidden = ffn_hidden_dim(dim, params["multiple_of"], params.get("ffn_dim_multiplier"))
    vocab = weights["tok_embeddings.weight"].shape[0]
    expected = {"tok_embeddings.weight": (vocab, dim), "norm.weight": (dim,)}
    if "output.weight" in weights:
        expected["output.weight"] = (vocab, dim)
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        expected.update({
            p + "attention_norm.weight": (dim,), p + "ffn_norm.weight": (dim,),
            p + "attention.wq.weight": (n_heads * head_dim, dim),
            p + "attention.wk.weight": (n_kv_heads * head_dim, dim),
            p + "attention.wv.weight": (n_kv_heads * head_dim, dim),
            p + "attention.wo.weight": (dim, n_heads * head_dim),
            p + "feed_forward.w1.weight": (hidden, dim), p + "feed_forward.w3.weight": (hidden, dim),
            p + "feed_forward.w2.weight": (dim, hidden),
        })
    for name, shape in expected.items():
        if name not in weights:
            raise LlamaError(f"The checkpoint has no {name}, which params.json implies: params.json and "
                             "consolidated.00.pth come from different models.")
        if tuple(weights[name].shape) != shape:
            raise LlamaError(f"{name} is {list(weights[name].shape)} but params.json implies {list(shape)}: "
                             "params.json and consolidated.00.pth come from different models.")
    if params.get("vocab_size", vocab) not in (vocab, -1):
        raise LlamaError(f"params.json says vocab_size {params['vocab_size']} but the embedding has {vocab} rows.")


def load_model(model_dir: str | Path, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None) -> tuple[dict, dict]:
    """(weights, params) from a Meta-format folder, checked against each other. A folder of several shards
    (70B and up) is merged tensor by tensor from the memory-mapped files (helpers.shards, notebook 14).
    `device`, `dtype`: None keeps the memory-mapped tensors as stored, on the CPU; otherwise each tensor is moved
    and converted in turn (helpers.fast.cast_weights), so host memory never holds a second copy of the model."""
    if len(list(Path(model_dir).glob("consolidated.*.pth"))) > 1:
        from .shards import load_sharded_model

        weights, params = load_sharded_model(model_dir)
    else:
        params = load_params(model_dir)
        weights = load_weights(model_dir)
        check_weights(weights, params)
    if device is not None or dtype is not None:
        from .devices import pick_device
        from .fast import cast_weights

        device = pick_device(device) if device is not None else None
        weights = cast_weights(weights, dtype, device)
    return weights, params


def context_length(params: dict) -> int:
    """The longest sequence the code accepts: params' max_seq_len if given, else Meta's context for the family."""
    if params.get("max_seq_len"):
        return int(params["max_seq_len"])
    return CONTEXT_LLAMA_3_1 if params.get("use_scaled_rope") else CONTEXT_LLAMA_3


def is_tied(weights: dict) -> bool:
    """True when the output layer is the embedding table (absent, or present and equal: 3.2 1B/3B)."""
    out = weights.get("output.weight")
    return out is None or out is weights["tok_embeddings.weight"] or torch.equal(out, weights["tok_embeddings.weight"])


def default_model_dir(verbose: bool = True) -> Path:
    """$LLAMA3_DIR if set ("tiny" forces the tiny model); else the downloaded 8B in
    weights/Meta-Llama-3-8B/original/; else the tiny model."""
    choice = os.environ.get("LLAMA3_DIR", "")
    if choice and choice != "tiny":
        model_dir, why = Path(os.environ["LLAMA3_DIR"]).expanduser(), "from LLAMA3_DIR"
        if not model_dir.is_absolute() and not model_dir.exists() and (REPO_ROOT / model_dir).exists():
            model_dir = REPO_ROOT / model_dir  # relative to the repo: notebooks run inside notebooks/
        _check_folder(model_dir)
    elif choice != "tiny" and all((REAL_8B_DIR / f).is_file() for f in META_FILES):
        model_dir, why = REAL_8B_DIR, "downloaded Llama 3 8B"
    else:
        from .tiny import ensure_tiny

        model_dir, why = ensure_tiny(), "the tiny Llama 3 embedded in this course; set LLAMA3_DIR for real weights"
    if verbose:
        from .fast import mode_banner

        print(f"Model: {model_name(model_dir)} ({why})")
        print(mode_banner(sum(f.stat().st_size for f in Path(model_dir).glob("consolidated.*.pth"))))
    return model_dir


def model_name(model_dir: Path) -> str:
    """A short readable name for a model folder: 'tiny', or the repo folder name for .../NAME/original."""
    model_dir = Path(model_dir).resolve()
    if model_dir == (WEIGHTS_DIR / "tiny").resolve():
        return "tiny"
    return model_dir.parent.name if model_dir.name == "original" else model_dir.name
