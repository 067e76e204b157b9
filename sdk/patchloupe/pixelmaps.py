"""From a scorer's pixel field to the anomaly map and the outline at the input's size (torch-free).

Two rules (``Scorer.pixel_rule``):

* ``"stitch"``: the field is one map per patch ``(P, mh, mw)`` in [0, 1] (the pattern scorer's
  intersected difference masks); the anomaly map is the field weighted by its patch's score and
  stitched bilinearly at the input's size, and the outline keeps the pixels of anomalous patches whose
  stitched field is >= 0.5.
* ``"resize"``: the field is the score map itself ``(H', W')`` at the model size; the anomaly map is
  that map resized (bilinear) to the input's size, and the outline keeps the pixels of anomalous
  patches where it reaches the threshold.

When no pixel of a flagged patch passes its cut, the outline is the strongest part of the flagged
patches (>= half their peak), so an anomalous image always has an outline.
"""

from __future__ import annotations

import cv2
import numpy as np

from patchloupe import _native

RULES = ("stitch", "resize")

__all__ = ["RULES", "anomaly_map", "outline"]


def _stitch(fields: np.ndarray, grid: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Per-patch maps ``(P, mh, mw)`` -> float32 ``(H, W)``; outputs smaller than the grid are stitched
    at the grid's size and then resized (the native stitcher needs a pixel per patch)."""
    h, w = out_hw
    sh, sw = max(h, grid[0]), max(w, grid[1])
    out = np.asarray(_native.stitch(np.ascontiguousarray(fields, dtype=np.float32), grid, (sh, sw)))
    if (sh, sw) != (h, w):
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA)
    return out


def anomaly_map(
    rule: str, field: np.ndarray, patch_scores: np.ndarray, grid: tuple[int, int], out_hw: tuple[int, int]
) -> np.ndarray:
    """float32 ``(H, W)`` in [0, 1] at ``out_hw`` from one image's field and patch scores ``(rows, cols)``."""
    if rule == "stitch":
        amap = _stitch(field * patch_scores.reshape(-1, 1, 1), grid, out_hw)
    elif rule == "resize":
        amap = cv2.resize(field.astype(np.float32, copy=False), (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)
    else:
        raise ValueError(f"pixel rule must be one of {RULES}, got {rule!r}")
    return np.clip(amap, 0.0, 1.0, out=amap).astype(np.float32, copy=False)


def outline(
    rule: str,
    field: np.ndarray,
    amap: np.ndarray,
    patch_map: np.ndarray,
    grid: tuple[int, int],
    threshold: float,
) -> np.ndarray:
    """bool ``(H, W)`` (the size of ``amap``): the defect pixels inside the flagged patches ``patch_map``."""
    h, w = amap.shape
    if not patch_map.any():
        return np.zeros((h, w), dtype=bool)
    if rule == "stitch":
        values, cut = _stitch(field, grid, (h, w)), 0.5
    else:
        values, cut = amap, threshold
    flagged = cv2.resize(patch_map.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    mask = (values >= cut) & flagged
    if not mask.any() and flagged.any():  # nothing clear at pixel level: the strongest part of the flagged patches
        mask = (values >= 0.5 * values[flagged].max()) & flagged
    return mask
