"""Probe defects: simple synthetic defects drawn on defect-free images at fit time, so a scorer can choose between
two scoring rules without any real defect (``patchloupe.scorers.selfref.fit_selfref`` uses them).

Three generic kinds, cycled: a patch of the image copied, mirrored, to another place (breaks the local order of a
regular texture); a soft-edged ellipse of changed colour (a stain); a thin straight line in one of the image's own
extreme colours (a scratch). They are deliberately not the dataset generator (``patchloupe.data.defects``), so a
choice made on them is not tuned to the benchmark's own defects.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["PROBE_KINDS", "probe_defect", "probe_defects"]

PROBE_KINDS = ("cutpaste", "blob", "line")


def probe_defect(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` -> a copy with one probe defect of ``kind`` (one of :data:`PROBE_KINDS`)."""
    if kind not in PROBE_KINDS:
        raise ValueError(f"kind must be one of {PROBE_KINDS}, got {kind!r}")
    x = np.ascontiguousarray(img).copy()
    h, w = x.shape[:2]
    if kind == "cutpaste":
        ph, pw = max(2, int(rng.uniform(0.06, 0.2) * h) + 2), max(2, int(rng.uniform(0.06, 0.2) * w) + 2)
        ph, pw = min(ph, h), min(pw, w)
        sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        dy, dx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        patch = x[sy : sy + ph, sx : sx + pw]
        x[dy : dy + ph, dx : dx + pw] = patch[::-1] if rng.random() < 0.5 else patch[:, ::-1]
        return x
    if kind == "blob":
        m = np.zeros((h, w), np.float32)
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.uniform(0.03, 0.1) * w) + 2, int(rng.uniform(0.03, 0.1) * h) + 2)
        cv2.ellipse(m, centre, axes, float(rng.uniform(0.0, 180.0)), 0, 360, 1.0, -1)
        m = cv2.GaussianBlur(m, (0, 0), 2.0)[..., None]
        gain = rng.uniform(0.6, 1.4, 3).astype(np.float32)
        return np.clip(x * (1.0 - m) + x * gain * m + 0.5, 0, 255).astype(np.uint8)
    p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
    angle, length = rng.uniform(0.0, np.pi), rng.uniform(0.15, 0.4) * w
    p1 = (int(p0[0] + length * np.cos(angle)), int(p0[1] + length * np.sin(angle)))
    colour = np.percentile(x.reshape(-1, x.shape[-1]), 2 if rng.random() < 0.5 else 98, axis=0)
    cv2.line(x, p0, p1, tuple(float(v) for v in colour), int(rng.integers(1, 4)))
    return x


def probe_defects(images: Sequence[np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """``n`` probe-defected copies of ``images`` (RGB uint8), the images and the kinds cycled in order, seeded."""
    if not images or n <= 0:
        return []
    rng = np.random.default_rng(seed)
    return [probe_defect(images[i % len(images)], PROBE_KINDS[i % len(PROBE_KINDS)], rng) for i in range(n)]
