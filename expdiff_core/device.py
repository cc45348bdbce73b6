"""Device choice (``auto | cpu | cuda | cuda:N``) and the matching autocast context (bf16 on CUDA)."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from .errors import ExpDiffInputError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> ``cuda:0`` when CUDA is available, else ``cpu``; validates ``cuda:N`` exists."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ExpDiffInputError(None, f"device {spec!r} is not one of auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ExpDiffInputError(None, f"device {spec!r} asked for but CUDA is not available on this machine")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ExpDiffInputError(None, f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
        device = torch.device("cuda", index)
    elif device.type != "cpu":
        raise ExpDiffInputError(None, f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")
    return device


def autocast(device: torch.device) -> ContextManager:
    """bf16 autocast on CUDA; a no-op on CPU (fp32 there is both faster and exact)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
