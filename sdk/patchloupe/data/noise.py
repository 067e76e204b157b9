"""Fast seeded noise fields (numpy, vectorised): Perlin gradient noise, fractal sums, lattice value noise.

All functions take an ``np.random.Generator`` and return float32 arrays; nothing here keeps global state.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["fractal", "lattice_noise", "perlin", "smoothstep"]


def smoothstep(x: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Cubic smoothstep of ``x`` between ``lo`` and ``hi`` (same shape as ``x``, values in [0, 1])."""
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def perlin(shape: tuple[int, int], res: tuple[int, int] | int, rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin gradient noise, float32 ``(H, W)`` with values roughly in [-1, 1].

    ``res`` is the number of noise cells along (y, x); any image size works (cells need not divide it).
    Cells larger than 8 px are computed at 8 px per cell and upsampled bicubically (visually identical, faster).
    """
    h, w = int(shape[0]), int(shape[1])
    ry, rx = (res, res) if isinstance(res, (int, np.integer)) else res
    ry, rx = max(1, int(ry)), max(1, int(rx))
    ch, cw = min(h, 8 * ry), min(w, 8 * rx)
    if (ch, cw) != (h, w):
        small = _perlin_exact(ch, cw, ry, rx, rng)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return _perlin_exact(h, w, ry, rx, rng)


def _perlin_exact(h: int, w: int, ry: int, rx: int, rng: np.random.Generator) -> np.ndarray:
    """Perlin noise evaluated at every pixel of an ``(h, w)`` grid with ``(ry, rx)`` cells."""
    ang = rng.uniform(0.0, 2.0 * np.pi, (ry + 1, rx + 1)).astype(np.float32)
    gx, gy = np.cos(ang), np.sin(ang)
    y = (np.arange(h, dtype=np.float32) + 0.5) * np.float32(ry / h)
    x = (np.arange(w, dtype=np.float32) + 0.5) * np.float32(rx / w)
    iy = np.minimum(y.astype(np.int32), ry - 1)
    ix = np.minimum(x.astype(np.int32), rx - 1)
    fy, fx = (y - iy)[:, None], (x - ix)[None, :]
    iy, ix = iy[:, None], ix[None, :]

    def corner(cy: int, cx: int) -> np.ndarray:
        return gx[iy + cy, ix + cx] * (fx - cx) + gy[iy + cy, ix + cx] * (fy - cy)

    u = fx * fx * fx * (fx * (fx * 6 - 15) + 10)
    v = fy * fy * fy * (fy * (fy * 6 - 15) + 10)
    c00, c10 = corner(0, 0), corner(1, 0)
    n0 = c00 + u * (corner(0, 1) - c00)
    n1 = c10 + u * (corner(1, 1) - c10)
    return ((n0 + v * (n1 - n0)) * np.float32(np.sqrt(2.0))).astype(np.float32, copy=False)


def fractal(
    shape: tuple[int, int],
    res: tuple[int, int] | int,
    rng: np.random.Generator,
    octaves: int = 4,
    persistence: float = 0.5,
) -> np.ndarray:
    """Fractal (fBm) sum of Perlin octaves, float32 ``(H, W)`` rescaled to roughly [-1, 1]."""
    ry, rx = (res, res) if isinstance(res, (int, np.integer)) else res
    out = np.zeros((int(shape[0]), int(shape[1])), np.float32)
    amp, norm = 1.0, 0.0
    for k in range(octaves):
        out += np.float32(amp) * perlin(shape, (ry * 2**k, rx * 2**k), rng)
        norm += amp
        amp *= persistence
    return out / np.float32(norm)


def lattice_noise(u: np.ndarray, v: np.ndarray, su: float, sv: float, rng: np.random.Generator) -> np.ndarray:
    """Bicubic value noise sampled at (possibly rotated) coordinates ``u``, ``v`` (same shape, float32).

    ``su``/``sv`` are the lattice spacings in pixels along u and v (anisotropic spacings give streaks).
    Values have a standard deviation of about 0.7. Output float32 with the shape of ``u``.
    """
    a = (u / np.float32(su)).astype(np.float32, copy=False)
    b = (v / np.float32(sv)).astype(np.float32, copy=False)
    amin, bmin = np.floor(a.min()) - 1, np.floor(b.min()) - 1
    a, b = a - np.float32(amin), b - np.float32(bmin)
    table = rng.standard_normal((int(b.max()) + 3, int(a.max()) + 3)).astype(np.float32)
    return cv2.remap(table, a, b, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
