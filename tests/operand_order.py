#!/usr/bin/env python
"""Which order of operands helpers.layers.linear_converting should use, measured on this machine: the prompt's
product in float32 on bf16 weights converted a block of rows at a time, `x @ block.T` (the block on the right)
against `block @ x.T` (on the left), for one layer's seven weight matrices of a real shape, at several prompt
lengths. The two orders alternate, so both see the same machine; each time is the median of --reps.
linear_converting uses the left order under its `few_tokens` (default 256) tokens.

    python tests/operand_order.py [--shape llama-3.2-1b] [--tokens 17 32 64 128 256 512] [--reps 5]   # ~1 min
"""
import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmark import SHAPES, layer_shapes  # noqa: E402

from helpers.layers import linear_converting  # noqa: E402
from helpers.tiny import TINY_PARAMS  # noqa: E402


def layer_matrices(shape: str) -> list[torch.Tensor]:
    """One layer's seven weight matrices of this shape, in the checkpoint's order (tests/benchmark.py's
    layer_shapes): random, in bf16 as Meta stores them."""
    p = SHAPES[shape] or TINY_PARAMS  # "tiny": the embedded model's sizes (a smoke run)
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(s, generator=g) * s[1] ** -0.5).to(torch.bfloat16)
            for s in layer_shapes(p).values() if len(s) == 2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="llama-3.2-1b")
    ap.add_argument("--tokens", type=int, nargs="+", default=[17, 32, 64, 128, 256, 512])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    if args.reps < 1:
        raise SystemExit(f"--reps {args.reps}: give a whole number of at least 1.")
    if min(args.tokens) < 2:
        raise SystemExit(f"--tokens {min(args.tokens)}: give prompt lengths of at least 2 (one token takes linear_stored's "
                         "matrix-vector path).")
    matrices = layer_matrices(args.shape)
    few = inspect.signature(linear_converting).parameters["few_tokens"].default
    print(f"{args.shape}, one layer's 7 matrices, {torch.get_num_threads()} threads, medians of {args.reps}; "
          f"helpers uses the left order under {few} tokens")
    print(f"{'tokens':>6} {'block right ms':>15} {'block left ms':>14} {'right/left':>11}")
    g = torch.Generator().manual_seed(1)
    for n in args.tokens:
        xs = {w.shape[1]: torch.randn(n, w.shape[1], generator=g) for w in matrices}
        right_times, left_times = [], []
        for _ in range(args.reps + 1):  # the first round warms up
            for few_tokens, times in ((0, right_times), (n + 1, left_times)):  # 0: always right; n + 1: left for n
                start = time.perf_counter()
                for w in matrices:
                    linear_converting(xs[w.shape[1]], w, few_tokens=few_tokens)
                times.append(time.perf_counter() - start)
        right, left = statistics.median(right_times[1:]), statistics.median(left_times[1:])
        print(f"{n:6d} {right * 1e3:15.1f} {left * 1e3:14.1f} {right / left:11.2f}")


if __name__ == "__main__":
    with torch.inference_mode():
        main()
