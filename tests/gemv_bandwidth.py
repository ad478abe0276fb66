"""One decode step's kind of product on this CPU: a weight matrix times one vector, in float32 and in bf16, both
spellings (w @ x and x @ w.T), on the 1B's shapes. Prints each one's median time and the bytes of weight read per
second. Where bf16 reads as fast as float32, a bf16 decode step takes half the time of a float32 one.

    python tests/gemv_bandwidth.py [--threads N]   # about 30 s; default: torch's thread count
"""
import argparse
import time

import torch


def median_seconds(fn, reps: int = 7) -> float:
    fn()  # warm-up: the first call picks the kernel
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[reps // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    threads = ap.parse_args().threads
    if threads < 1:
        raise SystemExit(f"--threads {threads}: give a whole number of at least 1.")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} threads")
    for shape in ((8192, 2048), (2048, 8192), (128256, 2048)):  # the 1B's w1/w3, w2, and its output table
        w32 = torch.randn(*shape) * 0.02
        w16 = w32.to(torch.bfloat16)
        x32 = torch.randn(shape[1])
        x16 = x32.to(torch.bfloat16)
        cases = {"float32 w @ x": (lambda: w32 @ x32, 4), "float32 x @ w.T": (lambda: x32[None] @ w32.T, 4),
                 "bf16 w @ x": (lambda: w16 @ x16, 2), "bf16 x @ w.T": (lambda: x16[None] @ w16.T, 2)}
        row = []
        for name, (fn, itemsize) in cases.items():
            seconds = median_seconds(fn)
            row.append(f"{name}: {seconds * 1e3:.2f} ms ({w32.numel() * itemsize / seconds / 1e9:.1f} GB/s)")
        print(f"{str(list(shape)):15}", "   ".join(row))


if __name__ == "__main__":
    main()
