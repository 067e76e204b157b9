"""``DetectorConfig``: what every detector has besides its scorer (saved in ``detector.json``)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from patchloupe.preprocess import check_geometry
from patchloupe.windows import InputPolicy

__all__ = ["MAX_IMAGE_SIDE", "DetectorConfig", "check_threshold"]

#: the largest model input side: a model runs on images resized to ``image_size``, and larger
#: inputs are handled by the input policy, not by a larger model
MAX_IMAGE_SIDE = 2048


def _pair(value: Any, name: str) -> tuple[int, int]:
    """A (rows, cols)-like pair of positive whole numbers; floats that are not whole are refused."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"{name} must be a pair of whole numbers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or int(v) != v:
            raise ValueError(f"{name} must be a pair of whole numbers, got {value!r}")
        out.append(int(v))
    return out[0], out[1]


@dataclass
class DetectorConfig:
    """The scorer-independent settings of a detector.

    ``image_size`` (H, W) is the size images are resized to; ``grid`` (rows, cols) the patch grid of
    ``patch_map``; ``threshold`` the image / patch score threshold; ``scorer`` the registered name of the
    scorer (``patchloupe.scorers.SCORERS``); ``input_policy`` how inputs far from the model's shape are
    windowed (``patchloupe.windows``). ``calibration`` and ``training`` are free-form records.
    """

    image_size: tuple[int, int] = (256, 256)
    grid: tuple[int, int] = (4, 4)
    threshold: float = 0.5
    false_alarm_rate: float = 0.01
    scorer: str = "pattern"
    input_policy: InputPolicy = field(default_factory=InputPolicy)
    calibration: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from patchloupe.scorers import SCORERS

        self.image_size = _pair(self.image_size, "image_size")
        if max(self.image_size) > MAX_IMAGE_SIDE:
            raise ValueError(f"image_size sides must be <= {MAX_IMAGE_SIDE} (MAX_IMAGE_SIDE), got {self.image_size}")
        self.grid = _pair(self.grid, "grid")
        check_geometry(self.image_size, self.grid)
        self.threshold = check_threshold(self.threshold)
        far = self.false_alarm_rate
        if isinstance(far, bool) or not isinstance(far, numbers.Real) or not 0.0 < float(far) < 1.0:
            raise ValueError(f"false_alarm_rate must be a number in (0, 1), got {far!r}")
        self.false_alarm_rate = float(far)
        if not isinstance(self.scorer, str) or self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {tuple(SCORERS)}, got {self.scorer!r}")
        if not isinstance(self.input_policy, InputPolicy):
            self.input_policy = InputPolicy.from_dict(self.input_policy)
        for name in ("calibration", "training"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a JSON object, got {type(getattr(self, name)).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": list(self.image_size),
            "grid": list(self.grid),
            "threshold": float(self.threshold),
            "false_alarm_rate": float(self.false_alarm_rate),
            "scorer": self.scorer,
            "input_policy": self.input_policy.to_dict(),
            "calibration": self.calibration,
            "training": self.training,
        }


def check_threshold(value: Any, name: str = "threshold") -> float:
    """A threshold must be a real number in [0, 1] (scores live there); returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return value
