"""Where to compute: the one place that chooses a device. Every other function runs where its tensors are.

LLAMA3_DEVICE (or --device, or the `device` argument) = auto | cpu | cuda | cuda:N | mps; auto takes the first of
cuda, mps, cpu that this torch can use. A device asked for but absent is a LlamaError, said in one sentence.
"""
from __future__ import annotations

import os

import torch

from .errors import LlamaError

CHOICES = "auto, cpu, cuda, cuda:N or mps"


def mps_available() -> bool:
    """True on a Mac with Apple silicon whose torch was built with MPS."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(device: str | torch.device | None = None, source: str = "the device argument") -> torch.device:
    """The device to compute on: `device` if given, else $LLAMA3_DEVICE, else auto (cuda, then mps, then cpu).
    `source` names where `device` came from in the error message (e.g. "--device")."""
    if isinstance(device, torch.device):
        return device
    source = source if device is not None else "LLAMA3_DEVICE"
    choice = (device if device is not None else os.environ.get("LLAMA3_DEVICE", "auto")).strip().lower() or "auto"
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "mps":
        if not mps_available():
            raise LlamaError(f"{source} asks for mps, but this torch sees no Apple MPS device (it needs a Mac with "
                             "Apple silicon): use cpu or auto.")
        return torch.device("mps")
    kind, _, index = choice.partition(":")
    if kind == "cuda" and (index == "" or index.isdigit()):
        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise LlamaError(f"{source} asks for {choice}, but this torch ({torch.__version__}, {build}) "
                             "sees no CUDA GPU: use cpu or auto, or install torch for your CUDA version.")
        if index and int(index) >= torch.cuda.device_count():
            raise LlamaError(f"{source} asks for {choice}, but this machine has {torch.cuda.device_count()} CUDA "
                             f"GPU(s), numbered from 0: pick one of them.")
        return torch.device(choice)
    raise LlamaError(f"Unknown device {choice!r} in {source}: use {CHOICES}.")


def fast_dtype_for(device: torch.device) -> torch.dtype | None:
    """The fast mode's dtype on a GPU, by Meta's rule for CUDA (llama_models/llama3/generation.py: bf16 where the
    GPU supports it, else float16), and the same rule, probed, on Apple's MPS; None on a CPU, where helpers.fast.pick_dtype measures instead. Meta calls
    torch.cuda.is_bf16_supported(), which in recent torch also says True for GPUs that only emulate bf16 (compute
    capability below 8: T4, V100); without emulation, as here, those get float16, which they compute natively."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if device.type == "mps":  # Meta's code knows only CUDA (and XPU); on a Mac: bf16 where it works, else float16
        try:  # bf16 on MPS needs macOS 14 or later
            torch.ones(2, 2, dtype=torch.bfloat16, device=device) @ torch.ones(2, 2, dtype=torch.bfloat16, device=device)
            return torch.bfloat16
        except (RuntimeError, TypeError):
            return torch.float16
    return None


def describe(device: torch.device) -> str:
    """A short human name for the device: 'cpu', 'cuda:0 (NVIDIA A100-SXM4-40GB)', 'mps (Apple GPU)'."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return str(device)
