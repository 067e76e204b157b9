"""Evaluation on an MVTec-layout category."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from patchloupe import Detector


def test_evaluate_returns_metrics(model_dir: Path, textures: Path) -> None:
    res = Detector.load(model_dir).evaluate(textures)
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= res[key] <= 1.0
    assert res["n_good"] == 3 and res["n_defect"] == 5 and not res["errors"]
    kinds = {k for k in res["per_kind"] if k != "good"}
    assert set(res["per_kind_image_auroc"]) == kinds and len(kinds) == 5
    assert all(0.0 <= v <= 1.0 for v in res["per_kind_image_auroc"].values())


def test_per_kind_auroc_separates_kinds() -> None:
    from patchloupe.evaluate import _per_kind_auroc

    labels = np.array([0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.15, 0.05])
    out = _per_kind_auroc(labels, scores, ["good", "good", "hole", "hole", "stain", "stain"])
    assert out == {"hole": 1.0, "stain": 0.25}


def test_operating_point_compares_the_threshold_with_the_best_one_at_its_false_alarm_rate() -> None:
    from patchloupe.evaluate import operating_point

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.35, 0.5, 0.95, 0.6])
    op = operating_point(labels, scores, threshold=0.55)  # flags 0.9 (1 of 4 good) and 0.95, 0.6
    assert op["realised_false_alarm_rate"] == 0.25 and op["recall_at_threshold"] == 0.5
    assert op["best_recall_at_that_false_alarm_rate"] == 1.0  # a threshold just above 0.3 keeps 1 false alarm
    none = operating_point(labels, scores, threshold=0.99)
    assert none["realised_false_alarm_rate"] == 0.0 and none["best_recall_at_that_false_alarm_rate"] == 0.25
