"""The two reference implementations the course checks itself against, built on the same raw tensors.

- Meta's `llama_models.llama3.model.Transformer` (needs `fairscale`; run with world size 1).
- Hugging Face's `transformers.LlamaForCausalLM`, after HF's q/k row permutation.
Both are float32 copies of the weights: use them on small models or on a few layers of a big one.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile

import torch

from .errors import LlamaError
from .layers import apply_rope_scaling, ffn_hidden_dim
from .model import rope_scaling


def _need(module: str, package: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise LlamaError(f"The reference check needs {package}: run `pip install -r requirements.txt`.") from None


def init_model_parallel() -> None:
    """Start torch.distributed (gloo, world size 1) and fairscale's model parallelism of 1, once."""
    dist = torch.distributed
    fs_init = _need("fairscale.nn.model_parallel.initialize", "fairscale")
    if not dist.is_initialized():
        fd, path = tempfile.mkstemp(prefix="llama3-dist-")
        os.close(fd)
        os.remove(path)
        dist.init_process_group("gloo", init_method=f"file://{path}", rank=0, world_size=1)
    if not fs_init.model_parallel_is_initialized():
        with contextlib.redirect_stdout(io.StringIO()):  # fairscale announces itself on stdout
            fs_init.initialize_model_parallel(1)


def meta_transformer(weights: dict, params: dict, max_seq_len: int = 2048):
    """Meta's reference `Transformer` holding float32 copies of `weights`, batch size 1."""
    init_model_parallel()
    model_mod = _need("llama_models.llama3.model", "llama-models and fairscale")
    from llama_models.llama3.args import ModelArgs

    vocab = weights["tok_embeddings.weight"].shape[0]
    args = ModelArgs(**{**params, "vocab_size": vocab, "max_batch_size": 1, "max_seq_len": max_seq_len})
    with torch.device("meta"):
        model = model_mod.Transformer(args)
    state = {k: v.float() for k, v in weights.items()}
    state.setdefault("output.weight", state["tok_embeddings.weight"])
    model.load_state_dict(state, assign=True)
    head_dim = params["dim"] // params["n_heads"]
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    for layer in model.layers:  # the KV caches were made on the meta device: make real ones
        layer.attention.cache_k = torch.zeros(1, max_seq_len, n_kv, head_dim)
        layer.attention.cache_v = torch.zeros(1, max_seq_len, n_kv, head_dim)
    # Meta's `apply_scaling` hard-codes Llama 3.1's factor 8 (llama-models issue #166). For a checkpoint that
    # needs other numbers (3.2: 32) Meta's code runs with them patched in, so the comparison checks the rest;
    # the scaling itself is checked against Hugging Face's implementation (tests/test_rope_scaling.py).
    scaling = rope_scaling(params)
    meta_default = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    original = model_mod.apply_scaling
    if scaling is not None and scaling != meta_default:
        model_mod.apply_scaling = lambda freqs: apply_rope_scaling(freqs, **scaling)
    try:
        model.freqs_cis = model_mod.precompute_freqs_cis(head_dim, max_seq_len * 2, params["rope_theta"], scaling is not None)
    finally:
        model_mod.apply_scaling = original
    return model.eval()


def meta_logits(weights: dict, params: dict, tokens) -> torch.Tensor:
    """[T] ids -> [T, vocab] float32 logits from Meta's reference."""
    tokens = torch.as_tensor(tokens).reshape(1, -1)
    model = meta_transformer(weights, params, max_seq_len=max(tokens.shape[1], 8))
    return model(tokens, 0)[0]


def permute_for_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's wq/wk rows -> HF's q_proj/k_proj rows. Meta rotates adjacent pairs (0,1),(2,3)...;
    HF's `rotate_half` pairs dimension i with i + D/2, so each head's rows are reordered to match."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_config(weights: dict, params: dict):
    """A transformers `LlamaConfig` equivalent to params.json (and the tensors' vocab size)."""
    transformers = _need("transformers", "transformers")
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    rope = {"rope_type": "default", "rope_theta": params["rope_theta"]}
    scaling = rope_scaling(params)
    if scaling is not None:
        rope = {"rope_type": "llama3", "rope_theta": params["rope_theta"], **scaling}
    return transformers.LlamaConfig(
        vocab_size=weights["tok_embeddings.weight"].shape[0],
        hidden_size=params["dim"],
        intermediate_size=ffn_hidden_dim(params["dim"], params["multiple_of"], params.get("ffn_dim_multiplier")),
        num_hidden_layers=params["n_layers"],
        num_attention_heads=params["n_heads"],
        num_key_value_heads=n_kv,
        rms_norm_eps=params["norm_eps"],
        rope_parameters=rope,
        max_position_embeddings=131072 if scaling else 8192,
        tie_word_embeddings="output.weight" not in weights,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def to_hf_state_dict(weights: dict, params: dict, dtype: torch.dtype = torch.float32) -> dict:
    """Meta's key names and q/k row order -> Hugging Face's `LlamaForCausalLM` state dict in `dtype`
    (tensors already in `dtype` are shared, not copied; the permuted q/k rows are always new tensors)."""
    n_heads = params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    sd = {"model.embed_tokens.weight": weights["tok_embeddings.weight"].to(dtype),
          "model.norm.weight": weights["norm.weight"].to(dtype),
          "lm_head.weight": weights.get("output.weight", weights["tok_embeddings.weight"]).to(dtype)}
    for i in range(params["n_layers"]):
        m, h = f"layers.{i}.", f"model.layers.{i}."
        sd[h + "self_attn.q_proj.weight"] = permute_for_hf(weights[m + "attention.wq.weight"].to(dtype), n_heads)
        sd[h + "self_attn.k_proj.weight"] = permute_for_hf(weights[m + "attention.wk.weight"].to(dtype), n_kv)
        sd[h + "self_attn.v_proj.weight"] = weights[m + "attention.wv.weight"].to(dtype)
        sd[h + "self_attn.o_proj.weight"] = weights[m + "attention.wo.weight"].to(dtype)
        sd[h + "mlp.gate_proj.weight"] = weights[m + "feed_forward.w1.weight"].to(dtype)
        sd[h + "mlp.down_proj.weight"] = weights[m + "feed_forward.w2.weight"].to(dtype)
        sd[h + "mlp.up_proj.weight"] = weights[m + "feed_forward.w3.weight"].to(dtype)
        sd[h + "input_layernorm.weight"] = weights[m + "attention_norm.weight"].to(dtype)
        sd[h + "post_attention_layernorm.weight"] = weights[m + "ffn_norm.weight"].to(dtype)
    return sd


def hf_llama(weights: dict, params: dict, dtype: torch.dtype = torch.float32, attn: str = "eager"):
    """Hugging Face's `LlamaForCausalLM` holding Meta's `weights` in `dtype` (float32 copies by default)."""
    transformers = _need("transformers", "transformers")
    config = hf_config(weights, params)
    config._attn_implementation = attn
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model.load_state_dict(to_hf_state_dict(weights, params, dtype), assign=True, strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()
    # buffers (rotary inv_freq) were made on the meta device: rebuild the rotary embedding for real
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    return model.eval()


def hf_logits(weights: dict, params: dict, tokens) -> torch.Tensor:
    """[T] ids -> [T, vocab] float32 logits from Hugging Face's LlamaForCausalLM."""
    model = hf_llama(weights, params)
    with torch.no_grad():
        return model(torch.as_tensor(tokens).reshape(1, -1)).logits[0].float()
