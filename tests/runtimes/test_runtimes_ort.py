"""patchloupe.runtimes.ort (and the shared GraphScorer): ONNX Runtime results equal the torch path's."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import striped_surface
from patchloupe import Detector
from patchloupe.runtimes.ort import OnnxScorer

INPUTS = {  # input sizes other than the model's: the runtime resizes exactly as the torch path
    "pattern": [striped_surface(s, (120, 150), hole=s % 2 == 1) for s in range(4)] + [striped_surface(9, (80, 80))],
    "memory": [striped_surface(s + 50, hole=s % 2 == 1) for s in range(4)] + [striped_surface(7, (100, 90))],
}
INPUTS["selfref"] = INPUTS["memory"]


def assert_parity(ref: Detector, det: Detector, images: list[np.ndarray], batch_size: int = 3) -> list:
    """Image scores within 1e-4, identical verdicts and patch maps, anomaly maps within 1e-3, masks ~equal."""
    want = list(ref.inspect_many(images, batch_size=batch_size, on_error="raise"))
    got = list(det.inspect_many(images, batch_size=batch_size, on_error="raise"))
    assert len(want) == len(got) == len(images)
    for w, g in zip(want, got):
        assert abs(w.score - g.score) <= 1e-4
        assert w.is_anomalous == g.is_anomalous and w.threshold == g.threshold
        np.testing.assert_array_equal(w.patch_map, g.patch_map)
        np.testing.assert_allclose(g.patch_scores, w.patch_scores, atol=1e-4)
        assert g.anomaly_map.shape == w.anomaly_map.shape == w.image.shape[:2]
        assert np.abs(g.anomaly_map - w.anomaly_map).max() <= 1e-3
        assert (g.mask != w.mask).mean() <= 1e-3
    return want


@pytest.fixture(scope="module")
def detectors(tiny_pattern_detector, small_memory_detector, small_selfref_detector, exported_graphs) -> dict:
    return {
        "pattern": (tiny_pattern_detector, Detector.load(exported_graphs["pattern"], threads=1)),
        "memory": (small_memory_detector, Detector.load(exported_graphs["memory"], threads=1)),
        "selfref": (small_selfref_detector, Detector.load(exported_graphs["selfref"], threads=1)),
    }


@pytest.mark.parametrize("kind", ["pattern", "memory", "selfref"])
def test_onnxruntime_matches_torch_through_the_whole_pipeline(detectors, kind: str) -> None:
    ref, det = detectors[kind]
    assert isinstance(det.scorer, OnnxScorer) and det.scorer.providers == ["CPUExecutionProvider"]
    assert det.config.to_dict() == ref.config.to_dict()
    assert det.scorer.name == ref.scorer.name and det.scorer.pixel_rule == ref.scorer.pixel_rule
    want = assert_parity(ref, det, INPUTS[kind])
    if kind == "memory":  # the holes are found: the verdicts compared are not all alike
        assert {w.is_anomalous for w in want} == {True, False}
    if kind == "selfref":  # its fitted threshold (2 held-out images) calls all five good: one in the widest gap
        s = np.sort([w.score for w in want])
        i = int(np.argmax(np.diff(s)))
        t = float(s[i] + s[i + 1]) / 2.0
        verdicts = [[r.is_anomalous for r in d.inspect_many(INPUTS[kind], threshold=t)] for d in (ref, det)]
        assert verdicts[0] == verdicts[1] and set(verdicts[0]) == {True, False}


@pytest.mark.parametrize("kind", ["pattern", "memory", "selfref"])
def test_graph_outputs_match_pixelmaps_at_the_model_size(detectors, kind: str) -> None:
    from patchloupe import pixelmaps

    ref, det = detectors[kind]
    h, w = ref.config.image_size
    batch = np.stack([striped_surface(s, (h, w), hole=True) for s in range(2)])
    out = det.scorer.run_all(batch)
    scores, fields = ref.scorer.infer(np.stack([ref.scorer.prepare(im) for im in batch]))
    np.testing.assert_allclose(out["image_score"], scores.reshape(2, -1).max(1), atol=1e-4)
    for i in range(2):
        amap = pixelmaps.anomaly_map(ref.scorer.pixel_rule, fields[i], scores[i], ref.config.grid, (h, w))
        assert np.abs(out["anomaly_map"][i] - amap).max() <= 1e-3


def test_dynamic_batch_gives_the_same_scores_at_every_batch_size(detectors) -> None:
    _, det = detectors["pattern"]
    batch = np.stack([striped_surface(s, (96, 96), hole=s == 2) for s in range(5)])
    one = np.concatenate([det.scorer.infer(batch[i : i + 1])[0] for i in range(5)])
    all5 = det.scorer.infer(batch)[0]
    np.testing.assert_allclose(all5, one, atol=1e-6)


def test_calibrate_and_threshold_behave_as_on_the_torch_detector(detectors) -> None:
    ref, det = detectors["memory"]
    clean = [striped_surface(s + 200) for s in range(6)]
    t_ref = Detector(ref.scorer, type(ref.config)(**ref.config.to_dict())).calibrate(clean, false_alarm_rate=0.1)
    t_det = Detector(det.scorer, type(det.config)(**det.config.to_dict())).calibrate(clean, false_alarm_rate=0.1)
    assert abs(t_ref - t_det) <= 1e-4
    with pytest.raises(ValueError):
        det.threshold = 1.5


def test_unknown_provider_is_refused(exported_graphs) -> None:
    with pytest.raises(ValueError, match="not in this onnxruntime"):
        Detector.load(exported_graphs["memory"], providers=["NoSuchExecutionProvider"])


def test_wrong_input_shape_is_a_value_error(detectors) -> None:
    _, det = detectors["memory"]
    with pytest.raises(ValueError, match="expected uint8"):
        det.scorer.infer(np.zeros((1, 32, 32, 3), np.uint8))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pattern", "memory", "selfref"])
def test_fp16_graph_stays_close(
    tiny_pattern_detector, small_memory_detector, small_selfref_detector, tmp_path, kind: str
) -> None:
    ref = {"pattern": tiny_pattern_detector, "memory": small_memory_detector, "selfref": small_selfref_detector}[kind]
    det = Detector.load(ref.export(tmp_path / "h.onnx", half=True))
    assert det.scorer.meta["precision"] == "fp16"
    for w, g in zip(ref.inspect_many(INPUTS[kind]), det.inspect_many(INPUTS[kind])):
        assert abs(w.score - g.score) <= 1e-2
        assert np.abs(g.anomaly_map - w.anomaly_map).max() <= 2e-2
