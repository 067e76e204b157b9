"""Type stub for the C++ extension ``patchloupe._native`` (see bindings/ and cpp/).

Numpy reference twins with identical names, signatures and validation live in ``patchloupe._twins``.
Bad input raises ValueError / TypeError naming the offending argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

VERSION_MAJOR: int
#: Largest number of elements of any array the module accepts or produces (2**30).
MAX_ELEMENTS: int

def tile(image: npt.NDArray[np.uint8] | npt.NDArray[np.float32], grid: Sequence[int]) -> np.ndarray:
    """(H, W[, C]) uint8/float32 -> patches (rows*cols, ph, pw[, C]), ph = ceil(H/rows), pw = ceil(W/cols).

    Reading order p = r*cols + c; bottom/right reflection padding (np.pad mode="reflect").
    """

def untile(
    patches: npt.NDArray[np.uint8] | npt.NDArray[np.float32], grid: Sequence[int], out_shape: Sequence[int]
) -> np.ndarray:
    """Patches (rows*cols, ph, pw[, C]) -> image of ``out_shape`` (H, W[, C]); crops the padding."""

def neighbor_triplets(rows: int, cols: int, direction: Literal["ltr", "rtl", "ttb", "btt"]) -> npt.NDArray[np.int64]:
    """int64 (T, 3) of (first, second, target) patch indices; (0, 3) when fewer than 3 along the axis."""

def intersect_maps(
    verdicts: npt.NDArray[np.bool_] | npt.NDArray[np.float32], valid: npt.NDArray[np.bool_]
) -> np.ndarray:
    """verdicts (D, rows, cols) + bool valid (D, rows, cols) -> (rows, cols) of verdicts' dtype.

    AND (bool) / min (float32) over the valid directions; False / 0.0 where no direction is valid.
    """

def intersect_masks(masks: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """float32 (D, P, mh, mw) -> element-wise min over D, (P, mh, mw)."""

def stitch(patch_masks: npt.NDArray[np.float32], grid: Sequence[int], out_hw: Sequence[int]) -> npt.NDArray[np.float32]:
    """float32 (rows*cols, mh, mw) -> float32 (H, W): bilinear (half-pixel) resize of the mask canvas, cropped."""

def knn_mean_distance(
    d2: npt.NDArray[np.float32], grid: Sequence[int], exclude: int, k: int, first: int = 0
) -> npt.NDArray[np.float32]:
    """float32 squared distances (rows, n) / (batch, rows, n) of positions first..first+rows-1 of an (h, w) grid to
    all n = h*w positions -> float32 (rows,) / (batch, rows): mean sqrt of each row's k smallest outside the
    (2 exclude + 1)^2 Chebyshev window around its own position."""
