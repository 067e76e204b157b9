"""patchloupe.kernels: fused GPU kernels (Triton).

Importable without triton: triton is imported on the first kernel launch, and calling a kernel
without it raises a clear ``RuntimeError``. Use :func:`is_available` / :func:`supports` to decide
whether to dispatch here or fall back (``patchloupe.models.attention`` falls back to SDPA).

The public names are those of ``window_attention.__all__``, re-exported here (so the package
attribute ``window_attention`` is the function; import the submodule with ``importlib``).
"""

from __future__ import annotations

from .window_attention import *  # noqa: F403 - exactly window_attention.__all__
from .window_attention import __all__ as __all__  # the one list of public names
