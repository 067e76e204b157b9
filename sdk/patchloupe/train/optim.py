"""Optimiser setup shared by the trainers: AdamW parameter groups (weight decay on weight matrices only)."""

from __future__ import annotations

from typing import Any

from torch import nn

from patchloupe.train.distributed import unwrap_model

__all__ = ["param_groups"]

_NO_DECAY_HINTS = ("relative_position_bias_table", "absolute_pos", "pos_embed", "norm")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weight matrices/kernels only; none on biases, norm parameters and
    (relative) position tables (standard Swin practice). Parameter order is ``named_parameters()``."""
    decay, no_decay = [], []
    for name, p in unwrap_model(model).named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or any(h in name for h in _NO_DECAY_HINTS):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
