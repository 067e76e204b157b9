"""Anomaly-detection metrics (numpy only): image/pixel AUROC, AUPRO and the best F1.

Conventions: a higher score means "more anomalous"; a sample is predicted anomalous when
``score >= threshold``. Ties are handled exactly (AUROC counts a tied positive/negative pair as 1/2, the same
as scikit-learn's ``roc_auc_score``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["aupro", "f1_max", "image_auroc", "pixel_auroc"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 22  # elements per searchsorted block, bounds temporary memory on ~60M-pixel inputs


def _as_labels(labels: Any, what: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {y.shape}")
    if y.dtype == bool:
        return y
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"{what} must be 0/1 or bool, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and np.isnan(y).any():
        raise ValueError(f"{what} contain NaN")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{what} must be 0/1 or bool, got values {np.unique(y)[:5]}")
    return y.astype(bool)


def _as_scores(scores: Any, what: str = "scores") -> np.ndarray:
    s = np.asarray(scores)
    if s.dtype == bool:
        s = s.astype(np.uint8)
    if not (np.issubdtype(s.dtype, np.integer) or np.issubdtype(s.dtype, np.floating)):
        raise ValueError(f"{what} must be numeric, got dtype {s.dtype}")
    if np.issubdtype(s.dtype, np.floating):
        if not np.isfinite(s).all():
            raise ValueError(f"{what} contain NaN or infinity")
        if s.dtype not in (np.float32, np.float64):
            s = s.astype(np.float64)
    else:
        s = s.astype(np.float64)  # exact for the integer ranges scores live in
    return s


def _check_both(n_pos: int, n_neg: int, what: str) -> None:
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"{what}: need both normal and anomalous samples, got {n_pos} anomalous and {n_neg} normal")


def _auroc_pos_neg(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUROC of positive vs negative scores; sorts ``neg`` in place (it may be a temporary)."""
    neg.sort()
    total = 0  # python int: exact sum of 2 * (#neg < s + #neg <= s over positives)
    for i in range(0, pos.size, _CHUNK):
        block = pos[i : i + _CHUNK]
        total += int(np.searchsorted(neg, block, side="left").sum(dtype=np.int64))
        total += int(np.searchsorted(neg, block, side="right").sum(dtype=np.int64))
    return total / (2.0 * pos.size * neg.size)


def image_auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve of per-image ``scores`` (N,) against ``labels`` (N,) in {0, 1}."""
    y = _as_labels(labels)
    s = _as_scores(scores)
    if s.shape != y.shape:
        raise ValueError(f"labels and scores differ in shape: {y.shape} vs {s.shape}")
    _check_both(int(y.sum()), int((~y).sum()), "image_auroc")
    return _auroc_pos_neg(s[y], s[~y])


def _pairs(masks: Any, maps: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield validated (bool mask (H, W), score map (H, W)) pairs from stacks or lists of 2-D arrays."""

    def as_list(x: Any, what: str) -> Sequence[Any]:
        if isinstance(x, np.ndarray) or not isinstance(x, (list, tuple)):
            arr = np.asarray(x)
            if arr.ndim == 2:
                return [arr]
            if arr.ndim == 3:
                return list(arr)
            raise ValueError(f"{what} must be (N, H, W), (H, W) or a list of (H, W) arrays, got shape {arr.shape}")
        return x

    mlist, slist = as_list(masks, "masks"), as_list(maps, "maps")
    if len(mlist) != len(slist):
        raise ValueError(f"got {len(mlist)} masks but {len(slist)} maps")
    if len(mlist) == 0:
        raise ValueError("no masks/maps given")
    for i, (m, s) in enumerate(zip(mlist, slist, strict=True)):
        m = np.asarray(m)
        if m.ndim == 3 and m.shape[2] == 1:
            m = m[:, :, 0]
        m = _as_labels(m.reshape(-1), f"mask {i}").reshape(m.shape)
        s = _as_scores(s, f"map {i}")
        if m.ndim != 2 or s.shape != m.shape:
            raise ValueError(f"mask {i} has shape {m.shape} but map {i} has shape {s.shape}; both must be (H, W)")
        yield m, s


def _result_dtype(maps: list[np.ndarray]) -> np.dtype:
    return np.dtype(np.float32) if all(s.dtype == np.float32 for s in maps) else np.dtype(np.float64)


def _split_pixels(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate anomalous and normal pixel scores into two preallocated 1-D arrays."""
    dt = _result_dtype([s for _, s in pairs])
    n_pos = sum(int(m.sum()) for m, _ in pairs)
    n_all = sum(m.size for m, _ in pairs)
    pos = np.empty(n_pos, dtype=dt)
    neg = np.empty(n_all - n_pos, dtype=dt)
    ip = ineg = 0
    for m, s in pairs:
        k = int(m.sum())
        pos[ip : ip + k] = s[m]
        neg[ineg : ineg + m.size - k] = s[~m]
        ip += k
        ineg += m.size - k
    return pos, neg


def pixel_auroc(masks: Any, maps: Any) -> float:
    """Pixel-level AUROC over all pixels of all images.

    ``masks``: bool/0-1 ``(N, H, W)`` or a list of ``(H, W)`` arrays (sizes may vary per image); ``maps``: the
    matching anomaly maps, same shapes. Memory: one copy of the scores (split into defect/normal pixels).
    """
    pairs = list(_pairs(masks, maps))
    pos, neg = _split_pixels(pairs)
    _check_both(pos.size, neg.size, "pixel_auroc")
    return _auroc_pos_neg(pos, neg)


def aupro(masks: Any, maps: Any, max_fpr: float = 0.3) -> float:
    """Area under the per-region-overlap (PRO) curve up to ``max_fpr``, divided by ``max_fpr`` (in [0, 1]).

    Regions are the 8-connected components of each ground-truth mask. For a threshold t (anomalous when
    ``map >= t``), PRO(t) is the mean over all regions of the fraction of the region's pixels flagged, and
    FPR(t) the fraction of normal pixels flagged. The curve is evaluated exactly at every distinct score value
    (no discretisation), starts at (0, 0), is linearly interpolated between thresholds and cut at
    ``max_fpr`` by linear interpolation; this matches the MVTec AD reference implementation.
    ``masks``/``maps``: as in :func:`pixel_auroc`.
    """
    if not 0.0 < float(max_fpr) <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    pairs = list(_pairs(masks, maps))
    dt = _result_dtype([s for _, s in pairs])
    # per-region weights of anomalous pixels: 1 / region size, so that summing flagged weights gives overlaps
    pos_scores: list[np.ndarray] = []
    pos_weights: list[np.ndarray] = []
    n_regions = 0
    for m, s in pairs:
        if not m.any():
            continue
        n, labels = cv2.connectedComponents(m.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        sizes = np.bincount(labels[m], minlength=n).astype(np.float64)
        lab = labels[m]
        pos_scores.append(s[m].astype(dt, copy=False))
        pos_weights.append(1.0 / sizes[lab])
        n_regions += n - 1
    n_neg = sum(int((~m).sum()) for m, _ in pairs)
    _check_both(n_regions, n_neg, "aupro")
    ps = np.concatenate(pos_scores)
    pw = np.concatenate(pos_weights)
    order = np.argsort(ps, kind="stable")
    ps, pw = ps[order], pw[order]
    cum_w = np.concatenate(([0.0], np.cumsum(pw)))  # cum_w[i] = weight of the i lowest-scored defect pixels
    total_w = cum_w[-1]

    neg = np.empty(n_neg, dtype=dt)
    i = 0
    for m, s in pairs:
        k = m.size - int(m.sum())
        neg[i : i + k] = s[~m]
        i += k
    neg.sort()
    # Only the highest-scored normal pixels matter: those giving FPR <= max_fpr, plus the next distinct value.
    n_keep = min(n_neg, int(np.floor(max_fpr * n_neg)) + 2)  # +2: slack for float rounding
    tail = neg[n_neg - n_keep :]
    starts = np.flatnonzero(np.concatenate(([True], tail[1:] != tail[:-1])))
    values = tail[starts]  # distinct normal scores, ascending
    left = (n_neg - n_keep) + starts  # number of normal pixels strictly below each value
    left[0] = np.searchsorted(neg, values[0], side="left")
    del neg, tail
    values, left = values[::-1], left[::-1]  # descending thresholds
    fpr = (n_neg - left) / n_neg  # FPR at threshold = value
    # PRO just above and at each threshold value: weight of defect pixels with score > v and >= v
    pro_gt = (total_w - cum_w[np.searchsorted(ps, values, side="right")]) / n_regions
    pro_ge = (total_w - cum_w[np.searchsorted(ps, values, side="left")]) / n_regions
    # Segment j joins (fpr[j-1], pro_gt[j]) and (fpr[j], pro_ge[j]); vertical moves (defect-only thresholds)
    # between them add no area.
    x0 = np.concatenate(([0.0], fpr[:-1]))
    x1, y0, y1 = fpr, pro_gt, pro_ge
    full = x1 <= max_fpr
    area = float(np.sum((x1[full] - x0[full]) * (y0[full] + y1[full]) / 2.0))
    cut = np.flatnonzero(~full)
    if cut.size:
        j = cut[0]
        frac = (max_fpr - x0[j]) / (x1[j] - x0[j])
        y_cut = y0[j] + frac * (y1[j] - y0[j])
        area += (max_fpr - x0[j]) * (y0[j] + y_cut) / 2.0
    return float(area / max_fpr)


def f1_max(labels: Any, scores: Any) -> tuple[float, float]:
    """Best F1 over all thresholds and that threshold, predicting anomalous when ``score >= threshold``.

    ``labels`` (N,) in {0, 1}, ``scores`` (N,). Every distinct score is tried; among equal best F1 values the
    highest threshold (fewest alarms) is returned.
    """
    y = _as_labels(labels)
    s = _as_scores(scores)
    if s.shape != y.shape:
        raise ValueError(f"labels and scores differ in shape: {y.shape} vs {s.shape}")
    n_pos = int(y.sum())
    _check_both(n_pos, y.size - n_pos, "f1_max")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last = np.concatenate((s_sorted[1:] != s_sorted[:-1], [True]))  # last index of each distinct score
    tp = np.cumsum(y_sorted)[last].astype(np.float64)
    fp = np.cumsum(~y_sorted)[last].astype(np.float64)
    f1 = 2.0 * tp / (tp + fp + n_pos)
    best = int(np.argmax(f1))  # first = highest threshold among ties
    return float(f1[best]), float(s_sorted[last][best])
