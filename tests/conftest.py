"""Shared test setup.

Triton only runs on this CPU machine under its interpreter, and the flag must be set before any
kernel is defined, so it is set here, before anything imports ``patchloupe.kernels``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("OMP_NUM_THREADS", "2")
try:  # only decide on the interpreter when there is no GPU
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)  # tiny test workloads; >1 thread spins badly on a busy 2-core host
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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for the test, restored after; use ``pytest.mark.usefixtures("one_thread")``.

    Small ops on a shared, busy 2-core host: 2 intra-op threads spin-wait on each other and ran the
    training test 50x slower (127 s vs 2.5 s) under load; one thread is fast and deterministic."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
