"""Running Llama 3 on several processes: `torchrun --nproc-per-node N -m helpers ...` (notebook 14).

torchrun starts N copies of the program with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set. Each process
reads only its own piece of the checkpoint, then all run the same tensor-parallel steps in lockstep. Two rules
keep a mistake from hanging them: every rank checks its input before the first collective operation and all
agree on the outcome (one gathers every rank's error, so all stop together), and the process group has a
timeout (LLAMA3_DIST_TIMEOUT seconds, default 300), so a rank that died cannot leave the others waiting forever.
"""
from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import LlamaError
from .fast import cast_weights, memory_available, pick_dtype
from .generate import check_generation, default_stop_tokens, encode_dialog, sample_next, stream_text
from .parallel import new_local_kv_cache, parallel_forward
from .shards import load_rank_weights, shard_paths
from .tokenizer import load_tokenizer
from .weights import default_model_dir, load_params, model_name


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (gloo on CPU) with a timeout -> (rank, world_size)."""
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get("LLAMA3_DIST_TIMEOUT", 300)))
        dist.init_process_group("gloo", timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def gather_objects(obj, group=None) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def agree_on_error(error: str | None, digest: str | None = None, group=None) -> str | None:
    """The first error any rank met (or shards that disagree), the same on every rank; None when all is well."""
    reports = gather_objects((error, digest), group)
    for rank, (e, _) in enumerate(reports):
        if e:
            return e if rank == 0 else f"rank {rank}: {e}"
    if len({d for _, d in reports if d is not None}) > 1:
        return "the shards hold different norm weights, which every shard of one model repeats: they come from " \
               "different models."
    return None


def agree_on_dtype(choice: str, model_bytes: int, exact_below_gb: float = 1.0, group=None,
                   stored: torch.dtype = torch.bfloat16) -> torch.dtype:
    """The compute dtype, chosen on rank 0 (as helpers.fast.choose_mode chooses it) and sent to every rank:
    a speed probe could pick differently on two ranks, and the ranks must compute alike.
    Also a memory rule for the ranks on one machine together: a *measured* dtype whose converted copies (this
    machine's share of the `model_bytes` stored as `stored`: LOCAL_WORLD_SIZE of the world's ranks) would not fit
    in the free memory gives way to `stored`, computed in (parallel_forward converts whole weights: it does not keep
    them as stored in another compute dtype, as choose_mode can). Rank 0 checks on its own machine, before any rank
    converts (they all wait here), and assumes every machine alike; a dtype asked for is kept (choose_mode
    refuses one that does not fit), and the untied embedding table, which stays as stored, is counted too."""
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    pick = torch.zeros(1, dtype=torch.long)
    if dist.get_rank(group) == 0:
        asked = None if choice in (None, "auto") else choice  # "auto" (the CLI's default) defers to $LLAMA3_DTYPE
        auto = asked is None and os.environ.get("LLAMA3_DTYPE", "auto") == "auto"
        exact = auto and model_bytes < exact_below_gb * 1e9
        dtype = torch.float32 if exact else pick_dtype(asked)
        if auto and not exact and dtype != stored and stored in dtypes:
            world = dist.get_world_size(group)
            share = int(os.environ.get("LOCAL_WORLD_SIZE", world)) / world  # the ranks on this machine
            free = memory_available(torch.device("cpu"))
            if free is not None and model_bytes * share * dtype.itemsize / stored.itemsize > 0.9 * free:
                dtype = stored  # as choose_mode: compute in the checkpoint's dtype, nothing copied
        pick[0] = dtypes.index(dtype)
    dist.broadcast(pick, src=0, group=group)
    return dtypes[int(pick)]


def parallel_generate_stream(weights: dict, params: dict, prompt_tokens, max_new_tokens: int, *, temperature=0.0,
                             top_p=1.0, stop_tokens=None, seed=None, dtype=torch.float32, group=None):
    """helpers.generate_stream on this rank's piece of the weights; call it on every rank. Rank 0 draws each
    token and broadcasts it, so every rank continues with the same one (and --seed repeats the same text)."""
    full_table = torch.empty(weights["tok_embeddings.weight"].shape[0] * dist.get_world_size(group), 0, device="meta")
    prompt, max_new_tokens = check_generation({"tok_embeddings.weight": full_table}, params, prompt_tokens,
                                              max_new_tokens, temperature, top_p)
    stop_tokens = set(default_stop_tokens() if stop_tokens is None else stop_tokens)
    generator = torch.Generator()
    generator.manual_seed(seed) if seed is not None else generator.seed()
    caches = new_local_kv_cache(weights, params, len(prompt) + max_new_tokens, dtype)
    tokens, start_pos = prompt, 0
    for _ in range(max_new_tokens):
        with torch.inference_mode():
            logits = parallel_forward(weights, params, tokens, start_pos, caches, dtype, last_only=True, group=group)
            choice = torch.tensor([sample_next(logits[-1], temperature, top_p, generator)
                                   if dist.get_rank(group) == 0 else 0])
        dist.broadcast(choice, src=0, group=group)
        if int(choice) in stop_tokens:
            return
        yield int(choice)
        start_pos += len(tokens)
        tokens = [int(choice)]


def prepare(args, rank: int, world_size: int) -> dict:
    """Everything a rank needs before the first token, each step checked (LlamaError on bad input)."""
    if not args.prompt:
        raise LlamaError("The prompt is empty: give some text with --prompt.")
    if args.max_new_tokens < 1:
        raise LlamaError("--max-new-tokens must be at least 1.")
    if args.dtype not in (None, "auto"):
        pick_dtype(args.dtype)  # an unknown name fails on every rank, before any collective
    model_dir = Path(args.model_dir or default_model_dir(verbose=False))
    params = load_params(model_dir)
    weights, digest = load_rank_weights(model_dir, params, world_size, rank)
    tokenizer = load_tokenizer(model_dir)
    if args.chat:
        tokens = encode_dialog(tokenizer, [{"role": "user", "content": args.prompt}])
    else:
        tokens = tokenizer.encode(args.prompt, bos=True, eos=False)
    vocab = weights["tok_embeddings.weight"].shape[0] * world_size
    check_generation({"tok_embeddings.weight": torch.empty(vocab, 0, device="meta")}, params, tokens,
                     args.max_new_tokens, args.temperature, args.top_p)
    return {"model_dir": model_dir, "params": params, "weights": weights, "digest": digest, "tokenizer": tokenizer,
            "tokens": tokens, "bytes": sum(p.stat().st_size for p in shard_paths(model_dir))}


def lost_contact(e: Exception) -> str | None:
    """A one-line explanation when `e` is torch.distributed's or gloo's / NCCL's way of saying another rank is gone."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and ("gloo" in first or "NCCL" in first)):
        return (f"rank {os.environ.get('RANK', '?')}: lost contact with the other processes ({first[-160:]}): one of "
                "them stopped or is stuck (see its own message); the timeout is LLAMA3_DIST_TIMEOUT seconds.")
    return None


def run_parallel(args) -> int:
    """The CLI under torchrun: every rank computes, rank 0 alone prints. -> exit status (0; 2 on bad input;
    1 when the ranks lost contact: a rank died, or the timeout passed)."""
    try:
        return _run_parallel(args)
    except RuntimeError as e:
        if (message := lost_contact(e)) is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1


def _run_parallel(args) -> int:
    rank, world_size = init_distributed()
    try:
        state, error = None, None
        try:
            state = prepare(args, rank, world_size)
        except LlamaError as e:
            error = str(e)
        error = agree_on_error(error, state and state["digest"])  # the first collective: all ranks get here
        if error:
            if rank == 0:
                print(f"error: {error}", file=sys.stderr)
            return 2
        dtype = agree_on_dtype(args.dtype, state["bytes"], stored=state["weights"]["norm.weight"].dtype)
        weights = cast_weights(state["weights"], dtype)
        new_tokens = parallel_generate_stream(
            weights, state["params"], state["tokens"], args.max_new_tokens, temperature=args.temperature,
            top_p=args.top_p, stop_tokens=state["tokenizer"].stop_tokens, seed=args.seed, dtype=dtype)
        if rank == 0:
            print(f"[model: {model_name(state['model_dir'])}, tensor-parallel on {world_size} processes, computing in "
                  f"{str(dtype).replace('torch.', '')}]", file=sys.stderr)
        for text in stream_text(state["tokenizer"], new_tokens):
            if rank == 0:
                print(text, end="", flush=True)
        if rank == 0:
            print()
        return 0
    finally:
        dist.destroy_process_group()


def start_ranks(world_size: int, args: list[str], timeout: float = 600,
                env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """Run `python ARGS...` (e.g. ["-m", "helpers", "--prompt", "hi"]) as world_size processes on this machine, with
    the variables torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free MASTER_PORT), talking
    over loopback only; wait for all (killing all at the timeout) -> each rank's CompletedProcess."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {**os.environ, **(env or {}), "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    if sys.platform == "linux":
        base.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's connections between ranks stay on this machine
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world_size)))
    logs = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in range(world_size)]
    procs = [subprocess.Popen([sys.executable, *args], stdout=out, stderr=err, text=True,
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}) for r, (out, err) in enumerate(logs)]
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
    finally:
        for p in procs:
            p.kill() if p.poll() is None else None
    results = []
    for p, (out, err) in zip(procs, logs):
        out.seek(0), err.seek(0)
        results.append(subprocess.CompletedProcess(p.args, p.wait(), out.read(), err.read()))
    return results
