"""Randomness: global seeding, stateless per-step seeds, and capture/restore of the global RNG states."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["capture_rng_state", "derive_seed", "restore_rng_state", "seed_everything"]


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python ``random``, NumPy's legacy global RNG and torch (CPU and all CUDA devices).

    ``deterministic=True`` also asks torch for deterministic kernels (``warn_only``) and disables
    cuDNN benchmarking; CPU training here is deterministic without it.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integers, e.g. ``derive_seed(seed, rank, step)``.

    Stateless (``numpy.random.SeedSequence``), so a step's randomness depends only on its keys: this
    is what makes resumed and multi-rank runs reproducible without saving sampler state.
    """
    entropy = [int(k) % 2**63 for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy-global, torch CPU and CUDA RNG states (for :func:`encode_state`)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are restored when the device count matches)."""
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"].to(torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in cuda])
        else:
            logger.warning(
                "checkpoint has %d CUDA RNG states, %d devices here: not restored", len(cuda), torch.cuda.device_count()
            )
