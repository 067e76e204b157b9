"""The built-in default model's builder: a zero-shot self-reference model fitted and calibrated on generated
textures, which finds a defect on a surface it never saw."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from patchloupe import Detector
from patchloupe.train.default_selfref import build_default_selfref


def _stripes(seed: int, n: int = 256) -> np.ndarray:
    """Diagonal stripes (period 12) with noise, a surface none of the generated families draws: RGB uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n] + rng.integers(12, size=2)[:, None, None]
    base = 120 + 50 * np.sin(2 * np.pi * (x + y) / 12) + rng.normal(0, 5, (n, n))
    return np.clip(np.stack([base, base * 0.95, base * 0.7], -1), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Detector, Path]:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("builtin") / "selfref"
    det = build_default_selfref(out, n_images_per_family_style=1, n_calibration_per_family_style=1, seed=3)
    return det, out


def test_builds_a_zero_shot_self_reference_model(built: tuple[Detector, Path]) -> None:
    det, out = built
    assert det.config.scorer == "selfref" and det.scorer.config.combine == "self"
    assert det.scorer.config.lighting_copies == 0 and 0.0 < det.threshold < 1.0
    assert det.config.training["kind"] == "default-selfref" and det.config.calibration["n_images"] > 10
    assert Detector.load(out).threshold == pytest.approx(det.threshold)


def test_finds_a_defect_on_a_surface_it_never_saw(built: tuple[Detector, Path]) -> None:
    det, _ = built
    good = [_stripes(s) for s in range(4)]
    bad = []
    for im in good:
        im = im.copy()
        cv2.circle(im, (170, 80), 10, (30, 190, 60), -1)
        bad.append(im)
    g, b = [det.inspect(im).score for im in good], [det.inspect(im).score for im in bad]
    assert min(b) > max(g)
    y, x = np.unravel_index(np.argmax(det.inspect(bad[0]).anomaly_map), (256, 256))
    assert abs(int(y) - 80) <= 24 and abs(int(x) - 170) <= 24
