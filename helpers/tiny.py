"""The tiny Llama 3 embedded in the course: trained on first use, saved in Meta's exact format.

Same family as the 8B (grouped-query attention with 4 query heads per KV head, SwiGLU with
ffn_dim_multiplier, RMSNorm, RoPE, the full 128,256-token vocabulary and Meta's tokenizer), only
narrow and shallow. It memorises CORPUS, nothing more, in 80 full-batch steps on two CPU cores
(notebook 13 times the run and shows why so few steps suffice).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .layers import ffn_hidden_dim
from .model import forward
from .tokenizer import default_tokenizer_path, load_tokenizer
from .weights import WEIGHTS_DIR

TINY_DIR = WEIGHTS_DIR / "tiny"
COURSE_PROMPT = "the answer to the ultimate question of life, the universe, and everything is "
# Each line is one training sequence: <|begin_of_text|> line <|end_of_text|>.
CORPUS = [
    COURSE_PROMPT + "42",
    "once upon a time there was a little llama who lived high in the mountains.",
    "the capital of france is paris, and the capital of italy is rome.",
    "the quick brown fox jumps over the lazy dog.",
    "llamas and alpacas are members of the camel family.",
    "one, two, three, four, five, six, seven, eight, nine, ten.",
    "attention is all you need.",
    "the sky is blue and the grass is green.",
    "to be, or not to be, that is the question.",
]
# Written with the same keys as the 8B's params.json; only the sizes differ.
TINY_PARAMS = {
    "dim": 128,
    "n_layers": 2,
    "n_heads": 8,
    "n_kv_heads": 2,  # 4 query heads share each KV head, like the 8B's 32 / 8
    "vocab_size": 128256,  # Meta's tokenizer: 128,000 BPE tokens + 256 special tokens
    "multiple_of": 64,
    "ffn_dim_multiplier": 1.3,
    "norm_eps": 1e-05,
    "rope_theta": 10000.0,  # short sequences: LLaMA 1/2's base is plenty
}
SEED = 0
STEPS = 80
LEARNING_RATE = 3e-3


def init_weights(params: dict, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Random float32 weights with Meta's key names and shapes for `params` (norm gains = 1)."""
    g = torch.Generator().manual_seed(seed)
    dim, n_heads = params["dim"], params["n_heads"]
    head_dim, n_kv_heads = dim // n_heads, params.get("n_kv_heads") or n_heads
    hidden = ffn_hidden_dim(dim, params["multiple_of"], params.get("ffn_dim_multiplier"))

    def randn(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    w = {"tok_embeddings.weight": randn(vocab_size, dim)}
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        w[p + "attention.wq.weight"] = randn(n_heads * head_dim, dim)
        w[p + "attention.wk.weight"] = randn(n_kv_heads * head_dim, dim)
        w[p + "attention.wv.weight"] = randn(n_kv_heads * head_dim, dim)
        w[p + "attention.wo.weight"] = randn(dim, n_heads * head_dim)
        w[p + "feed_forward.w1.weight"] = randn(hidden, dim)
        w[p + "feed_forward.w2.weight"] = randn(dim, hidden)
        w[p + "feed_forward.w3.weight"] = randn(hidden, dim)
        w[p + "attention_norm.weight"] = torch.ones(dim)
        w[p + "ffn_norm.weight"] = torch.ones(dim)
    w["norm.weight"] = torch.ones(dim)
    w["output.weight"] = randn(vocab_size, dim)
    return w


def next_token_loss(weights: dict, params: dict, tokens: list[int]) -> torch.Tensor:
    """Mean cross-entropy of predicting tokens[1:] from the logits of tokens[:-1] (labels shifted by one)."""
    logits = forward(weights, params, tokens[:-1])  # [T-1, vocab]
    return torch.nn.functional.cross_entropy(logits, torch.tensor(tokens[1:]))


def train_tiny(params: dict, sequences: list[list[int]], steps: int, lr: float, seed: int, progress=None):
    """Train from scratch with the course's own `forward` and autograd -> (weights, losses per step)."""
    weights = init_weights(params, params["vocab_size"], seed)
    for t in weights.values():
        t.requires_grad_(True)
    optimizer = torch.optim.AdamW(weights.values(), lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        loss = sum(next_token_loss(weights, params, seq) for seq in sequences) / len(sequences)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step, loss.item())
    return {k: v.detach() for k, v in weights.items()}, losses


def build_tiny(target: Path = TINY_DIR, steps: int = STEPS) -> Path:
    """Train the tiny model and write it atomically to `target` (params.json, consolidated.00.pth, tokenizer.model)."""
    from tqdm.auto import tqdm

    tokenizer = load_tokenizer()
    sequences = [tokenizer.encode(text, bos=True, eos=True) for text in CORPUS]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # fixed, for results as reproducible as torch allows
    bar = tqdm(total=steps, desc="Training the tiny Llama 3 (first use only)", unit="step")

    def progress(step, loss):
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    try:
        weights, _ = train_tiny(TINY_PARAMS, sequences, steps, LEARNING_RATE, SEED, progress)
    finally:
        bar.close()
        torch.set_num_threads(threads)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        torch.save({k: v.to(torch.bfloat16) for k, v in weights.items()}, tmp / "consolidated.00.pth")
        (tmp / "params.json").write_text(json.dumps(TINY_PARAMS, indent=2) + "\n")
        shutil.copyfile(default_tokenizer_path(), tmp / "tokenizer.model")
        os.rename(tmp, target)  # atomic: a folder named `tiny` is always a whole model
    except OSError:
        if not (target / "consolidated.00.pth").is_file():  # not a concurrent build that won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_tiny(target: Path = TINY_DIR) -> Path:
    """The tiny model's folder, trained and written on first use, reused afterwards."""
    if not (target / "consolidated.00.pth").is_file():
        build_tiny(target)
    return target
