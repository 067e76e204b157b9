"""Stage 2 (method §3): train the pattern comparator against a frozen generator.

Each step draws a batch of (first, second, target) patch triplets from the defect-free images
(``TripletSampler``), lets the frozen generator paint the target, and replaces the REAL target of a
random ``defect_prob`` share of the batch by a synthetically defected copy with its exact mask
(``patchloupe.data.defects``). Pairs (prediction, clean real) are matching (y = +1, mask 0); pairs
(prediction, defected real) are non-matching (y = -1, mask = defect mask area-averaged to h/4 x w/4,
kept soft).

Loss (see :func:`comparator_loss`):

- similarity: hinge ``max(0, margin - y * s)`` with ``s`` the comparator's *logit* (``P = sigmoid(s)``).
  We use the logit, not ``2P - 1``: ``2P - 1`` lies in (-1, 1), so ``1 - y(2P - 1)`` is never zero (the
  hinge degenerates to a linear loss on P) and its gradient ``2P(1-P)`` vanishes for confidently wrong
  pairs. On the logit the hinge is the usual SVM hinge: zero once ``y * s >= margin`` (P >= 0.73 for
  matches, <= 0.27 for defects at margin 1), constant slope for wrong pairs.
- mask: binary cross-entropy on the mask logits plus soft Dice (batch-level, so false positives on
  clean pairs count), both rising with the mask error. The paper's printed mask term
  ``1 / (1 + exp(||I_o - I_g||_1))`` FALLS as the L1 mask error grows, so minimising it would reward
  wrong masks: it is a typo and is not used.

``precompute=N`` caches the frozen generator's predictions for a pool of N triplets once and draws
batches from the pool, with random joint flips of the (prediction, real) pair; defects are still
synthesised on the fly, so non-matching pairs never repeat. Measured on one CPU thread, batch 32,
40 steps including building a 256-pair pool: tiny preset (32 px patches) 1.07 s -> 0.70 s; edge
preset (64 px patches) 6.2 s -> 2.65 s (1.0 s of it the pool; per step 155 ms -> 41 ms). Defect
synthesis and the comparator step remain. Off by default because a pool fixes the set of
predictions: use N well above ``batch_size`` (e.g. >= 50 batches' worth) for long runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from patchloupe.data.defects import DEFECT_KINDS, synthesize_defect
from patchloupe.models.comparator import PatternComparator
from patchloupe.train.loop import LoopConfig, StepOutput, TrainingLoop, TrainResult
from patchloupe.train.optim import param_groups
from patchloupe.train.rng import derive_seed
from patchloupe.train.sampling import TripletSampler

logger = logging.getLogger(__name__)

__all__ = [
    "ComparatorTrainConfig",
    "TrainResult",
    "downsample_mask",
    "comparator_loss",
    "hinge_loss",
    "mask_loss",
    "make_defect_batch",
    "score_pairs",
    "train_comparator",
]


# ---------------------------------------------------------------------------------------------- losses
def hinge_loss(logit: torch.Tensor, y: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean ``max(0, margin - y * s)``; ``logit`` (B,) is the similarity score s, ``y`` (B,) in {+1, -1}."""
    return F.relu(margin - y * logit).mean()


def mask_loss(mask_logit: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """BCE(mask) + ``dice_weight`` * soft Dice; both RISE with the mask error.

    mask_logit, target: ``(B, 1, mh, mw)``, target in [0, 1] (soft allowed). Dice is computed over the
    whole batch (one ratio), so pairs with empty targets still penalise predicted foreground.
    (Not the paper's printed ``1 / (1 + exp(||I_o - I_g||_1))``, which falls as the error rises.)
    """
    bce = F.binary_cross_entropy_with_logits(mask_logit, target)
    if dice_weight == 0:
        return bce
    p = torch.sigmoid(mask_logit)
    dice = 1.0 - (2.0 * (p * target).sum() + 1.0) / (p.sum() + target.sum() + 1.0)
    return bce + dice_weight * dice


def comparator_loss(
    logit: torch.Tensor,
    mask_logit: torch.Tensor,
    y: torch.Tensor,
    mask_target: torch.Tensor,
    *,
    margin: float = 1.0,
    mask_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total stage-2 loss = hinge(logit, y) + ``mask_weight`` * mask_loss; returns (loss, parts).

    logit (B,), y (B,) in {+1, -1}, mask_logit / mask_target (B, 1, mh, mw).
    """
    h = hinge_loss(logit, y, margin)
    m = mask_loss(mask_logit, mask_target, dice_weight)
    total = h + mask_weight * m
    return total, {"loss": float(total.detach()), "hinge": float(h.detach()), "mask": float(m.detach())}


# ---------------------------------------------------------------------------------------------- data
def make_defect_batch(
    real: torch.Tensor,
    rng: np.random.Generator,
    defect_prob: float = 0.5,
    kinds: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Defect a random ``round(defect_prob * B)`` of the patches ``real`` (B, 3, h, w) in [0, 1].

    Returns ``(real_out (B,3,h,w), y (B,) float {+1 clean/match, -1 defected}, mask (B,1,h,w) float {0,1})``
    on ``real``'s device. Each defected patch gets a random kind from ``kinds`` (default all
    ``DEFECT_KINDS``) and another patch of the batch as ``source`` (the foreign texture of ``perlin``,
    the donor of ``cutpaste``). ``synthesize_defect`` guarantees a non-empty mask that marks exactly
    the changed pixels (each by >= ``MIN_CHANGE``), so every defected pair really differs.
    """
    b = real.shape[0]
    kinds = tuple(kinds) if kinds else DEFECT_KINDS
    y = torch.ones(b)
    masks = torch.zeros(b, 1, real.shape[2], real.shape[3])
    n_def = int(round(defect_prob * b))
    if n_def == 0:
        return real, y.to(real.device), masks.to(real.device)
    out = real.detach().clone()
    np_real = real.detach().float().cpu().permute(0, 2, 3, 1).numpy()  # (B, h, w, 3)
    for i in rng.choice(b, size=n_def, replace=False):
        source = None
        if b > 1:
            j = int(rng.integers(b - 1))
            source = np_real[j + int(j >= i)]  # another patch of the batch
        kind = kinds[int(rng.integers(len(kinds)))]
        defected, mask = synthesize_defect(np.ascontiguousarray(np_real[i]), rng, kind=kind, source=source)
        out[i] = torch.from_numpy(np.ascontiguousarray(defected.transpose(2, 0, 1))).to(out.device)
        masks[i, 0] = torch.from_numpy(mask)
        y[i] = -1.0
    return out, y.to(real.device), masks.to(real.device)


def downsample_mask(mask: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """Area-average ``(B, 1, h, w)`` -> soft ``(B, 1, h/factor, w/factor)`` in [0, 1]."""
    return F.avg_pool2d(mask, factor)


class _PredictionPool:
    """Frozen-generator predictions for a fixed pool of triplets, stored as uint8 on the CPU."""

    def __init__(
        self,
        generator: nn.Module,
        sampler: TripletSampler,
        size: int,
        device: torch.device,
        rng: np.random.Generator,
        chunk: int = 64,
    ) -> None:
        preds, reals = [], []
        done = 0
        while done < size:
            n = min(chunk, size - done)
            first, second, target = sampler.sample(n, rng=rng)
            with torch.no_grad():
                pred = generator(first.to(device), second.to(device)).float().clamp_(0, 1).cpu()
            preds.append(_to_u8(pred))
            reals.append(_to_u8(target.float()))
            done += n
        self.pred = torch.cat(preds)
        self.real = torch.cat(reals)

    def __len__(self) -> int:
        return self.pred.shape[0]

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pred, real)`` each (B, 3, h, w) float32 in [0, 1], jointly flipped at random."""
        idx = torch.from_numpy(rng.integers(len(self), size=batch))
        pred = self.pred[idx].float().div_(255.0)
        real = self.real[idx].float().div_(255.0)
        flip_h = torch.from_numpy(rng.random(batch) < 0.5)
        flip_v = torch.from_numpy(rng.random(batch) < 0.5)
        for flip, dim in ((flip_h, 3), (flip_v, 2)):
            if flip.any():
                pred[flip] = pred[flip].flip(dim)
                real[flip] = real[flip].flip(dim)
        return pred, real


def _to_u8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1).mul(255.0).round_().to(torch.uint8)


# ---------------------------------------------------------------------------------------------- training
@dataclass(kw_only=True)
class ComparatorTrainConfig(LoopConfig):
    """Settings of :func:`train_comparator` (the schedule, checkpoint and progress ones are
    :class:`~patchloupe.train.loop.LoopConfig`'s; ``lr`` defaults to 3e-3 and ``warmup`` to 5 % of
    ``steps``, at most 100).

    ``image_size`` / ``grid``: sampler geometry (required unless the images are a
    :class:`TripletSampler`). ``batch_size``: pairs per step (>= 2). ``weight_decay``: AdamW decay on
    weight matrices. ``seed``: keys all randomness. ``defect_prob``: share of each batch whose real
    patch is defected, with a kind drawn from ``defect_kinds`` (default all ``DEFECT_KINDS``).
    ``directions`` / ``offset_jitter``: see :class:`TripletSampler`. ``margin`` / ``mask_weight`` /
    ``dice_weight``: see :func:`comparator_loss`. ``precompute``: size of the cached prediction pool
    (0 = run the generator every step). ``device``: default the comparator's device.
    """

    lr: float = 3e-3
    image_size: Sequence[int] | None = None
    grid: Sequence[int] | None = None
    batch_size: int = 32
    weight_decay: float = 1e-4
    seed: int = 0
    defect_prob: float = 0.5
    defect_kinds: Sequence[str] | None = None
    directions: Sequence[str] = ("ltr", "rtl")
    offset_jitter: bool | float = 0.5
    margin: float = 1.0
    mask_weight: float = 1.0
    dice_weight: float = 1.0
    precompute: int = 0
    device: str | torch.device | None = None

    warmup_cap: ClassVar[int] = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2")
        if not 0.0 <= self.defect_prob <= 1.0:
            raise ValueError(f"defect_prob must be in [0, 1], got {self.defect_prob}")
        unknown = set(self.kinds) - set(DEFECT_KINDS)
        if unknown:
            raise ValueError(f"unknown defect kinds {sorted(unknown)}; choose from {DEFECT_KINDS}")

    @property
    def kinds(self) -> tuple[str, ...]:
        """``defect_kinds`` as a tuple, or all ``DEFECT_KINDS`` when not set."""
        return tuple(self.defect_kinds) if self.defect_kinds else DEFECT_KINDS


def train_comparator(
    comparator: PatternComparator,
    generator: nn.Module,
    images: Sequence[np.ndarray] | TripletSampler,
    config: ComparatorTrainConfig | None = None,
    **settings: Any,
) -> TrainResult:
    """Train ``comparator`` in place for ``steps`` optimiser steps (in total) against the frozen ``generator``.

    Settings: a :class:`ComparatorTrainConfig` and/or its fields as keywords (keywords override the
    config's); ``steps`` is required.

    ``images``: defect-free uint8 ``(H, W, 3)`` images (resized once to ``image_size`` = (H, W) and cut
    into ``grid`` = (rows, cols) patches ``(ph, pw)``, multiples of 4, >= 16) or a ready
    :class:`TripletSampler` (then ``image_size``, ``grid``, ``directions`` and ``offset_jitter`` are
    its own). ``offset_jitter``: share of triplets drawn off the inference grid (more variety of
    generator errors); the rest are exactly the inference triplets.

    Each step: ``batch_size`` (prediction, real) pairs, a random ``round(defect_prob * batch_size)``
    of them with the real patch defected (kind drawn from ``defect_kinds``, default all
    ``DEFECT_KINDS``); loss :func:`comparator_loss` (``margin``, ``mask_weight``, ``dice_weight``).
    AdamW (no decay on biases / BatchNorm), ``warmup`` steps (default 5 %, at most 100) of linear
    warm-up to ``lr`` then cosine decay to ``min_lr`` (default ``lr / 100``).

    ``precompute > 0``: run the generator once on a pool of that many triplets (uint8 cache) and draw
    each batch from the pool with random joint flips; defects are still drawn per step. Faster (no
    generator forward per step) at the price of a fixed set of predictions.

    Reproducible and resumable: all randomness of step ``s`` comes from ``derive_seed(seed, 2, s)``
    (pool: ``derive_seed(seed, 3)``), so ``resume=True`` (latest checkpoint in ``ckpt_dir``; model,
    AdamW moments, step) continues an interrupted run exactly. Checkpoints every ``ckpt_every`` steps
    (default ``steps // 10``) and at the end, atomically (:class:`CheckpointManager`).

    The generator is run in eval mode under ``no_grad`` (its mode is restored afterwards); the
    comparator ends in eval mode, on ``device`` (default: the comparator's device).
    ``callback(step, loss)`` runs after each optimiser step (1-based step count).
    Returns a :class:`TrainResult`; ``history`` holds one ``{"step", "loss", "hinge", "mask",
    "lr", "wall_s"}`` per ``log_every`` steps (default ``steps // 20`` clipped to [1, 100]).
    """
    t_start = time.perf_counter()
    cfg = ComparatorTrainConfig.build(config, **settings)
    dev = torch.device(cfg.device) if cfg.device is not None else next(comparator.parameters()).device
    sampler = _sampler(images, cfg)
    comparator.to(dev)
    gen_was_training = generator.training
    generator.to(dev).eval()
    try:
        pool = None
        if cfg.precompute > 0:
            t_pool = time.perf_counter()
            rng = np.random.default_rng(derive_seed(cfg.seed, 3))
            pool = _PredictionPool(generator, sampler, int(cfg.precompute), dev, rng)
            logger.info("stage 2: cached %d generator predictions in %.1f s", len(pool), time.perf_counter() - t_pool)
        optimizer = torch.optim.AdamW(param_groups(comparator, cfg.weight_decay), lr=cfg.lr)
        loop = TrainingLoop(
            cfg, model=comparator, optimizer=optimizer, device=dev, run=_run_settings(cfg, sampler, comparator),
            name="stage 2", desc="stage 2 (comparator)", log=logger, divergence_hint=f"lower lr ({cfg.lr})",
            t_start=t_start,
        )  # fmt: skip
        kinds = cfg.kinds

        def step_fn(step: int) -> StepOutput:
            rng = np.random.default_rng(derive_seed(cfg.seed, 2, step))
            if pool is not None:
                pred, real = pool.sample(cfg.batch_size, rng)
            else:
                first, second, real = sampler.sample(cfg.batch_size, rng=rng)
                with torch.no_grad():
                    pred = generator(first.to(dev), second.to(dev)).float().clamp_(0.0, 1.0)
            real, y, mask_full = make_defect_batch(real.float(), rng, cfg.defect_prob, kinds)
            pred, real, y = pred.to(dev), real.to(dev), y.to(dev)
            mask_t = downsample_mask(mask_full.to(dev))
            logit, mask_logit = comparator.forward_logits(pred, real)
            loss, parts = comparator_loss(
                logit, mask_logit, y, mask_t, margin=cfg.margin, mask_weight=cfg.mask_weight,
                dice_weight=cfg.dice_weight,
            )  # fmt: skip
            return StepOutput(loss, parts)

        comparator.train()
        result = loop.run(step_fn)
    finally:
        generator.train(gen_was_training)
    comparator.eval()
    return result


def _sampler(images: Sequence[np.ndarray] | TripletSampler, cfg: ComparatorTrainConfig) -> TripletSampler:
    """The triplet sampler of the run; its patches must suit the comparator (multiples of 4, >= 16 px)."""
    if isinstance(images, TripletSampler):
        sampler = images
    else:
        if cfg.image_size is None or cfg.grid is None:
            raise ValueError("image_size and grid are required unless images is a TripletSampler")
        sampler = TripletSampler(
            images, image_size=cfg.image_size, grid=cfg.grid, directions=cfg.directions, seed=cfg.seed,
            offset_jitter=cfg.offset_jitter,
        )  # fmt: skip
    if sampler.ph % 4 or sampler.pw % 4 or min(sampler.ph, sampler.pw) < 16:
        raise ValueError(f"patches of {sampler.ph}x{sampler.pw} px: the comparator needs multiples of 4, >= 16")
    return sampler


def _run_settings(cfg: ComparatorTrainConfig, sampler: TripletSampler, comparator: PatternComparator) -> dict[str, Any]:
    """The settings stored in each checkpoint (a resume with different ones is warned about)."""
    return {
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "lr": cfg.lr,
        "min_lr": cfg.final_lr,
        "warmup": cfg.warmup_steps,
        "weight_decay": cfg.weight_decay,
        "defect_prob": cfg.defect_prob,
        "defect_kinds": list(cfg.kinds),
        "margin": cfg.margin,
        "mask_weight": cfg.mask_weight,
        "dice_weight": cfg.dice_weight,
        "precompute": int(cfg.precompute),
        "image_size": [sampler.height, sampler.width],
        "grid": [sampler.rows, sampler.cols],
        "directions": list(sampler.directions),
        "n_images": len(sampler),
        "comparator": comparator.config.to_dict(),
    }


# ---------------------------------------------------------------------------------------------- inference
def score_pairs(
    comparator: PatternComparator, generated: torch.Tensor, real: torch.Tensor, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score ``N`` pairs in eval mode without gradients, in chunks of ``batch_size``.

    generated, real: ``(N, 3, h, w)`` float in [0, 1] (any device). Returns ``P (N,)`` match
    probability and ``mask (N, 1, h/4, w/4)`` difference probability, on ``generated``'s device.
    The comparator's train/eval mode is restored afterwards.
    """
    comparator.check_input(generated, real)
    was_training = comparator.training
    comparator.eval()
    dev = next(comparator.parameters()).device
    ps, ms = [], []
    try:
        with torch.inference_mode():
            for i in range(0, generated.shape[0], batch_size):
                g = generated[i : i + batch_size].to(dev, torch.float32)
                r = real[i : i + batch_size].to(dev, torch.float32)
                p, m, _ = comparator(g, r)
                ps.append(p.to(generated.device))
                ms.append(m.to(generated.device))
    finally:
        comparator.train(was_training)
    if not ps:
        h, w = generated.shape[-2:]
        return torch.zeros(0, device=generated.device), torch.zeros(0, 1, h // 4, w // 4, device=generated.device)
    return torch.cat(ps), torch.cat(ms)
