"""Meta's multi-shard checkpoints (consolidated.00.pth ... consolidated.NN.pth): checking them, and reading the
piece of the weights each process needs (helpers.parallel says how each tensor is cut).

Files are read memory-mapped and tensor by tensor: a process touches only the bytes of its own piece, and merging
several files fills each tensor once, one file at a time, so memory never holds the weights twice.
"""
from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from pathlib import Path

import torch

from .errors import LlamaError
from .parallel import check_world_size, map_mp_rank, rank_range, shard_dim, split_weights
from .weights import check_weights, load_params

SHARD_NAME = re.compile(r"consolidated\.(\d+)\.pth")


def save_shards(weights: dict, params: dict, n_shards: int, folder: Path) -> list[Path]:
    """Write `weights` as Meta does for n_shards GPUs: consolidated.00.pth ... (each piece cloned, so a file
    holds its piece only; torch.save of a view would store the whole tensor)."""
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    if n_kv % n_shards:
        raise LlamaError(f"{n_kv} KV heads cannot be cut into {n_shards} shards: use a divisor of {n_kv}.")
    paths = []
    for rank in range(n_shards):
        paths.append(Path(folder) / f"consolidated.{rank:02d}.pth")
        torch.save({k: v.clone() for k, v in split_weights(weights, params, n_shards, rank).items()}, paths[-1])
    return paths


def shard_paths(model_dir: Path) -> list[Path]:
    """consolidated.00.pth ... in order; LlamaError when the numbering has a gap."""
    found = {int(m[1]): p for p in Path(model_dir).glob("consolidated.*.pth") if (m := SHARD_NAME.fullmatch(p.name))}
    if not found:
        raise LlamaError(f"{model_dir} has no consolidated.*.pth: a Meta-format folder holds its weights there.")
    gaps = [f"consolidated.{i:02d}.pth" for i in range(max(found) + 1) if i not in found]
    if gaps:
        raise LlamaError(f"{model_dir} lacks {', '.join(gaps)} of its {max(found) + 1} shards: download the missing "
                         "files again.")
    return [found[i] for i in range(len(found))]


def load_shard(path: Path) -> dict:
    """One shard file as a dict of memory-mapped tensors; LlamaError if truncated or corrupt."""
    try:
        shard = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise LlamaError(f"{path} is truncated or corrupt ({str(e).splitlines()[0][:100]}): download it again.") from None
    if not isinstance(shard, dict) or "tok_embeddings.weight" not in shard:
        raise LlamaError(f"{path} is not a Meta Llama checkpoint shard (no tok_embeddings.weight): check the folder.")
    return shard


def full_shapes(shard: dict, n_shards: int) -> dict:
    """{name: shape of the full tensor} implied by one of n_shards files (split dims times n_shards)."""
    return {k: tuple(s * n_shards if i == shard_dim(k) else s for i, s in enumerate(v.shape)) for k, v in shard.items()}


def shard_cut(shard: dict) -> int:
    """How many shards the model was cut into, read off one shard: wq is [dim, dim] whole, [dim / N, dim] cut."""
    wq = shard.get("layers.0.attention.wq.weight")
    return 1 if wq is None else wq.shape[1] // wq.shape[0]


def check_shard(shard: dict, params: dict, n_shards: int, path: Path) -> None:
    """Raise LlamaError unless `shard` is one of n_shards pieces of the model params.json describes."""
    check_cut(shard, n_shards, path)
    try:
        check_weights({k: torch.empty(s, device="meta") for k, s in full_shapes(shard, n_shards).items()}, params)
    except LlamaError as e:
        raise LlamaError(f"{path.name} does not fit params.json: {e}") from None


def check_shard_count(model_dir: Path) -> None:
    """Raise LlamaError when a shard of the folder is missing or extra (reads the numbering and one file's header)."""
    paths = shard_paths(model_dir)
    check_cut(load_shard(paths[0]), len(paths), paths[0])


def check_cut(shard: dict, n_shards: int, path: Path) -> None:
    """Raise LlamaError when the folder's n_shards files disagree with the cut a shard shows."""
    cut = shard_cut(shard)
    names = ", ".join(f"consolidated.{i:02d}.pth" for i in range(min(cut, n_shards), max(cut, n_shards)))
    if cut > n_shards:
        raise LlamaError(f"{path.name} holds 1/{cut} of the model but {path.parent} has {n_shards} shards: "
                         f"{names} missing; download them again.")
    if cut < n_shards:
        raise LlamaError(f"{path.name} holds 1/{cut} of the model but {path.parent} has {n_shards} shards: "
                         f"{names} do not belong to this model; remove them.")


def replicated_digest(shard: dict) -> str:
    """sha256 of the replicated tensors (the norms): equal in every shard of one model."""
    h = hashlib.sha256()
    for name in sorted(k for k in shard if shard_dim(k) is None):
        h.update(name.encode() + shard[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_rank_weights(model_dir: Path, params: dict, world_size: int = 1, rank: int = 0) -> tuple[dict, str]:
    """-> (the piece of a sharded checkpoint that rank `rank` of `world_size` holds, digest of its norms).

    One file: views into its memory map (nothing copied). Several files: each piece is allocated once and filled
    file by file, each file released before the next is opened, so peak memory is the piece plus one file's pages."""
    paths = shard_paths(model_dir)
    first = load_shard(paths[0])
    check_shard(first, params, len(paths), paths[0])
    full = full_shapes(first, len(paths))
    check_world_size(params, full["tok_embeddings.weight"][0], len(paths), world_size)
    own = map_mp_rank(len(paths), world_size, rank)
    ranges = {name: rank_range(name, shape, params, world_size, rank) for name, shape in full.items()}
    out, digest = {}, None
    for i in own:
        shard = first if i == 0 else load_shard(paths[i])
        first = None
        check_shard(shard, params, len(paths), paths[i])
        if digest not in (None, replicated_digest(shard)):
            raise LlamaError(f"{paths[i].name} and {paths[own[0]].name} differ in their norm weights, which every "
                             "shard of one model repeats: they come from different models.")
        digest = replicated_digest(shard)
        take_pieces(out, shard, i, ranges, copy=len(own) > 1)
        del shard  # the last reference to this file's memory map: its pages leave this process
    return out, digest


def take_pieces(out: dict, shard: dict, index: int, ranges: dict, copy: bool) -> None:
    """Put into `out` the parts of file number `index` that fall in each tensor's rank range (from rank_range)."""
    for name, r in ranges.items():
        t = shard[name]
        if r is None:  # replicated: from the first file
            if name not in out:
                out[name] = t.clone() if copy else t
            continue
        dim, size = shard_dim(name), t.shape[shard_dim(name)]
        lo, hi = max(r[0], index * size), min(r[1], (index + 1) * size)
        if lo >= hi:  # none of this tensor's rows or columns for this rank is in this file
            continue
        piece = t.narrow(dim, lo - index * size, hi - lo)
        if not copy:  # a column piece is a contiguous view; a row piece is copied once, here
            out[name] = piece if dim == 0 or hi - lo == size else piece.contiguous()
            continue
        if name not in out:  # allocated once (untouched pages cost nothing until filled)
            out[name] = torch.empty([r[1] - r[0] if d == dim else s for d, s in enumerate(t.shape)], dtype=t.dtype)
        out[name].narrow(dim, lo - r[0], hi - lo).copy_(piece)


def load_sharded_model(model_dir: str | Path) -> tuple[dict, dict]:
    """(weights, params) of a folder of N shards, merged into one dict in one process (see load_rank_weights)."""
    params = load_params(model_dir)
    weights, _ = load_rank_weights(Path(model_dir), params, 1, 0)
    check_weights(weights, params)
    return weights, params
