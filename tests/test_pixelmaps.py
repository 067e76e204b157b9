"""Pixel fields -> anomaly maps and outlines at the input's size."""

from __future__ import annotations

import numpy as np
import pytest
from patchloupe import pixelmaps


def test_stitch_rule_weights_each_patch_field_by_its_score() -> None:
    fields = np.ones((4, 2, 2), np.float32)
    scores = np.array([[0.0, 1.0], [0.0, 0.0]])
    amap = pixelmaps.anomaly_map("stitch", fields, scores, (2, 2), (40, 60))
    assert amap.shape == (40, 60) and amap.dtype == np.float32
    assert amap[5, 50] == pytest.approx(1.0) and amap[35, 5] == 0.0
    mask = pixelmaps.outline("stitch", fields, amap, scores >= 0.5, (2, 2), 0.5)
    assert mask[5, 50] and not mask[35, 5] and not mask[5, 5]


def test_resize_rule_outlines_where_the_map_reaches_the_threshold() -> None:
    field = np.zeros((16, 16), np.float32)
    field[2:4, 2:4] = 0.9
    scores = np.array([[0.9, 0.0], [0.0, 0.0]])
    amap = pixelmaps.anomaly_map("resize", field, scores, (2, 2), (32, 32))
    mask = pixelmaps.outline("resize", field, amap, scores >= 0.5, (2, 2), 0.5)
    assert mask[6, 6] and not mask[20, 20] and mask.sum() < 100


def test_outputs_smaller_than_the_grid_and_empty_verdicts() -> None:
    fields = np.ones((16, 4, 4), np.float32)
    scores = np.full((4, 4), 0.8)
    amap = pixelmaps.anomaly_map("stitch", fields, scores, (4, 4), (1, 2))
    assert amap.shape == (1, 2) and np.allclose(amap, 0.8)
    none = pixelmaps.outline("stitch", fields, amap, np.zeros((4, 4), bool), (4, 4), 0.5)
    assert none.shape == (1, 2) and not none.any()
    with pytest.raises(ValueError, match="pixel rule"):
        pixelmaps.anomaly_map("blur", fields, scores, (4, 4), (8, 8))
