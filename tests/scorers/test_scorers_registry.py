"""The scorer registry and the Scorer interface."""

from __future__ import annotations

import numpy as np
import pytest
from patchloupe.scorers import SCORERS, scorer_class
from patchloupe.scorers.base import Scorer


def test_every_registered_scorer_implements_the_interface() -> None:
    for name in SCORERS:
        cls = scorer_class(name)
        assert issubclass(cls, Scorer) and cls.name == name and cls.pixel_rule in ("stitch", "resize") and cls.entries
    for bad in ("knn", ["pattern"], None):
        with pytest.raises(ValueError, match="scorer"):
            scorer_class(bad)  # type: ignore[arg-type]


class _Half(Scorer):
    name, pixel_rule = "half", "resize"
    image_size, grid = (8, 8), (2, 2)

    def infer(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = inputs.reshape(len(inputs), -1).mean(1) / 255.0
        return np.repeat(mean, 4).reshape(-1, 2, 2), np.zeros((len(inputs), 8, 8), np.float32)

    def settings(self) -> dict:
        return {}

    def tensors(self) -> dict:
        return {}

    @classmethod
    def from_saved(cls, settings, tensors, image_size, grid):  # noqa: ANN001, ANN206
        return cls()


def test_image_scores_are_the_maximum_patch_score_in_batches() -> None:
    imgs = [np.full((8, 8, 3), v, np.uint8) for v in (0, 51, 255)]
    np.testing.assert_allclose(_Half().image_scores(imgs, batch_size=2), [0.0, 0.2, 1.0])
    assert _Half().image_scores([]).shape == (0,)


def test_patch_maxima() -> None:
    from patchloupe.scorers.base import patch_maxima

    amap = np.zeros((2, 4, 6), np.float32)
    amap[1, 3, 5] = 0.7
    out = patch_maxima(amap, (2, 3))
    assert out.shape == (2, 2, 3) and out.dtype == np.float64
    assert out[1, 1, 2] == pytest.approx(0.7) and out.sum() == pytest.approx(0.7)
