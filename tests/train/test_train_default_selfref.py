"""The built-in default model's builder: a zero-shot self-reference model fitted and calibrated on generated
textures, which finds a defect on a surface it never saw."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from patchloupe import Detector
from patchloupe.calibration import threshold_from_scores
from patchloupe.train.default_selfref import build_default_selfref, calibrate_pool_gain, main, pool_streams


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
    det = build_default_selfref(
        out, n_images_per_family_style=1, n_calibration_per_family_style=1, n_pool_per_family_style=3, seed=3
    )
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


def test_the_pool_gain_gives_the_pooled_model_the_plain_threshold(built: tuple[Detector, Path]) -> None:
    """With the calibrated gain, the streams it was calibrated on calibrate to the model's threshold when scored
    by ``det.pooled()``: the pooled detector keeps the plain one's operating point."""
    det, out = built
    gain = det.scorer.config.pool_gain
    assert gain != 1.0 and det.config.training["pool_gain"]["gain"] == gain
    assert Detector.load(out).scorer.config.pool_gain == pytest.approx(gain)
    scores = []
    for stream in pool_streams(3, (256, 256), 3 + 29):
        scores += [r.score for r in det.pooled(admit_flagged=True).inspect_many(stream, keep_image=False)][1:]
    assert threshold_from_scores(scores, det.config.false_alarm_rate)[0] == pytest.approx(det.threshold, abs=1e-4)
    # calibrating again from the gain it has finds the same gain (the scores are undone to gain 1 first)
    again, record = calibrate_pool_gain(det, pool_streams(3, (256, 256), 3 + 29))
    assert again == pytest.approx(gain, rel=1e-4) and record["n_pooled_images"] == len(scores)


def test_calibrate_pool_gain_refuses_fitted_models_and_single_images(
    built: tuple[Detector, Path], small_selfref_detector: Detector
) -> None:
    det, _ = built
    with pytest.raises(ValueError, match="zero-shot"):
        calibrate_pool_gain(small_selfref_detector, [[np.zeros((64, 64, 3), np.uint8)] * 2])
    with pytest.raises(ValueError, match="2 or more"):
        calibrate_pool_gain(det, [[_stripes(0)], [_stripes(1)]])


def test_pool_gain_only_rewrites_the_gain_not_the_weights(built: tuple[Detector, Path], tmp_path: Path) -> None:
    import json
    import shutil

    _, out = built
    folder = tmp_path / "model"
    shutil.copytree(out, folder)
    meta = json.loads((folder / "detector.json").read_text())
    meta["scorer_config"]["selfref"]["pool_gain"] = 1.0
    (folder / "detector.json").write_text(json.dumps(meta))
    weights = {p.name: p.read_bytes() for p in folder.glob("*.safetensors")}
    assert main(["--pool-gain-only", "--out", str(folder), "--pool-images", "2"]) == 0
    assert {p.name: p.read_bytes() for p in folder.glob("*.safetensors")} == weights
    saved = json.loads((folder / "detector.json").read_text())
    assert saved["scorer_config"]["selfref"]["pool_gain"] != 1.0
    assert saved["training"]["pool_gain"]["n_streams"] == 14
