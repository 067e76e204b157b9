"""Probe defects: generic synthetic defects drawn at fit time."""

from __future__ import annotations

import numpy as np
import pytest
from patchloupe.scorers.probes import PROBE_KINDS, probe_defect, probe_defects


def _image(seed: int, h: int = 64, w: int = 80) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 120 + 60 * np.sin(2 * np.pi * x / 10) * np.sin(2 * np.pi * y / 14) + rng.normal(0, 4, (h, w))
    return np.clip(np.stack([base, base * 0.9, base * 0.7], -1), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", PROBE_KINDS)
def test_each_kind_changes_a_local_part_of_the_image(kind: str) -> None:
    img = _image(0)
    out = probe_defect(img, kind, np.random.default_rng(1))
    assert out.shape == img.shape and out.dtype == np.uint8
    changed = (out != img).any(-1)
    assert 0 < changed.mean() < 0.5  # a defect, not a new image
    assert np.array_equal(img, _image(0))  # the input is left alone


def test_probe_defects_are_seeded_and_cycle_images_and_kinds() -> None:
    imgs = [_image(s) for s in range(2)]
    a, b = probe_defects(imgs, 7, seed=3), probe_defects(imgs, 7, seed=3)
    assert len(a) == 7 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, probe_defects(imgs, 7, seed=4)))
    assert probe_defects([], 5, seed=0) == [] and probe_defects(imgs, 0, seed=0) == []
    with pytest.raises(ValueError, match="kind"):
        probe_defect(imgs[0], "burn", np.random.default_rng(0))
