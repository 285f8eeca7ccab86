"""Device and precision choice, in one place so that training and evaluation agree."""

from __future__ import annotations

import contextlib

import torch

from ..errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device} asked for, but no CUDA GPU is visible")
    return dev


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast where it helps: on the 2-core CPU machines it trains MiniLM ~1.6x faster and
    infers 2.6-3.8x faster than fp32 (shared/DESIGN.md); weights and optimizer state stay fp32."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    use_bf16 = precision == "bf16" or (
        precision == "auto" and (device.type == "cpu" or torch.cuda.is_bf16_supported())
    )
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
