"""Shared test setup.

Triton only runs on this CPU machine under its interpreter, and the flag must be set before any
kernel is defined, so it is set here, before anything imports ``patchloupe.kernels``. ``tests/`` goes on
``sys.path`` for the shared kernel checks (``tests/window_attention_checks.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

os.environ.setdefault("OMP_NUM_THREADS", "2")
try:  # only decide on the interpreter when there is no GPU
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(2)
except ImportError:  # pragma: no cover - torch is a hard dependency
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests when CUDA is absent."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
