"""Thresholds from defect-free scores."""

from __future__ import annotations

import numpy as np
import pytest
from patchloupe.calibration import threshold_from_scores


def test_threshold_is_above_the_scores_and_rises_with_a_lower_false_alarm_rate() -> None:
    scores = np.random.default_rng(0).uniform(0.2, 0.4, 50)
    thr_1, record = threshold_from_scores(scores, 0.01)
    thr_10, _ = threshold_from_scores(scores, 0.10)
    assert thr_1 > scores.max() and thr_1 >= thr_10 and record["n_images"] == 50 and record["threshold"] == thr_1
    assert threshold_from_scores([0.99999], 0.01)[0] <= 1.0


def test_with_enough_images_the_fitted_tail_sets_the_threshold_not_a_few_outliers() -> None:
    rng = np.random.default_rng(1)
    bulk = 1.0 / (1.0 + np.exp(-rng.normal(0.0, 0.2, 200)))  # logits N(0, 0.2)
    scores = np.concatenate([bulk, [0.95, 0.96, 0.97]])  # three odd held-out images
    thr, record = threshold_from_scores(scores, 0.01)
    assert record["rule"] == "gaussian" and thr < record["empirical_quantile"]
    assert 0.5 < thr < 0.95 and np.mean(bulk >= thr) <= 0.03  # about 1 % of the bulk flagged, not 0 %
    few, few_record = threshold_from_scores(scores[:40], 0.01)  # under 1 / far images: at least their maximum
    assert few_record["rule"] == "max(empirical, gaussian)" and few > scores[:40].max()


@pytest.mark.parametrize("bad", [[], [0.2, float("nan")], [1.2], [-0.1], ["x"], [[0.1, 0.2], [0.3]]])
def test_bad_scores_are_refused(bad: list) -> None:
    with pytest.raises(ValueError):
        threshold_from_scores(bad, 0.01)


@pytest.mark.parametrize("far", [0.0, 1.0, -0.5, 2])
def test_bad_false_alarm_rates_are_refused(far: float) -> None:
    with pytest.raises(ValueError, match="false_alarm_rate"):
        threshold_from_scores([0.2, 0.3], far)
