"""The input policy for images far from the model's shape: overlapping windows at one pixel scale.

``mode="resize"`` squashes every image to the model's ``image_size`` (fine when inputs look like the
training images). ``mode="windows"`` keeps the pixel scale instead: the image is scaled by ``scale``
(default: so that its short side, relative to the model's, fills the model), cut into model-size
windows that overlap by ``overlap`` (aligned to the patch grid), each window is scored, and each patch
of the whole image takes its score and field from the window in which it lies most centrally. The
result is a bigger patch grid ``(Rg, Cg)`` and a field in the scorer's own format, so the pixel maps
(``patchloupe.pixelmaps``) are made as for one window, at the input's size. ``mode="auto"`` (default)
uses windows when the input's aspect ratio differs from the model's by more than ``max_aspect``
(line-scan strips such as 4096 x 256), and resizes otherwise. Torch-free.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from patchloupe.preprocess import resize_for_model

MODES = ("auto", "resize", "windows")

__all__ = ["MODES", "InputPolicy", "WindowPlan", "cut", "merge", "plan_windows"]


@dataclass
class InputPolicy:
    """How images of any size reach a model of a fixed size (saved in ``detector.json`` as ``input_policy``)."""

    mode: str = "auto"
    max_aspect: float = 4.0
    overlap: float = 0.5
    scale: float | None = None  # model pixels per input pixel in window mode; None: the short side fills the model

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"input_policy mode must be one of {MODES}, got {self.mode!r}")
        for name, lo, hi in (("max_aspect", 1.0, 1e3), ("overlap", 0.0, 0.75)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not lo <= float(v) <= hi:
                raise ValueError(f"input_policy {name} must be a number in [{lo}, {hi}], got {v!r}")
            setattr(self, name, float(v))
        if self.scale is not None:
            s = self.scale
            if isinstance(s, bool) or not isinstance(s, numbers.Real) or not (math.isfinite(s) and 1e-3 <= s <= 16):
                raise ValueError(f"input_policy scale must be a number in [0.001, 16], got {s!r}")
            self.scale = float(s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> InputPolicy:
        if not isinstance(d, dict):
            raise ValueError(f"input_policy must be a JSON object, got {d!r}")
        unknown = set(d) - {"mode", "max_aspect", "overlap", "scale"}
        if unknown:
            raise ValueError(f"input_policy has unknown keys {sorted(unknown)}")
        return cls(**d)


@dataclass
class WindowPlan:
    """Windows of one image: scaled size, global patch grid, window offsets (in patches) and, per global
    patch, which window it is read from."""

    scaled_hw: tuple[int, int]
    grid: tuple[int, int]  # (Rg, Cg) global patches
    offsets: list[tuple[int, int]]  # (row, col) of each window's top-left patch
    owner: np.ndarray  # (Rg, Cg) int: index into offsets


def _offsets(total: int, size: int, overlap: float) -> list[int]:
    """Window starts (in patches) covering ``total`` patches with windows of ``size``, the last flush."""
    if total <= size:
        return [0]
    step = max(1, int(size * (1.0 - overlap)))
    starts = list(range(0, total - size, step)) + [total - size]
    return sorted(set(starts))


def plan_windows(
    hw: tuple[int, int], image_size: tuple[int, int], grid: tuple[int, int], policy: InputPolicy
) -> WindowPlan | None:
    """The window plan for an input of ``hw`` pixels, or None when the policy resizes it whole."""
    h, w = int(hw[0]), int(hw[1])
    mh, mw = image_size
    if policy.mode == "resize" or h < 1 or w < 1:
        return None
    if policy.mode == "auto":
        ratio = (w / h) / (mw / mh)
        if max(ratio, 1.0 / ratio) <= policy.max_aspect:
            return None
    ph, pw = mh // grid[0], mw // grid[1]
    s = policy.scale if policy.scale is not None else max(mh / h, mw / w)
    rg = max(grid[0], round(h * s / ph))
    cg = max(grid[1], round(w * s / pw))
    rows = _offsets(rg, grid[0], policy.overlap)
    cols = _offsets(cg, grid[1], policy.overlap)
    offsets = [(r, c) for r in rows for c in cols]
    # each global patch: the window where it is farthest from that window's borders (most context)
    rr, cc = np.mgrid[0:rg, 0:cg]
    best = np.full((rg, cg), -1.0)
    owner = np.zeros((rg, cg), dtype=np.int64)
    for i, (r0, c0) in enumerate(offsets):
        inside = (rr >= r0) & (rr < r0 + grid[0]) & (cc >= c0) & (cc < c0 + grid[1])
        depth = np.minimum(rr - r0, r0 + grid[0] - 1 - rr) + np.minimum(cc - c0, c0 + grid[1] - 1 - cc)
        take = inside & (depth > best)
        best[take] = depth[take]
        owner[take] = i
    return WindowPlan((rg * ph, cg * pw), (rg, cg), offsets, owner)


def cut(rgb: np.ndarray, plan: WindowPlan, image_size: tuple[int, int], grid: tuple[int, int]) -> list[np.ndarray]:
    """uint8 ``(H, W, 3)`` -> the plan's windows, each uint8 at the model size ``image_size``."""
    sh, sw = plan.scaled_hw
    scaled = resize_for_model(rgb, (sh, sw))
    ph, pw = image_size[0] // grid[0], image_size[1] // grid[1]
    return [
        np.ascontiguousarray(scaled[r * ph : r * ph + image_size[0], c * pw : c * pw + image_size[1]])
        for r, c in plan.offsets
    ]


def merge(
    plan: WindowPlan, rule: str, patch_scores: np.ndarray, fields: np.ndarray, grid: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-window patch scores ``(n, rows, cols)`` and fields -> the whole image's patch scores ``(Rg, Cg)``
    and field: per-patch maps ``(Rg * Cg, mh, mw)`` (stitch rule) or one map at the scaled size (resize rule)."""
    rows, cols = grid
    rg, cg = plan.grid
    r_idx, c_idx = np.mgrid[0:rg, 0:cg]
    offs = np.asarray(plan.offsets)[plan.owner]  # (Rg, Cg, 2)
    lr, lc = r_idx - offs[..., 0], c_idx - offs[..., 1]
    scores = patch_scores[plan.owner, lr, lc]
    if rule == "stitch":
        field = fields[plan.owner, lr * cols + lc].reshape(rg * cg, *fields.shape[2:])
    else:
        fh, fw = fields.shape[1] // rows, fields.shape[2] // cols
        canvas = np.empty((rg * fh, cg * fw), dtype=np.float32)
        for i in range(rg):
            for j in range(cg):
                k, a, b = plan.owner[i, j], lr[i, j], lc[i, j]
                canvas[i * fh : (i + 1) * fh, j * fw : (j + 1) * fw] = fields[
                    k, a * fh : (a + 1) * fh, b * fw : (b + 1) * fw
                ]
        field = canvas
    return scores, field
