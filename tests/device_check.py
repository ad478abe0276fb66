#!/usr/bin/env python
"""The acceptance check for a GPU (or any device): the course's forward on the best device against the CPU.

    python tests/device_check.py [--device auto|cpu|cuda|cuda:N|mps] [--shape small|mini|llama-3.2-1b] [--new-tokens 32]

On a random checkpoint (built in memory for `small` and `mini`; for `llama-3.2-1b` built once by tests/benchmark.py), it runs
  1. the exact mode (float32) on the device and on the CPU: the largest logit difference;
  2. the fast mode (helpers.choose_mode: bf16 / float16 / float32) on the device against the CPU's exact logits:
     the largest difference and how many next-token choices agree;
  3. a KV-cached greedy decode on the device in the fast mode: tokens per second, and the fraction of the device's
     measured read bandwidth it reaches (each new token reads every weight once, the embedding table aside).
It prints one line per check, then one JSON object; exit 0 when the checks pass, 1 when one fails, 2 on bad input.
On this CPU-only machine the suite runs it on the CPU (tests/test_device_check.py); on a GPU machine the same
command is the GPU's acceptance check.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers import LlamaError, choose_mode, forward, generate, load_model, pick_device  # noqa: E402
from helpers.devices import describe  # noqa: E402
from helpers.tiny import init_weights  # noqa: E402

# A small random model: big enough that decode is bound by reading weights, small enough for any device.
SMALL = {"dim": 1024, "n_layers": 8, "n_heads": 16, "n_kv_heads": 4, "multiple_of": 256, "ffn_dim_multiplier": 1.3,
         "norm_eps": 1e-5, "rope_theta": 500000.0, "use_scaled_rope": False, "vocab_size": 32000}
SHAPES = {"small": SMALL, "mini": {**SMALL, "dim": 128, "n_layers": 2, "n_heads": 8, "n_kv_heads": 2, "vocab_size": 4096}}
EXACT_TOLERANCE = 1e-4  # float32 on two devices: different kernels, different rounding, never more than this
AGREEMENT = 0.9  # share of next-token choices the fast mode must keep (bf16 rounding flips a few near-ties)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (GPU calls return before the work is done)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def read_bandwidth(device: torch.device, n_bytes: int = 1 << 30, reps: int = 5) -> float:
    """GB/s of summing a float32 tensor of n_bytes on the device (median): what reading weights can reach."""
    x = torch.ones(n_bytes // 4, device=device)
    x.sum()
    synchronize(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        x.sum()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return n_bytes / statistics.median(times) / 1e9


def model(shape: str) -> tuple[dict, dict]:
    """(weights, params) on the CPU, random, bf16 as Meta stores them."""
    if shape in SHAPES:
        params = dict(SHAPES[shape])
        weights = {k: v.to(torch.bfloat16) for k, v in init_weights(params, params["vocab_size"], seed=0).items()}
        return weights, params
    sys.path.insert(0, str(ROOT / "tests"))
    from benchmark import build_checkpoint

    return load_model(build_checkpoint(shape))


def check(device: torch.device, shape: str, new_tokens: int) -> dict:
    weights, params = model(shape)
    vocab = weights["tok_embeddings.weight"].shape[0]
    tokens = torch.randint(1, vocab, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    result = {"device": describe(device), "shape": shape, "torch": torch.__version__}

    cpu_exact = forward(weights, params, tokens)  # [T, vocab] float32 on the CPU: the reference
    on_device = choose_mode(weights, torch.float32, device=device)[0]
    exact = forward(on_device, params, tokens).cpu()  # the teaching attention, float32
    result["exact_max_diff"] = float((exact - cpu_exact).abs().max())
    del on_device

    fast_weights, fast_dtype, fused = choose_mode(weights, None, exact_below_gb=0.0, device=device)  # the fast mode
    fast = forward(fast_weights, params, tokens, dtype=fast_dtype, fused=fused).cpu()
    result["fast_dtype"] = str(fast_dtype).replace("torch.", "")
    result["fast_max_diff"] = float((fast - cpu_exact).abs().max())
    result["fast_agreement"] = float((fast.argmax(-1) == cpu_exact.argmax(-1)).float().mean())

    generate(fast_weights, params, tokens[:8], 2, stop_tokens=[], dtype=fast_dtype, fused=fused)  # warm-up: kernels, caches
    synchronize(device)
    start = time.perf_counter()
    generate(fast_weights, params, tokens[:8], new_tokens + 1, stop_tokens=[], dtype=fast_dtype, fused=fused)
    synchronize(device)
    elapsed = time.perf_counter() - start
    # One prefill of 8 tokens and new_tokens cached steps: the steps dominate; count them all as decode.
    result["decode_tok_s"] = (new_tokens + 1) / elapsed
    read = sum(t.numel() * t.element_size() for k, t in fast_weights.items() if k != "tok_embeddings.weight")
    if "output.weight" not in fast_weights:
        read += fast_weights["tok_embeddings.weight"].numel() * fast_weights["tok_embeddings.weight"].element_size()
    result["bytes_per_token"] = read
    result["read_gb_s"] = read_bandwidth(device)
    result["bandwidth_fraction"] = read * result["decode_tok_s"] / 1e9 / result["read_gb_s"]
    result["passed"] = result["exact_max_diff"] <= EXACT_TOLERANCE and result["fast_agreement"] >= AGREEMENT
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python tests/device_check.py", description=__doc__.split("\n")[0])
    ap.add_argument("--device", help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    ap.add_argument("--shape", choices=[*SHAPES, "llama-3.2-1b"], default="small", help="mini: the suite's quick run")
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    try:
        if args.new_tokens < 1:
            raise LlamaError("--new-tokens must be at least 1.")
        device = pick_device(args.device or "auto", "--device")
        r = check(device, args.shape, args.new_tokens)
    except LlamaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"device: {r['device']} (torch {r['torch']}), random checkpoint: {r['shape']}")
    print(f"exact mode (float32), device vs CPU: largest logit difference {r['exact_max_diff']:.2e} "
          f"(must be <= {EXACT_TOLERANCE:g})")
    print(f"fast mode ({r['fast_dtype']}) vs the CPU's exact logits: largest difference {r['fast_max_diff']:.3f}, "
          f"same next token at {r['fast_agreement']:.0%} of positions (must be >= {AGREEMENT:.0%})")
    print(f"decode ({r['fast_dtype']}, KV cache): {r['decode_tok_s']:.1f} tokens/s x {r['bytes_per_token'] / 1e6:.0f} MB "
          f"read per token = {r['bandwidth_fraction']:.0%} of the {r['read_gb_s']:.1f} GB/s this device reads")
    print("PASS" if r["passed"] else "FAIL")
    print(json.dumps(r))
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
