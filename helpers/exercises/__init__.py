"""Exercise checkers: `check_<name>(fn)` tests your version of the course's function `<name>`.

It runs `fn` and the finished function on the same random inputs (a fixed seed: the same every run), returns
True when they agree and otherwise prints which input went wrong and, where it can tell, which common mistake
the result looks like. An untouched stub (raising NotImplementedError) prints one fixed "not done yet" line.
Modules by notebook: tokenizer_checks (01), weights_checks (02), layer_checks and more_layer_checks (03–08),
model_checks and generation_checks (09–11).
"""
from .core import NOT_DONE, run_checks
from .generation_checks import check_context_length, check_encode_dialog, check_forward, check_generate
from .layer_checks import (
    check_apply_rotary_emb,
    check_attention,
    check_causal_mask,
    check_feed_forward,
    check_ffn_hidden_dim,
    check_precompute_freqs_cis,
    check_repeat_kv,
    check_rms_norm,
)
from .model_checks import (
    check_greedy_decode,
    check_new_kv_cache,
    check_sample_top_p,
    check_transformer_block,
)
from .more_layer_checks import check_apply_rope_scaling, check_layer_norm, check_linear, check_scaled_dot_product_attention
from .tokenizer_checks import check_bpe_encode, check_load_bpe_ranks, check_split_long_runs
from .weights_checks import check_check_weights, check_load_params
