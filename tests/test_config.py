"""DetectorConfig: validation of every field (it runs on load too), dict round trip."""

from __future__ import annotations

import json

import pytest
from patchloupe.config import MAX_IMAGE_SIDE, DetectorConfig, check_threshold
from patchloupe.windows import InputPolicy


def test_round_trip_through_json() -> None:
    cfg = DetectorConfig(image_size=(128, 96), grid=(4, 3), threshold=0.7, scorer="memory", training={"n": 3})
    again = DetectorConfig(**json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.input_policy, InputPolicy)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_size", (102, 102)), ("image_size", (MAX_IMAGE_SIDE * 2, 64)), ("image_size", "256"),
        ("grid", (4.5, 4)), ("grid", (4,)), ("grid", (True, 4)), ("threshold", float("nan")), ("threshold", 1.5),
        ("false_alarm_rate", 0.0), ("false_alarm_rate", True), ("scorer", "knn"), ("scorer", ["pattern"]),
        ("calibration", []), ("input_policy", {"mode": "stretch"}),
    ],
)  # fmt: skip
def test_invalid_fields_are_refused_naming_them(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field.split("_")[0]):
        DetectorConfig(**{field: value})


def test_check_threshold() -> None:
    assert check_threshold(0) == 0.0 and check_threshold(1) == 1.0
    for bad in ("0.5", True, None, 1.0000001, -1e-9, float("inf")):
        with pytest.raises(ValueError, match="threshold"):
            check_threshold(bad)
