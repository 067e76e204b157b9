"""Training: stage 1 (pattern generator, MSE) and stage 2 (comparator), checkpoints, DDP.

Modules:

- :mod:`patchloupe.train.loop`: :class:`TrainingLoop`, the loop both trainers run (resume, LR schedule,
  AMP, checkpoint cadence, progress, loss history), :class:`LoopConfig` and :class:`TrainResult`.
- :mod:`patchloupe.train.stage1`: :func:`train_generator` (also under ``torchrun``),
  :class:`GeneratorTrainConfig`, :func:`evaluate_prediction`.
- :mod:`patchloupe.train.stage2`: :func:`train_comparator`, :class:`ComparatorTrainConfig`.
- :mod:`patchloupe.train.pretrain`: generic pre-training on generated textures, and the packaged
  default generator (:func:`load_default_generator`).
- :mod:`patchloupe.train.sampling`: :class:`TripletSampler` and grid-triplet helpers.
- :mod:`patchloupe.train.weights`: :func:`save_weights` / :func:`load_weights` (safetensors + JSON).
- :mod:`patchloupe.train.checkpoint`: :class:`CheckpointManager`, pickle-free state encoding.
- :mod:`patchloupe.train.rng`, :mod:`~patchloupe.train.schedule`, :mod:`~patchloupe.train.progress`,
  :mod:`~patchloupe.train.optim`, :mod:`~patchloupe.train.devices`, :mod:`~patchloupe.train.distributed`:
  seeding, the LR schedule, the progress bar, AdamW groups, device/AMP choice, torchrun helpers.

Nothing is imported eagerly: ``import patchloupe.train`` loads no torch; each name below is imported
from its module on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CheckpointError": "checkpoint",
    "CheckpointManager": "checkpoint",
    "ComparatorTrainConfig": "stage2",
    "GeneratorTrainConfig": "stage1",
    "LoopConfig": "loop",
    "PretrainConfig": "pretrain",
    "Progress": "progress",
    "TrainResult": "loop",
    "TrainingLoop": "loop",
    "TripletBatch": "sampling",
    "TripletSampler": "sampling",
    "WeightsError": "weights",
    "add_pretrain_arguments": "pretrain",
    "default_generator_path": "pretrain",
    "evaluate_prediction": "stage1",
    "grid_triplets": "sampling",
    "image_triplets": "sampling",
    "init_distributed": "distributed",
    "is_main_process": "distributed",
    "load_default_generator": "pretrain",
    "load_weights": "weights",
    "pretrain": "pretrain",
    "run_pretrain": "pretrain",
    "save_weights": "weights",
    "seed_everything": "rng",
    "train_comparator": "stage2",
    "train_generator": "stage1",
    "warmup_cosine": "schedule",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'patchloupe.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"patchloupe.train.{module}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
