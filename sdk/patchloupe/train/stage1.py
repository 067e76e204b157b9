"""Stage 1: train the pattern generator to paint the patch that follows two neighbouring patches.

method.md §2: pick three adjacent patches at random, predict the third from the other two, in both
directions along a row (``ltr``: i, i+1 -> i+2; ``rtl``: i+2, i+1 -> i), loss = mean squared error
between the predicted and the real patch.

Optimiser: AdamW (no weight decay on biases, norms and relative-position tables), linear warm-up
then cosine decay (:func:`patchloupe.train.schedule.warmup_cosine`), gradient-norm clipping; the
loop itself (resume, schedule, AMP, checkpoints, progress) is :class:`patchloupe.train.loop.TrainingLoop`.

Reproducibility and resume: the triplets and any in-model randomness (DropPath) of optimizer step
``s`` on rank ``r`` are drawn from generators seeded with ``derive_seed(seed, r, s)``, so a run is a
pure function of ``(seed, world size, batch size, steps, data)`` on a given machine/thread count,
and resuming from a checkpoint (model + AdamW moments + step) continues bit-for-bit.

Scale-out: run the same entry point under ``torchrun --nproc_per_node=K``; with
``distributed="auto"`` it joins the process group (gloo on CPU, nccl on GPU), wraps the generator in
``DistributedDataParallel``, samples with rank-specific seeds (effective batch ``K * batch_size``),
and only rank 0 logs, shows progress and writes checkpoints.
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

from patchloupe.train.devices import resolve_device
from patchloupe.train.distributed import DistInfo, cleanup_distributed, init_distributed, unwrap_model
from patchloupe.train.loop import LoopConfig, TrainingLoop, TrainResult
from patchloupe.train.optim import param_groups
from patchloupe.train.rng import derive_seed
from patchloupe.train.sampling import TripletSampler, image_triplets

logger = logging.getLogger(__name__)

__all__ = [
    "LOSSES",
    "GeneratorTrainConfig",
    "TrainResult",
    "evaluate_prediction",
    "generator_loss",
    "param_groups",
    "train_generator",
]

LOSSES = ("mse",)
DEFAULT_GRID = (4, 4)


@dataclass(kw_only=True)
class GeneratorTrainConfig(LoopConfig):
    """Settings of :func:`train_generator` (the schedule, checkpoint and progress ones are
    :class:`~patchloupe.train.loop.LoopConfig`'s; ``warmup`` defaults to 5 % of ``steps``, at most 2000).

    ``image_size`` / ``grid``: sampler geometry (default: from the generator's config, see
    :func:`train_generator`). ``batch_size``: triplets per step and rank. ``weight_decay``: AdamW decay
    on weight matrices. ``grad_clip``: max global gradient norm (``None`` / 0 = off). ``seed``: keys
    all randomness. ``loss``: ``"mse"`` (:func:`generator_loss`). ``amp``: ``"auto"`` = bf16 (fp16 +
    grad scaler on GPUs without bf16) autocast on CUDA, off on CPU; or ``"bf16"``, ``"fp16"``, ``"off"``.
    ``device``: default ``cuda:<local rank>`` when available, else CPU. ``distributed``: ``"auto"``
    joins a torchrun process group when ``WORLD_SIZE > 1``; ``True`` requires one; ``False`` never
    joins. ``directions`` / ``column_wise`` / ``offset_jitter`` / ``flips``: see :class:`TripletSampler`.
    """

    image_size: Sequence[int] | None = None
    grid: Sequence[int] | None = None
    batch_size: int = 16
    weight_decay: float = 0.05
    grad_clip: float | None = 1.0
    seed: int = 0
    loss: str = "mse"
    amp: str | bool | None = "auto"
    device: str | torch.device | None = None
    distributed: bool | str = "auto"
    directions: Sequence[str] = ("ltr", "rtl")
    column_wise: bool = False
    offset_jitter: bool | float = True
    flips: bool = False

    warmup_cap: ClassVar[int] = 2000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.distributed not in ("auto", True, False):
            raise ValueError("distributed must be 'auto', True or False")


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------


def generator_loss(pred: torch.Tensor, target: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """Training loss between predicted and real patches, both float ``(B, 3, h, w)`` in [0, 1].

    Only ``"mse"`` (the paper's loss), computed in float32. Gradient-difference and SSIM terms were
    tried and removed: they did not improve held-out PSNR (docs/training.md, "Loss").
    """
    if loss != "mse":
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return F.mse_loss(pred.float(), target.float())


def _geometry_from(generator: nn.Module, image_size: Any, grid: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """Fill ``image_size`` / ``grid`` from ``generator.config`` when not given."""
    cfg = getattr(unwrap_model(generator), "config", None)
    if grid is None:
        grid = getattr(cfg, "grid", None)
        if grid is None and image_size is None and getattr(cfg, "patch_size", None) is not None:
            grid = DEFAULT_GRID
    if image_size is None:
        image_size = getattr(cfg, "image_size", None)
        if image_size is None and grid is not None:
            patch = getattr(cfg, "patch_size", None)
            if patch is not None:
                ph, pw = (patch, patch) if isinstance(patch, int) else patch
                image_size = (int(grid[0]) * int(ph), int(grid[1]) * int(pw))
    if image_size is None or grid is None:
        raise ValueError("image_size and grid are required (the generator's config does not define them)")
    return (int(image_size[0]), int(image_size[1])), (int(grid[0]), int(grid[1]))


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


def train_generator(
    generator: nn.Module,
    images: Sequence[np.ndarray] | TripletSampler,
    config: GeneratorTrainConfig | None = None,
    **settings: Any,
) -> TrainResult:
    """Train ``generator`` in place on neighbouring-patch triplets of ``images``.

    ``generator``: an ``nn.Module`` with ``forward(first, second) -> pred``, all float
    ``(B, 3, ph, pw)`` in [0, 1] (e.g. :class:`patchloupe.models.generator.PatternGenerator`); it is
    moved to ``device`` and left there, in its original train/eval mode.
    ``images``: uint8 ``(H, W, 3)`` arrays (resized once to ``image_size``) or a ready
    :class:`TripletSampler` (then ``image_size``, ``grid``, ``directions``, ``column_wise``,
    ``offset_jitter`` and ``flips`` are taken from it). Without ``image_size`` and ``grid``, the grid
    is 4 x 4 and the image size is the grid times the generator config's ``patch_size``.

    Settings: a :class:`GeneratorTrainConfig` and/or its fields as keywords (keywords override the
    config's), e.g. ``train_generator(g, images, steps=1000, batch_size=16, lr=1e-3)``; ``steps`` is
    required. Schedule: linear warm-up to ``lr``, then cosine decay to ``min_lr`` (default ``lr / 100``).

    Checkpoints (``ckpt_dir``): every ``ckpt_every`` steps (default ``steps // 10``) and at the end,
    by rank 0, atomically; ``resume=True`` continues from the latest one (same final weights as an
    uninterrupted run with the same arguments). Without a checkpoint, ``resume`` starts fresh.
    Under torchrun, ``batch_size`` is per rank (effective batch ``world_size * batch_size``).
    """
    t_start = time.perf_counter()
    cfg = GeneratorTrainConfig.build(config, **settings)
    info = init_distributed(required=cfg.distributed is True) if cfg.distributed in ("auto", True) else DistInfo()
    try:
        return _train(generator, images, cfg, info, t_start)
    finally:
        cleanup_distributed(info)


def _sampler(
    generator: nn.Module, images: Sequence[np.ndarray] | TripletSampler, cfg: GeneratorTrainConfig
) -> TripletSampler:
    if isinstance(images, TripletSampler):
        return images
    size, grid = _geometry_from(generator, cfg.image_size, cfg.grid)
    return TripletSampler(
        images,
        image_size=size,
        grid=grid,
        directions=cfg.directions,
        column_wise=cfg.column_wise,
        seed=cfg.seed,
        offset_jitter=cfg.offset_jitter,
        flips=cfg.flips,
    )


def _train(
    generator: nn.Module,
    images: Sequence[np.ndarray] | TripletSampler,
    cfg: GeneratorTrainConfig,
    info: DistInfo,
    t_start: float,
) -> TrainResult:
    dev = resolve_device(cfg.device, info.local_rank)
    sampler = _sampler(generator, images, cfg)
    was_training = generator.training
    generator.to(dev)
    generator.train()
    lr = float(cfg.lr)
    optimizer = torch.optim.AdamW(param_groups(generator, cfg.weight_decay), lr=lr, betas=(0.9, 0.999))
    run = {
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "world_size": info.world_size,
        "seed": cfg.seed,
        "lr": lr,
        "min_lr": cfg.final_lr,
        "warmup": cfg.warmup_steps,
        "weight_decay": cfg.weight_decay,
        "loss": cfg.loss,
        "image_size": [sampler.height, sampler.width],
        "grid": [sampler.rows, sampler.cols],
        "directions": list(sampler.directions),
        "n_images": len(sampler),
    }
    try:
        loop = TrainingLoop(
            cfg, model=generator, optimizer=optimizer, device=dev, run=run, dist=info, amp=cfg.amp,
            grad_clip=cfg.grad_clip, name="stage 1", desc="stage 1 (generator)", log=logger,
            divergence_hint=f"lower lr (now {lr}) or use amp='off'", t_start=t_start,
        )  # fmt: skip

        def step_fn(step: int) -> torch.Tensor:
            rng = np.random.default_rng(derive_seed(cfg.seed, info.rank, step))
            torch.manual_seed(derive_seed(cfg.seed, info.rank, step, 1))  # DropPath etc.
            first, second, target = (t.to(dev, non_blocking=True) for t in sampler.sample(cfg.batch_size, rng=rng))
            with loop.autocast():
                pred = loop.wrapped(first, second)
            return generator_loss(pred, target, cfg.loss)

        return loop.run(step_fn)
    finally:
        generator.train(was_training)


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------


def _psnr(mse: torch.Tensor) -> torch.Tensor:
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.inference_mode()
def evaluate_prediction(
    generator: nn.Module,
    images: Sequence[np.ndarray],
    *,
    image_size: Sequence[int] | None = None,
    grid: Sequence[int] | None = None,
    directions: Sequence[str] = ("ltr", "rtl"),
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Prediction quality on the inference grid of ``images`` (uint8 ``(H, W, 3)``).

    For every grid triplet of every image (``directions``; column ones on transposed images, the
    detector's convention), compares the generator's patch with the real one and with the naive
    "copy the nearest input patch" predictor (``second``). Returns mean per-patch ``psnr`` and
    ``psnr_copy`` (dB, images in [0, 1]), mean ``mse`` and ``mse_copy``, and ``n`` (patches).
    """
    from patchloupe.preprocess import resize_for_model, to_tensor

    size, grd = _geometry_from(generator, image_size, grid)
    dev = resolve_device(device)
    was_training = generator.training
    generator.to(dev).eval()
    psnr, psnr_copy, mse, mse_copy = [], [], [], []
    try:
        for im in images:
            x = to_tensor(resize_for_model(np.asarray(im), size))[None].to(dev)  # (1, 3, H, W)
            for d in directions:
                if d in ("ttb", "btt"):
                    src, g, dd = x.transpose(-1, -2), (grd[1], grd[0]), {"ttb": "ltr", "btt": "rtl"}[d]
                else:
                    src, g, dd = x, grd, d
                first, second, target, _ = image_triplets(src, g, dd)
                first, second, target = (t.reshape(-1, *t.shape[2:]) for t in (first, second, target))
                for i in range(0, first.shape[0], batch_size):
                    sl = slice(i, i + batch_size)
                    pred = generator(first[sl].contiguous(), second[sl].contiguous()).float().clamp(0, 1)
                    e = ((pred - target[sl]) ** 2).mean(dim=(1, 2, 3))
                    c = ((second[sl] - target[sl]) ** 2).mean(dim=(1, 2, 3))
                    psnr.append(_psnr(e).cpu())
                    psnr_copy.append(_psnr(c).cpu())
                    mse.append(e.cpu())
                    mse_copy.append(c.cpu())
    finally:
        generator.train(was_training)
    if not psnr:
        raise ValueError("no triplets to evaluate (no images, or the grid is too small for the directions)")
    return {
        "psnr": float(torch.cat(psnr).mean()),
        "psnr_copy": float(torch.cat(psnr_copy).mean()),
        "mse": float(torch.cat(mse).mean()),
        "mse_copy": float(torch.cat(mse_copy).mean()),
        "n": int(torch.cat(psnr).numel()),
    }
