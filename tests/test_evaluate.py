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
