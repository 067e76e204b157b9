"""Procedural textures in fixed styles: :data:`FAMILIES`, :data:`STYLES` and :func:`render_texture`.

Textures are periodic or statistically stationary surfaces (cloth, leather, mesh, decorative motifs, metal, wood),
each in several fixed *styles* (period, weave, motif, colour) so that a detector can be trained on one style and
tested on another. Each rendered image varies in phase, a small rotation and scale, lighting and noise, and (for
cloth, leather and wood) in per-thread/per-cell/per-plank randomness, so memorising one image is not enough.
Everything is seeded through ``np.random.Generator`` and deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .noise import fractal, lattice_noise, smoothstep

__all__ = ["FAMILIES", "STYLES", "check_family", "image_size", "render_texture"]

#: Texture families.
FAMILIES: tuple[str, ...] = ("cloth", "leather", "mesh", "motif", "metal", "wood")

#: Style descriptions per family; style ``k`` of a family is ``STYLES[family][k]``.
STYLES: dict[str, tuple[str, ...]] = {
    "cloth": ("plain weave, cream, 6 px threads", "2/2 twill, indigo denim, 5 px", "gingham check, red/white, 7 px"),
    "leather": ("fine grain, brown", "pebble grain, black", "stretched grain, burgundy"),
    "mesh": ("square woven wire mesh, 14 px", "hexagonal perforated plate, 16 px"),
    "motif": ("six-petal rosettes, red on cream, 48 px", "lozenge half-drop, gold on navy, 64 px"),
    "metal": ("brushed steel", "turned brass grooves, 6 px"),
    "wood": ("light oak, 16 px rings", "walnut planks, 48 px boards"),
}

_F = np.float32
Renderer = Callable[[np.ndarray, np.ndarray, int, np.random.Generator], np.ndarray]


def _rgb(*c: float) -> np.ndarray:
    return np.array(c, np.float32)


def _fmod(x: np.ndarray, p: float) -> np.ndarray:
    """``x mod p`` in [0, p) (faster than np.mod for float32)."""
    return x - np.floor(x * _F(1.0 / p)) * _F(p)


def _blend(m: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel blend ``m * a + (1 - m) * b`` with ``m`` (H, W) and ``a``/``b`` (H, W, 3) or (3,)."""
    m3 = m.astype(np.float32, copy=False)[:, :, None]
    return b + m3 * (a - b)


# ------------------------------------------------------------------------------------------------ families
# Each renderer maps texture coordinates u, v (float32 (H, W), rotated and phase-shifted) to float32 (H, W, 3).


def _weave(
    u: np.ndarray,
    v: np.ndarray,
    pitch: float,
    twill: bool,
    rng: np.random.Generator,
    warp_cols: np.ndarray,
    weft_cols: np.ndarray,
    stripe: int = 1,
    thread_var: float = 0.06,
) -> np.ndarray:
    """Woven cloth: warp threads along v, weft along u; plain (1/1) or 2/2 twill interlacing."""
    a, b = u / _F(pitch), v / _F(pitch)
    i, j = np.floor(a), np.floor(b)
    fu, fv = a - i, b - j
    ii = (i - i.min()).astype(np.int32)
    jj = (j - j.min()).astype(np.int32)
    # parity from the absolute thread index so that the pattern does not depend on the crop
    ip, jp = (ii + int(i.min()) % 4), (jj + int(j.min()) % 4)
    warp_top = ((ip + jp) % 4 < 2) if twill else ((ip + jp) % 2 == 0)
    pu, pv = np.sqrt(np.sin(_F(np.pi) * fu)), np.sqrt(np.sin(_F(np.pi) * fv))
    shade = np.where(warp_top, pu * (0.8 + 0.2 * pv), pv * (0.8 + 0.2 * pu))
    wv = 1 + rng.normal(0, thread_var, int(ii.max()) + 1).astype(np.float32)
    wt = 1 + rng.normal(0, thread_var, int(jj.max()) + 1).astype(np.float32)
    # colour = stripe colour (warp or weft, whichever is on top) x thread brightness x shading
    lum = np.where(warp_top, wv.take(ii), wt.take(jj)) * (0.35 + 0.65 * shade)
    if len(warp_cols) == 1 and len(weft_cols) == 1:
        col = _blend(warp_top, warp_cols[0], weft_cols[0])
    else:  # two-colour stripes (checks): pick per thread index
        sw = ((ip // stripe) % 2).astype(np.float32)
        sf = ((jp // stripe) % 2).astype(np.float32)
        c_warp = _blend(sw, warp_cols[-1], warp_cols[0])
        c_weft = _blend(sf, weft_cols[-1], weft_cols[0])
        col = _blend(warp_top, c_warp, c_weft)
    return col * lum[:, :, None]


def _cloth(u: np.ndarray, v: np.ndarray, style: int, rng: np.random.Generator) -> np.ndarray:
    if style == 0:
        return _weave(u, v, 6, False, rng, _rgb(0.88, 0.83, 0.70)[None], _rgb(0.80, 0.74, 0.60)[None])
    if style == 1:
        return _weave(u, v, 5, True, rng, _rgb(0.16, 0.26, 0.52)[None], _rgb(0.86, 0.86, 0.88)[None], thread_var=0.1)
    cols = np.stack([_rgb(0.80, 0.12, 0.15), _rgb(0.95, 0.94, 0.92)])
    return _weave(u, v, 7, False, rng, cols, cols, stripe=6, thread_var=0.04)


def _worley(u: np.ndarray, v: np.ndarray, cell: float, aniso: float, rng: np.random.Generator) -> np.ndarray:
    """Distances (F1, F2) float32 (2, H, W) to the nearest two jittered feature points, in cell units."""
    a, b = u / _F(cell * aniso), v / _F(cell)
    ia, ib = np.floor(a), np.floor(b)
    fa, fb = a - ia, b - ib
    ia = (ia - ia.min() + 1).astype(np.intp)
    ib = (ib - ib.min() + 1).astype(np.intp)
    shape = (int(ib.max()) + 2, int(ia.max()) + 2)
    px = (0.5 + 0.9 * (rng.random(shape) - 0.5)).astype(np.float32).ravel()
    py = (0.5 + 0.9 * (rng.random(shape) - 0.5)).astype(np.float32).ravel()
    flat = ib * shape[1] + ia  # 1-D gathers are much faster than 2-D fancy indexing
    f1 = np.full(u.shape, np.inf, np.float32)
    f2 = np.full(u.shape, np.inf, np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            idx = flat + (dy * shape[1] + dx)
            ddx = px.take(idx) + _F(dx) - fa
            ddy = py.take(idx) + _F(dy) - fb
            d2 = ddx * ddx + ddy * ddy
            f2 = np.minimum(f2, np.maximum(f1, d2))
            f1 = np.minimum(f1, d2)
    return np.stack([np.sqrt(f1), np.sqrt(f2)])


def _leather(u: np.ndarray, v: np.ndarray, style: int, rng: np.random.Generator) -> np.ndarray:
    cell, aniso, col, crease_w, dome = [
        (9.0, 1.0, _rgb(0.55, 0.36, 0.22), 0.10, 0.25),
        (16.0, 1.0, _rgb(0.22, 0.21, 0.21), 0.08, 0.45),
        (12.0, 1.8, _rgb(0.50, 0.12, 0.16), 0.10, 0.30),
    ][style]
    f1, f2 = _worley(u, v, cell, aniso, rng)
    crease = np.exp(-(((f2 - f1) / _F(crease_w)) ** 2))
    height = 1 - np.minimum(f1, _F(1.0)) ** 2
    mottle = fractal(u.shape, max(2, u.shape[0] // 96), rng, octaves=2)
    pores = lattice_noise(u, v, 1.5, 1.5, rng)
    shade = 0.65 + dome * (height - 0.5) - 0.45 * crease + 0.06 * mottle + 0.025 * pores
    return col * shade[:, :, None]


def _mesh(u: np.ndarray, v: np.ndarray, style: int, rng: np.random.Generator) -> np.ndarray:
    if style == 0:
        pitch, r = 14.0, 2.6
        a, b = u / _F(pitch), v / _F(pitch)
        fu, fv = a - np.floor(a), b - np.floor(b)
        du = np.minimum(fu, 1 - fu) * _F(pitch)  # distance to the nearest vertical wire
        dv = np.minimum(fv, 1 - fv) * _F(pitch)
        cov_v, cov_h = np.clip(r + 0.5 - du, 0, 1), np.clip(r + 0.5 - dv, 0, 1)
        prof_v = np.sqrt(np.clip(1 - (du / _F(r)) ** 2, 0, 1))
        prof_h = np.sqrt(np.clip(1 - (dv / _F(r)) ** 2, 0, 1))
        # over/under at crossings by cell parity; the wire underneath dips (darker)
        par = (np.floor(a + 0.5) + np.floor(b + 0.5)) % 2 == 0
        wire_v = (0.45 + 0.55 * prof_v) * np.where(par, _F(1.0), _F(0.7))
        wire_h = (0.45 + 0.55 * prof_h) * np.where(par, _F(0.7), _F(1.0))
        top_v = np.where(par, cov_v, cov_v * (1 - cov_h))
        top_h = np.where(par, cov_h * (1 - cov_v), cov_h)
        wire = top_v * wire_v + top_h * wire_h
        cover = np.clip(top_v + top_h, 0, 1)
        back = 0.07 + 0.02 * lattice_noise(u, v, 40, 40, rng)
        return _rgb(0.76, 0.77, 0.79) * wire[:, :, None] + (back * (1 - cover))[:, :, None]
    pitch, r = 16.0, 5.5
    bb = pitch * np.sqrt(3) / 2
    d = np.full(u.shape, np.inf, np.float32)
    for ou, ov in ((0.0, 0.0), (pitch / 2, bb)):
        du = _fmod(u + _F(ou), _F(pitch)) - _F(pitch / 2)
        dv = _fmod(v + _F(ov), _F(2 * bb)) - _F(bb)
        d = np.minimum(d, np.sqrt(du * du + dv * dv))
    hole = np.clip(r + 0.5 - d, 0, 1)
    bevel = np.clip(1 - np.abs(d - _F(r + 1.0)), 0, 1)
    plate = 0.70 + 0.03 * lattice_noise(u, v, 40, 1.5, rng) + 0.08 * bevel
    shade = plate * (1 - hole) + 0.05 * hole
    return _rgb(0.95, 0.97, 1.0) * shade[:, :, None]


def _motif(u: np.ndarray, v: np.ndarray, style: int, rng: np.random.Generator) -> np.ndarray:
    # printed fabric: a fine plain-weave relief (3 px threads) under the print
    micro = 0.92 + 0.08 * np.sin(_F(np.pi / 3) * u) * np.sin(_F(np.pi / 3) * v)
    if style == 0:
        p = 48.0
        du = _fmod(u, _F(p)) - _F(p / 2)
        dv = _fmod(v, _F(p)) - _F(p / 2)
        r, th = np.sqrt(du * du + dv * dv), np.arctan2(dv, du)
        petal = np.clip(_F(p * 0.34) * (0.45 + 0.55 * np.abs(np.cos(3 * th))) - r + 0.5, 0, 1)
        centre = np.clip(_F(p * 0.08) - r + 0.5, 0, 1)
        rc = np.sqrt((np.abs(du) - _F(p / 2)) ** 2 + (np.abs(dv) - _F(p / 2)) ** 2)
        dot = np.clip(_F(p * 0.07) - rc + 0.5, 0, 1)
        bg, c_petal, c_centre, c_dot = (
            _rgb(0.93, 0.88, 0.78),
            _rgb(0.72, 0.14, 0.20),
            _rgb(0.95, 0.75, 0.20),
            _rgb(0.20, 0.45, 0.25),
        )
    else:
        p = 64.0
        col = np.floor(u / _F(p))
        vv = v + np.where(_fmod(col, 2) == 1, _F(p / 2), _F(0))  # half-drop repeat
        du = _fmod(u, _F(p)) - _F(p / 2)
        dv = _fmod(vv, _F(p)) - _F(p / 2)
        r, th = np.sqrt(du * du + dv * dv), np.arctan2(dv, du)
        l1 = np.abs(du) + np.abs(dv)
        petal = np.clip(2.5 - np.abs(l1 - _F(0.42 * p)), 0, 1)  # lozenge outline
        petal = np.maximum(petal, np.clip(_F(p * 0.22) * (0.3 + 0.7 * np.abs(np.cos(2 * th))) - r + 0.5, 0, 1))
        centre = np.clip(_F(p * 0.05) - r + 0.5, 0, 1)
        rc = np.sqrt(du * du + (np.abs(dv) - _F(p / 2)) ** 2)  # dots between tiles of one column
        dot = np.clip(_F(p * 0.06) - rc + 0.5, 0, 1)
        bg, c_petal, c_centre, c_dot = (
            _rgb(0.10, 0.13, 0.32),
            _rgb(0.86, 0.70, 0.30),
            _rgb(0.10, 0.13, 0.32),
            _rgb(0.70, 0.72, 0.80),
        )
    out = bg + petal[:, :, None] * (c_petal - bg)
    out = out + centre[:, :, None] * (c_centre - out)
    out = out + dot[:, :, None] * (c_dot - out)
    return out * micro[:, :, None]


def _metal(u: np.ndarray, v: np.ndarray, style: int, rng: np.random.Generator) -> np.ndarray:
    sheen = 0.04 * lattice_noise(u, v, 160, 160, rng)
    if style == 0:
        streak = 0.05 * lattice_noise(u, v, 70, 1.0, rng) + 0.025 * lattice_noise(u, v, 9, 0.7, rng)
        return _rgb(0.72, 0.73, 0.75) * (1 + streak + sheen)[:, :, None]
    period = 6.0
    ph = _fmod(v / _F(period), 1)
    groove = 0.82 + 0.18 * np.sin(_F(2 * np.pi) * ph) - 0.2 * smoothstep(ph, 0.85, 1.0)
    streak = 0.03 * lattice_noise(u, v, 50, 1.0, rng)
    return _rgb(0.80, 0.64, 0.34) * (groove + streak + sheen)[:, :, None]


def _wood(u: np.ndarray, v: np.ndarray, style: int, rng: np.random.Generator) -> np.ndarray:
    if style == 0:
        period, light, dark, plank = 16.0, _rgb(0.80, 0.64, 0.44), _rgb(0.58, 0.40, 0.24), 0.0
    else:
        period, light, dark, plank = 9.0, _rgb(0.40, 0.25, 0.15), _rgb(0.24, 0.14, 0.08), 48.0
    warp = 0.9 * lattice_noise(u, v, 150, 40, rng) + 0.25 * lattice_noise(u, v, 30, 8, rng)
    seam = np.zeros_like(u)
    tone = np.ones_like(u)
    if plank:
        k = np.floor(v / _F(plank))
        kk = (k - k.min()).astype(np.int32)
        n = int(kk.max()) + 1
        warp = warp + rng.uniform(0, 4, n).astype(np.float32)[kk]
        tone = 1 + 0.08 * rng.standard_normal(n).astype(np.float32)[kk]
        fv = _fmod(v, _F(plank))
        seam = np.clip(1.5 - np.minimum(fv, _F(plank) - fv), 0, 1)
        # end joints every 160 px along the board, staggered by board
        fu = _fmod(u + (kk % 3).astype(np.float32) * _F(160 / 3), _F(160))
        seam = np.maximum(seam, np.clip(1.5 - np.minimum(fu, _F(160) - fu), 0, 1))
    ring = _fmod(v / _F(period) + warp, 1)
    late = smoothstep(ring, 0.55, 0.85) * (1 - smoothstep(ring, 0.9, 1.0))
    pores = 0.04 * lattice_noise(u, v, 40, 0.8, rng)
    out = light + late[:, :, None] * (dark - light)
    out = out * (tone * (1 + pores) * (1 - 0.6 * seam))[:, :, None]
    return out


_RENDER: dict[str, Renderer] = {
    "cloth": _cloth,
    "leather": _leather,
    "mesh": _mesh,
    "motif": _motif,
    "metal": _metal,
    "wood": _wood,
}


def _sensor_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Triangular-distributed noise float32 of the given shape and standard deviation (cheap: from random bytes)."""
    n = int(np.prod(shape))
    b = np.frombuffer(rng.bytes(2 * n), np.uint8)
    tri = b[:n].astype(np.float32) - b[n:].astype(np.float32)  # std 255 / sqrt(6)
    return (tri * _F(sigma * np.sqrt(6.0) / 255.0)).reshape(shape)


def image_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` from an int (square) or a pair."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = (int(s) for s in size)
    return h, w


def check_family(family: str, style: int) -> None:
    """ValueError unless ``family`` is in :data:`FAMILIES` and ``style`` is one of its styles."""
    if family not in STYLES:
        raise ValueError(f"unknown texture family {family!r}; choose from {FAMILIES}")
    if not 0 <= style < len(STYLES[family]):
        raise ValueError(f"{family} has styles 0..{len(STYLES[family]) - 1}, got {style}")


def render_texture(
    family: str,
    size: int | Sequence[int] = (256, 256),
    rng: np.random.Generator | int | None = None,
    style: int = 0,
) -> np.ndarray:
    """Render one defect-free texture image, uint8 ``(H, W, 3)`` RGB.

    ``family`` in :data:`FAMILIES`, ``style`` in ``range(len(STYLES[family]))``; ``size`` is ``(H, W)`` or an int.
    Per image: random phase, rotation (+-2 deg), scale (+-3 %), colour gain, a lighting gradient and sensor noise.
    """
    check_family(family, style)
    h, w = image_size(size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {(h, w)}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    th = np.deg2rad(rng.uniform(-2.0, 2.0))
    sc = rng.uniform(0.97, 1.03)
    c, s = _F(np.cos(th) / sc), _F(np.sin(th) / sc)
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    u = c * x + s * y + _F(rng.uniform(0, 480))
    v = -s * x + c * y + _F(rng.uniform(0, 480))
    img = _RENDER[family](u, v, style, rng)
    gain = (1 + rng.normal(0, 0.03, 3)).astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    amp = _F(rng.uniform(0.0, 0.12))
    light = 1 + amp * ((x / _F(w) - 0.5) * _F(np.cos(ang)) + (y / _F(h) - 0.5) * _F(np.sin(ang)))
    img = np.multiply(img, light[:, :, None] * gain, dtype=np.float32)
    img += _sensor_noise(img.shape, rng, float(rng.uniform(0.006, 0.014)))
    np.clip(img, 0.0, 1.0, out=img)
    img *= _F(255.0)
    img += _F(0.5)
    return img.astype(np.uint8)
