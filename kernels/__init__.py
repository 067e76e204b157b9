"""patchloupe.kernels: fused GPU kernels (Triton).

Importable without triton: triton is imported on the first kernel launch, and calling a kernel
without it raises a clear ``RuntimeError``. Use :func:`is_available` / :func:`supports` to decide
whether to dispatch here or fall back (``patchloupe.models.attention`` falls back to SDPA).
"""

from __future__ import annotations

from .window_attention import (
    MAX_HEAD_DIM,
    MAX_TOKENS,
    MIN_HEAD_DIM,
    is_available,
    supports,
    supports_fused_shift,
    window_attention,
    window_attention_fused_shift,
)

__all__ = [
    "MAX_HEAD_DIM",
    "MAX_TOKENS",
    "MIN_HEAD_DIM",
    "is_available",
    "supports",
    "supports_fused_shift",
    "window_attention",
    "window_attention_fused_shift",
]
