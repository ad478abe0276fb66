"""Llama 3 by hand: the finished functions of the course, one small module per concept."""
import warnings

# tqdm.auto (imported by transformers and huggingface_hub) warns on stderr in Jupyter without ipywidgets.
warnings.filterwarnings("ignore", message="IProgress not found")
from .errors import LlamaError
from .layers import (
    apply_rope_scaling,
    apply_rotary_emb,
    apply_rotary_emb_real,
    attention,
    causal_mask,
    complex_supported,
    feed_forward,
    ffn_hidden_dim,
    linear,
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
from .decode import greedy_decode
from .devices import pick_device
from .fast import cast_weights, choose_mode, describe_mode, pick_dtype
from .generate import encode_dialog, generate, generate_stream, new_kv_cache, sample_top_p, stream_text
