"""Learning-rate schedule: linear warm-up, then cosine decay."""

from __future__ import annotations

import math

__all__ = ["warmup_cosine"]


def warmup_cosine(step: int, total: int, warmup: int, base_lr: float = 1.0, min_lr: float = 0.0) -> float:
    """Learning rate for 0-based optimizer ``step`` of ``total``.

    Linear warm-up ``base_lr * (step + 1) / warmup`` for ``step < warmup``, then cosine decay from
    ``base_lr`` to ``min_lr`` reached at ``step = total - 1``; ``min_lr`` after that. With the
    default ``base_lr=1.0`` it is a multiplier, e.g. for ``torch.optim.lr_scheduler.LambdaLR``
    (``lambda s: warmup_cosine(s, total, warmup, 1.0, min_lr / lr)``).
    """
    if total <= 0:
        raise ValueError("total must be positive")
    warmup = max(0, min(int(warmup), total))
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = total - warmup - 1
    if span <= 0:
        return base_lr if step < total else min_lr
    t = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))
