"""Seeding (``patchloupe.train.rng``): stateless per-step seeds, global seeding, RNG capture/restore."""

from __future__ import annotations

import random

import numpy as np
import torch
from patchloupe.train.rng import capture_rng_state, derive_seed, restore_rng_state, seed_everything


def test_derive_seed_and_seed_everything() -> None:
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 2, 4)
    seed_everything(5)
    a = (np.random.rand(), torch.rand(1))
    seed_everything(5)
    assert (np.random.rand(), torch.rand(1)) == a


def test_capture_restore_rng_state_replays_every_stream() -> None:
    seed_everything(3)
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2))
    seed_everything(4)  # move every stream elsewhere
    restore_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])
