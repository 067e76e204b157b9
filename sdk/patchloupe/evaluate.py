"""Evaluate a detector on an MVTec-AD-layout category (image/pixel AUROC, AUPRO, F1-max)."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)


class Inspector(Protocol):
    """Anything that inspects images lazily and has a threshold (a ``Detector``, an exported runtime)."""

    threshold: float

    def inspect_many(self, images: Iterable[Any], batch_size: int = ..., keep_image: bool = ...) -> Iterator[Any]: ...


def evaluate_detector(
    det: Inspector, dataset: str | os.PathLike[str], batch_size: int = 8, progress: bool = False, max_fpr: float = 0.3
) -> dict[str, Any]:
    """Inspect every test image of ``dataset`` and score the results against the ground truth.

    Returns a JSON-safe dict: ``image_auroc``, ``pixel_auroc``, ``aupro``, ``f1_max``, ``f1_threshold``,
    the confusion counts at the detector's threshold, per-kind counts, ``per_kind_image_auroc`` (each
    defect kind's images against all good images: which kinds the detector misses), the operating point
    (``operating_point``: realised false-alarm rate, recall, best recall at that rate), errors and median
    latency.
    """
    from patchloupe.data import MVTecCategory
    from patchloupe.metrics import aupro, f1_max, image_auroc, pixel_auroc

    cat = MVTecCategory(dataset)
    items = cat.test_items()
    results = det.inspect_many((it.path for it in items), batch_size=batch_size, keep_image=False)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=len(items), desc="evaluate", unit="img")
    labels, scores, maps, masks, latency, errors, defects = [], [], [], [], [], [], []
    t0 = time.perf_counter()
    for item, res in zip(items, results):
        if not res.ok:
            errors.append({"path": str(item.path), "error": res.error})
            continue
        gt = cat.load_mask(item)
        if gt.shape != res.anomaly_map.shape:
            errors.append({"path": str(item.path), "error": f"mask {gt.shape} vs image {res.anomaly_map.shape}"})
            continue
        labels.append(item.label)
        scores.append(res.score)
        maps.append(res.anomaly_map)
        masks.append(gt)
        defects.append(item.defect)
        latency.append(sum(res.timings_ms.values()))
    wall = time.perf_counter() - t0
    labels_a = np.asarray(labels, dtype=np.int64)
    scores_a = np.asarray(scores, dtype=np.float64)
    out: dict[str, Any] = {
        "dataset": str(dataset),
        "n_images": len(labels),
        "n_good": int((labels_a == 0).sum()),
        "n_defect": int((labels_a == 1).sum()),
        "per_kind": dict(Counter(defects)),
        "errors": errors,
        "threshold": det.threshold,
        "wall_s": round(wall, 3),
        "latency_ms_median": float(np.median(latency)) if latency else None,
    }
    if len(set(labels)) < 2:
        log.warning("%s has only one class of test images; AUROC-type metrics are undefined", dataset)
        return out
    f1, f1_thr = f1_max(labels_a, scores_a)
    pred = scores_a >= det.threshold
    out.update(
        {
            "image_auroc": float(image_auroc(labels_a, scores_a)),
            "pixel_auroc": float(pixel_auroc(masks, maps)),
            "aupro": float(aupro(masks, maps, max_fpr=max_fpr)),
            "f1_max": float(f1),
            "f1_threshold": float(f1_thr),
            "per_kind_image_auroc": _per_kind_auroc(labels_a, scores_a, defects),
            "tp": int((pred & (labels_a == 1)).sum()),
            "fp": int((pred & (labels_a == 0)).sum()),
            "tn": int((~pred & (labels_a == 0)).sum()),
            "fn": int((~pred & (labels_a == 1)).sum()),
            **operating_point(labels_a, scores_a, det.threshold),
        }
    )
    return out


def operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """How good the calibrated threshold is: the realised false-alarm rate on the good images, the recall
    of the defective ones, and the best recall any threshold reaches without more false alarms."""
    good, bad = scores[labels == 0], scores[labels == 1]
    far = float((good >= threshold).mean())
    # the lowest threshold whose false-alarm rate is <= far: just above the k-th highest good score
    k = int(round(far * len(good)))
    ranked = np.sort(good)[::-1]
    best_thr = np.nextafter(ranked[k], np.inf) if k < len(ranked) else -np.inf
    return {
        "realised_false_alarm_rate": far,
        "recall_at_threshold": float((bad >= threshold).mean()),
        "best_recall_at_that_false_alarm_rate": float((bad >= best_thr).mean()),
    }


def _per_kind_auroc(labels: np.ndarray, scores: np.ndarray, defects: list[str]) -> dict[str, float]:
    """Image AUROC of each defect kind's images (``labels == 1``) against all good images."""
    from patchloupe.metrics import image_auroc

    good = labels == 0
    out = {}
    for kind in sorted({d for d, y in zip(defects, labels) if y == 1}):
        sel = good | np.array([d == kind for d in defects])
        out[kind] = float(image_auroc(labels[sel], scores[sel]))
    return out
