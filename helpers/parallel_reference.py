"""Checking the tensor-parallel forward across real processes, against one process and against Meta's reference.

`python -m helpers.parallel_reference --model-dir DIR --tokens 1,2,3 --out result.pt`, started on N ranks
(torchrun, or helpers.launch.start_ranks), has every rank load its own piece of the checkpoint and run
helpers.parallel.parallel_forward; with --meta, also Meta's `llama_models.llama3.model.Transformer` under
fairscale's model parallelism of N, loaded by Meta's own loader (llama_models.checkpoint.maybe_reshard_state_dict),
in float32. Rank 0 saves both logits and every rank's peak memory to --out.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import LlamaError
from .fast import cast_weights
from .launch import agree_on_error, gather_objects, init_distributed, start_ranks
from .parallel import parallel_forward
from .shards import load_rank_weights, shard_paths
from .weights import load_params


def memory_bytes() -> tuple[int, int]:
    """(resident memory now, peak resident memory so far) of this process, in bytes (Linux: /proc/self/status)."""
    status = Path("/proc/self/status")
    if not status.is_file():  # elsewhere: the peak only
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return peak, peak
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def reset_peak_memory() -> None:
    """Start measuring the peak afresh (Linux: writing 5 to /proc/self/clear_refs resets it)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def meta_parallel_transformer(model_dir: Path, params: dict, max_seq_len: int):
    """Meta's reference Transformer for this rank, float32, with Meta's own checkpoint loader and resharding.

    Needs torch.distributed started. Where ranks outnumber the KV heads, Meta's llama3 model cannot run as is
    (n_local_kv_heads would be 0); Meta's answer is a checkpoint whose params.json counts the KV heads replicated
    (the 405B's 16-shard files say n_kv_heads 16 for 8): built the same way here."""
    import fairscale.nn.model_parallel.initialize as fs_init
    from llama_models.checkpoint import maybe_reshard_state_dict
    from llama_models.llama3.args import ModelArgs
    from llama_models.llama3.model import Transformer

    world_size = dist.get_world_size()
    if not fs_init.model_parallel_is_initialized():
        with contextlib.redirect_stdout(io.StringIO()):  # fairscale announces itself on stdout
            fs_init.initialize_model_parallel(world_size)
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # torch.set_default_tensor_type is deprecated; Meta's loader calls it
        state = maybe_reshard_state_dict(shard_paths(model_dir), n_kv_heads=n_kv)
    torch.set_default_dtype(torch.float32)  # Meta's loader left bf16 as the default dtype
    state = {k: v.float() for k, v in state.items()}
    state.setdefault("output.weight", state["tok_embeddings.weight"])  # tied (3.2 1B/3B): the same vocab rows
    vocab = state["tok_embeddings.weight"].shape[0] * world_size
    args = ModelArgs(**{**params, "n_kv_heads": max(n_kv, world_size), "vocab_size": vocab, "max_batch_size": 1,
                        "max_seq_len": max_seq_len})
    model = Transformer(args)  # on the CPU: fairscale's layers build their pieces with the legacy torch.Tensor()
    model.load_state_dict(state)
    return model.eval()


def all_reduce_seconds(dim: int, reps: int = 50) -> float:
    """Median seconds of one all-reduce of a [1, dim] float32 tensor (one decode step's message) on this group."""
    x, times = torch.ones(1, dim), []
    for _ in range(reps):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(x)
        times.append(time.perf_counter() - start)
    return sorted(times)[reps // 2]


def check_on_ranks(model_dir: Path, tokens: list[int], dtype: torch.dtype, meta: bool) -> dict | None:
    """Run on every rank: helpers' tensor-parallel logits (and Meta's) -> on rank 0 a dict of results."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    reset_peak_memory()
    before, weights, error = memory_bytes()[0], None, None
    try:
        params = load_params(model_dir)
        weights, digest = load_rank_weights(model_dir, params, world_size, rank)
    except LlamaError as e:
        error, digest = str(e), None
    error = agree_on_error(error, digest)
    if error:
        raise LlamaError(error)
    with torch.inference_mode():  # first in the stored dtype (nothing copied): the memory a rank needs
        parallel_forward(weights, params, tokens, dtype=weights["layers.0.attention.wq.weight"].dtype)
    own_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    rss = gather_objects({"before": before, "peak": memory_bytes()[1], "piece_bytes": own_bytes})
    with torch.inference_mode():
        logits = parallel_forward(cast_weights(weights, dtype), params, tokens, dtype=dtype)
    result = {"world_size": world_size, "helpers": logits, "rss": rss, "all_reduce_s": all_reduce_seconds(params["dim"])}
    if meta:
        with torch.inference_mode():
            result["meta"] = meta_parallel_transformer(model_dir, params, len(tokens))(torch.tensor([tokens]), 0)[0]
    return result if rank == 0 else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.parallel_reference", description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, nargs="+", required=True, help="one or more Meta-format folders")
    p.add_argument("--tokens", required=True, help="comma-separated token ids")
    p.add_argument("--out", type=Path, required=True, help="rank 0 saves the results here (torch.save)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--meta", action="store_true", help="also run Meta's reference at the same world size")
    args = p.parse_args(argv)
    init_distributed()
    code = 0
    try:
        tokens, dtype = [int(t) for t in args.tokens.split(",")], getattr(torch, args.dtype)
        results = [check_on_ranks(model_dir, tokens, dtype, args.meta) for model_dir in args.model_dir]
        if dist.get_rank() == 0:  # written whole, then renamed: run_check never reads half a file
            torch.save(results, args.out.with_suffix(".part"))
            os.replace(args.out.with_suffix(".part"), args.out)
    except LlamaError as e:
        if dist.get_rank() == 0:
            print(f"error: {e}", file=sys.stderr)
        code = 2
    except BaseException:  # a crash: its traceback, as before; no barrier (the others end by start_ranks' timeout)
        dist.destroy_process_group()
        raise
    # No rank tears its groups down while another still uses them (all agree on errors first, so all get here);
    # then leave without the interpreter's teardown, where gloo's threads were seen to abort a finished rank
    # now and then ("terminate called without an active exception": CI, twice in ~10 runs).
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_check(model_dirs: list[Path], tokens: list[int], world_size: int, meta: bool = True,
              dtype: str = "float32", timeout: float = 600) -> list[dict]:
    """Start world_size processes on this machine (helpers.launch.start_ranks), run the check on each folder,
    return rank 0's results, one dict per folder: {"helpers": logits, "meta": Meta's logits (with meta=True),
    "rss": [{"before", "peak", "piece_bytes"} per rank], "world_size": N}."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.pt"
        args = ["-m", "helpers.parallel_reference", "--model-dir", *map(str, model_dirs), "--tokens",
                ",".join(map(str, tokens)), "--out", str(out), "--dtype", dtype] + ["--meta"] * meta
        ranks = start_ranks(world_size, args, timeout=timeout)
        if any(r.returncode for r in ranks) or not out.is_file():
            raise LlamaError("the check failed: " + " | ".join(r.stderr.strip()[-500:] for r in ranks if r.stderr.strip()))
        return torch.load(out, weights_only=True)


if __name__ == "__main__":
    raise SystemExit(main())
