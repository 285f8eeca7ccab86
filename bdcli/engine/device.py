"""Device and precision choice, in one place so that training and evaluation agree."""

from __future__ import annotations

import contextlib
import re

import torch

from ..errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a GPU that is not there is refused here, in one line,
    rather than failing later inside the first forward pass."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    dev = torch.device(device)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"device {device} asked for, but no CUDA GPU is visible")
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"device {device} asked for, but only {count} CUDA GPU(s) are visible (cuda:0..cuda:{count - 1})")
    return dev


def amp_dtype(device: torch.device, precision: str, bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. ``auto``: bf16 on CPU (on the 2-core CPU machines it
    trains MiniLM ~1.6x faster and infers 2.6-3.8x faster than fp32, shared/DESIGN.md), bf16 on a GPU
    that supports it, fp16 (with a GradScaler, see ``grad_scaler``) on one that does not. Weights and
    optimizer state stay fp32."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise UsageError("precision fp16 runs on a CUDA GPU only; use bf16 or fp32 on a CPU")
        return torch.float16
    if precision == "bf16" or device.type == "cpu":
        return torch.bfloat16
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
        return torch.bfloat16 if supported else torch.float16
    return None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = amp_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str, bf16_supported: bool | None = None):
    """A GradScaler when training runs in fp16 (its small range underflows gradients without one);
    None otherwise (bf16 has fp32's range)."""
    if amp_dtype(device, precision, bf16_supported) is not torch.float16:
        return None
    return torch.amp.GradScaler(device.type)
