"""Tensor parallelism by hand: how Meta cuts each weight, and the forward pass on one rank's piece.

Meta cuts its big checkpoints for tensor (model) parallelism, one file per GPU, exactly as fairscale's layers in
llama_models/llama3/model.py split the matrices (the same rules as `_WEIGHT_COLUMN_KEY` / `_WEIGHT_ROW_KEY` in
llama_models/checkpoint.py):
  column-parallel, cut along dim 0 (output rows): wq wk wv (whole heads), w1 w3, output, and tok_embeddings
      (VocabParallelEmbedding: each rank holds a range of vocabulary rows);
  row-parallel, cut along dim 1 (input columns): wo, w2;
  replicated (the same on every rank): attention_norm, ffn_norm, norm.
Each rank runs the unchanged block functions of helpers.layers on its own heads and its own slice of the FFN;
the partial outputs of wo and w2 are summed over the ranks (one all-reduce each): that is all a layer needs.
`torch.distributed` does the talking (gloo on CPUs, NCCL on GPUs); `group=None` is the default process group.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .errors import LlamaError
from .layers import (attention, causal_mask, complex_supported, feed_forward, ffn_hidden_dim, linear, precompute_freqs_cis,
                     rms_norm)
from .model import rope_scaling

COLUMN = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3", "output",
          "tok_embeddings")
ROW = ("attention.wo", "feed_forward.w2")


def shard_dim(name: str) -> int | None:
    """The dimension Meta's shards cut tensor `name` along: 0 (column-parallel), 1 (row-parallel), None (replicated)."""
    base = name.removesuffix(".weight")
    if base.endswith(COLUMN):
        return 0
    return 1 if base.endswith(ROW) else None


def kv_heads_of_rank(n_heads: int, n_kv_heads: int, world_size: int, rank: int) -> range:
    """The KV heads a rank needs: its share when the KV heads go round (n_kv_heads // world_size of them),
    else the one KV head its query heads use, replicated on several ranks (Meta's rule for more ranks than KV
    heads: the 405B's 16-shard checkpoint says n_kv_heads 16 for the model's 8)."""
    first = rank * n_kv_heads // world_size  # = (first query head of this rank) // (query heads per KV head)
    return range(first, first + max(n_kv_heads // world_size, 1))


def rank_range(name: str, shape, params: dict, world_size: int, rank: int) -> tuple[int, int] | None:
    """[start, stop) along shard_dim(name) of the full tensor (shape `shape`) that `rank` of `world_size` holds;
    None for a replicated tensor."""
    dim = shard_dim(name)
    if dim is None:
        return None
    if name.endswith(("attention.wk.weight", "attention.wv.weight")):
        head_dim = params["dim"] // params["n_heads"]
        heads = kv_heads_of_rank(params["n_heads"], params.get("n_kv_heads") or params["n_heads"], world_size, rank)
        return heads.start * head_dim, heads.stop * head_dim
    size = shape[dim] // world_size
    return rank * size, (rank + 1) * size


def split_weights(weights: dict, params: dict, world_size: int, rank: int) -> dict:
    """The piece of full `weights` that `rank` of `world_size` holds, as views (nothing copied)."""
    out = {}
    for name, t in weights.items():
        r = rank_range(name, t.shape, params, world_size, rank)
        out[name] = t if r is None else t.narrow(shard_dim(name), r[0], r[1] - r[0])
    return out


def merge_weights(shards: list[dict]) -> dict:
    """Shards in rank order -> the full weights: split tensors concatenated, replicated ones from shard 0."""
    return {name: t if shard_dim(name) is None else torch.cat([s[name] for s in shards], dim=shard_dim(name))
            for name, t in shards[0].items()}


def map_mp_rank(old_mp_size: int, new_mp_size: int, new_mp_rank: int) -> list[int]:
    """The shard files (of old_mp_size) that rank new_mp_rank of new_mp_size reads: part of one file when there
    are more ranks than files, several whole files when fewer (Meta's rule, llama_models/checkpoint.py)."""
    if new_mp_size % old_mp_size == 0:
        return [new_mp_rank * old_mp_size // new_mp_size]
    factor = old_mp_size // new_mp_size
    return list(range(new_mp_rank * factor, (new_mp_rank + 1) * factor))


def world_size_fits(params: dict, vocab_size: int, n_shards: int, world_size: int) -> bool:
    """True when world_size processes can share the shards, the query and KV heads, the FFN and the vocabulary."""
    n_heads, n_kv = params["n_heads"], params.get("n_kv_heads") or params["n_heads"]
    hidden = ffn_hidden_dim(params["dim"], params["multiple_of"], params.get("ffn_dim_multiplier"))
    return (world_size >= 1 and (world_size % n_shards == 0 or n_shards % world_size == 0)
            and (n_kv % world_size == 0 or world_size % n_kv == 0)
            and n_heads % world_size == 0 and hidden % world_size == 0 and vocab_size % world_size == 0)


def check_world_size(params: dict, vocab_size: int, n_shards: int, world_size: int) -> None:
    """Raise LlamaError naming the world sizes that fit, unless world_size does."""
    if not world_size_fits(params, vocab_size, n_shards, world_size):
        fit = [w for w in range(1, params["n_heads"] + 1) if world_size_fits(params, vocab_size, n_shards, w)]
        raise LlamaError(f"{world_size} processes cannot share this checkpoint's {n_shards} shard(s), "
                         f"{params['n_heads']} query heads and {params.get('n_kv_heads') or params['n_heads']} KV "
                         f"heads evenly: start {', '.join(map(str, fit))} processes.")


def all_reduce(x: torch.Tensor, group=None) -> torch.Tensor:
    """x: this rank's partial sum -> the sum over all ranks (in place; every rank gets the same tensor)."""
    if dist.get_world_size(group) > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def vocab_parallel_embedding(tokens: torch.Tensor, table: torch.Tensor, dtype: torch.dtype, group=None) -> torch.Tensor:
    """tokens: [T] ids, table: this rank's rows [vocab / world, dim] -> [T, dim] on every rank. Each rank looks up
    the tokens in its range and gives zeros for the others; the all-reduce adds the one real row to the zeros."""
    start = dist.get_rank(group) * table.shape[0]  # this rank holds ids start .. start + rows - 1
    local = tokens - start
    outside = (local < 0) | (local >= table.shape[0])
    h = table[local.masked_fill(outside, 0)].to(dtype)  # [T, dim]
    h[outside] = 0
    return all_reduce(h, group)


def gather_logits(logits: torch.Tensor, group=None) -> torch.Tensor:
    """logits: [T, vocab / world] for this rank's vocabulary rows -> [T, vocab] on every rank (all-gather)."""
    if dist.get_world_size(group) == 1:
        return logits
    parts = [torch.empty_like(logits) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, logits.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


def parallel_block(x, weights, layer, params, freqs_cis, mask, cache=None, start_pos=0, group=None) -> torch.Tensor:
    """x: [T, dim] (the same on every rank) -> [T, dim]. The unchanged attention and feed_forward on this rank's
    heads and FFN slice; each gives a partial [T, dim] that the all-reduce sums."""

    def w(name):
        return weights[f"layers.{layer}.{name}.weight"].to(x.dtype)

    head_dim = params["dim"] // params["n_heads"]
    n_local_heads = w("attention.wq").shape[0] // head_dim
    n_local_kv_heads = w("attention.wk").shape[0] // head_dim  # 1 when ranks outnumber KV heads (replicated)
    eps = params["norm_eps"]
    h = x + all_reduce(attention(
        rms_norm(x, w("attention_norm"), eps), w("attention.wq"), w("attention.wk"), w("attention.wv"),
        w("attention.wo"), freqs_cis, mask, n_local_heads, n_local_kv_heads, cache, start_pos), group)
    ffn = feed_forward(rms_norm(h, w("ffn_norm"), eps), w("feed_forward.w1"), w("feed_forward.w2"), w("feed_forward.w3"))
    return h + all_reduce(ffn, group)


def parallel_forward(weights: dict, params: dict, tokens, start_pos: int = 0, caches: list | None = None,
                     dtype: torch.dtype = torch.float32, last_only: bool = False, group=None) -> torch.Tensor:
    """tokens: [T] ids -> float32 logits [T, vocab] on every rank, from this rank's piece of the weights
    (helpers.forward, with the embedding, each block and the output layer split over the ranks)."""
    device = weights["tok_embeddings.weight"].device  # everything is made where this rank's weights are
    tokens = torch.as_tensor(tokens, dtype=torch.long, device=device).reshape(-1)
    seqlen = tokens.shape[0]
    head_dim = params["dim"] // params["n_heads"]
    freqs_cis = precompute_freqs_cis(head_dim, start_pos + seqlen, params["rope_theta"], rope_scaling(params),
                                     device, real=not complex_supported(device))
    freqs_cis = freqs_cis[start_pos:]
    mask = causal_mask(seqlen, start_pos, device)
    h = vocab_parallel_embedding(tokens, weights["tok_embeddings.weight"], dtype, group)  # [T, dim]
    for layer in range(params["n_layers"]):
        cache = caches[layer] if caches is not None else None
        h = parallel_block(h, weights, layer, params, freqs_cis, mask, cache, start_pos, group)
    if last_only:
        h = h[-1:]
    h = rms_norm(h, weights["norm.weight"].to(dtype), params["norm_eps"])
    output = weights.get("output.weight", weights["tok_embeddings.weight"])  # tied: the same vocabulary rows
    return gather_logits(linear(h, output.to(dtype)).float(), group)


def new_local_kv_cache(weights: dict, params: dict, max_seq_len: int, dtype: torch.dtype = torch.float32) -> list:
    """-> per layer (cache_k, cache_v), each zeros [max_seq_len, local KV heads, head_dim]: a rank caches only
    the keys and values of its own KV heads."""
    head_dim = params["dim"] // params["n_heads"]
    n_local_kv = weights["layers.0.attention.wk.weight"].shape[0] // head_dim
    shape = (max_seq_len, n_local_kv, head_dim)
    device = weights["layers.0.attention.wk.weight"].device
    return [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(params["n_layers"])]
