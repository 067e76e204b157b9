"""Training: stage 1 (pattern generator, MSE) and stage 2 (comparator), checkpoints, DDP.

Modules:

- :mod:`patchloupe.train.common`: weights I/O, atomic checkpoints, schedule, seeding, progress,
  distributed helpers (shared by both stages).
- :mod:`patchloupe.train.sampling`: :class:`TripletSampler` and grid-triplet helpers.
- :mod:`patchloupe.train.stage1`: :func:`train_generator` (also under ``torchrun``).
- :mod:`patchloupe.train.pretrain`: generic pre-training on generated textures, and the packaged
  default generator (:func:`load_default_generator`).
- :mod:`patchloupe.train.stage2`: comparator training.

Heavy submodules are imported lazily on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

from patchloupe.train.common import (
    CheckpointError,
    CheckpointManager,
    Progress,
    WeightsError,
    init_distributed,
    is_main_process,
    load_weights,
    save_weights,
    seed_everything,
    warmup_cosine,
)
from patchloupe.train.sampling import TripletBatch, TripletSampler, grid_triplets, image_triplets

_LAZY = {
    "TrainResult": "stage1",
    "train_generator": "stage1",
    "evaluate_prediction": "stage1",
    "pretrain": "pretrain",
    "default_generator_path": "pretrain",
    "load_default_generator": "pretrain",
    "add_pretrain_arguments": "pretrain",
    "run_pretrain": "pretrain",
}

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "Progress",
    "TripletBatch",
    "TripletSampler",
    "WeightsError",
    "grid_triplets",
    "image_triplets",
    "init_distributed",
    "is_main_process",
    "load_weights",
    "save_weights",
    "seed_everything",
    "warmup_cosine",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'patchloupe.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"patchloupe.train.{module}"), name)
