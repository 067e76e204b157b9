"""Devices and mixed precision for training: default device, autocast dtype, autocast context."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["autocast", "resolve_amp", "resolve_device"]


def resolve_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """``None`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU; strings -> ``torch.device``."""
    if device is None:
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


def resolve_amp(amp: str | bool | None, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp`` in ``"auto"`` / ``"bf16"`` / ``"fp16"`` / ``"off"`` (or bool / None).

    ``"auto"``: bf16 on CUDA devices that support it, fp16 on older CUDA devices, off on CPU (CPU
    autocast is usually slower and changes numerics). ``fp16`` needs a ``torch.amp.GradScaler``;
    callers should create one exactly when this returns ``torch.float16``.
    """
    if amp is None or amp is False or amp == "off" or amp == "none":
        return None
    if amp is True or amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("fp16 autocast is only supported on CUDA; use amp='bf16' or 'off' on CPU")
        return torch.float16
    raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {amp!r}")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
