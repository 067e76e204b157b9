"""patchloupe.kernels: fused GPU kernels (Triton).

Importable without triton: triton is imported on the first kernel launch, and calling a kernel
without it raises a clear ``RuntimeError``. Use :func:`is_available` / :func:`supports` to decide
whether to dispatch here or fall back (``patchloupe.models.attention`` falls back to SDPA).

The public names are those of :mod:`patchloupe.kernels.attention` (``attention.__all__``).
"""

from __future__ import annotations

from .attention import *  # noqa: F403 - exactly attention.__all__
from .attention import __all__ as __all__  # the one list of public names
