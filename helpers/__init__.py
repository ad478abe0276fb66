"""Llama 3 by hand: the finished functions of the course, one small module per concept."""
from .errors import LlamaError
from .layers import (
    apply_rope_scaling,
    apply_rotary_emb,
    attention,
    causal_mask,
    feed_forward,
    ffn_hidden_dim,
    precompute_freqs_cis,
    repeat_kv,
    rms_norm,
)
from .model import forward, rope_scaling, transformer_block
from .tokenizer import Tokenizer, default_tokenizer_path, load_tokenizer
from .weights import (
    check_weights,
    context_length,
    default_model_dir,
    is_tied,
    load_model,
    load_params,
    load_weights,
    model_name,
)
from .tiny import COURSE_PROMPT, ensure_tiny
