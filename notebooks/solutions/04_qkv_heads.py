"""Solutions to the exercises of 04_qkv_heads.ipynb."""
import torch


def repeat_kv(x, n_rep):
    return torch.repeat_interleave(x, n_rep, dim=1)  # KV head 0 n_rep times, then KV head 1 …


def new_kv_cache(params, max_seq_len, dtype=torch.float32):
    n_kv_heads = params.get("n_kv_heads") or params["n_heads"]
    head_dim = params["dim"] // params["n_heads"]
    caches = []
    for _ in range(params["n_layers"]):
        cache_k = torch.zeros(max_seq_len, n_kv_heads, head_dim, dtype=dtype)
        cache_v = torch.zeros(max_seq_len, n_kv_heads, head_dim, dtype=dtype)
        caches.append((cache_k, cache_v))
    return caches
