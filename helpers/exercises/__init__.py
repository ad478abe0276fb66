"""Exercise checkers: `check_<name>(fn)` tests your version of the course's function `<name>`.

It runs `fn` and the finished function on the same random inputs (a fixed seed: the same every run), returns
True when they agree and otherwise prints which input went wrong and, where it can tell, which common mistake
the result looks like. An untouched stub (raising NotImplementedError) prints one fixed "not done yet" line.
"""
from .core import NOT_DONE, run_checks
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
