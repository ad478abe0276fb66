"""The *fast* mode: compute in what this machine multiplies fastest, chosen by measuring.

The *exact* mode (float32, what tests and check cells use) upcasts each bf16 weight as it is used (into buffers
reused from layer to layer: helpers.model.converted): fine for small models, slow for big ones. The fast mode
measures. Where bf16 matrix products are quick (a GPU, a CPU with bf16 instructions) it computes in bf16 on Meta's
stored weights (RMSNorm, RoPE and softmax stay in float32, as in Meta's code). Where they are slow (a CPU without
bf16 instructions) it computes in float32, and keeps the weights as stored unless a float32 matrix-vector product
is clearly faster here (and a float32 copy fits): one token then multiplies in bf16, reading half the bytes, and a
prompt converts blocks of rows as it goes (helpers.layers.linear_stored); otherwise it converts them once. On a GPU the rule is Meta's:
bf16 where the GPU supports it, else float16 (helpers.devices).
Override the choice with the `dtype` argument or LLAMA3_DTYPE=bfloat16|float16|float32.
"""
from __future__ import annotations

import os
import time

import torch

from .devices import describe, fast_dtype_for, pick_device
from .errors import LlamaError

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
          "float16": torch.float16, "fp16": torch.float16}


def gemm_gflops(dtype: torch.dtype, rows: int = 32, dim: int = 2048, reps: int = 5) -> float:
    """Median GFLOP/s of [rows, dim] @ [dim, dim].T in `dtype`: a prompt-sized product through a weight stored as
    Meta stores it ([out, in]), the product `linear` computes (torch's kernel depends on the layout: on an AVX2
    CPU, bf16 `a @ b` with b stored [in, out] measured 0.3 GFLOP/s, `a @ b.T` 21)."""
    a, w = torch.randn(rows, dim).to(dtype), torch.randn(dim, dim).to(dtype)
    a @ w.T  # warm-up: the first call picks kernels
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ w.T
        times.append(time.perf_counter() - start)
    return 2 * rows * dim * dim / sorted(times)[len(times) // 2] / 1e9


def pick_dtype(dtype: str | torch.dtype | None = None, device: torch.device | None = None) -> torch.dtype:
    """The compute dtype: `dtype` if given, else $LLAMA3_DTYPE, else auto: on a GPU, Meta's rule (bf16 where
    supported, else float16: helpers.devices.fast_dtype_for); on a CPU, bf16 when a short probe finds bf16 matrix
    products at least 1.5x faster than float32 here, else float32."""
    choice = dtype if dtype is not None else os.environ.get("LLAMA3_DTYPE", "auto")
    if isinstance(choice, torch.dtype):
        return choice
    choice = choice.lower()
    if choice == "auto":
        on_gpu = fast_dtype_for(device) if device is not None else None
        if on_gpu is not None:
            return on_gpu
        return torch.bfloat16 if gemm_gflops(torch.bfloat16) >= 1.5 * gemm_gflops(torch.float32) else torch.float32
    if choice not in DTYPES:
        raise LlamaError(f"Unknown compute dtype {choice!r}: use bfloat16, float16, float32 or auto.")
    return DTYPES[choice]


def cast_weights(weights: dict, dtype: torch.dtype | None, device: torch.device | str | None = None) -> dict:
    """The weights in the compute dtype (None: each as stored) on `device` (None: where they are), converted once
    (not on every use), tensor by tensor: from a memory-mapped checkpoint, host memory holds at most one converted
    tensor in transit.
    Tensors already in that dtype and place are shared, not copied: for Meta's bf16 checkpoint in bf16 mode on
    the CPU this copies nothing. The embedding table keeps its stored dtype (forward converts only the rows it
    picks) unless it doubles as the output layer."""
    return {name: tensor.to(device=device, dtype=new_dtype(weights, name, dtype)) for name, tensor in weights.items()}


def new_dtype(weights: dict, name: str, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype cast_weights gives weights[name]: `dtype`, except None (as stored) and an untied embedding table
    (as stored: forward converts only the rows it picks)."""
    stored = weights[name].dtype
    untied_table = name == "tok_embeddings.weight" and "output.weight" in weights
    return stored if dtype is None or untied_table else dtype


def memory_available(device: torch.device) -> int | None:
    """Bytes free for new tensors on `device`: a CUDA GPU's free memory, the host's available RAM for the CPU and
    for MPS (which shares it), None where unknown (e.g. the meta device)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type in ("cpu", "mps"):
        try:
            import psutil  # installed with Jupyter
        except ImportError:
            return None
        return psutil.virtual_memory().available
    return None


def copy_bytes(weights: dict, dtype: torch.dtype, device: torch.device) -> int:
    """Bytes of the new tensors cast_weights(weights, dtype, device) allocates (shared tensors cost nothing)."""
    total = 0
    for name, tensor in weights.items():
        target = new_dtype(weights, name, dtype)
        if target != tensor.dtype or tensor.device != device:
            total += tensor.numel() * target.itemsize
    return total


def gemv_seconds(dtype: torch.dtype, rows: int = 8192, cols: int = 4096, reps: int = 9) -> float:
    """The best of `reps` timings of the matrix-vector product [rows, cols] @ [cols] in `dtype`: a decode step's
    kernel, on a matrix larger than a CPU's caches (64 MB in bf16), so that it measures reading memory, as decode
    does. The best, not the median: other work on the machine only ever adds time, and the choice it feeds
    (keeps_stored) must not flip with a busy moment."""
    w, x = torch.full((rows, cols), 0.5, dtype=dtype), torch.full((cols,), 0.5, dtype=dtype)
    w @ x  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        w @ x
        times.append(time.perf_counter() - start)
    return min(times)


def keeps_stored(stored: torch.dtype, chosen: torch.dtype, copy_fits: bool, device: torch.device) -> bool:
    """The measured (auto) fast mode on a CPU: keep the weights as stored and compute in `chosen` (float32 where
    bf16 matrix products are slow) by layers.linear_stored, instead of a converted copy? Yes when the copy does
    not fit, and unless a matrix-vector product in `chosen` is clearly faster here (the stored dtype's takes over
    1.2x as long): a decode step reads each weight once, a bf16 weight is half the bytes, and the copy would cost
    memory (the 1B: 7.1 GB instead of 2.6). The probe judges decode only; a prompt pays for converting blocks of
    rows as it goes (README, Speed and memory). Near 1.2x the choice may differ from run to run: either way about
    as fast."""
    if device.type != "cpu" or stored == chosen or stored.itemsize >= chosen.itemsize:
        return False
    return not copy_fits or gemv_seconds(stored) <= 1.2 * gemv_seconds(chosen)  # a copy only for a clear win


def choose_mode(weights: dict, dtype: str | torch.dtype | None = None, exact_below_gb: float = 1.0,
                device: str | torch.device | None = None):
    """-> (weights, compute dtype, fused) for generation, on the device helpers.devices.pick_device chooses
    (`device`, else $LLAMA3_DEVICE, else auto). `dtype` None or "auto": the exact mode for a small checkpoint (the
    tiny model: quick anyway, and bit-for-bit the tests' numbers): float32, the full score matrix (fused False).
    Otherwise the fast mode (fused True): torch's fused attention, so that a long prompt never holds all heads'
    [T, T] scores, and the measured (or given) dtype. A measured dtype on a CPU is computed on the weights as
    stored unless a copy is clearly faster and fits (keeps_stored; an 8B in float32 needs 30 GB); otherwise the
    weights are converted once, tensor by tensor. A measured dtype that fits nowhere gives way to the
    checkpoint's own; a dtype asked for is used throughout (converted once unless stored in it), and is a
    LlamaError if it does not fit."""
    device = pick_device(device)
    size_gb = sum(t.numel() * t.element_size() for t in weights.values()) / 1e9
    asked = None if dtype in (None, "auto") else dtype  # "auto" (the CLI's default) defers to $LLAMA3_DTYPE too
    auto = asked is None and os.environ.get("LLAMA3_DTYPE", "auto") == "auto"
    exact = auto and size_gb < exact_below_gb
    chosen = torch.float32 if exact else pick_dtype(asked, device)
    stored = weights["tok_embeddings.weight"].dtype
    free = memory_available(device)
    fits = free is None or copy_bytes(weights, chosen, device) <= 0.9 * free
    if auto and not exact and keeps_stored(stored, chosen, fits, device):
        return cast_weights(weights, None, device), chosen, True  # moved if need be, never converted
    if not fits:
        if auto and not exact and copy_bytes(weights, stored, device) <= 0.9 * free:
            chosen = stored  # the measured choice does not fit: compute in the checkpoint's dtype, nothing copied
        else:
            raise LlamaError(f"The weights in {str(chosen).replace('torch.', '')} on {device} need "
                             f"{copy_bytes(weights, chosen, device) / 1e9:.1f} GB but {free / 1e9:.1f} GB is free: "
                             "choose a smaller dtype (--dtype bfloat16) or model, or free memory.")
    return cast_weights(weights, chosen, device), chosen, not exact


def describe_mode(weights: dict, dtype: torch.dtype, fused: bool) -> str:
    """A few words for what choose_mode returned, e.g. "float32 on the stored bfloat16 weights"."""
    name = str(dtype).replace("torch.", "")
    untied_table = "tok_embeddings.weight" if "output.weight" in weights else None  # as stored in every mode
    stored = {t.dtype for k, t in weights.items() if t.dim() == 2 and k != untied_table} - {dtype}
    return on_stored(name, stored.pop()) if fused and stored else name


def on_stored(compute: str, stored: torch.dtype) -> str:
    """The words for computing in `compute` on weights kept in `stored` (describe_mode's and mode_banner's)."""
    kept = str(stored).replace("torch.", "")
    return f"{compute} on the stored {kept} weights (one-token products in {kept})"


def mode_banner(model_bytes: int, exact_below_gb: float = 1.0) -> str:
    """One line for a notebook's banner: where and in which dtype its cells compute (choose_mode's rules, for a
    bf16 checkpoint of model_bytes). The step-by-step and check cells always compute on the CPU in float32; the
    loops and demonstrations use helpers.choose_mode's device and dtype."""
    device = pick_device()
    auto = os.environ.get("LLAMA3_DTYPE", "auto") == "auto"
    exact = auto and model_bytes < exact_below_gb * 1e9
    if exact and device.type == "cpu":
        return "Compute: float32 (the exact mode) on cpu, every cell"
    if exact:
        return f"Compute: float32 (the exact mode); step-by-step cells on the CPU, loops and demonstrations on {describe(device)}"
    dtype = pick_dtype(None, device)
    free = memory_available(device)
    copied = 0 if device.type == "cpu" and dtype == torch.bfloat16 else model_bytes * dtype.itemsize / 2
    fits = free is None or copied <= 0.9 * free  # choose_mode's rule, for a bf16 checkpoint
    name = str(dtype).replace("torch.", "")
    if auto and keeps_stored(torch.bfloat16, dtype, fits, device):
        name = on_stored(name, torch.bfloat16)
    elif not fits:
        name += " (which does not fit in memory: helpers.choose_mode will refuse it)"
    return (f"Compute: check cells in float32 (the exact mode) on the CPU; loops and demonstrations in "
            f"{name} on {describe(device)} (the fast mode, helpers.choose_mode)")
