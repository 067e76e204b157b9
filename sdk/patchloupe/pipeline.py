"""The inspection pipeline any scorer runs through: load, resize, batch, infer, pixel maps, results.

Torch-free: the scorer does the numerical work; this module only moves arrays around.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from patchloupe import pixelmaps, windows
from patchloupe.preprocess import ImageLike, load_rgb, resize_for_model
from patchloupe.results import InspectionError, InspectionResult
from patchloupe.scorers.base import Scorer
from patchloupe.windows import InputPolicy, WindowPlan

log = logging.getLogger(__name__)

__all__ = ["model_inputs", "postprocess", "run"]

_ITEM_ERRORS = (ValueError, TypeError, OSError)


def postprocess(
    scorer: Scorer,
    rgb: np.ndarray,
    patch_scores: np.ndarray,
    field: np.ndarray,
    threshold: float,
    keep_image: bool,
    source: str | None,
    timings: dict[str, float],
    grid: tuple[int, int] | None = None,
) -> InspectionResult:
    """One image's patch scores ``(rows, cols)`` and field -> its ``InspectionResult`` at the input's size
    (``grid``: the patch grid of a windowed image, default the scorer's)."""
    t0 = time.perf_counter()
    hw = rgb.shape[:2]
    grid = scorer.grid if grid is None else grid
    patch_map = patch_scores >= threshold
    amap = pixelmaps.anomaly_map(scorer.pixel_rule, field, patch_scores, grid, hw)
    mask = pixelmaps.outline(scorer.pixel_rule, field, amap, patch_map, grid, threshold)
    score = float(patch_scores.max())
    timings["postprocess"] = (time.perf_counter() - t0) * 1000.0
    return InspectionResult(
        score=score,
        is_anomalous=bool(score >= threshold),
        threshold=float(threshold),
        anomaly_map=amap,
        mask=mask,
        patch_map=patch_map,
        patch_scores=patch_scores.astype(np.float32),
        timings_ms=timings,
        image=rgb if keep_image else None,
        source=source,
    )


def model_inputs(scorer: Scorer, rgb: np.ndarray, policy: InputPolicy) -> tuple[list[np.ndarray], WindowPlan | None]:
    """An RGB image -> the scorer's inputs: one resized image, or the windows of ``policy``'s plan."""
    plan = windows.plan_windows(rgb.shape[:2], scorer.image_size, scorer.grid, policy)
    if plan is None:
        return [scorer.prepare(resize_for_model(rgb, scorer.image_size))], None
    return [scorer.prepare(w) for w in windows.cut(rgb, plan, scorer.image_size, scorer.grid)], plan


def run(
    scorer: Scorer,
    images: Iterable[ImageLike],
    threshold: float,
    bgr: bool,
    keep_image: bool,
    batch_size: int,
    on_error: str,
    policy: InputPolicy | None = None,
) -> Iterator[InspectionResult | InspectionError]:
    """Inspect ``images`` lazily in batches of about ``batch_size`` model inputs (a windowed image counts
    each window); yields one result per input, in order.

    ``on_error="report"`` yields an ``InspectionError`` for an item that cannot be read or scored and goes
    on; ``"raise"`` re-raises the first such error.
    """
    policy = policy or InputPolicy()
    # (source, rgb | None, model inputs | error, plan, preprocess_ms)
    pending: list[tuple[Any, ...]] = []

    def fail(source: str | None, exc: Exception) -> InspectionError:
        if on_error == "raise":
            raise exc
        log.warning("skipping %s: %s", source or "an input", exc)
        return InspectionError(source=source, error=f"{type(exc).__name__}: {exc}")

    def flush() -> Iterator[InspectionResult | InspectionError]:
        good = [item for item in pending if item[1] is not None]
        scores = fields = None
        infer_ms = 0.0
        if good:
            t0 = time.perf_counter()
            scores, fields = scorer.infer(np.stack([x for item in good for x in item[2]]))
            infer_ms = (time.perf_counter() - t0) * 1000.0 / len(good)
        k = 0
        for source, rgb, payload, plan, pre_ms in pending:
            if rgb is None:
                yield payload
                continue
            n = len(payload)
            s, f, grid = scores[k : k + n], fields[k : k + n], None
            k += n
            try:
                if plan is None:
                    s, f = s[0], f[0]
                else:
                    s, f = windows.merge(plan, scorer.pixel_rule, s, f, scorer.grid)
                    grid = plan.grid
                timings = {"preprocess": pre_ms, "inference": infer_ms}
                yield postprocess(scorer, rgb, s, f, threshold, keep_image, source, timings, grid)
            except _ITEM_ERRORS as exc:
                yield fail(source, exc)
        pending.clear()

    queued = 0
    for image in images:
        source = str(image) if isinstance(image, (str, Path)) else None
        t0 = time.perf_counter()
        try:
            rgb = load_rgb(image, bgr=bgr)
            inputs, plan = model_inputs(scorer, rgb, policy)
        except _ITEM_ERRORS as exc:
            pending.append((source, None, fail(source, exc), None, 0.0))
        else:
            pending.append((source, rgb, inputs, plan, (time.perf_counter() - t0) * 1000.0))
            queued += len(inputs)
        if queued >= batch_size:
            yield from flush()
            queued = 0
    if pending:
        yield from flush()
