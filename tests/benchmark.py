#!/usr/bin/env python
"""Speed and memory: helpers' fast mode against Hugging Face's LlamaForCausalLM, same weights, same run.

    python tests/benchmark.py --shape llama-3.2-1b [--prompt-tokens 17] [--new-tokens 32] [--reps 5]

Builds (once, cached in tests/.cache/) a random Meta-format checkpoint of exactly that shape, then measures in
separate processes, so that each one's peak memory is its own:
  - helpers (fast mode, helpers.choose_mode): prefill of the prompt, then KV-cached greedy decode, token by
    token; with --other-weights also the other way of holding the weights in the same compute dtype: a
    converted copy where choose_mode kept them as stored (helpers.layers.linear_stored), else as stored;
  - Hugging Face LlamaForCausalLM with the same weights and thread count, in bf16 and in float32 (sdpa
    attention, its KV cache, logits for the last position only), keeping the faster (--hf-dtypes: which);
  - the machine's read bandwidth (summing a tensor far larger than the caches), which bounds decode speed:
    every new token must read every weight once;
  - helpers' matrix-vector floor (matvec_floor): a decode step's products alone, every weight once, no other
    work: how close a step is to the kernel it runs on, and how much room 1.1x Hugging Face's decode leaves.
Prints a table, then, as its last line, one JSON object. Each of --reps runs is a prefill and a decode, after a
short warm-up (a prefill of at most 17 tokens and one step: kernels chosen, nothing timed; a long prompt's first
prefill is not warmed up); prefill: the median of the runs' prefills;
decode: the median of every single decode step's time over the runs (tokens/s = 1 / that).
A long prompt: python tests/benchmark.py --prompt-tokens 8192 --reps 1 --hf-dtypes float32
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".cache"
# The published shapes (params.json of each model). Only the sizes matter here: the weights are random.
SHAPES = {
    "tiny": None,  # helpers.tiny.TINY_PARAMS
    "llama-3.2-1b": {"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
                     "ffn_dim_multiplier": 1.5, "multiple_of": 256, "norm_eps": 1e-05, "rope_theta": 500000.0,
                     "use_scaled_rope": True, "tied": True},
    "llama-3-8b": {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
                   "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0},
}


def layer_shapes(p: dict) -> dict[str, tuple[int, ...]]:
    """One layer's tensors for params p: {name after "layers.{i}.": (rows, cols), or (dim,) for a norm}."""
    sys.path.insert(0, str(ROOT))
    from helpers import ffn_hidden_dim

    dim, n_heads, n_kv = p["dim"], p["n_heads"], p["n_kv_heads"]
    head_dim, hidden = dim // n_heads, ffn_hidden_dim(dim, p["multiple_of"], p.get("ffn_dim_multiplier"))
    return {"attention.wq.weight": (n_heads * head_dim, dim), "attention.wk.weight": (n_kv * head_dim, dim),
            "attention.wv.weight": (n_kv * head_dim, dim), "attention.wo.weight": (dim, n_heads * head_dim),
            "feed_forward.w1.weight": (hidden, dim), "feed_forward.w2.weight": (dim, hidden),
            "feed_forward.w3.weight": (hidden, dim), "attention_norm.weight": (dim,), "ffn_norm.weight": (dim,)}


def build_checkpoint(shape: str) -> Path:
    """A random bf16 Meta-format folder of this shape, written atomically, one tensor at a time: the file's
    layout is saved first without data (torch's skip_data), then each tensor is made and written into its
    place, so memory never holds more than the largest tensor (the 8B's 16 GB never exist in RAM at once)."""
    sys.path.insert(0, str(ROOT))
    from helpers import default_tokenizer_path
    from helpers.tiny import ensure_tiny

    if shape == "tiny":
        return ensure_tiny()
    folder = CACHE / shape
    if (folder / "consolidated.00.pth").is_file():
        return folder
    p = dict(SHAPES[shape])
    tied = p.pop("tied", False)
    dim, vocab = p["dim"], p["vocab_size"]
    shapes = {"tok_embeddings.weight": (vocab, dim)}  # {name: (rows, cols)}, or (dim,) for a norm (all ones)
    layer = layer_shapes(p)
    for i in range(p["n_layers"]):
        shapes.update({f"layers.{i}.{name}": s for name, s in layer.items()})
    shapes["norm.weight"] = (dim,)
    if not tied:
        shapes["output.weight"] = (vocab, dim)
    g = torch.Generator().manual_seed(0)

    def make(shape):  # bf16 straight away: an 8B never exists in float32
        if len(shape) == 1:
            return torch.ones(shape, dtype=torch.bfloat16)
        return torch.randn(shape, generator=g, dtype=torch.bfloat16) * shape[1] ** -0.5

    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{shape}-", dir=CACHE))
    path = tmp / "consolidated.00.pth"
    with torch.serialization.skip_data():  # the layout only: torch.empty allocates no pages, nothing is read
        torch.save({k: torch.empty(s, dtype=torch.bfloat16) for k, s in shapes.items()}, path)
    # Where each tensor's bytes go: a mmap'd load maps the file once, so a storage's offset in the file is
    # its address minus the lowest address plus the lowest record offset. Nothing is read here.
    skeleton = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    address = {k: t.untyped_storage().data_ptr() for k, t in skeleton.items()}
    reader = torch._C.PyTorchFileReader(str(path))
    first = min(reader.get_record_offset(r) for r in reader.get_all_records() if r.startswith("data/"))
    del skeleton, reader
    base = min(address.values())
    with open(path, "r+b") as f:
        for k, s in shapes.items():
            f.seek(address[k] - base + first)
            f.write(make(s).view(torch.int16).numpy())
    check = torch.load(path, mmap=True, weights_only=True, map_location="cpu")  # every tensor landed in place:
    assert all(bool((t[0, :8] != 0).all()) if t.dim() == 2 else bool((t == 1).all()) for t in check.values())
    del check  # (a misplaced write would leave zeros, the file's holes, somewhere)
    (tmp / "params.json").write_text(json.dumps(p, indent=2))
    (tmp / "tokenizer.model").write_bytes(default_tokenizer_path().read_bytes())
    os.rename(tmp, folder)
    return folder


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def prompt_tokens(n: int, vocab: int) -> list[int]:
    return torch.randint(0, min(vocab, 128000), (n,), generator=torch.Generator().manual_seed(1)).tolist()


def timed_runs(prefill, step, n_prompt: int, n_new: int, reps: int) -> dict:
    """A warm-up (a prefill of at most 17 tokens, one step), then `reps` runs of prefill(n) + n_new single steps step(token, pos) ->
    the median prefill time, decode tokens/s from the median single step, and the last run's tokens."""
    prefill(min(n_prompt, 17))
    step(0, min(n_prompt, 17))
    prefills, steps = [], []
    for _ in range(reps):
        start = time.perf_counter()
        logits = prefill(n_prompt)
        prefills.append(time.perf_counter() - start)
        out = []
        for pos in range(n_prompt, n_prompt + n_new):
            out.append(int(logits[-1].argmax()))
            start = time.perf_counter()
            logits = step(out[-1], pos)
            steps.append(time.perf_counter() - start)
    return {"prefill_s": statistics.median(prefills), "decode_tok_s": 1 / statistics.median(steps), "tokens": out}


def worker_helpers(folder: Path, args, other: bool = False) -> dict:
    """Prefill and KV-cached decode with helpers in fast mode (helpers.choose_mode: measured dtype, fused attention).
    other: the same dtype with the weights held the other way (a converted copy / as stored)."""
    from helpers import forward, load_model
    from helpers.fast import DTYPES, cast_weights, choose_mode
    from helpers.generate import new_kv_cache

    stored, params = load_model(folder)
    if other:  # the same dtype as the first worker's choice, the weights held the other way (no probe here)
        dtype, fused, kept = DTYPES[args.other_of.split(":")[1]], True, args.other_of.startswith("copy")
        weights = stored if kept else cast_weights(stored, dtype)
    else:
        weights, dtype, fused = choose_mode(stored, args.dtype, exact_below_gb=0.0)  # the fast mode, whatever the size
        kept = all(weights[k] is stored[k] for k in stored)
    del stored
    tokens = prompt_tokens(args.prompt_tokens, weights["tok_embeddings.weight"].shape[0])
    caches = new_kv_cache(params, args.prompt_tokens + args.new_tokens, dtype)
    buffers = {}  # kept from call to call, as generate does

    def prefill(n):
        return forward(weights, params, tokens[:n], 0, caches, dtype, True, fused, buffers)

    def step(token, pos):
        return forward(weights, params, [token], pos, caches, dtype, True, fused, buffers)

    with torch.inference_mode():
        result = timed_runs(prefill, step, args.prompt_tokens, args.new_tokens, args.reps)
        result["matvec_floor_s"] = matvec_floor(weights, dtype, args.reps)
    return {"dtype": str(dtype).replace("torch.", ""), "fused": fused, "weights": "stored" if kept else "copy", **result}


def worker_hf(folder: Path, args, dtype: torch.dtype) -> dict:
    """Prefill and KV-cached decode with Hugging Face's model on the same weights."""
    from transformers import DynamicCache

    from helpers import load_model
    from helpers.reference import hf_llama

    weights, params = load_model(folder)
    model = hf_llama(weights, params, dtype=dtype, attn="sdpa")
    del weights
    tokens = torch.tensor([prompt_tokens(args.prompt_tokens, model.config.vocab_size)])
    state = {}

    def prefill(n):
        state["cache"] = DynamicCache(config=model.config)
        return model(input_ids=tokens[:, :n], past_key_values=state["cache"], use_cache=True, logits_to_keep=1).logits[0]

    def step(token, pos):
        return model(input_ids=torch.tensor([[token]]), past_key_values=state["cache"], use_cache=True,
                     logits_to_keep=1).logits[0]

    with torch.inference_mode():
        result = timed_runs(prefill, step, args.prompt_tokens, args.new_tokens, args.reps)
    return {"dtype": str(dtype).replace("torch.", ""), **result}


def matvec_floor(weights: dict, dtype: torch.dtype, rounds: int = 5) -> float:
    """Seconds for one decode step's matrix-vector products alone: every weight matrix a step reads (each layer's seven,
    layer after layer, then the output table) times a [1, in] vector in `dtype`, by helpers.layers.linear as
    forward calls it, one after another with nothing in between; the median of `rounds` rounds after one that warms up."""
    from helpers.layers import linear

    names = [k for k, t in weights.items() if t.dim() == 2 and k.startswith("layers.")]
    names.append("output.weight" if "output.weight" in weights else "tok_embeddings.weight")  # 3.2 1B/3B: tied
    vectors = {k: torch.randn(1, weights[k].shape[1], dtype=dtype, device=weights[k].device) for k in names}
    times = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        for k in names:
            linear(vectors[k], weights[k])
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first round warms up


def read_bandwidth(reps: int) -> float:
    """GB/s reading memory: summing a 1 GiB tensor, far larger than any cache."""
    x = torch.ones(256 * 1024 * 1024, dtype=torch.float32)
    x.sum()
    return x.numel() * 4 / median_time(x.sum, max(reps, 3)) / 1e9


def run_worker(kind: str, args, other_of: str = "") -> dict:
    """Run one measurement in a fresh process; add its peak RSS. other_of: "stored:float32" or "copy:float32", how
    the first helpers worker held its weights and its dtype (the helpers-other worker holds them the other way)."""
    cmd = [sys.executable, __file__, "--worker", kind, "--shape", args.shape, "--prompt-tokens", str(args.prompt_tokens),
           "--new-tokens", str(args.new_tokens), "--reps", str(args.reps), "--threads", str(args.threads),
           "--hf-dtypes", args.hf_dtypes, "--other-of", other_of]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"benchmark worker {kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def weight_bytes_per_token(folder: Path) -> int:
    """Bytes of weights one decode step reads: everything but the embedding table (one row of it is read),
    unless the table doubles as the output layer."""
    weights = torch.load(folder / "consolidated.00.pth", mmap=True, weights_only=True)
    total = sum(t.numel() * t.element_size() for t in weights.values())
    if "output.weight" in weights:
        total -= weights["tok_embeddings.weight"].numel() * weights["tok_embeddings.weight"].element_size()
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="llama-3.2-1b")
    ap.add_argument("--prompt-tokens", type=int, default=17)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--dtype", help="helpers' compute dtype (default: chosen by measuring)")
    ap.add_argument("--no-hf", action="store_true", help="measure helpers only (the 8B and HF together do not fit 24 GB)")
    ap.add_argument("--hf-dtypes", default="bfloat16,float32",
                    help="Hugging Face's dtypes to measure, comma-separated (default both; the faster one is compared)")
    ap.add_argument("--other-weights", action="store_true",
                    help="also measure helpers with the weights held the other way: a converted copy if "
                         "choose_mode keeps them as stored, else as stored")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--other-of", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))

    if args.worker:
        folder = build_checkpoint(args.shape)
        if args.worker in ("helpers", "helpers-other"):
            result = worker_helpers(folder, args, other=args.worker == "helpers-other")
        elif args.worker == "bandwidth":
            result = {"read_gb_s": read_bandwidth(args.reps)}
        else:
            result = worker_hf(folder, args, {"hf-bf16": torch.bfloat16, "hf-fp32": torch.float32}[args.worker])
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        print(json.dumps(result))
        return

    hf_kinds = {"bfloat16": "hf-bf16", "bf16": "hf-bf16", "float32": "hf-fp32", "fp32": "hf-fp32"}
    asked = [d.strip().lower() for d in args.hf_dtypes.split(",") if d.strip()]
    if not asked or any(d not in hf_kinds for d in asked):
        raise SystemExit(f"--hf-dtypes {args.hf_dtypes!r}: give bfloat16, float32 or both, comma-separated.")
    for flag in ("prompt_tokens", "new_tokens", "reps", "threads"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} {getattr(args, flag)}: give a whole number of at least 1.")
    folder = build_checkpoint(args.shape)
    ckpt_gb = (folder / "consolidated.00.pth").stat().st_size / 1e9
    ours = run_worker("helpers", args)
    other = None
    if args.other_weights and ours["dtype"] == "bfloat16":  # the checkpoint's own dtype: nothing to convert
        print("--other-weights: helpers computes in the checkpoint's own dtype (bfloat16) here: no other way to hold "
              "its weights, so no second row.")
    elif args.other_weights:
        other = run_worker("helpers-other", args, f"{ours['weights']}:{ours['dtype']}")
    hf_runs = {} if args.no_hf else {kind: run_worker(kind, args) for kind in dict.fromkeys(hf_kinds[d] for d in asked)}
    bandwidth = run_worker("bandwidth", args)["read_gb_s"]
    bound = bandwidth * 1e9 / weight_bytes_per_token(folder)  # tokens/s if decode only read the weights

    rows = [(f"helpers (fast, {ours['dtype']}, {ours['weights']})", ours)]
    if other:
        rows.append((f"helpers ({other['dtype']}, {other['weights']})", other))
    rows += [(f"Hugging Face ({r['dtype']})", r) for r in hf_runs.values()]
    print(f"shape {args.shape}: checkpoint {ckpt_gb:.2f} GB, {args.prompt_tokens} prompt tokens, "
          f"{args.new_tokens} new tokens, {args.threads} threads, medians of {args.reps}")
    print(f"{'':32s} {'prefill s':>10s} {'decode tok/s':>13s} {'peak RSS GB':>12s}")
    for name, r in rows:
        print(f"{name:32s} {r['prefill_s']:10.3f} {r['decode_tok_s']:13.2f} {r['peak_rss_gb']:12.2f}")
    print(f"read bandwidth {bandwidth:.1f} GB/s -> decode bound {bound:.2f} tok/s")
    result = {"shape": args.shape, "checkpoint_gb": ckpt_gb, "threads": args.threads,
              "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "reps": args.reps,
              "read_bandwidth_gb_s": bandwidth, "decode_bound_tok_s": bound,
              "helpers": {k: v for k, v in ours.items() if k != "tokens"}, "peak_rss_gb": ours["peak_rss_gb"],
              "decode_fraction_of_bandwidth_bound": ours["decode_tok_s"] / bound}
    if other:
        result["helpers_other"] = {k: v for k, v in other.items() if k != "tokens"}
        result["same_tokens_other"] = other["tokens"] == ours["tokens"]
    if hf_runs:
        best_prefill = min(r["prefill_s"] for r in hf_runs.values())
        best_decode = max(r["decode_tok_s"] for r in hf_runs.values())
        result.update({"hf": {k: {kk: vv for kk, vv in r.items() if kk != "tokens"} for k, r in hf_runs.items()},
                       "prefill_speedup_vs_hf": best_prefill / ours["prefill_s"],
                       "decode_speedup_vs_hf": ours["decode_tok_s"] / best_decode,
                       "same_tokens_as_hf": {k: r["tokens"] == ours["tokens"] for k, r in hf_runs.items()}})
        print(f"vs the faster Hugging Face setting: prefill {result['prefill_speedup_vs_hf']:.2f}x, "
              f"decode {result['decode_speedup_vs_hf']:.2f}x")
        if other:
            result["other_prefill_speedup_vs_hf"] = best_prefill / other["prefill_s"]
            result["other_decode_speedup_vs_hf"] = other["decode_tok_s"] / best_decode
            print(f"  weights as {other['weights']}: prefill {result['other_prefill_speedup_vs_hf']:.2f}x, "
                  f"decode {result['other_decode_speedup_vs_hf']:.2f}x")
    floor = ours["matvec_floor_s"]
    result["matvec_floor_s"] = floor
    print(f"helpers' matrix-vector products alone, every weight once (the kernel's floor for a decode step): "
          f"{floor * 1e3:.1f} ms, {floor * ours['decode_tok_s']:.0%} of its median step ({1e3 / ours['decode_tok_s']:.1f} ms)")
    if hf_runs:
        need = 1 / (1.1 * max(r["decode_tok_s"] for r in hf_runs.values()))
        print(f"1.1x the faster Hugging Face decode needs a step of {need * 1e3:.1f} ms: {(need - floor) * 1e3:.1f} ms "
              "above that floor for everything else")
    print(f"decode at {result['decode_fraction_of_bandwidth_bound']:.0%} of the bandwidth bound; "
          f"peak RSS {ours['peak_rss_gb']:.2f} GB for a {ckpt_gb:.2f} GB checkpoint")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
