"""The input policy: windows at one pixel scale for inputs far from the model's shape."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import fake_detector
from patchloupe import Detector
from patchloupe.detector import DetectorConfig
from patchloupe.fit import _per_image_max, window_views
from patchloupe.windows import InputPolicy, cut, merge, plan_windows


def _det(policy: InputPolicy) -> Detector:
    return fake_detector(64, (4, 4), input_policy=policy)


def test_auto_resizes_ordinary_shapes_and_windows_strips() -> None:
    auto = InputPolicy()
    assert plan_windows((300, 500), (256, 256), (4, 4), auto) is None  # aspect 1.7: resized whole
    assert plan_windows((256, 4096), (256, 256), (4, 4), InputPolicy(mode="resize")) is None
    plan = plan_windows((256, 4096), (256, 256), (4, 4), auto)
    assert plan is not None and plan.scaled_hw == (256, 4096) and plan.grid == (4, 64)
    starts = [c for _, c in plan.offsets]
    assert starts[0] == 0 and starts[-1] == 60 and all(b - a == 2 for a, b in zip(starts, starts[1:]))
    tall = plan_windows((4096, 256), (256, 256), (4, 4), auto)
    assert tall is not None and tall.grid == (64, 4)
    scaled = plan_windows((2048, 2448), (256, 256), (8, 8), InputPolicy(mode="windows", scale=0.25))
    assert scaled is not None and scaled.scaled_hw == (512, 608) and len(scaled.offsets) > 1


def test_every_patch_is_read_from_the_window_where_it_is_most_central() -> None:
    plan = plan_windows((64, 640), (64, 64), (4, 4), InputPolicy())
    assert plan is not None and plan.grid == (4, 40)
    n = len(plan.offsets)
    # window k reports, for its local patch (r, c), the global column it sits at
    scores = np.stack([np.tile(np.arange(c0, c0 + 4, dtype=np.float64), (4, 1)) for _, c0 in plan.offsets])
    fields = np.zeros((n, 16, 2, 2), np.float32)
    merged, field = merge(plan, "stitch", scores, fields, (4, 4))
    np.testing.assert_array_equal(merged, np.tile(np.arange(40), (4, 1)))
    assert field.shape == (160, 2, 2)
    owner_cols = np.asarray(plan.offsets)[plan.owner][..., 1]
    local = np.arange(40)[None, :] - owner_cols
    assert ((local >= 1) & (local <= 2))[:, 1:-1].all()  # every interior patch comes from a window's middle


def test_resize_rule_fields_are_stitched_at_the_scaled_size() -> None:
    plan = plan_windows((64, 320), (64, 64), (4, 4), InputPolicy())
    assert plan is not None
    n = len(plan.offsets)
    fields = np.stack([np.full((64, 64), k, np.float32) for k in range(n)])
    scores = np.zeros((n, 4, 4))
    _, field = merge(plan, "resize", scores, fields, (4, 4))
    assert field.shape == plan.scaled_hw
    np.testing.assert_array_equal(field[0, ::16], plan.owner[0].astype(np.float32))


def test_a_small_defect_on_a_strip_is_found_with_windows_and_lost_when_squashed() -> None:
    x = np.arange(2048)
    row = (128 + 60 * np.sin(2 * np.pi * x / 16.0)).astype(np.uint8)
    strip = np.repeat(np.repeat(row[None, :, None], 64, 0), 3, 2)
    bad = strip.copy()
    bad[18:30, 994:1006] = 0  # 12 x 12 px on a 2048 px strip
    windowed, squashed = _det(InputPolicy()), _det(InputPolicy(mode="resize"))
    good_w, bad_w = windowed.inspect(strip), windowed.inspect(bad)
    assert bad_w.patch_scores.shape == (4, 128) and bad_w.anomaly_map.shape == (64, 2048)
    assert bad_w.score > good_w.score + 0.2 and bad_w.is_anomalous and not good_w.is_anomalous
    ys, xs = np.nonzero(bad_w.mask)
    assert len(xs) and 976 <= xs.min() and xs.max() <= 1024
    assert squashed.inspect(bad).score - squashed.inspect(strip).score < bad_w.score - good_w.score


def test_fit_views_and_per_image_scores() -> None:
    imgs = [np.zeros((64, 64, 3), np.uint8), np.zeros((64, 512, 3), np.uint8)]
    views, groups = window_views(imgs, (64, 64), (4, 4), InputPolicy())
    assert views[0] is imgs[0] and all(v.shape == (64, 64, 3) for v in views[1:]) and groups[0] == 0
    assert (groups[1:] == 1).all() and len(views) > 3
    np.testing.assert_array_equal(_per_image_max([0.1, 0.2, 0.9, 0.3], np.array([0, 1, 1, 1])), [0.1, 0.9])
    assert [w.shape for w in cut(imgs[1], plan_windows((64, 512), (64, 64), (4, 4), InputPolicy()), (64, 64), (4, 4))]


def test_policy_validation_and_roundtrip() -> None:
    for bad in ({"mode": "squash"}, {"max_aspect": 0.5}, {"overlap": 0.9}, {"scale": 0.0}, {"scale": "x"}, {"x": 1}):
        with pytest.raises(ValueError, match="input_policy"):
            InputPolicy.from_dict(bad)
    cfg = DetectorConfig(image_size=(64, 64), grid=(4, 4), input_policy={"mode": "windows", "scale": 0.5})
    again = DetectorConfig(**json.loads(json.dumps(cfg.to_dict())))
    assert again.input_policy == cfg.input_policy == InputPolicy(mode="windows", scale=0.5)
