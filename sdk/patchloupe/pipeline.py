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

from patchloupe import pixelmaps
from patchloupe.preprocess import ImageLike, load_rgb, resize_for_model
from patchloupe.results import InspectionError, InspectionResult
from patchloupe.scorers.base import Scorer

log = logging.getLogger(__name__)

__all__ = ["postprocess", "run"]

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
) -> InspectionResult:
    """One image's patch scores ``(rows, cols)`` and field -> its ``InspectionResult`` at the input's size."""
    t0 = time.perf_counter()
    hw = rgb.shape[:2]
    patch_map = patch_scores >= threshold
    amap = pixelmaps.anomaly_map(scorer.pixel_rule, field, patch_scores, scorer.grid, hw)
    mask = pixelmaps.outline(scorer.pixel_rule, field, amap, patch_map, scorer.grid, threshold)
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


def run(
    scorer: Scorer,
    images: Iterable[ImageLike],
    threshold: float,
    bgr: bool,
    keep_image: bool,
    batch_size: int,
    on_error: str,
) -> Iterator[InspectionResult | InspectionError]:
    """Inspect ``images`` lazily in batches of ``batch_size``; yields one result per input, in order.

    ``on_error="report"`` yields an ``InspectionError`` for an item that cannot be read or scored and goes
    on; ``"raise"`` re-raises the first such error.
    """
    pending: list[tuple[Any, ...]] = []  # (source, rgb | None, model input | error text, preprocess_ms)

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
            scores, fields = scorer.infer(np.stack([item[2] for item in good]))
            infer_ms = (time.perf_counter() - t0) * 1000.0 / len(good)
        k = 0
        for source, rgb, payload, pre_ms in pending:
            if rgb is None:
                yield payload
                continue
            try:
                yield postprocess(
                    scorer, rgb, scores[k], fields[k], threshold, keep_image, source,
                    {"preprocess": pre_ms, "inference": infer_ms},
                )  # fmt: skip
            except _ITEM_ERRORS as exc:
                yield fail(source, exc)
            k += 1
        pending.clear()

    for image in images:
        source = str(image) if isinstance(image, (str, Path)) else None
        t0 = time.perf_counter()
        try:
            rgb = load_rgb(image, bgr=bgr)
            model_input = scorer.prepare(resize_for_model(rgb, scorer.image_size))
        except _ITEM_ERRORS as exc:
            pending.append((source, None, fail(source, exc), 0.0))
        else:
            pending.append((source, rgb, model_input, (time.perf_counter() - t0) * 1000.0))
        if sum(1 for item in pending if item[1] is not None) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()
