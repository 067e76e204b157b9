"""Stage 1: train the pattern generator to paint the patch that follows two neighbouring patches.

method.md §2: pick three adjacent patches at random, predict the third from the other two, in both
directions along a row (``ltr``: i, i+1 -> i+2; ``rtl``: i+2, i+1 -> i), loss = mean squared error
between the predicted and the real patch.

Optimiser: AdamW (no weight decay on biases, norms and relative-position tables), linear warm-up
then cosine decay (:func:`patchloupe.train.common.warmup_cosine`), gradient-norm clipping.

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
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from patchloupe.train.common import (
    CheckpointManager,
    DistInfo,
    Progress,
    all_reduce_mean,
    autocast,
    barrier,
    cleanup_distributed,
    derive_seed,
    init_distributed,
    resolve_amp,
    resolve_device,
    unwrap_model,
    warmup_cosine,
)
from patchloupe.train.sampling import TripletSampler, image_triplets

logger = logging.getLogger(__name__)

__all__ = ["LOSSES", "TrainResult", "evaluate_prediction", "generator_loss", "param_groups", "train_generator"]

LOSSES = ("mse",)
DEFAULT_GRID = (4, 4)


@dataclass
class TrainResult:
    """Outcome of :func:`train_generator`.

    ``steps``: optimizer steps completed in total (including those before a resume).
    ``final_loss``: mean training loss over the last logging window (averaged over ranks).
    ``wall_s``: wall time of this call; ``total_wall_s``: summed over the original run and its
    resumes (as recorded in the checkpoints). ``history``: one ``{"step", "loss", "lr", "wall_s"}`` per
    logging window. ``start_step``: the step this call started from (> 0 after a resume).
    ``checkpoint``: path of the last checkpoint written (``None`` without ``ckpt_dir``).
    """

    steps: int
    final_loss: float
    wall_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    start_step: int = 0
    checkpoint: Path | None = None
    total_wall_s: float = 0.0


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


# ---------------------------------------------------------------------------------------------
# optimiser
# ---------------------------------------------------------------------------------------------

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


def _ckpt_extra(run: dict[str, Any], history: list[dict[str, float]], wall_s: float) -> dict[str, Any]:
    return {"run": run, "history": history, "wall_s": wall_s}


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


def train_generator(
    generator: nn.Module,
    images: Sequence[np.ndarray] | TripletSampler,
    *,
    image_size: Sequence[int] | None = None,
    grid: Sequence[int] | None = None,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    min_lr: float | None = None,
    weight_decay: float = 0.05,
    warmup: int | None = None,
    grad_clip: float | None = 1.0,
    ckpt_dir: str | os.PathLike[str] | None = None,
    ckpt_every: int | None = None,
    keep_checkpoints: int = 2,
    resume: bool = False,
    seed: int = 0,
    loss: str = "mse",
    amp: str | bool | None = "auto",
    progress: bool = True,
    log_every: int | None = None,
    device: str | torch.device | None = None,
    distributed: bool | str = "auto",
    directions: Sequence[str] = ("ltr", "rtl"),
    column_wise: bool = False,
    offset_jitter: bool | float = True,
    flips: bool = False,
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``generator`` in place on neighbouring-patch triplets of ``images``.

    ``generator``: an ``nn.Module`` with ``forward(first, second) -> pred``, all float
    ``(B, 3, ph, pw)`` in [0, 1] (e.g. :class:`patchloupe.models.generator.PatternGenerator`); it is
    moved to ``device`` and left there, in its original train/eval mode.
    ``images``: uint8 ``(H, W, 3)`` arrays (resized once to ``image_size``) or a ready
    :class:`TripletSampler` (then ``image_size``, ``grid``, ``directions``, ``column_wise``,
    ``offset_jitter`` and ``flips`` are taken from it). Without ``image_size`` and ``grid``, the grid
    is 4 x 4 and the image size is the grid times the generator config's ``patch_size``.

    Schedule: ``warmup`` (default 5 % of ``steps``, at most 2000) linear warm-up to ``lr``, then
    cosine decay to ``min_lr`` (default ``lr / 100``). ``grad_clip``: max global gradient norm
    (``None`` / 0 = off). ``loss``: ``"mse"`` (see :func:`generator_loss`). ``amp``: ``"auto"`` = bf16 (fp16 + grad
    scaler on GPUs without bf16) autocast on CUDA, off on CPU; or ``"bf16"``, ``"fp16"``, ``"off"``.

    Checkpoints (``ckpt_dir``): every ``ckpt_every`` steps (default ``steps // 10``) and at the end,
    by rank 0, atomically; ``resume=True`` continues from the latest one (same final weights as an
    uninterrupted run with the same arguments). Without a checkpoint, ``resume`` starts fresh.

    ``distributed``: ``"auto"`` joins a torchrun process group when ``WORLD_SIZE > 1``; ``True``
    requires one; ``False`` never joins. ``batch_size`` is per rank.

    ``callback(step, loss)`` is called on every rank after each optimizer step (1-based step count;
    costs a device sync). ``progress``: tqdm bar on a TTY (rank 0); log lines every ``log_every``
    steps otherwise (default ``steps // 20``, between 1 and 100).
    """
    t_start = time.perf_counter()
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if distributed not in ("auto", True, False):
        raise ValueError("distributed must be 'auto', True or False")

    info = init_distributed(required=distributed is True) if distributed in ("auto", True) else DistInfo()
    try:
        return _train(
            generator,
            images,
            info=info,
            t_start=t_start,
            image_size=image_size,
            grid=grid,
            steps=int(steps),
            batch_size=int(batch_size),
            lr=float(lr),
            min_lr=float(lr) / 100.0 if min_lr is None else float(min_lr),
            weight_decay=float(weight_decay),
            warmup=min(2000, max(1, round(0.05 * steps))) if warmup is None else int(warmup),
            grad_clip=grad_clip,
            ckpt_dir=ckpt_dir,
            ckpt_every=max(1, steps // 10) if ckpt_every is None else int(ckpt_every),
            keep_checkpoints=keep_checkpoints,
            resume=resume,
            seed=int(seed),
            loss=loss,
            amp=amp,
            progress=progress,
            log_every=max(1, min(100, steps // 20)) if log_every is None else max(1, int(log_every)),
            device=device,
            directions=directions,
            column_wise=column_wise,
            offset_jitter=offset_jitter,
            flips=flips,
            callback=callback,
        )
    finally:
        cleanup_distributed(info)


def _train(
    generator: nn.Module,
    images: Sequence[np.ndarray] | TripletSampler,
    *,
    info: DistInfo,
    t_start: float,
    image_size: Sequence[int] | None,
    grid: Sequence[int] | None,
    steps: int,
    batch_size: int,
    lr: float,
    min_lr: float,
    weight_decay: float,
    warmup: int,
    grad_clip: float | None,
    ckpt_dir: str | os.PathLike[str] | None,
    ckpt_every: int,
    keep_checkpoints: int,
    resume: bool,
    seed: int,
    loss: str,
    amp: str | bool | None,
    progress: bool,
    log_every: int,
    device: str | torch.device | None,
    directions: Sequence[str],
    column_wise: bool,
    offset_jitter: bool | float,
    flips: bool,
    callback: Callable[[int, float], None] | None,
) -> TrainResult:
    main = info.is_main
    dev = resolve_device(device, info.local_rank)
    if isinstance(images, TripletSampler):
        sampler = images
    else:
        size, grd = _geometry_from(generator, image_size, grid)
        sampler = TripletSampler(
            images,
            image_size=size,
            grid=grd,
            directions=directions,
            column_wise=column_wise,
            seed=seed,
            offset_jitter=offset_jitter,
            flips=flips,
        )
    was_training = generator.training
    generator.to(dev)
    generator.train()
    optimizer = torch.optim.AdamW(param_groups(generator, weight_decay), lr=lr, betas=(0.9, 0.999))
    amp_dtype = resolve_amp(amp, dev)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    run = {
        "steps": steps,
        "batch_size": batch_size,
        "world_size": info.world_size,
        "seed": seed,
        "lr": lr,
        "min_lr": min_lr,
        "warmup": warmup,
        "weight_decay": weight_decay,
        "loss": loss,
        "image_size": [sampler.height, sampler.width],
        "grid": [sampler.rows, sampler.cols],
        "directions": list(sampler.directions),
        "n_images": len(sampler),
    }

    manager = CheckpointManager(ckpt_dir, keep=keep_checkpoints) if ckpt_dir is not None else None
    start, history, wall_before = 0, [], 0.0
    if resume and manager is not None:
        if manager.latest_step() is None:
            if main:
                logger.info("resume requested but %s has no checkpoint: starting from step 0", ckpt_dir)
        else:
            ckpt = manager.load(model=generator, optimizer=optimizer, scaler=scaler, restore_rng=False)
            start = ckpt.step
            history = list(ckpt.extra.get("history", []))
            wall_before = float(ckpt.extra.get("wall_s", 0.0))
            saved = ckpt.extra.get("run", {})
            changed = {k: (saved.get(k), v) for k, v in run.items() if k in saved and saved.get(k) != v}
            if changed and main:
                logger.warning(
                    "resuming with changed settings %s: the run will differ from an uninterrupted one", changed
                )
            if main:
                logger.info("resumed from %s at step %d/%d", ckpt.path, start, steps)
    elif resume and main:
        logger.warning("resume=True has no effect without ckpt_dir")

    model: nn.Module = generator
    if info.distributed:
        ids = [dev.index if dev.index is not None else 0] if dev.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(generator, device_ids=ids)

    last_ckpt: Path | None = None
    window_sum = torch.zeros((), dtype=torch.float64, device=dev)
    window_n = 0
    final_loss = history[-1]["loss"] if history else math.nan
    bar = Progress(
        steps,
        initial=start,
        desc="stage 1 (generator)",
        enabled=progress and main,
        log_every=log_every,
        log=main,
        log_to=logger,
    )
    try:
        for step in range(start, steps):
            lr_now = warmup_cosine(step, steps, warmup, lr, min_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr_now
            rng = np.random.default_rng(derive_seed(seed, info.rank, step))
            torch.manual_seed(derive_seed(seed, info.rank, step, 1))  # DropPath etc.
            first, second, target = (t.to(dev, non_blocking=True) for t in sampler.sample(batch_size, rng=rng))
            with autocast(dev, amp_dtype):
                pred = model(first, second)
            value = generator_loss(pred, target, loss)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(value).backward()
                scaler.unscale_(optimizer)
                if grad_clip:
                    nn.utils.clip_grad_norm_(generator.parameters(), grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                value.backward()
                if grad_clip:
                    nn.utils.clip_grad_norm_(generator.parameters(), grad_clip)
                optimizer.step()
            done = step + 1
            window_sum += value.detach().to(torch.float64)
            window_n += 1
            if callback is not None:
                callback(done, float(value.detach()))
            if done % log_every == 0 or done == steps:
                mean = all_reduce_mean(window_sum / window_n, device=dev)
                if not math.isfinite(mean):
                    raise FloatingPointError(
                        f"stage 1 loss became {mean} at step {done}: lower lr (now {lr}) or use amp='off'"
                    )
                final_loss = mean
                elapsed = wall_before + time.perf_counter() - t_start
                history.append({"step": done, "loss": mean, "lr": lr_now, "wall_s": round(elapsed, 3)})
                window_sum.zero_()
                window_n = 0
                bar.update(1, loss=mean, lr=lr_now)
            else:
                bar.update(1)
            if manager is not None and (done % ckpt_every == 0 or done == steps):
                if main:
                    last_ckpt = manager.save(
                        done,
                        model=generator,
                        optimizer=optimizer,
                        scaler=scaler,
                        extra=_ckpt_extra(run, history, wall_before + time.perf_counter() - t_start),
                        rng=False,
                    )
                barrier()
    finally:
        bar.close()
        generator.train(was_training)
    if manager is not None and last_ckpt is None and main and start >= steps:
        last_ckpt = manager.directory / f"{manager.name_for(start)}.json"
    wall = time.perf_counter() - t_start
    if main:
        logger.info("stage 1 done: %d steps, final loss %.6g, %.1f s", max(start, steps), final_loss, wall)
    return TrainResult(
        steps=max(start, steps),
        final_loss=float(final_loss),
        wall_s=wall,
        history=history,
        start_step=start,
        checkpoint=last_ckpt,
        total_wall_s=wall_before + wall,
    )


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
