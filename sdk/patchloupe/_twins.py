"""Numpy reference twins of :mod:`patchloupe._native`.

Every function here has the same name, signature, result and validation (ValueError / TypeError
naming the offending argument) as its C++ counterpart; tests compare the two.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from patchloupe.grid import COL_DIRECTIONS, DIRECTIONS, ROW_DIRECTIONS

__all__ = [
    "intersect_maps",
    "intersect_masks",
    "knn_mean_distance",
    "neighbor_triplets",
    "stitch",
    "tile",
    "untile",
    "MAX_ELEMENTS",
]

#: Largest number of elements of any array the native module produces or accepts (2**30).
MAX_ELEMENTS = 1 << 30

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_PIXEL_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))
# direction names as bindings/ lists them in its messages: 'ltr', 'rtl', 'ttb', 'btt'
_DIRECTION_LIST = ", ".join(repr(d) for d in DIRECTIONS)
_DIRECTION_CHOICE = ", ".join(repr(d) for d in DIRECTIONS[:-1]) + f" or {DIRECTIONS[-1]!r}"


# --------------------------------------------------------------------------------------------------
# validation helpers (mirroring bindings/common.hpp)
# --------------------------------------------------------------------------------------------------
def _to_array(obj: Any, name: str) -> np.ndarray:
    """``obj`` as a numpy array; TypeError naming ``name`` when it is not array-like."""
    if isinstance(obj, np.ndarray):
        return obj
    try:
        return np.asarray(obj)
    except (ValueError, TypeError, OverflowError) as exc:
        raise TypeError(f"{name} must be a numpy array or array-like: {exc}") from exc


def _has_dtype(a: np.ndarray, dtype: type | np.dtype) -> bool:
    """True when ``a.dtype`` is exactly ``dtype`` in native byte order."""
    return a.dtype == np.dtype(dtype)


def _check_size(a: np.ndarray, name: str) -> None:
    if a.size > MAX_ELEMENTS:
        raise ValueError(f"{name} is too large ({a.size} elements)")


def _to_int(obj: Any, name: str) -> int:
    """Python / numpy integer -> int (TypeError for non-integers and bools, ValueError outside int64)."""
    if isinstance(obj, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        value = operator.index(obj)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(obj).__name__}") from None
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{name} is out of range")
    return value


def _to_int_tuple(obj: Any, name: str, min_len: int, max_len: int) -> tuple[int, ...]:
    """Iterable of ``min_len``..``max_len`` integers -> tuple (TypeError / ValueError naming ``name``)."""
    want = str(min_len) if min_len == max_len else f"{min_len} or {max_len}"
    try:
        items = tuple(obj)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of {want} integers") from None
    if not min_len <= len(items) <= max_len:
        raise ValueError(f"{name} must have {want} entries, got {len(items)}")
    return tuple(_to_int(v, f"{name}[{i}]") for i, v in enumerate(items))


def _check_no_nan(a: np.ndarray, name: str) -> None:
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")


def _checked_mul(a: int, b: int, what: str) -> int:
    if a < 0 or b < 0:
        raise ValueError(f"{what}: negative size")
    if a * b > MAX_ELEMENTS:
        raise ValueError(f"{what}: size too large (more than 2**30 elements)")
    return a * b


def _tile_geometry(height: int, width: int, rows: int, cols: int, channels: int, image_name: str) -> tuple[int, int]:
    """Validate a (rows, cols) grid over an H x W image; returns the patch size (ph, pw)."""
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid ({rows}, {cols}) must have positive entries")
    if height <= 0 or width <= 0 or channels <= 0:
        raise ValueError(f"{image_name} must be non-empty, got size ({height}, {width})")
    if height > MAX_ELEMENTS or width > MAX_ELEMENTS or channels > MAX_ELEMENTS:
        raise ValueError(f"{image_name} size ({height}, {width}) is too large")
    if rows > height or cols > width:
        raise ValueError(f"grid ({rows}, {cols}) is larger than {image_name} ({height}, {width})")
    ph, pw = -(-height // rows), -(-width // cols)
    _checked_mul(_checked_mul(rows * ph, cols * pw, image_name), channels, image_name)
    return ph, pw


def _pixel_array(obj: Any, name: str, ndims: tuple[int, int], layout: str) -> np.ndarray:
    a = _to_array(obj, name)
    if a.dtype not in _PIXEL_DTYPES:
        raise TypeError(f"{name} must have dtype uint8 or float32, got {a.dtype}")
    if a.ndim not in ndims:
        raise ValueError(f"{name} must be {layout}, got shape {a.shape}")
    return a


# --------------------------------------------------------------------------------------------------
# tile / untile
# --------------------------------------------------------------------------------------------------
def tile(image: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Split ``image`` (H, W[, C]) uint8/float32 into patches (rows*cols, ph, pw[, C]), reading order.

    ``ph = ceil(H / rows)``, ``pw = ceil(W / cols)``; bottom/right ``np.pad(mode="reflect")`` padding.
    """
    image = _pixel_array(image, "image", (2, 3), "2-D (H, W) or 3-D (H, W, C)")
    rows, cols = _to_int_tuple(grid, "grid", 2, 2)
    if image.size == 0:
        raise ValueError(f"image must be non-empty, got shape {image.shape}")
    height, width = image.shape[:2]
    channels = image.shape[2] if image.ndim == 3 else 1
    ph, pw = _tile_geometry(height, width, rows, cols, channels, "image")
    _check_size(image, "image")
    pad = [(0, rows * ph - height), (0, cols * pw - width)] + [(0, 0)] * (image.ndim - 2)
    padded = np.pad(image, pad, mode="reflect") if pad[0][1] or pad[1][1] else image
    rest = image.shape[2:]
    out = padded.reshape(rows, ph, cols, pw, *rest).swapaxes(1, 2).reshape(rows * cols, ph, pw, *rest)
    return np.ascontiguousarray(out)


def untile(patches: np.ndarray, grid: tuple[int, int], out_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`tile`: patches (rows*cols, ph, pw[, C]) -> image ``out_shape`` (H, W[, C])."""
    patches = _pixel_array(patches, "patches", (3, 4), "3-D (P, ph, pw) or 4-D (P, ph, pw, C)")
    rows, cols = _to_int_tuple(grid, "grid", 2, 2)
    shape = _to_int_tuple(out_shape, "out_shape", 2, 3)
    if len(shape) != patches.ndim - 1:
        raise ValueError(f"out_shape must have {patches.ndim - 1} entries to match patches of shape {patches.shape}")
    if patches.size == 0:
        raise ValueError(f"patches must be non-empty, got shape {patches.shape}")
    channels = patches.shape[3] if patches.ndim == 4 else 1
    if patches.ndim == 4 and shape[2] != channels:
        raise ValueError(f"out_shape has {shape[2]} channels but patches have {channels}")
    height, width = shape[:2]
    ph, pw = _tile_geometry(height, width, rows, cols, channels, "out_shape")
    if patches.shape[0] != rows * cols:
        raise ValueError(f"patches holds {patches.shape[0]} patches but grid ({rows}, {cols}) needs {rows * cols}")
    if patches.shape[1:3] != (ph, pw):
        raise ValueError(
            f"out_shape ({height}, {width}) with this grid needs patches of size ({ph}, {pw}), "
            f"but patches have shape {patches.shape}"
        )
    _check_size(patches, "patches")
    rest = patches.shape[3:]
    full = patches.reshape(rows, cols, ph, pw, *rest).swapaxes(1, 2).reshape(rows * ph, cols * pw, *rest)
    return np.ascontiguousarray(full[:height, :width])


# --------------------------------------------------------------------------------------------------
# neighbour triplets
# --------------------------------------------------------------------------------------------------
def neighbor_triplets(rows: int, cols: int, direction: str) -> np.ndarray:
    """int64 (T, 3) rows of (first, second, target) patch indices for a rows x cols grid.

    ``ltr``/``rtl`` scan each row (rows outer, position inner); ``ttb``/``btt`` scan each column.
    """
    rows = _to_int(rows, "rows")
    cols = _to_int(cols, "cols")
    if not isinstance(direction, str):
        raise TypeError(f"direction must be a str ({_DIRECTION_CHOICE}), got {type(direction).__name__}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTION_LIST}, got {direction!r}")
    if rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    if cols <= 0:
        raise ValueError(f"cols must be positive, got {cols}")
    _checked_mul(_checked_mul(rows, cols, "rows * cols"), 3, "rows * cols")
    horizontal = direction in ROW_DIRECTIONS
    along, across = (cols, rows) if horizontal else (rows, cols)
    if along < 3:
        return np.zeros((0, 3), dtype=np.int64)
    line = np.arange(across, dtype=np.int64)[:, None]
    pos = np.arange(along - 2, dtype=np.int64)[None, :]
    first = line * cols + pos if horizontal else pos * cols + line
    step = 1 if horizontal else cols
    triplets = np.stack([first, first + step, first + 2 * step], axis=-1).reshape(-1, 3)
    if direction in (ROW_DIRECTIONS[1], COL_DIRECTIONS[1]):  # rtl, btt: against reading order
        triplets = triplets[:, ::-1]
    return np.ascontiguousarray(triplets)


# --------------------------------------------------------------------------------------------------
# intersections
# --------------------------------------------------------------------------------------------------
def intersect_maps(verdicts: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-direction verdicts (D, rows, cols) bool/float32 + bool ``valid`` mask -> (rows, cols).

    AND (bool) / min (float) over the directions valid for each patch; False / 0.0 where none is.
    """
    verdicts = _to_array(verdicts, "verdicts")
    is_bool = _has_dtype(verdicts, np.bool_)
    if not is_bool and not _has_dtype(verdicts, np.float32):
        raise TypeError(f"verdicts must have dtype bool or float32, got {verdicts.dtype}")
    if verdicts.ndim != 3:
        raise ValueError(f"verdicts must be 3-D (D, rows, cols), got shape {verdicts.shape}")
    if verdicts.size == 0:
        raise ValueError(f"verdicts must be non-empty, got shape {verdicts.shape}")
    valid = _to_array(valid, "valid")
    if not _has_dtype(valid, np.bool_):
        raise TypeError(f"valid must have dtype bool, got {valid.dtype}")
    if valid.shape != verdicts.shape:
        raise ValueError(f"valid must have the shape of verdicts {verdicts.shape}, got {valid.shape}")
    _check_size(verdicts, "verdicts")
    _check_size(valid, "valid")
    reached = valid.any(axis=0)
    if is_bool:
        return np.where(valid, verdicts, True).all(axis=0) & reached
    _check_no_nan(verdicts, "verdicts")
    best = np.where(valid, verdicts, np.float32(np.inf)).min(axis=0)
    return np.where(reached, best, np.float32(0.0)).astype(np.float32, copy=False)


def intersect_masks(masks: np.ndarray) -> np.ndarray:
    """Element-wise min over directions of float32 masks (D, P, mh, mw) -> (P, mh, mw)."""
    masks = _to_array(masks, "masks")
    if not _has_dtype(masks, np.float32):
        raise TypeError(f"masks must have dtype float32, got {masks.dtype}")
    if masks.ndim != 4:
        raise ValueError(f"masks must be 4-D (D, P, mh, mw), got shape {masks.shape}")
    if masks.size == 0:
        raise ValueError(f"masks must be non-empty, got shape {masks.shape}")
    _check_size(masks, "masks")
    _check_no_nan(masks, "masks")
    return np.ascontiguousarray(masks.min(axis=0))


# --------------------------------------------------------------------------------------------------
# stitch
# --------------------------------------------------------------------------------------------------
def _linear_taps(n_in: int, n_out: int, keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel-centre linear taps (i0, i1, w) for the first ``keep`` of ``n_out`` outputs, edge-clamped."""
    scale = n_in / n_out
    src = np.maximum((np.arange(keep, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _check_stitch_sizes(rows: int, cols: int, mh: int, mw: int, height: int, width: int) -> None:
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid ({rows}, {cols}) must have positive entries")
    if mh <= 0 or mw <= 0:
        raise ValueError(f"patch_masks must be non-empty, got mask size ({mh}, {mw})")
    if height <= 0 or width <= 0:
        raise ValueError(f"out_hw ({height}, {width}) must be positive")
    if height > MAX_ELEMENTS or width > MAX_ELEMENTS:
        raise ValueError(f"out_hw ({height}, {width}) is too large")
    _checked_mul(height, width, f"out_hw ({height}, {width})")
    _checked_mul(_checked_mul(_checked_mul(rows, cols, "grid"), mh, "patch_masks"), mw, "patch_masks")
    if rows > height or cols > width:
        raise ValueError(f"grid ({rows}, {cols}) is larger than out_hw ({height}, {width})")


def stitch(patch_masks: np.ndarray, grid: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Stitch float32 patch masks (rows*cols, mh, mw) into a float32 (H, W) map, ``out_hw = (H, W)``.

    The (rows*mh, cols*mw) canvas is resized bilinearly (half-pixel centres, edge clamp, as cv2
    INTER_LINEAR) to (rows*ceil(H/rows), cols*ceil(W/cols)) and cropped to (H, W).
    """
    patch_masks = _to_array(patch_masks, "patch_masks")
    if not _has_dtype(patch_masks, np.float32):
        raise TypeError(f"patch_masks must have dtype float32, got {patch_masks.dtype}")
    if patch_masks.ndim != 3:
        raise ValueError(f"patch_masks must be 3-D (rows*cols, mh, mw), got shape {patch_masks.shape}")
    rows, cols = _to_int_tuple(grid, "grid", 2, 2)
    height, width = _to_int_tuple(out_hw, "out_hw", 2, 2)
    if patch_masks.size == 0:
        raise ValueError(f"patch_masks must be non-empty, got shape {patch_masks.shape}")
    _, mh, mw = patch_masks.shape
    _check_stitch_sizes(rows, cols, mh, mw, height, width)
    if patch_masks.shape[0] != rows * cols:
        raise ValueError(
            f"patch_masks holds {patch_masks.shape[0]} patches but grid ({rows}, {cols}) needs {rows * cols}"
        )
    _check_size(patch_masks, "patch_masks")
    _check_no_nan(patch_masks, "patch_masks")
    ph, pw = -(-height // rows), -(-width // cols)
    canvas = patch_masks.reshape(rows, cols, mh, mw).swapaxes(1, 2).reshape(rows * mh, cols * mw)
    y0, y1, wy = _linear_taps(rows * mh, rows * ph, height)
    x0, x1, wx = _linear_taps(cols * mw, cols * pw, width)
    # Resample horizontally only the canvas rows that are needed, then vertically.
    needed = np.unique(np.concatenate([y0, y1]))
    src = canvas[needed]
    horiz = src[:, x0] * (1 - wx) + src[:, x1] * wx
    a = horiz[np.searchsorted(needed, y0)]
    b = horiz[np.searchsorted(needed, y1)]
    return np.ascontiguousarray(a * (1 - wy)[:, None] + b * wy[:, None], dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# knn_mean_distance
# --------------------------------------------------------------------------------------------------
_KNN_MAX_K = 4096


def _check_knn_sizes(rows: int, n: int, h: int, w: int, exclude: int, k: int, first: int) -> None:
    """Mirror of cpp/knn.cpp ``check_knn_sizes``."""
    if h < 1 or w < 1:
        raise ValueError(f"grid must be positive, got ({h}, {w})")
    if _checked_mul(h, w, "grid") != n:
        raise ValueError(f"d2 has {n} columns but grid ({h}, {w}) has {h * w} positions")
    if exclude < 0:
        raise ValueError(f"exclude must be >= 0, got {exclude}")
    if first < 0 or first > n - rows:
        raise ValueError(f"first must place the {rows} rows inside the grid's {n} positions, got {first}")
    side = 2 * min(exclude, max(h, w)) + 1
    window = min(n, min(side, h) * min(side, w))
    if k < 1 or k > _KNN_MAX_K or k > n - window:
        raise ValueError(
            f"k must be between 1 and {min(_KNN_MAX_K, n - window)} (positions outside every window), got {k}"
        )


def knn_mean_distance(d2: np.ndarray, grid: Sequence[int], exclude: int, k: int, first: int = 0) -> np.ndarray:
    """Squared distances ``d2`` float32 (rows, n) or (batch, rows, n) from the positions first..first+rows-1 of an
    h x w grid (n = h*w, reading order) to all of its positions -> float32 (rows,) / (batch, rows): the mean of
    sqrt(max(d, 0)) over each row's k smallest d outside the (2 exclude + 1)^2 Chebyshev window around its own
    position."""
    d2 = _to_array(d2, "d2")
    if not _has_dtype(d2, np.float32):
        raise TypeError(f"d2 must have dtype float32, got {d2.dtype}")
    if d2.ndim not in (2, 3):
        raise ValueError(f"d2 must be 2-D (rows, n) or 3-D (batch, rows, n), got shape {d2.shape}")
    if d2.size == 0:
        raise ValueError(f"d2 must be non-empty, got shape {d2.shape}")
    h, w = _to_int_tuple(grid, "grid", 2, 2)
    exclude, k, first = _to_int(exclude, "exclude"), _to_int(k, "k"), _to_int(first, "first")
    rows, n = d2.shape[-2:]
    _check_knn_sizes(rows, n, h, w, exclude, k, first)
    _check_size(d2, "d2")
    _check_no_nan(d2, "d2")
    pos = np.arange(first, first + rows)
    yy, xx = np.divmod(np.arange(n), w)
    window = (np.abs(yy[None] - (pos // w)[:, None]) <= exclude) & (np.abs(xx[None] - (pos % w)[:, None]) <= exclude)
    d = np.where(window, np.float32(np.inf), d2.reshape(-1, rows, n))
    smallest = np.partition(d, k - 1, axis=-1)[..., :k]
    out = np.sqrt(np.maximum(smallest.astype(np.float64), 0.0)).mean(axis=-1).astype(np.float32)
    return out if d2.ndim == 3 else out[0]
