#!/usr/bin/env python
"""Tensor parallelism measured: prefill and decode on 1, 2 and 4 processes, beside the all-reduce's own time.

    python tests/bench_parallel.py [--shape llama-3.2-1b] [--runs 1x2,1x1,2x1,4x1] [--prompt-tokens 17] [--new-tokens 16]

Uses the random checkpoint of tests/benchmark.py (built once, cached in tests/.cache/). Each world size runs in its
own processes (helpers.launch.start_ranks: what torchrun sets up, gloo over loopback); each rank loads only its
piece of the weights and computes in --dtype (default bf16, the stored dtype: nothing copied). --runs lists
PROCESSESxTHREADS per process: the default compares one process on both cores, one process on one core (the
same work per core as 2 processes), 2 processes of one thread, and 4 (two per core). Reported:
medians over --reps of the prefill and of the KV-cached greedy decode steps after it, the time of one all-reduce of a
decode step's [1, dim] message and of a prefill's [T, dim] one, of the logits' all-gather, and each rank's peak
RSS. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(fn, reps: int) -> float:
    """Median seconds of fn() over reps runs, every rank starting together."""
    import torch.distributed as dist

    times = []
    for _ in range(reps):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from benchmark import build_checkpoint, prompt_tokens
    from helpers.fast import cast_weights
    from helpers.launch import gather_objects, init_distributed
    from helpers.parallel import new_local_kv_cache, parallel_forward
    from helpers.parallel_reference import memory_bytes, reset_peak_memory
    from helpers.shards import load_rank_weights
    from helpers.weights import load_params

    rank, world = init_distributed()
    folder = build_checkpoint(args.shape)
    reset_peak_memory()
    params = load_params(folder)
    dtype = getattr(torch, args.dtype)
    weights = cast_weights(load_rank_weights(folder, params, world, rank)[0], dtype)
    tokens = prompt_tokens(args.prompt_tokens, weights["tok_embeddings.weight"].shape[0] * world)
    total = args.prompt_tokens + args.new_tokens
    caches = new_local_kv_cache(weights, params, total, dtype)

    def prefill():
        return parallel_forward(weights, params, tokens, 0, caches, dtype, last_only=True)

    def decode() -> tuple[list[int], float]:  # greedy, KV-cached; rank 0's token goes to every rank, as the CLI
        logits, out = prefill(), []
        dist.barrier()
        start = time.perf_counter()  # the decode steps only, after the prefill
        for pos in range(args.prompt_tokens, total):
            choice = torch.tensor([int(logits[-1].argmax())])
            dist.broadcast(choice, src=0)
            out.append(int(choice))
            logits = parallel_forward(weights, params, out[-1:], pos, caches, dtype, last_only=True)
        return out, time.perf_counter() - start

    with torch.inference_mode():
        generated, _ = decode()  # warm-up
        t_prefill = timed(prefill, args.reps)
        t_steps = statistics.median(decode()[1] for _ in range(args.reps))
    message = torch.ones(1, params["dim"], dtype=dtype)
    prompt_message = torch.ones(args.prompt_tokens, params["dim"], dtype=dtype)
    logits_piece = torch.ones(1, weights["tok_embeddings.weight"].shape[0])
    gathered = [torch.empty_like(logits_piece) for _ in range(world)]
    reps = 30
    t_ar = timed(lambda: dist.all_reduce(message), reps) if world > 1 else 0.0
    t_ar_prompt = timed(lambda: dist.all_reduce(prompt_message), reps) if world > 1 else 0.0
    t_ag = timed(lambda: dist.all_gather(gathered, logits_piece), reps) if world > 1 else 0.0
    rss = gather_objects(memory_bytes()[1])
    if rank == 0:
        per_token = t_steps / args.new_tokens
        comm = (2 * params["n_layers"] + 1) * t_ar + t_ag  # the collectives of one decode step, one after another
        print(json.dumps({"world_size": world, "threads_per_rank": torch.get_num_threads(), "prefill_s": t_prefill,
                          "decode_tok_s": 1 / per_token, "all_reduce_us": t_ar * 1e6,
                          "all_reduce_prompt_us": t_ar_prompt * 1e6, "all_gather_logits_us": t_ag * 1e6,
                          "decode_comm_share": comm / per_token, "peak_rss_gb": [r / 1e9 for r in rss],
                          "tokens": generated}))
    dist.destroy_process_group()


def machine() -> str:
    """CPU, cores, vector units and how busy the machine was (other programs) just before the runs."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "CPU")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, {vector}, load average {load:.1f} at the start"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-3.2-1b")
    ap.add_argument("--runs", default="1x2,1x1,2x1,4x1", help="PROCESSESxTHREADS per run, comma-separated")
    ap.add_argument("--prompt-tokens", type=int, default=17)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    from benchmark import build_checkpoint
    from helpers.launch import start_ranks

    folder = build_checkpoint(args.shape)  # once, before the clock starts
    where = machine()
    rows = []
    for run in args.runs.split(","):
        world, threads = map(int, run.split("x"))
        ranks = start_ranks(world, [__file__, "--worker", "--shape", args.shape, "--prompt-tokens",
                                    str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--reps",
                                    str(args.reps), "--dtype", args.dtype], timeout=3600,
                            env={"OMP_NUM_THREADS": str(threads)})
        if any(r.returncode for r in ranks):
            raise SystemExit(f"world size {world} failed:\n" + "\n".join(r.stderr[-2000:] for r in ranks))
        rows.append(json.loads(ranks[0].stdout.strip().splitlines()[-1]))
    same = all(r["tokens"] == rows[0]["tokens"] for r in rows)
    ckpt_gb = sum(p.stat().st_size for p in folder.glob("consolidated.*.pth")) / 1e9
    print(f"shape {args.shape} ({ckpt_gb:.2f} GB), {args.dtype}, {args.prompt_tokens} prompt tokens, "
          f"{args.new_tokens} new tokens, medians of {args.reps}; {where}")
    print(f"{'processes':>9s} {'threads':>7s} {'prefill s':>9s} {'decode tok/s':>12s} {'all-reduce [1,dim]':>18s} "
          f"{'[T,dim]':>9s} {'gather':>8s} {'comm/step':>9s} {'peak RSS GB per rank':>22s}")
    for r in rows:
        rss = " ".join(f"{g:.2f}" for g in r["peak_rss_gb"])
        print(f"{r['world_size']:9d} {r['threads_per_rank']:7d} {r['prefill_s']:9.3f} {r['decode_tok_s']:12.2f} "
              f"{r['all_reduce_us']:15.0f} µs {r['all_reduce_prompt_us']:6.0f} µs {r['all_gather_logits_us']:5.0f} µs "
              f"{r['decode_comm_share']:9.0%} {rss:>22s}")
    print(f"same greedy tokens on every world size: {same}")
    print(json.dumps({"shape": args.shape, "machine": where, "dtype": args.dtype, "checkpoint_gb": ckpt_gb,
                      "same_tokens": same, "runs": [{k: v for k, v in r.items() if k != "tokens"} for r in rows]}))


if __name__ == "__main__":
    main()
