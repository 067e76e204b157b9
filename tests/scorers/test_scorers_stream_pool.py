"""The stream pool (``patchloupe.scorers.stream_pool``): a reference of recent images, used only on a drifted stream."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import checks_surface, striped_surface
from patchloupe import Detector
from patchloupe.scorers.stream_pool import PoolConfig, StreamPool, cross_nearest, pool_distance


def _scores(det: Detector, images: list[np.ndarray], batch_size: int = 4) -> np.ndarray:
    return np.array([r.score for r in det.inspect_many(images, batch_size=batch_size, keep_image=False)])


@pytest.mark.parametrize(
    "bad",
    [
        {"size": 0},
        {"size": 2.5},
        {"size": True},
        {"drift": 0.0},
        {"drift": math.nan},
        {"likeness": -1.0},
        {"drift_quantile": 0.0},
        {"closest": 1.5},
        {"closest": "0.3"},
        {"min_pool": 0},
        {"admit_flagged": "yes"},
    ],  # fmt: skip
)
def test_config_rejects_bad_settings(bad: dict) -> None:
    with pytest.raises(ValueError):
        PoolConfig(**bad)


def test_pool_distance_is_the_mean_over_the_closest_pool_images() -> None:
    g = torch.Generator().manual_seed(0)
    q, pool = torch.randn(5, 3, 4, generator=g), torch.randn(6, 5, 3, 4, generator=g)
    ref = torch.stack([torch.cdist(q.flatten(1).T, p.flatten(1).T).amin(1) for p in pool])  # (P, N)
    torch.testing.assert_close(cross_nearest(q, pool), ref, atol=1e-4, rtol=1e-4)
    k = round(0.3 * 6)  # 2 of 6
    torch.testing.assert_close(pool_distance(q, pool, 0.3), ref.sort(0).values[:k].mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pool_distance(q, pool[:1], 0.3), ref[0], atol=1e-4, rtol=1e-4)  # at least one


def test_on_the_fitted_surface_the_pool_changes_nothing(small_selfref_detector: Detector) -> None:
    base = small_selfref_detector
    pooled = base.pooled(size=4)
    images = [striped_surface(s) for s in range(10)] + [striped_surface(7, hole=True)]  # training images: no drift
    np.testing.assert_allclose(_scores(pooled, images), _scores(base, images), atol=1e-6)
    st = pooled.scorer.stats()
    assert st["seen"] == 11 and st["pooled"] == 0 and st["held"] == 4 and not st["open"]


def test_after_a_texture_change_the_pool_scores_the_stream(small_selfref_detector: Detector) -> None:
    base = small_selfref_detector
    pooled = base.pooled(size=8)
    stream = [checks_surface(s) for s in range(12)]
    defect, good = checks_surface(99, hole=True), checks_surface(98)
    scores = _scores(pooled, [*stream, defect, good])
    st = pooled.scorer.stats()
    assert st["pooled"] > 0 and st["open"]
    assert pooled.scorer.last_pooled[-2:] == [True, True]
    assert scores[-2] > scores[-1]  # the defect of the new surface stands out against its pool
    again = base.pooled(size=8)
    one_by_one = [again.inspect(im).score for im in [*stream, defect, good]]
    np.testing.assert_allclose(one_by_one, scores, atol=1e-5)  # batching does not change a stream's scores


def test_likeness_gate_keeps_the_fitted_scores_when_recent_images_differ(small_selfref_detector: Detector) -> None:
    base = small_selfref_detector
    strict = base.pooled(size=8, likeness=1e-6)  # no stream is that alike: the pool is never used
    images = [checks_surface(s) for s in range(10)]
    np.testing.assert_allclose(_scores(strict, images), _scores(base, images), atol=1e-6)
    assert strict.scorer.stats()["pooled"] == 0


def test_reset_forgets_the_pool(small_selfref_detector: Detector) -> None:
    pooled = small_selfref_detector.pooled(size=4)
    images = [checks_surface(s) for s in range(6)]
    first = _scores(pooled, images)
    pooled.scorer.reset()
    assert pooled.scorer.stats()["held"] == 0
    np.testing.assert_allclose(_scores(pooled, images), first, atol=1e-6)  # the same stream again, the same scores


def test_pooled_detector_copies_the_config_and_saves_the_fitted_model(small_selfref_detector, tmp_path) -> None:  # noqa: ANN001
    base = small_selfref_detector
    pooled = base.pooled()
    pooled.threshold = 0.99
    assert base.threshold != 0.99
    assert isinstance(pooled.scorer, StreamPool) and pooled.scorer.base is base.scorer
    assert isinstance(pooled.pooled(size=4).scorer.base, type(base.scorer))  # no pool inside a pool
    loaded = Detector.load(pooled.save(tmp_path / "m"))
    assert loaded.config.scorer == "selfref" and not isinstance(loaded.scorer, StreamPool)
    img = [striped_surface(3)]
    np.testing.assert_allclose(_scores(loaded, img), _scores(base, img), atol=1e-5)


def test_pool_refuses_other_scorers_and_export(small_memory_detector, small_selfref_detector, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(TypeError, match="selfref"):
        small_memory_detector.pooled()
    with pytest.raises(ValueError, match="cannot be exported"):
        small_selfref_detector.pooled().export(tmp_path / "m.onnx")
    with pytest.raises(TypeError):
        StreamPool.from_saved({}, {}, (64, 64), (4, 4))


def test_pool_refuses_other_combines(small_selfref_detector: Detector) -> None:
    scorer = copy.copy(small_selfref_detector.scorer)
    scorer.config = dataclasses.replace(scorer.config, combine="min")
    with pytest.raises(ValueError, match="combine"):
        StreamPool(scorer)


def test_the_built_in_model_scores_against_its_pool_with_no_gate() -> None:
    base = Detector.load()  # combine="self": no fitted surface, so no drift or likeness gate
    pooled = base.pooled(size=4)
    stream = [checks_surface(s) for s in range(5)]
    defect, good = checks_surface(99, hole=True), checks_surface(98)
    images = [*stream, defect, good]
    plain, scores = _scores(base, images), _scores(pooled, images, batch_size=1)
    assert scores[0] == pytest.approx(plain[0], abs=1e-6)  # the first image has no pool: the model's own score
    assert pooled.scorer.stats()["pooled"] == len(images) - 1 and pooled.scorer.stats()["held"] == 4
    gain = base.scorer.config.pool_gain  # the pooled maps are multiplied by it: undone, min(s, M) <= s everywhere
    assert np.all(-np.expm1(np.log1p(-scores[1:]) / gain) <= plain[1:] + 1e-6)
    assert scores[-2] > scores[-1]  # the defect stands out against the pool of its surface
    np.testing.assert_allclose(_scores(base.pooled(size=4), images, batch_size=4), scores, atol=1e-5)  # batching


def test_the_pool_gain_scales_the_maps_the_pool_rule_scored() -> None:
    """``pool_gain`` (calibrated for the built-in model) multiplies the pooled images' maps, not the first image's."""
    base = Detector.load()
    assert base.scorer.config.pool_gain > 1.0  # the shipped model has one: min(s, M) <= s needs lifting
    images = np.stack([checks_surface(s) for s in range(3)])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    maps = {}
    for gain in (1.0, 2.5):
        scorer = copy.copy(base.scorer)
        scorer.config = dataclasses.replace(scorer.config, pool_gain=gain)
        maps[gain] = StreamPool(scorer, PoolConfig(size=4)).raw_map(x)
    torch.testing.assert_close(maps[2.5][0], maps[1.0][0])  # no pool yet: the model's own map
    torch.testing.assert_close(maps[2.5][1:], 2.5 * maps[1.0][1:], rtol=1e-5, atol=1e-6)


def test_flagged_images_do_not_join_the_pool_after_min_pool() -> None:
    """An image the pool rule flags stays out of the pool once it holds ``min_pool`` images; after ``size`` images in
    a row stayed out, one joins (a stream where every part is flagged renews its pool). The threshold is read when
    scoring: setting it on the pooled detector counts."""
    images = [checks_surface(s) for s in range(8)]

    def held_after_each(det: Detector) -> list[int]:
        out = []
        for im in images:
            det.inspect(im, keep_image=False)
            out.append(det.scorer.stats()["held"])
        return out

    pooled = Detector.load().pooled(size=4, min_pool=2)
    pooled.threshold = 0.0  # every pooled image is flagged
    # the 1st image is not pooled (joins), the 2nd joins to reach min_pool, the 3rd-5th stay out; at the 6th at most
    # a quarter (1) of the last 4 images had joined, so it joins, and so does the 7th; the 8th stays out
    assert held_after_each(pooled) == [1, 2, 2, 2, 2, 3, 4, 4]
    assert list(pooled.scorer._joined) == [False, True, True, False]
    assert pooled.scorer.stats()["kept_out"] == 4  # the 3rd-5th and the 8th
    everyone = Detector.load().pooled(size=4, min_pool=2, admit_flagged=True)
    everyone.threshold = 0.0
    assert held_after_each(everyone) == [1, 2, 3, 4, 4, 4, 4, 4]
    nothing_flagged = Detector.load().pooled(size=4, min_pool=2)
    nothing_flagged.threshold = 1.0
    assert held_after_each(nothing_flagged) == [1, 2, 3, 4, 4, 4, 4, 4]


def test_admission_with_a_pool_smaller_than_min_pool_and_while_calibrating() -> None:
    """``min_pool`` above ``size`` is capped at ``size``; ``calibrate`` admits every image (the threshold it
    replaces must not filter the pool its scores come from); ``threshold_from`` must hold a threshold."""
    images = [checks_surface(s) for s in range(6)]
    small = Detector.load().pooled(size=2)  # min_pool 4 > size 2
    small.threshold = 0.0
    held = []
    for im in images:
        small.inspect(im, keep_image=False)
        held.append(small.scorer.stats()["held"])
    assert held[:3] == [1, 2, 2] and small.scorer._joined.count(False) >= 1  # flagged images stayed out
    cal = Detector.load().pooled(size=4, min_pool=1)
    cal.threshold = 0.0
    cal.calibrate(images[:5])
    assert cal.scorer.stats()["held"] == 4 and all(cal.scorer._joined)  # every calibration image joined
    assert cal.threshold > 0.0 and not cal.scorer._admit_all  # admission is back after calibrating
    with pytest.raises(TypeError, match="threshold_from"):
        StreamPool(Detector.load().scorer, threshold_from=0.7)
