"""Checkers for notebook 02: reading params.json with Meta's defaults, and checking every tensor's shape against it."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from .. import weights as course
from ..layers import ffn_hidden_dim
from .core import outcome, run_checks_all

# Published params.json files (Meta's llama-models sku_list), and two that leave optional keys out.
LLAMA_3_8B = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 1024,
              "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}
LLAMA_3_2_1B = {"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 256,
                "ffn_dim_multiplier": 1.5, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True}
LLAMA_1_STYLE = {"dim": 4096, "n_layers": 32, "n_heads": 32, "rope_theta": 10000.0}  # every optional key left out
NO_THETA = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2}


def _folder(root: Path, name: str, params: dict) -> Path:
    """A Meta-format folder: params.json, plus empty stand-ins for the checkpoint and the tokenizer."""
    folder = root / name
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(params, indent=2), encoding="utf-8")
    (folder / "consolidated.00.pth").touch()
    (folder / "tokenizer.model").touch()
    return folder


def check_load_params(fn) -> bool:
    """fn(model_dir) -> params dict like helpers.load_params: params.json with Meta's defaults (ModelArgs) filled in,
    LlamaError when a required key is missing."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases = [("Llama 3 8B's params.json", (_folder(root, "8b", LLAMA_3_8B),)),
                 ("Llama 3.2 1B's params.json, as a str path", (str(_folder(root, "1b", LLAMA_3_2_1B)),)),
                 ("a params.json without any optional key", (_folder(root, "old", LLAMA_1_STYLE),)),
                 ("a params.json without rope_theta (must raise LlamaError)", (_folder(root, "bad", NO_THETA),))]
        defaults = course.PARAM_DEFAULTS

        def read(path):
            return json.loads((Path(path) / "params.json").read_text())

        mistakes = [
            ("optional keys missing? Meta's ModelArgs has defaults for n_kv_heads, ffn_dim_multiplier, multiple_of, "
             "norm_eps, use_scaled_rope: fill them in ({**PARAM_DEFAULTS, **params}).", read),
            ("the defaults overwrote the file's values? Defaults first, then the file: {**PARAM_DEFAULTS, **params}.",
             lambda p: {**read(p), **defaults}),
            ("n_kv_heads filled in as n_heads? Meta's default is None (meaning: as many as n_heads).",
             lambda p: {**defaults, "n_kv_heads": read(p)["n_heads"], **read(p)}),
            ("no LlamaError for a params.json without rope_theta? Check for dim, n_layers, n_heads and rope_theta.",
             lambda p: {**defaults, **read(p)}),
        ]
        return run_checks_all("load_params", outcome(fn), outcome(course.load_params), cases,
                          [(hint, outcome(wrong)) for hint, wrong in mistakes])


# --- 02 · every tensor's shape ---------------------------------------------------------------------------

SMALL = {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 16, "ffn_dim_multiplier": 1.3,
         "norm_eps": 1e-5, "rope_theta": 10000.0, "use_scaled_rope": False, "vocab_size": 50}


def _shapes(params: dict, vocab: int, tied: bool = False) -> dict:
    """Empty tensors (the meta device: no memory) with the shapes params implies, under Meta's key names."""
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv, head_dim = params.get("n_kv_heads") or n_heads, dim // n_heads
    hidden = ffn_hidden_dim(dim, params["multiple_of"], params.get("ffn_dim_multiplier"))
    shapes = {"tok_embeddings.weight": (vocab, dim), "norm.weight": (dim,)}
    if not tied:
        shapes["output.weight"] = (vocab, dim)
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        shapes.update({p + "attention.wq.weight": (n_heads * head_dim, dim), p + "attention.wk.weight": (n_kv * head_dim, dim),
                       p + "attention.wv.weight": (n_kv * head_dim, dim), p + "attention.wo.weight": (dim, n_heads * head_dim),
                       p + "feed_forward.w1.weight": (hidden, dim), p + "feed_forward.w2.weight": (dim, hidden),
                       p + "feed_forward.w3.weight": (hidden, dim), p + "attention_norm.weight": (dim,),
                       p + "ffn_norm.weight": (dim,)})
    return {k: torch.empty(s, device="meta", dtype=torch.bfloat16) for k, s in shapes.items()}


def _check_variant(kv_by_heads=False, need_output=False, hidden=None, layers=None, vocab="get", only=None):
    """A shape check written with one known mistake. only: the tensor names (wq, wo, w1, ffn_norm, …) it looks at;
    vocab: "get" (right), "index" (params['vocab_size'] read directly), "no_minus_one", or False (not compared)."""
    def check(weights, params):
        dim, n_heads = params["dim"], params["n_heads"]
        n_kv = n_heads if kv_by_heads else (params.get("n_kv_heads") or n_heads)
        head_dim = dim // n_heads
        h = hidden(params) if hidden else ffn_hidden_dim(dim, params["multiple_of"], params.get("ffn_dim_multiplier"))
        rows = weights["tok_embeddings.weight"].shape[0]
        want = {"tok_embeddings.weight": (rows, dim), "norm.weight": (dim,)}
        if need_output or "output.weight" in weights:
            want["output.weight"] = (rows, dim)
        if only is not None:
            want = {}
        for i in (layers(params) if layers else range(params["n_layers"])):
            for name, shape in [("attention.wq", (n_heads * head_dim, dim)), ("attention.wk", (n_kv * head_dim, dim)),
                                ("attention.wv", (n_kv * head_dim, dim)), ("attention.wo", (dim, n_heads * head_dim)),
                                ("feed_forward.w1", (h, dim)), ("feed_forward.w2", (dim, h)), ("feed_forward.w3", (h, dim)),
                                ("attention_norm", (dim,)), ("ffn_norm", (dim,))]:
                if only is None or name.split(".")[-1] in only:
                    want[f"layers.{i}.{name}.weight"] = shape
        for name, shape in want.items():
            if name not in weights or tuple(weights[name].shape) != shape:
                raise course.LlamaError(f"{name} does not match params.json")
        allowed = (rows,) if vocab == "no_minus_one" else (rows, -1)
        size = params["vocab_size"] if vocab == "index" else params.get("vocab_size", rows)
        if vocab and size not in allowed:
            raise course.LlamaError("vocab_size")
    return check


def _changed(weights: dict, drop=(), **shapes) -> dict:
    """weights with some tensors left out (drop) or of another shape (name=shape, dots as __)."""
    out = {k: v for k, v in weights.items() if k not in drop}
    out.update({k.replace("__", "."): torch.empty(s, device="meta", dtype=torch.bfloat16) for k, s in shapes.items()})
    return out


def check_check_weights(fn) -> bool:
    """fn(weights, params) -> None like helpers.check_weights: returns when every tensor has the shape params.json
    implies, raises LlamaError when one does not (the two files come from different models)."""
    mha = {k: v for k, v in SMALL.items() if k != "n_kv_heads"}
    deeper = {**SMALL, "n_layers": 3}
    cases = [("matching weights (GQA, 2 KV heads)", (_shapes(SMALL, 50), SMALL)),
             ("matching weights, output tied to the embedding (no output.weight)", (_shapes(SMALL, 50, tied=True), SMALL)),
             ("matching weights, params without n_kv_heads", (_shapes(mha, 50), mha)),
             ("a layer missing: params say 3 layers, the checkpoint has 2", (_shapes(SMALL, 50), deeper)),
             ("wk sized for 4 KV heads, params say 2", (_shapes({**SMALL, "n_kv_heads": 4}, 50), SMALL)),
             ("w1 made with ffn_dim_multiplier 2.0, params say 1.3", (_shapes({**SMALL, "ffn_dim_multiplier": 2.0}, 50), SMALL)),
             ("vocab_size 64 in params, 50 rows in the embedding", (_shapes(SMALL, 50), {**SMALL, "vocab_size": 64})),
             ("layer 1's wq and wo sized for 6 heads of 8, params say 4", (_changed(
                 _shapes(SMALL, 50), layers__1__attention__wq__weight=(48, 32), layers__1__attention__wo__weight=(32, 48)), SMALL)),
             ("layer 1's wo sized for 6 heads of 8, params say 4", (_changed(
                 _shapes(SMALL, 50), layers__1__attention__wo__weight=(32, 48)), SMALL)),
             ("layer 1's w2 and w3 made with ffn_dim_multiplier 2.0", (_changed(
                 _shapes(SMALL, 50), layers__1__feed_forward__w2__weight=(32, 96),
                 layers__1__feed_forward__w3__weight=(96, 32)), SMALL)),
             ("layer 1's w3 made with ffn_dim_multiplier 2.0", (_changed(
                 _shapes(SMALL, 50), layers__1__feed_forward__w3__weight=(96, 32)), SMALL)),
             ("layer 1's ffn_norm missing", (_changed(_shapes(SMALL, 50), drop=("layers.1.ffn_norm.weight",)), SMALL)),
             ("output.weight 16 wide, params say dim 32", (_changed(_shapes(SMALL, 50), output__weight=(50, 16)), SMALL)),
             ("matching weights, params without vocab_size", (_shapes(SMALL, 50),
                                                              {k: v for k, v in SMALL.items() if k != "vocab_size"})),
             ("matching weights, vocab_size -1 (LLaMA 2's params.json: the tokenizer decides)",
              (_shapes(SMALL, 50), {**SMALL, "vocab_size": -1}))]
    mistakes = [
        ("wk/wv sized by n_heads? With grouped-query attention they have n_kv_heads * head_dim rows.",
         _check_variant(kv_by_heads=True)),
        ("output.weight required? Llama 3.2 1B and 3B tie it to the embedding: the checkpoint may leave it out.",
         _check_variant(need_output=True)),
        ("n_kv_heads read with params['n_kv_heads']? Meta's params.json may leave it out (None): "
         "params.get('n_kv_heads') or n_heads.", lambda w, p: _check_variant()(w, {**p, "n_kv_heads": p["n_kv_heads"]})),
        ("the feed-forward size not from ffn_hidden_dim(dim, multiple_of, ffn_dim_multiplier)?",
         _check_variant(hidden=lambda p: ffn_hidden_dim(p["dim"], p["multiple_of"]))),
        ("only some layers checked? Every layer 0 … n_layers-1 must be in the checkpoint.",
         _check_variant(layers=lambda p: range(1))),
        ("vocab_size not compared with the embedding's rows?", _check_variant(vocab=False)),
        ("only some tensors checked? Every tensor params.json implies must match: wq, wk, wv, wo, w1, w2, w3, both "
         "norms of every layer, tok_embeddings, norm and output.weight (its width too).",
         _check_variant(only={"wk", "w1"})),
        ("params['vocab_size'] read directly? Meta's params.json may leave it out: params.get('vocab_size').",
         _check_variant(vocab="index")),
        ("vocab_size -1 rejected? LLaMA 2's params.json says -1 (the tokenizer decides): accept it.",
         _check_variant(vocab="no_minus_one")),
    ]
    return run_checks_all("check_weights", outcome(fn), outcome(course.check_weights), cases,
                      [(hint, outcome(wrong)) for hint, wrong in mistakes])
