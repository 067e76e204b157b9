"""Patch grids: the four prediction directions and their neighbour triplets (one definition, native)."""

from __future__ import annotations

import numpy as np

from patchloupe import _native

ROW_DIRECTIONS: tuple[str, ...] = ("ltr", "rtl")
COL_DIRECTIONS: tuple[str, ...] = ("ttb", "btt")
DIRECTIONS: tuple[str, ...] = ROW_DIRECTIONS + COL_DIRECTIONS

__all__ = ["COL_DIRECTIONS", "DIRECTIONS", "ROW_DIRECTIONS", "neighbor_triplets"]


def neighbor_triplets(rows: int, cols: int, direction: str) -> np.ndarray:
    """int64 ``(T, 3)`` of (first, second, target) patch indices in reading order for ``direction``.

    Row directions predict a patch from the two before it in its row (``ltr``) or after it (``rtl``);
    column directions do the same down (``ttb``) or up (``btt``) its column.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return np.asarray(_native.neighbor_triplets(int(rows), int(cols), direction), dtype=np.int64)
