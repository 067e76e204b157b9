"""Directions and neighbour triplets."""

from __future__ import annotations

import numpy as np
import pytest
from patchloupe.grid import COL_DIRECTIONS, DIRECTIONS, ROW_DIRECTIONS, neighbor_triplets


def test_triplets_predict_each_patch_from_the_two_before_it() -> None:
    assert DIRECTIONS == ROW_DIRECTIONS + COL_DIRECTIONS
    ltr = neighbor_triplets(2, 4, "ltr")
    np.testing.assert_array_equal(ltr, [[0, 1, 2], [1, 2, 3], [4, 5, 6], [5, 6, 7]])
    btt = neighbor_triplets(3, 2, "btt")
    np.testing.assert_array_equal(btt, [[4, 2, 0], [5, 3, 1]])
    assert neighbor_triplets(2, 2, "ltr").shape == (0, 3) and ltr.dtype == np.int64


def test_unknown_direction() -> None:
    with pytest.raises(ValueError, match="direction"):
        neighbor_triplets(3, 3, "diagonal")
