#!/usr/bin/env python
"""Host memory while loading a checkpoint onto a device, tensor by tensor (helpers.load_model(dir, device, dtype)).

    python tests/load_memory.py MODEL_DIR [--device cpu|cuda|mps] [--dtype bfloat16|float16|float32]

Samples the process's anonymous memory (RssAnon: what the process itself holds, not the page cache that
memory-mapped file pages occupy) every 5 ms during the load and prints its peak beside the checkpoint's size and
the bytes of the loaded model. On a GPU the model's bytes live on the GPU, so the peak is what the host needed in
transit; on the CPU the loaded model is itself host memory, so the figure to read is the peak minus the model.
Linux only (/proc/self/status).
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers import LlamaError, load_model, load_weights  # noqa: E402
from helpers.fast import DTYPES  # noqa: E402


def rss_anon() -> int:
    """Bytes of anonymous resident memory of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise LlamaError("/proc/self/status has no RssAnon: this script needs Linux.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python tests/load_memory.py")
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    args = ap.parse_args(argv)
    try:
        base, peak, done = rss_anon(), [0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_anon())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        weights, _ = load_model(args.model_dir, device=args.device, dtype=DTYPES[args.dtype])
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    except LlamaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    checkpoint = sum(f.stat().st_size for f in args.model_dir.glob("consolidated.*.pth"))
    model = sum(t.numel() * t.element_size() for t in weights.values())
    stored = load_weights(args.model_dir) if len(list(args.model_dir.glob("consolidated.*.pth"))) == 1 else weights
    copied = sum(t.numel() * t.element_size() for k, t in weights.items()  # host copies: converted on the CPU
                 if t.device.type == "cpu" and t.dtype != stored[k].dtype)
    extra = max(peak[0], rss_anon()) - base
    print(f"checkpoint {checkpoint / 1e9:.2f} GB; loaded model {model / 1e9:.2f} GB on {args.device} in {args.dtype}, "
          f"{seconds:.1f} s")
    print(f"host anonymous memory, peak during the load: {extra / 1e9:.2f} GB, of which {copied / 1e9:.2f} GB is the "
          f"loaded model itself (host copies); in transit: {(extra - copied) / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
