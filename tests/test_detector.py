"""Detector API: inference plumbing, result semantics, persistence, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import DiffComparator, MeanGenerator, fake_detector
from patchloupe import Detector, InspectionError, InspectionResult
from patchloupe.detector import DetectorConfig, ModelError
from patchloupe.scorers.pattern import PatternConfig, PatternScorer


def _fake_detector(grid: tuple[int, int] = (4, 4), size: int = 128) -> Detector:
    return fake_detector(size, grid)


def test_intersection_keeps_the_defect_patch_and_clears_its_neighbours() -> None:
    det = _fake_detector()
    img = np.full((128, 128, 3), 100, np.uint8)
    img[32:64, 64:96] = 255  # patch (1, 2) is "defective"
    r = det.inspect(img)
    expected = np.zeros((4, 4), bool)
    expected[1, 2] = True
    # Row-wise, the patch also corrupts the predictions of (1, 0), (1, 1), (1, 3); column-wise of (0, 2),
    # (2, 2), (3, 2). Only the intersection over directions isolates the defect itself.
    np.testing.assert_array_equal(r.patch_map, expected)
    assert r.is_anomalous and r.score >= r.threshold
    assert r.mask[40, 80] and not r.mask[10, 10]
    assert r.anomaly_map.shape == (128, 128) and r.anomaly_map.dtype == np.float32


def test_clean_image_is_normal_with_empty_mask() -> None:
    det = _fake_detector()
    r = det.inspect(np.full((128, 128, 3), 90, np.uint8))
    assert not r.is_anomalous and not r.patch_map.any() and not r.mask.any()
    assert r.score < r.threshold


def test_result_semantics_and_threshold_override() -> None:
    det = _fake_detector()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (75, 113, 3), dtype=np.uint8)  # odd size: maps come back at the input size
    r = det.inspect(img)
    assert r.anomaly_map.shape == (75, 113) and r.mask.shape == (75, 113)
    assert set(r.timings_ms) == {"preprocess", "inference", "postprocess"}
    for thr in (0.0, 0.3, 1.0):
        rt = det.inspect(img, threshold=thr)
        assert rt.threshold == thr
        assert rt.is_anomalous == (rt.score >= thr) == bool(rt.patch_map.any())
        assert rt.mask.any() <= rt.is_anomalous
    det.threshold = 1.0
    assert not det.inspect(img).is_anomalous
    for bad in (float("nan"), float("inf"), -1, 2, 1.01, "0.5", True, None, [0.5]):
        with pytest.raises(ValueError, match="threshold"):
            det.threshold = bad
        with pytest.raises(ValueError, match="threshold"):
            det.inspect(img, threshold=bad if bad is not None else "a")
        with pytest.raises(ValueError, match="threshold"):
            det.inspect_many([img], threshold=bad if bad is not None else "a")  # checked at the call, not at next()
    assert det.threshold == 1.0


def test_inputs_gray_bgr_path_and_pil(tmp_path: Path) -> None:
    det = _fake_detector()
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[20:30, 20:30] = 30
    ref = det.inspect(rgb)
    assert det.inspect(rgb[..., ::-1].copy(), bgr=True).score == pytest.approx(ref.score)
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    r = det.inspect(path)
    assert r.source == str(path) and r.score == pytest.approx(ref.score)
    gray = det.inspect(rgb[..., 0].copy())
    assert gray.anomaly_map.shape == (64, 64)
    from PIL import Image

    assert det.inspect(Image.fromarray(rgb)).score == pytest.approx(ref.score)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((32, 32), np.uint16),
        np.zeros((32, 32, 4), np.uint8),
        np.full((32, 32, 3), np.nan, np.float32),
        np.zeros((0, 32, 3), np.uint8),
        np.zeros((32, 32, 3, 2), np.uint8),
        "definitely/not/here.png",
    ],
)
def test_bad_input_raises_clear_error(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        _fake_detector().inspect(bad)


def test_inspect_many_batches_reports_bad_items_and_matches_single(tmp_path: Path) -> None:
    det = _fake_detector()
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    items: list[object] = [imgs[0], imgs[1], tmp_path / "missing.png", imgs[2], imgs[3], imgs[4]]
    out = list(det.inspect_many(items, batch_size=2))
    assert len(out) == 6
    assert isinstance(out[2], InspectionError) and "missing.png" in out[2].error
    singles = [det.inspect(im).score for im in imgs]
    batched = [r.score for r in out if isinstance(r, InspectionResult)]
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-6)
    with pytest.raises((ValueError, OSError)):
        list(det.inspect_many(items, on_error="raise"))


def test_result_to_dict_plot_and_save(tmp_path: Path) -> None:
    det = _fake_detector()
    img = np.full((128, 128, 3), 100, np.uint8)
    img[32:64, 64:96] = 255
    r = det.inspect(img)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["is_anomalous"] and d["defect_area_px"] > 0 and d["patch_map"][1][2] == 1
    panel = r.plot()
    assert panel.shape == (128, 384, 3) and panel.dtype == np.uint8
    p = r.save(tmp_path / "out" / "r")
    assert p.suffix == ".png" and p.is_file() and p.with_suffix(".json").is_file()
    assert cv2.imread(str(p)).shape == (128, 384, 3)


def test_calibrate_sets_threshold_above_normal_scores() -> None:
    det = _fake_detector()
    rng = np.random.default_rng(2)
    normals = [np.clip(100 + rng.normal(0, 3, (64, 64, 3)), 0, 255).astype(np.uint8) for _ in range(6)]
    thr = det.calibrate(normals, false_alarm_rate=0.05)
    assert det.threshold == thr
    assert all(not det.inspect(im).is_anomalous for im in normals)
    assert det.config.calibration["n_images"] == 6
    with pytest.raises(ValueError):
        det.calibrate(normals, false_alarm_rate=1.5)
    scores = [det.inspect(im).score for im in normals]
    record = dict(det.config.calibration)
    assert det.calibrate_from_scores(scores, false_alarm_rate=0.05) == thr
    assert det.config.calibration == record
    with pytest.raises(ValueError, match="at least one"):
        det.calibrate_from_scores([])


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        DetectorConfig(image_size=(100, 100), grid=(3, 3))  # not divisible
    with pytest.raises(ValueError, match="3x3"):
        PatternScorer(MeanGenerator(), DiffComparator(), (64, 64), (2, 2))
    with pytest.raises(ValueError):
        PatternConfig(directions=("ltr", "sideways"))
    with pytest.raises(ValueError, match="repeats"):
        PatternConfig(directions=("ltr", "rtl", "ltr"))
    with pytest.raises(ValueError, match="grid"):
        DetectorConfig(grid=(4.7, 4.7))
    with pytest.raises(ValueError, match="grid"):
        DetectorConfig(grid=(4,))
    from patchloupe.persistence import _split_meta

    with pytest.raises(ModelError):
        _split_meta({"format_version": 999})


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        Detector.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="detector.json"):
        Detector.load(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "detector.json").write_text("{not json")
    with pytest.raises(ModelError):
        Detector.load(bad)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 1), (2, 3, 3), (3, 200, 3), (250, 1)])
def test_images_smaller_than_the_grid_follow_the_input_policy(shape: tuple[int, ...]) -> None:
    det = _fake_detector()
    img = np.full(shape, 100, np.uint8)
    r = det.inspect(img)
    assert r.anomaly_map.shape == shape[:2] and r.mask.shape == shape[:2]
    good = np.full((128, 128, 3), 90, np.uint8)
    results = list(det.inspect_many([good, img, good]))
    assert all(x.ok for x in results) and results[1].anomaly_map.shape == shape[:2]


def test_inspect_many_refuses_a_single_path_or_image() -> None:
    det = _fake_detector()
    for single in ("part.png", Path("part.png"), b"part.png", np.zeros((8, 8, 3), np.uint8)):
        with pytest.raises(TypeError, match="iterable of images"):
            det.inspect_many(single)
    batch = np.full((2, 128, 128, 3), 90, np.uint8)  # a 4-d array is a batch of images
    assert len(list(det.inspect_many(batch))) == 2
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            det.inspect_many([batch[0]], batch_size=bad)


def test_calibrate_from_scores_refuses_nan_and_out_of_range() -> None:
    det = _fake_detector()
    for bad in ([0.3, 0.4, float("nan")], [float("nan")] * 3, [0.3, 1.5], [-0.1, 0.2], ["a"], [float("inf")]):
        with pytest.raises(ValueError):
            det.calibrate_from_scores(bad)
    assert det.threshold == 0.5  # a refused calibration changes nothing


def test_save_refuses_non_float_weight_dtypes(tmp_path: Path) -> None:
    det = _fake_detector()
    for dtype in (torch.int8, torch.int64, torch.bool, "float16"):
        with pytest.raises(ValueError, match="weights_dtype"):
            det.save(tmp_path / "m", weights_dtype=dtype)
    assert not (tmp_path / "m").exists()
