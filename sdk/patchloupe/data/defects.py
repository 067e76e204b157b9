"""Defect synthesis with exact masks: on float patches (comparator training) and on uint8 images (datasets).

:func:`synthesize_defect` takes a float32 ``(H, W, 3)`` patch in [0, 1] and returns the defected patch and a
float32 ``(H, W)`` mask in {0, 1}. The mask is exact: pixels outside it are bit-identical to the input, and every
pixel inside it changed by at least :data:`MIN_CHANGE` in some channel (so the change survives uint8 rounding).
:func:`make_defect` does the same on a uint8 image, by the dataset kind names of :data:`DATASET_DEFECTS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import cv2
import numpy as np

from .noise import fractal, perlin, smoothstep
from .textures import FAMILIES, STYLES, render_texture

__all__ = ["DATASET_DEFECTS", "DEFECT_KINDS", "MIN_CHANGE", "make_defect", "synthesize_defect"]

logger = logging.getLogger(__name__)

#: Defect kinds that :func:`synthesize_defect` knows.
DEFECT_KINDS: tuple[str, ...] = ("perlin", "cutpaste", "scratch", "hole", "stain", "warp")
#: Smallest per-pixel change (max over channels, on the [0, 1] scale) that counts as "defective".
MIN_CHANGE: float = 0.04
#: Dataset defect kinds (:func:`make_defect`, :mod:`patchloupe.data.dataset`) and the :data:`DEFECT_KINDS` kind of each.
DATASET_DEFECTS: dict[str, str] = {
    "scratch": "scratch",
    "hole": "hole",
    "stain": "stain",
    "misweave": "warp",
    "contamination": "perlin",
}
_DEFAULT_AREA = (0.02, 0.25)
_MAX_TRIES = 6

Area = float | tuple[float, float] | None


def _luma(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114], np.float32)


def _target_frac(area: Area, rng: np.random.Generator) -> float:
    if area is None:
        area = _DEFAULT_AREA
    if isinstance(area, tuple):
        lo, hi = area
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return float(area)


def _blob(h: int, w: int, frac: float, rng: np.random.Generator, wobble: float = 0.35) -> np.ndarray:
    """Signed field float32 ``(H, W)``: > 0 inside an irregular ellipse of about ``frac * H * W`` pixels."""
    area = max(frac * h * w, 6.0)
    aspect = float(np.exp(rng.uniform(-0.8, 0.8)))
    a = np.sqrt(area / np.pi * aspect)
    b = area / (np.pi * a)
    a, b = min(a, 0.7 * w), min(b, 0.7 * h)
    cy = rng.uniform(0.15, 0.85) * h
    cx = rng.uniform(0.15, 0.85) * w
    th = rng.uniform(0, np.pi)
    y = (np.arange(h, dtype=np.float32) - np.float32(cy))[:, None]
    x = (np.arange(w, dtype=np.float32) - np.float32(cx))[None, :]
    c, s = np.float32(np.cos(th)), np.float32(np.sin(th))
    r = np.sqrt(((c * x + s * y) / np.float32(a)) ** 2 + ((-s * x + c * y) / np.float32(b)) ** 2)
    cells = max(2, int(round(max(h, w) / max(4.0, 0.6 * min(a, b)))))
    return np.float32(1.0) - r + np.float32(wobble) * perlin((h, w), cells, rng)


def _edge_alpha(field: np.ndarray, softness: float) -> np.ndarray:
    """Alpha float32 ``(H, W)`` rising from 0 at ``field == 0`` to 1 at ``field >= softness``."""
    return smoothstep(field, 0.0, max(softness, 1e-3)).astype(np.float32, copy=False)


def _fit(source: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``(h, w, 3)`` crop of ``source`` (resized up first when it is smaller)."""
    sh, sw = source.shape[:2]
    if sh < h or sw < w:
        f = max(h / sh, w / sw)
        source = cv2.resize(source, (max(w, int(np.ceil(sw * f))), max(h, int(np.ceil(sh * f)))))
        sh, sw = source.shape[:2]
    y0 = int(rng.integers(0, sh - h + 1))
    x0 = int(rng.integers(0, sw - w + 1))
    return source[y0 : y0 + h, x0 : x0 + w]


def _scramble(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate/flip, roll, permute channels and regain ``img`` (H, W, 3): a foreign-looking variant of it."""
    h, w = img.shape[:2]
    out = np.rot90(img, int(rng.integers(1, 4))) if h == w else img[::-1]
    out = np.roll(out, (int(rng.integers(0, h)), int(rng.integers(0, w))), axis=(0, 1))
    out = out[:, :, rng.permutation(3)]
    if rng.random() < 0.5:
        out = 1.0 - out
    return np.clip(out * np.float32(rng.uniform(0.6, 1.4)) + np.float32(rng.uniform(-0.2, 0.2)), 0, 1)


def _foreign(base: np.ndarray, source: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """A foreign texture float32 ``(H, W, 3)``: ``source`` (recoloured at times), a scrambled base, or noise."""
    h, w = base.shape[:2]
    if source is not None:
        tex = _fit(source, h, w, rng)
        if rng.random() < 0.3:
            tex = tex[:, :, rng.permutation(3)]
        return np.ascontiguousarray(tex, dtype=np.float32)
    pick = rng.random()
    if pick < 0.45:
        return np.ascontiguousarray(_scramble(base, rng), dtype=np.float32)
    if pick < 0.75:
        n = fractal((h, w), int(rng.integers(2, 8)), rng, octaves=3)[:, :, None] * 0.5 + 0.5
        c1, c2 = rng.random(3).astype(np.float32), rng.random(3).astype(np.float32)
        return (c1 + (c2 - c1) * n).astype(np.float32)
    fam = FAMILIES[int(rng.integers(len(FAMILIES)))]
    return render_texture(fam, (h, w), rng, style=0).astype(np.float32) / np.float32(255.0)


# ------------------------------------------------------------------------------------------------ kinds
# Each returns a candidate defected image float32 (H, W, 3); the exact mask is derived from the change.


def _perlin_kind(base: np.ndarray, rng: np.random.Generator, source: np.ndarray | None, frac: float) -> np.ndarray:
    h, w = base.shape[:2]
    noise = perlin((h, w), int(rng.integers(2, 7)), rng) + 0.3 * perlin((h, w), int(rng.integers(6, 14)), rng)
    thr = float(np.quantile(noise, 1.0 - frac))
    soft = float(rng.uniform(0.02, 0.12))
    alpha = _edge_alpha(noise - np.float32(thr), soft) * np.float32(rng.uniform(0.6, 1.0))
    fg = _foreign(base, source, rng)
    return base + alpha[:, :, None] * (fg - base)


def _cutpaste_kind(base: np.ndarray, rng: np.random.Generator, source: np.ndarray | None, frac: float) -> np.ndarray:
    h, w = base.shape[:2]
    if source is not None:
        donor = np.asarray(_fit(source, h, w, rng), dtype=np.float32)
    else:  # elsewhere in the patch: a shifted (sometimes flipped) copy
        dy = int(rng.integers(h // 8 + 1, h - h // 8)) if h > 8 else 1
        dx = int(rng.integers(w // 8 + 1, w - w // 8)) if w > 8 else 1
        donor = np.roll(base, (dy, dx), axis=(0, 1))
        if rng.random() < 0.3:
            donor = donor[::-1] if rng.random() < 0.5 else donor[:, ::-1]
    if rng.random() < 0.5:
        donor = np.clip(donor * np.float32(rng.uniform(0.75, 1.25)), 0, 1)
    area = frac * h * w
    aspect = float(np.exp(rng.uniform(-1.0, 1.0)))
    rw, rh = np.sqrt(area * aspect), np.sqrt(area / aspect)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    box = cv2.boxPoints(((cx, cy), (min(rw, 0.9 * w), min(rh, 0.9 * h)), float(rng.uniform(-45, 45))))
    region = np.zeros((h, w), np.uint8)
    cv2.fillPoly(region, [np.round(box).astype(np.int32)], 1)
    return np.where(region[:, :, None] > 0, donor, base)


def _scratch_kind(base: np.ndarray, rng: np.random.Generator, source: np.ndarray | None, frac: float) -> np.ndarray:
    h, w = base.shape[:2]
    lum = float(_luma(base).mean())
    bright = lum < 0.4 or (lum <= 0.6 and rng.random() < 0.5)
    canvas = np.zeros((h, w), np.uint8)  # anti-aliased drawing needs 8-bit images
    diag = float(np.hypot(h, w))
    max_t = max(1, int(round(min(h, w) / 48)))
    for _ in range(1 if rng.random() < 0.7 else int(rng.integers(2, 4))):
        length = diag * rng.uniform(0.3, 0.9) * min(1.0, np.sqrt(frac / 0.02))
        length = max(length, 0.15 * diag)
        ang = rng.uniform(0, 2 * np.pi)
        p0 = np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h])
        d = np.array([np.cos(ang), np.sin(ang)])
        bend = np.array([-d[1], d[0]]) * rng.normal(0, 0.15) * length
        t = np.linspace(0, 1, 24)[:, None]
        p2 = p0 + d * length
        p1 = (p0 + p2) / 2 + bend
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        thick = int(rng.integers(1, max_t + 1))
        cv2.polylines(canvas, [np.round(pts * 16).astype(np.int32)], False, 255, thick, cv2.LINE_AA, shift=4)
    k = np.float32(rng.uniform(0.5, 0.9))
    target = base + (1 - base) * k if bright else base * (1 - k)
    alpha = (canvas.astype(np.float32) / np.float32(255.0))[:, :, None]
    return base + alpha * (target - base)


def _hole_kind(base: np.ndarray, rng: np.random.Generator, source: np.ndarray | None, frac: float) -> np.ndarray:
    h, w = base.shape[:2]
    field = _blob(h, w, frac, rng, wobble=float(rng.uniform(0.15, 0.45)))
    alpha = _edge_alpha(field, float(rng.uniform(0.02, 0.1)))
    lum = float(_luma(base).mean())
    if lum > 0.25:  # dark hole (backing shows through), with a slight colour cast
        fill = rng.uniform(0.0, 0.1) + rng.uniform(0, 0.04, 3)
    else:  # light shining through a dark material
        fill = rng.uniform(0.8, 1.0) - rng.uniform(0, 0.05, 3)
    grain = 0.03 * perlin((h, w), max(2, min(h, w) // 6), rng)[:, :, None]
    fill_img = np.clip(fill.astype(np.float32) + grain, 0, 1)
    # a darker frayed rim just outside the hole
    rim = _edge_alpha(field + np.float32(0.12), 0.12) * (1 - alpha) * np.float32(rng.uniform(0.0, 0.5))
    out = base * (1 - rim[:, :, None])
    return out + alpha[:, :, None] * (fill_img - out)


def _stain_kind(base: np.ndarray, rng: np.random.Generator, source: np.ndarray | None, frac: float) -> np.ndarray:
    h, w = base.shape[:2]
    field = _blob(h, w, frac, rng, wobble=float(rng.uniform(0.3, 0.6)))
    alpha = _edge_alpha(field, float(rng.uniform(0.1, 0.5)))
    strength = np.float32(rng.uniform(0.35, 0.8))
    alpha = alpha * strength * (0.8 + 0.2 * fractal((h, w), 4, rng, octaves=2))
    if rng.random() < 0.3:  # coffee-ring: stronger at the rim
        alpha = alpha * (1 + 0.8 * _edge_alpha(0.25 - np.abs(field - 0.12), 0.2))
    mean = base.reshape(-1, 3).mean(0)
    colour = rng.uniform(0.1, 0.9, 3).astype(np.float32)
    if np.abs(colour - mean).max() < 0.35:  # make the stain contrast with the surface
        colour = np.where(mean > 0.5, mean - 0.45, mean + 0.45).astype(np.float32)
    if rng.random() < 0.5:  # multiplicative (dye) stain keeps the texture visible
        target = base * (colour / np.maximum(mean, 0.05))
    else:
        target = np.broadcast_to(colour, base.shape)
    return base + np.clip(alpha, 0, 1)[:, :, None] * (np.clip(target, 0, 1) - base)


def _warp_kind(base: np.ndarray, rng: np.random.Generator, source: np.ndarray | None, frac: float) -> np.ndarray:
    h, w = base.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.5:  # blob-shaped displacement
        win = _edge_alpha(_blob(h, w, frac, rng, wobble=0.2), float(rng.uniform(0.05, 0.3)))
    else:  # a band segment: a few threads / rows of the pattern slid out of place (misweave)
        ang = rng.uniform(0, np.pi)
        sa, ca = np.float32(np.sin(ang)), np.float32(np.cos(ang))
        dx, dy = xx - np.float32(rng.uniform(0.25, 0.75) * w), yy - np.float32(rng.uniform(0.25, 0.75) * h)
        across, along = dx * sa - dy * ca, dx * ca + dy * sa
        length = float(rng.uniform(0.5, 1.2) * max(h, w))
        half = max(1.5, 0.5 * frac * h * w / length)
        soft = float(rng.uniform(0.5, 2.0))
        win = _edge_alpha(np.float32(half) - np.abs(across), soft) * _edge_alpha(
            np.float32(length / 2) - np.abs(along), 4 * soft
        )
    mag = rng.uniform(2.0, max(3.0, min(0.25 * min(h, w), 16.0)))
    ang = rng.uniform(0, 2 * np.pi)
    mx = xx - np.float32(mag * np.cos(ang)) * win
    my = yy - np.float32(mag * np.sin(ang)) * win
    return cv2.remap(base, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


_KINDS: dict[str, Callable[[np.ndarray, np.random.Generator, np.ndarray | None, float], np.ndarray]] = {
    "perlin": _perlin_kind,
    "cutpaste": _cutpaste_kind,
    "scratch": _scratch_kind,
    "hole": _hole_kind,
    "stain": _stain_kind,
    "warp": _warp_kind,
}


def _exact(base: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep only meaningful changes: returns (image, bool mask) with ``image == base`` exactly off the mask."""
    cand = np.clip(cand, 0.0, 1.0).astype(np.float32, copy=False)
    mask = np.abs(cand - base).max(axis=2) >= MIN_CHANGE
    return np.where(mask[:, :, None], cand, base), mask


def _fallback(base: np.ndarray, rng: np.random.Generator, frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Guaranteed-visible defect: shift a blob's values by 0.5 (changes every pixel in it by exactly 0.5)."""
    h, w = base.shape[:2]
    region = _blob(h, w, frac, rng) > 0
    if not region.any():
        region[h // 2, w // 2] = True
    shifted = np.where(base < 0.5, base + 0.5, base - 0.5).astype(np.float32)
    return np.where(region[:, :, None], shifted, base), region


def synthesize_defect(
    patch: np.ndarray,
    rng: np.random.Generator,
    kind: str | None = None,
    source: np.ndarray | None = None,
    *,
    area: Area = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthesize one defect on ``patch`` float32 ``(H, W, 3)`` in [0, 1].

    ``kind``: one of :data:`DEFECT_KINDS` (random when None). ``source``: float32 ``(h, w, 3)`` in [0, 1], a
    foreign texture for ``perlin`` and the donor for ``cutpaste`` (a random crop is used; ignored by other kinds).
    ``area``: defect size as a fraction of the patch, a number or a (low, high) range sampled log-uniformly
    (default (0.02, 0.25)); scratches stay thin, so ``area`` only scales their length.
    Returns ``(defected float32 (H, W, 3), mask float32 (H, W) in {0, 1})``; the mask is never empty and marks
    exactly the pixels that changed (each by >= :data:`MIN_CHANGE` in some channel).
    """
    base = np.asarray(patch)
    if base.ndim != 3 or base.shape[2] != 3 or base.shape[0] < 4 or base.shape[1] < 4:
        raise ValueError(f"patch must be (H, W, 3) with H, W >= 4, got shape {base.shape}")
    if not np.issubdtype(base.dtype, np.floating):
        raise ValueError(f"patch must be float in [0, 1], got dtype {base.dtype}")
    base = np.ascontiguousarray(base, dtype=np.float32)
    if source is not None:
        source = np.asarray(source, dtype=np.float32)
        if source.ndim != 3 or source.shape[2] != 3:
            raise ValueError(f"source must be (h, w, 3), got shape {source.shape}")
    if kind is None:
        kind = DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
    if kind not in _KINDS:
        raise ValueError(f"unknown defect kind {kind!r}; choose from {DEFECT_KINDS}")
    h, w = base.shape[:2]
    min_px = max(4, int(0.001 * h * w))
    frac = _target_frac(area, rng)
    for _ in range(_MAX_TRIES):
        out, mask = _exact(base, _KINDS[kind](base, rng, source, frac))
        if int(mask.sum()) >= min_px:
            return out, mask.astype(np.float32)
    logger.debug("%s defect too faint on this patch after %d tries; using the fallback", kind, _MAX_TRIES)
    out, mask = _fallback(base, rng, frac)
    return out, mask.astype(np.float32)


def make_defect(
    image: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    area: float | tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Add one defect to a uint8 ``(H, W, 3)`` image; returns ``(uint8 (H, W, 3), bool mask (H, W))``.

    ``kind``: a key of :data:`DATASET_DEFECTS` or a :data:`DEFECT_KINDS` name. The
    mask is exactly the set of changed pixels and never empty. ``area`` (fraction of the image, number or range)
    defaults to a few percent, and to well under 1 % in about 30 % of the cases.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
    patch_kind = DATASET_DEFECTS.get(kind, kind)
    if area is None:
        area = (0.003, 0.01) if rng.random() < 0.3 else (0.01, 0.05)
    source = None
    if patch_kind in ("perlin", "cutpaste") and kind in DATASET_DEFECTS:  # contamination by another texture
        fam = FAMILIES[int(rng.integers(len(FAMILIES)))]
        source = render_texture(fam, img.shape[:2], rng, style=int(rng.integers(len(STYLES[fam]))))
        source = source.astype(np.float32) / np.float32(255.0)
    out, _ = synthesize_defect(img.astype(np.float32) / np.float32(255.0), rng, patch_kind, source, area=area)
    out8 = (out * 255 + 0.5).astype(np.uint8)
    mask = (out8 != img).any(axis=2)
    return out8, mask
