"""Checkers for notebook 02: reading params.json with Meta's defaults, and checking every tensor's shape against it."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from .. import weights as course
from ..layers import ffn_hidden_dim
from .core import Raised, outcome, run_checks_all

# Published params.json files (Meta's llama-models sku_list), one that leaves every optional key out, and COMPLETE:
# a small one with the required keys, each left out in turn.
LLAMA_3_8B = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 1024,
              "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}
LLAMA_3_2_1B = {"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 256,
                "ffn_dim_multiplier": 1.5, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True}
LLAMA_1_STYLE = {"dim": 4096, "n_layers": 32, "n_heads": 32, "rope_theta": 10000.0}  # every optional key left out
REQUIRED = ("dim", "n_layers", "n_heads", "rope_theta")  # a params.json without one of them must raise LlamaError
COMPLETE = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "rope_theta": 500000.0}


def _listed(names, conj: str = "and") -> str:
    """'a', 'a and b', 'a, b and c'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {conj} {names[-1]}"


def _folder(root: Path, name: str, params: dict) -> Path:
    """A Meta-format folder: params.json, plus empty stand-ins for the checkpoint and the tokenizer."""
    folder = root / name
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(params, indent=2), encoding="utf-8")
    (folder / "consolidated.00.pth").touch()
    (folder / "tokenizer.model").touch()
    return folder


def _missing_hint(keys) -> str:
    return f"no LlamaError for a params.json without {_listed(keys, 'or')}? Check for dim, n_layers, n_heads and rope_theta."


def check_load_params(fn) -> bool:
    """fn(model_dir) -> params dict like helpers.load_params: params.json with Meta's defaults (ModelArgs) filled in,
    LlamaError when a required key is missing."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases = [("Llama 3 8B's params.json", (_folder(root, "8b", LLAMA_3_8B),)),
                 ("Llama 3.2 1B's params.json, as a str path", (str(_folder(root, "1b", LLAMA_3_2_1B)),)),
                 ("a params.json without any optional key", (_folder(root, "old", LLAMA_1_STYLE),))]
        cases += [(f"a params.json without {key} (must raise LlamaError)",
                   (_folder(root, f"no_{key}", {k: v for k, v in COMPLETE.items() if k != key}),)) for key in REQUIRED]
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
        ]

        def checking(keys):  # right, except that it raises only for the required keys in `keys`
            def load(path):
                if any(k not in read(path) for k in keys):
                    raise course.LlamaError("a required key is missing")
                return {**defaults, **read(path)}
            return load

        def with_unchecked(results):  # the hint names the required keys whose absence fn let through
            missed = [key for key, got in zip(REQUIRED, results[-len(REQUIRED):]) if not isinstance(got, Raised)]
            extra = [(_missing_hint(missed), checking([k for k in REQUIRED if k not in missed]))] if missed else []
            return [(hint, outcome(wrong)) for hint, wrong in mistakes + extra]

        return run_checks_all("load_params", outcome(fn), outcome(course.load_params), cases, with_unchecked)


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


def _check_variant(kv_by_heads=False, need_output=False, hidden=None, layers=None, vocab="get", skip=()):
    """A shape check written with one known mistake. skip: the tensors it leaves out (wq, wo, w1, ffn_norm, …, norm,
    output, and tok_embeddings for its width); vocab: "get" (right), "index" (params['vocab_size'] read directly),
    "no_minus_one", or False (not compared)."""
    def check(weights, params):
        dim, n_heads = params["dim"], params["n_heads"]
        n_kv = n_heads if kv_by_heads else (params.get("n_kv_heads") or n_heads)
        head_dim = dim // n_heads
        h = hidden(params) if hidden else ffn_hidden_dim(dim, params["multiple_of"], params.get("ffn_dim_multiplier"))
        rows = weights["tok_embeddings.weight"].shape[0]
        want = {"tok_embeddings.weight": (rows, dim), "norm.weight": (dim,)}
        if need_output or "output.weight" in weights:
            want["output.weight"] = (rows, dim)
        want = {name: shape for name, shape in want.items() if name.split(".")[0] not in skip}
        for i in (layers(params) if layers else range(params["n_layers"])):
            for name, shape in [("attention.wq", (n_heads * head_dim, dim)), ("attention.wk", (n_kv * head_dim, dim)),
                                ("attention.wv", (n_kv * head_dim, dim)), ("attention.wo", (dim, n_heads * head_dim)),
                                ("feed_forward.w1", (h, dim)), ("feed_forward.w2", (dim, h)), ("feed_forward.w3", (h, dim)),
                                ("attention_norm", (dim,)), ("ffn_norm", (dim,))]:
                if name.split(".")[-1] not in skip:
                    want[f"layers.{i}.{name}.weight"] = shape
        for name, shape in want.items():
            if name not in weights or tuple(weights[name].shape) != shape:
                raise course.LlamaError(f"{name} does not match params.json")
        allowed = (rows,) if vocab == "no_minus_one" else (rows, -1)
        size = params["vocab_size"] if vocab == "index" else params.get("vocab_size", rows)
        if vocab and size not in allowed:
            raise course.LlamaError("vocab_size")
    return check


def _changed(weights: dict, shapes: dict | None = None, drop=()) -> dict:
    """weights with some tensors of another shape ({name: shape}) or left out (drop)."""
    out = {k: v for k, v in weights.items() if k not in drop}
    out.update({k: torch.empty(s, device="meta", dtype=torch.bfloat16) for k, s in (shapes or {}).items()})
    return out


# One tensor changed at a time, in layer 1 (the last): a check that leaves that tensor out lets it through.
# (name in the hint, the case's label, {tensor: new shape} or None to leave it out)
ONE_TENSOR = [
    ("wq", "layer 1's wq alone sized for 6 heads of 8, params say 4", {"layers.1.attention.wq.weight": (48, 32)}),
    ("wk", "layer 1's wk alone sized for 4 KV heads, params say 2", {"layers.1.attention.wk.weight": (32, 32)}),
    ("wv", "layer 1's wv alone sized for 4 KV heads, params say 2", {"layers.1.attention.wv.weight": (32, 32)}),
    ("wo", "layer 1's wo alone sized for 6 heads of 8, params say 4", {"layers.1.attention.wo.weight": (32, 48)}),
    ("w1", "layer 1's w1 alone made with ffn_dim_multiplier 2.0", {"layers.1.feed_forward.w1.weight": (176, 32)}),
    ("w2", "layer 1's w2 alone made with ffn_dim_multiplier 2.0", {"layers.1.feed_forward.w2.weight": (32, 176)}),
    ("w3", "layer 1's w3 alone made with ffn_dim_multiplier 2.0", {"layers.1.feed_forward.w3.weight": (176, 32)}),
    ("attention_norm", "layer 1's attention_norm 16 wide, params say dim 32", {"layers.1.attention_norm.weight": (16,)}),
    ("ffn_norm", "layer 1's ffn_norm missing", None),
    ("norm", "norm.weight 16 wide, params say dim 32", {"norm.weight": (16,)}),
    ("tok_embeddings", "tok_embeddings.weight 16 wide, params say dim 32", {"tok_embeddings.weight": (50, 16)}),
    ("output", "output.weight 16 wide, params say dim 32", {"output.weight": (50, 16)}),
]
SHOWN = {"tok_embeddings": "the width of tok_embeddings", "norm": "norm.weight", "output": "output.weight"}


def _one_tensor_cases() -> list:
    return [(label, (_changed(_shapes(SMALL, 50), shape) if shape else
                     _changed(_shapes(SMALL, 50), drop=(f"layers.1.{name}.weight",)), SMALL))
            for name, label, shape in ONE_TENSOR]


def _unchecked(cases, results) -> list:
    """The tensors whose one-tensor case fn let through (returned instead of raising), in ONE_TENSOR's order."""
    let_through = {label for (label, _), got in zip(cases, results) if not isinstance(got, Raised)}
    return [name for name, label, _ in ONE_TENSOR if label in let_through]


def _skipped_hint(names) -> str:
    return (f"only some tensors checked? {_listed([SHOWN.get(n, n) for n in names])} went unchecked. Every tensor "
            "params.json implies must match: wq, wk, wv, wo, w1, w2, w3, both norms of every layer, tok_embeddings, "
            "norm and output.weight (its width too).")


def check_check_weights(fn) -> bool:
    """fn(weights, params) -> None like helpers.check_weights: returns when every tensor has the shape params.json
    implies, raises LlamaError when one does not (the two files come from different models)."""
    mha = {k: v for k, v in SMALL.items() if k != "n_kv_heads"}
    deeper = {**SMALL, "n_layers": 3}
    cases = [("matching weights (GQA, 2 KV heads)", (_shapes(SMALL, 50), SMALL)),
             ("matching weights, output tied to the embedding (no output.weight)", (_shapes(SMALL, 50, tied=True), SMALL)),
             ("matching weights, params without n_kv_heads", (_shapes(mha, 50), mha)),
             ("a layer missing: params say 3 layers, the checkpoint has 2", (_shapes(SMALL, 50), deeper)),
             ("wk and wv sized for 4 KV heads, params say 2", (_shapes({**SMALL, "n_kv_heads": 4}, 50), SMALL)),
             ("w1, w2 and w3 made with ffn_dim_multiplier 2.0, params say 1.3",
              (_shapes({**SMALL, "ffn_dim_multiplier": 2.0}, 50), SMALL)),
             ("vocab_size 64 in params, 50 rows in the embedding", (_shapes(SMALL, 50), {**SMALL, "vocab_size": 64})),
             ("layer 1's wq and wo sized for 6 heads of 8, params say 4", (_changed(_shapes(SMALL, 50), {
                 "layers.1.attention.wq.weight": (48, 32), "layers.1.attention.wo.weight": (32, 48)}), SMALL)),
             ("layer 1's w2 and w3 made without ffn_dim_multiplier, params say 1.3", (_changed(_shapes(SMALL, 50), {
                 "layers.1.feed_forward.w2.weight": (32, 96), "layers.1.feed_forward.w3.weight": (96, 32)}), SMALL)),
             *_one_tensor_cases(),
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
        ("params['vocab_size'] read directly? Meta's params.json may leave it out: params.get('vocab_size').",
         _check_variant(vocab="index")),
        ("vocab_size -1 rejected? LLaMA 2's params.json says -1 (the tokenizer decides): accept it.",
         _check_variant(vocab="no_minus_one")),
    ]

    def with_unchecked(results):  # the hint names the tensors fn let through
        skipped = _unchecked(cases, results)
        extra = [(_skipped_hint(skipped), _check_variant(skip=set(skipped)))] if skipped else []
        return [(hint, outcome(wrong)) for hint, wrong in mistakes + extra]

    return run_checks_all("check_weights", outcome(fn), outcome(course.check_weights), cases, with_unchecked)
