"""Procedural textures (``patchloupe.data.textures``): shapes, determinism, styles, periodicity, errors."""

from __future__ import annotations

import numpy as np
import pytest
from patchloupe.data.textures import FAMILIES, STYLES, render_texture

ALL_STYLES = [(f, s) for f in FAMILIES for s in range(len(STYLES[f]))]


def test_families_and_styles() -> None:
    assert len(FAMILIES) >= 6 and set(STYLES) == set(FAMILIES)
    assert all(len(STYLES[f]) >= 2 for f in FAMILIES)


@pytest.mark.parametrize(("family", "style"), ALL_STYLES)
def test_render_shape_dtype_determinism(family: str, style: int) -> None:
    a = render_texture(family, (48, 70), np.random.default_rng(1), style=style)
    assert a.dtype == np.uint8 and a.shape == (48, 70, 3) and a.flags.c_contiguous
    b = render_texture(family, (48, 70), np.random.default_rng(1), style=style)
    assert a.tobytes() == b.tobytes()
    c = render_texture(family, (48, 70), np.random.default_rng(2), style=style)
    assert np.abs(a.astype(int) - c).mean() > 5  # per-image variation: a pixel template does not transfer
    assert a.std() > 3  # not flat
    assert render_texture(family, 5, 0, style=style).shape == (5, 5, 3)


def _hist(img: np.ndarray) -> np.ndarray:
    return np.concatenate([np.histogram(img[..., c], bins=16, range=(0, 256))[0] / img[..., c].size for c in range(3)])


@pytest.mark.parametrize("family", FAMILIES)
def test_styles_differ(family: str) -> None:
    # phase-invariant signature (colour histograms): styles are further apart than images of one style
    sig = {
        s: [_hist(render_texture(family, 96, np.random.default_rng(10 * s + i), s)) for i in range(3)]
        for s in range(len(STYLES[family]))
    }
    within = max(np.abs(a - b).sum() for v in sig.values() for a in v for b in v)
    across = min(np.abs(a - b).sum() for s in sig for t in sig if s < t for a in sig[s] for b in sig[t])
    assert across > within


def _autocorr_peak(img: np.ndarray) -> float:
    g = img.astype(np.float64).mean(2)
    g -= g.mean()
    ac = np.real(np.fft.ifft2(np.abs(np.fft.fft2(g)) ** 2))
    ac = np.fft.fftshift(ac / ac[0, 0])
    h, w = ac.shape
    y, x = np.indices(ac.shape)
    r = np.hypot(y - h // 2, x - w // 2)
    return float(ac[(r >= 4) & (r <= 80)].max())


@pytest.mark.parametrize(("family", "style"), [fs for fs in ALL_STYLES if fs[0] in ("cloth", "mesh", "motif")])
def test_periodic_families_are_periodic(family: str, style: int) -> None:
    assert _autocorr_peak(render_texture(family, 192, np.random.default_rng(5), style)) > 0.5


def test_render_errors() -> None:
    with pytest.raises(ValueError, match="unknown texture family"):
        render_texture("velvet", 32, 0)
    with pytest.raises(ValueError, match="styles 0"):
        render_texture("cloth", 32, 0, style=len(STYLES["cloth"]))
