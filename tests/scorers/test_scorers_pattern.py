"""The pattern scorer: held-out prediction error against the copy-the-neighbour predictor, triplet plans."""

from __future__ import annotations

import pytest
import torch
from conftest import random_image
from patchloupe.grid import DIRECTIONS
from patchloupe.models.generator import build_generator
from patchloupe.scorers.pattern import PatternConfig, make_plan


def test_prediction_error_ratio_is_one_for_the_copy_predictor() -> None:
    from patchloupe.scorers.pattern import prediction_error_ratio

    class Copy(torch.nn.Module):
        def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
            return second

    imgs = [random_image(i, (96, 96, 3)) for i in range(2)]
    assert prediction_error_ratio(Copy(), imgs, (96, 96), (3, 3)) == pytest.approx(1.0)
    assert prediction_error_ratio(build_generator("tiny"), imgs, (96, 96), (3, 3)) > 0


def test_plan_covers_every_direction_and_splits_rows_from_columns() -> None:
    plan = make_plan((4, 5), DIRECTIONS)
    assert plan.row.shape == (2 * 4 * 3, 3) and plan.col.shape == (2 * 5 * 2, 3)
    assert set(plan.row_dir) == {0, 1} and set(plan.col_dir) == {2, 3}
    rows_only = make_plan((4, 5), ("ltr", "rtl"))
    assert rows_only.col.shape == (0, 3)
    assert PatternConfig.from_dict(PatternConfig().to_dict()) == PatternConfig()
