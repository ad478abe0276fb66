#!/usr/bin/env python
"""Where one decode step of the fast mode spends its time: torch.profiler over KV-cached steps on a random
checkpoint of a real shape (tests/benchmark.py builds and caches it), the top operators by their own time, and
the share of the matrix-vector kernel (aten::addmv_, every weight times the token's vector), and that kernel's
floor: the same products alone, one after another in a step's order, with nothing else in between: about what
any implementation that multiplies by the weights with this kernel (Hugging Face's bf16 model does) needs per
token on this machine at this moment.

    python tests/decode_profile.py [--shape llama-3.2-1b] [--steps 5]   # about 1 min
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmark import SHAPES, build_checkpoint, matvec_floor, prompt_tokens  # noqa: E402

from helpers import choose_mode, describe_mode, forward, load_model, new_kv_cache  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="llama-3.2-1b")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    if args.steps < 1:
        raise SystemExit(f"--steps {args.steps}: give a whole number of at least 1.")
    weights, params = load_model(build_checkpoint(args.shape))
    # the fast mode, as the benchmark runs it, on the CPU (the profiler measures CPU time)
    weights, dtype, fused = choose_mode(weights, exact_below_gb=0.0, device="cpu")
    prompt = prompt_tokens(17, params["vocab_size"])
    caches = new_kv_cache(params, len(prompt) + 2 * args.steps + 2, dtype)
    with torch.inference_mode():
        logits = forward(weights, params, prompt, 0, caches, dtype, True, fused)
        pos, times = len(prompt), []
        for _ in range(args.steps):  # timed without the profiler
            start = time.perf_counter()
            logits = forward(weights, params, [int(logits[-1].argmax())], pos, caches, dtype, True, fused)
            times.append(time.perf_counter() - start)
            pos += 1
        with profile() as prof:
            for _ in range(args.steps):
                logits = forward(weights, params, [int(logits[-1].argmax())], pos, caches, dtype, True, fused)
                pos += 1
    table = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in table)
    matvec = sum(e.self_cpu_time_total for e in table if e.key in ("aten::addmv_", "aten::mv"))
    print(f"{args.shape}, {describe_mode(weights, dtype, fused)}, {torch.get_num_threads()} threads")
    step = statistics.median(times)
    with torch.inference_mode():
        rounds = 5
        floor = matvec_floor(weights, dtype, rounds)
    print(f"a decode step: median {step * 1e3:.1f} ms over {args.steps} steps (unprofiled)")
    print(f"its matrix-vector products alone: {floor * 1e3:.1f} ms (median of {rounds} rounds, every weight once), "
          f"{floor / step:.0%} of the step; the rest of the step: {(step - floor) * 1e3:.1f} ms")
    print(table.table(sort_by="self_cpu_time_total", row_limit=8))
    print(f"matrix-vector kernel: {matvec / total:.0%} of the profiled steps' time")


if __name__ == "__main__":
    main()
