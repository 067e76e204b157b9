"""Tests of ``patchloupe._native`` (C++) against hand-computed cases and its numpy twins."""

from __future__ import annotations

import os
import subprocess
import sys
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from patchloupe import _native, _twins

IMPLS = [pytest.param(_native, id="native"), pytest.param(_twins, id="twin")]
PROPERTY = settings(max_examples=200, deadline=None)


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Both implementations: every hand-computed case must hold for each."""
    return request.param


def test_module_surface() -> None:
    assert _native.__doc__
    for name in (
        "tile",
        "untile",
        "neighbor_triplets",
        "intersect_maps",
        "intersect_masks",
        "stitch",
        "knn_mean_distance",
    ):
        assert callable(getattr(_native, name)) and callable(getattr(_twins, name))
        assert getattr(_native, name).__doc__
    assert _native.MAX_ELEMENTS == _twins.MAX_ELEMENTS == 1 << 30


# --------------------------------------------------------------------------------------------------
# tile / untile
# --------------------------------------------------------------------------------------------------
def test_tile_divisible_by_hand(impl: ModuleType) -> None:
    image = np.arange(16, dtype=np.uint8).reshape(4, 4)
    patches = impl.tile(image, (2, 2))
    expected = np.array(
        [[[0, 1], [4, 5]], [[2, 3], [6, 7]], [[8, 9], [12, 13]], [[10, 11], [14, 15]]],
        dtype=np.uint8,
    )
    assert patches.dtype == np.uint8 and patches.flags.c_contiguous
    np.testing.assert_array_equal(patches, expected)


def test_tile_reflect_padding_by_hand(impl: ModuleType) -> None:
    # 3 x 5 image, grid (2, 2): ph = 2, pw = 3; padded 4 x 6 with row 3 = row 1, col 5 = col 3.
    image = np.arange(15, dtype=np.uint8).reshape(3, 5)
    patches = impl.tile(image, (2, 2))
    expected = np.array(
        [
            [[0, 1, 2], [5, 6, 7]],
            [[3, 4, 3], [8, 9, 8]],
            [[10, 11, 12], [5, 6, 7]],
            [[13, 14, 13], [8, 9, 8]],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(patches, expected)
    np.testing.assert_array_equal(impl.untile(patches, (2, 2), (3, 5)), image)


def test_tile_patch_made_only_of_padding(impl: ModuleType) -> None:
    # W = 5, cols = 4 -> pw = 2, padded width 8: the last patch column is entirely reflected (cols 2, 1).
    image = np.arange(5, dtype=np.float32).reshape(1, 5)
    patches = impl.tile(image, (1, 4))
    np.testing.assert_array_equal(patches[:, 0, :], [[0, 1], [2, 3], [4, 3], [2, 1]])
    np.testing.assert_array_equal(impl.untile(patches, (1, 4), (1, 5)), image)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize(
    ("shape", "grid"),
    [((4, 4), (1, 1)), ((7, 9, 3), (3, 4)), ((13, 6), (5, 6)), ((5, 5, 1), (5, 5)), ((10, 17, 4), (2, 8))],
)
def test_tile_matches_np_pad_and_round_trips(
    impl: ModuleType, dtype: type, shape: tuple[int, ...], grid: tuple[int, int]
) -> None:
    rng = np.random.default_rng(0)
    image = (rng.random(shape) * 255).astype(dtype)
    rows, cols = grid
    ph, pw = -(-shape[0] // rows), -(-shape[1] // cols)
    pad = [(0, rows * ph - shape[0]), (0, cols * pw - shape[1])] + [(0, 0)] * (len(shape) - 2)
    padded = np.pad(image, pad, mode="reflect")
    patches = impl.tile(image, grid)
    assert patches.shape == (rows * cols, ph, pw, *shape[2:])
    assert patches.dtype == dtype and patches.flags.c_contiguous
    for p in range(rows * cols):
        r, c = divmod(p, cols)
        np.testing.assert_array_equal(patches[p], padded[r * ph : (r + 1) * ph, c * pw : (c + 1) * pw])
    back = impl.untile(patches, grid, shape)
    assert back.dtype == dtype and back.flags.c_contiguous
    np.testing.assert_array_equal(back, image)


def _unaligned_float32(shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    buf = np.zeros(n * 4 + 1, dtype=np.uint8)
    out = np.frombuffer(buf.data, dtype=np.float32, count=n, offset=1).reshape(shape)
    assert not out.flags.aligned
    return out


def _strided_images() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    base = (rng.random((12, 14, 3)) * 255).astype(np.uint8)
    base_f = rng.random((12, 14, 3)).astype(np.float32)
    unaligned = _unaligned_float32((9, 11))
    unaligned[...] = rng.random((9, 11))
    return [
        ("step", base[::2, ::3]),
        ("negative", base[::-1, ::-2]),
        ("channel-reversed", base[..., ::-1]),
        ("channel-slice", base_f[:, :, 1]),
        ("transposed", base_f.transpose(1, 0, 2)),
        ("fortran", np.asfortranarray(base_f[:, :, 0])),
        ("broadcast", np.broadcast_to(base[:1], (12, 14, 3))),
        ("unaligned", unaligned),
        ("offset-view", base_f[3:, 2:-1]),
    ]


@pytest.mark.parametrize(("name", "image"), _strided_images(), ids=[n for n, _ in _strided_images()])
def test_tile_untile_strided_inputs(impl: ModuleType, name: str, image: np.ndarray) -> None:
    grid = (3, 4)
    expected = _twins.tile(np.ascontiguousarray(image), grid)
    patches = impl.tile(image, grid)
    np.testing.assert_array_equal(patches, expected)
    # Untile from non-contiguous patches too.
    strided = np.ascontiguousarray(patches[::-1])[::-1]
    assert strided.strides[0] < 0
    np.testing.assert_array_equal(impl.untile(strided, grid, image.shape), image)


def test_tile_does_not_modify_input(impl: ModuleType) -> None:
    image = np.arange(30, dtype=np.uint8).reshape(5, 6)
    before = image.copy()
    patches = impl.tile(image, (2, 2))
    patches[...] = 0
    np.testing.assert_array_equal(image, before)


# --------------------------------------------------------------------------------------------------
# neighbor_triplets
# --------------------------------------------------------------------------------------------------
def test_neighbor_triplets_by_hand(impl: ModuleType) -> None:
    ltr = impl.neighbor_triplets(2, 4, "ltr")
    assert ltr.dtype == np.int64 and ltr.shape == (4, 3)
    np.testing.assert_array_equal(ltr, [[0, 1, 2], [1, 2, 3], [4, 5, 6], [5, 6, 7]])
    np.testing.assert_array_equal(impl.neighbor_triplets(2, 4, "rtl"), [[2, 1, 0], [3, 2, 1], [6, 5, 4], [7, 6, 5]])
    # 4 x 2 grid: columns scanned one after the other.
    np.testing.assert_array_equal(impl.neighbor_triplets(4, 2, "ttb"), [[0, 2, 4], [2, 4, 6], [1, 3, 5], [3, 5, 7]])
    np.testing.assert_array_equal(impl.neighbor_triplets(4, 2, "btt"), [[4, 2, 0], [6, 4, 2], [5, 3, 1], [7, 5, 3]])


@pytest.mark.parametrize(("rows", "cols", "direction"), [(5, 2, "ltr"), (5, 1, "rtl"), (2, 9, "ttb"), (1, 1, "btt")])
def test_neighbor_triplets_too_short_axis(impl: ModuleType, rows: int, cols: int, direction: str) -> None:
    out = impl.neighbor_triplets(rows, cols, direction)
    assert out.shape == (0, 3) and out.dtype == np.int64


def test_neighbor_triplets_accepts_numpy_ints(impl: ModuleType) -> None:
    np.testing.assert_array_equal(impl.neighbor_triplets(np.int32(1), np.uint8(3), "ltr"), [[0, 1, 2]])


# --------------------------------------------------------------------------------------------------
# intersect_maps / intersect_masks
# --------------------------------------------------------------------------------------------------
def _valid_3x3() -> np.ndarray:
    """Which patches of a 3 x 3 grid each direction (ltr, rtl, ttb, btt) predicts."""
    valid = np.zeros((4, 3, 3), dtype=bool)
    for d, direction in enumerate(("ltr", "rtl", "ttb", "btt")):
        targets = _twins.neighbor_triplets(3, 3, direction)[:, 2]
        valid[d].flat[targets] = True
    return valid


def test_intersect_maps_3x3_edge_patch_rule(impl: ModuleType) -> None:
    valid = _valid_3x3()
    # ltr reaches column 2, rtl column 0, ttb row 2, btt row 0; the centre is reached by none.
    np.testing.assert_array_equal(valid[0], [[0, 0, 1], [0, 0, 1], [0, 0, 1]])
    np.testing.assert_array_equal(valid[3], [[1, 1, 1], [0, 0, 0], [0, 0, 0]])
    verdicts = np.zeros((4, 3, 3), dtype=bool)
    verdicts[0] = True  # ltr flags everything
    verdicts[2, 2, 2] = True  # ttb agrees on the bottom-right corner only
    verdicts[3, 0, 1] = True  # btt alone reaches the top-middle edge patch
    verdicts[1, 1, 0] = True  # rtl alone reaches the middle-left edge patch
    verdicts[:, 1, 1] = True  # centre: no direction can predict it -> False anyway
    out = impl.intersect_maps(verdicts, valid)
    expected = np.array([[0, 1, 0], [1, 0, 1], [0, 0, 1]], dtype=bool)
    # (0, 2): ltr True but btt False -> False; (1, 2): ltr only -> True; (2, 2): ltr and ttb -> True.
    assert out.dtype == np.bool_ and out.shape == (3, 3)
    np.testing.assert_array_equal(out, expected)


def test_intersect_maps_float_is_min_over_valid(impl: ModuleType) -> None:
    valid = _valid_3x3()
    verdicts = np.stack([np.full((3, 3), v, dtype=np.float32) for v in (0.9, 0.2, 0.5, 0.7)])
    out = impl.intersect_maps(verdicts, valid)
    expected = np.array([[0.2, 0.7, 0.7], [0.2, 0.0, 0.9], [0.2, 0.5, 0.5]], dtype=np.float32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_intersect_maps_two_directions_paper_rule(impl: ModuleType) -> None:
    # One row of 5 patches, ltr + rtl: first two patches only rtl, last two only ltr, centre both.
    valid = np.array([[[0, 0, 1, 1, 1]], [[1, 1, 1, 0, 0]]], dtype=bool)
    verdicts = np.array([[[1, 1, 1, 1, 0]], [[0, 1, 0, 1, 1]]], dtype=bool)
    np.testing.assert_array_equal(impl.intersect_maps(verdicts, valid), [[False, True, False, True, False]])


def test_intersect_masks_by_hand(impl: ModuleType) -> None:
    masks = np.array([[[[1.0, 0.2], [0.5, -1.0]]], [[[0.3, 0.4], [np.inf, -np.inf]]]], dtype=np.float32)
    out = impl.intersect_masks(masks)
    assert out.dtype == np.float32 and out.shape == (1, 2, 2)
    np.testing.assert_array_equal(out, np.array([[[0.3, 0.2], [0.5, -np.inf]]], dtype=np.float32))


# --------------------------------------------------------------------------------------------------
# stitch
# --------------------------------------------------------------------------------------------------
def test_stitch_half_pixel_by_hand(impl: ModuleType) -> None:
    out = impl.stitch(np.array([[[0.0, 1.0]]], dtype=np.float32), (1, 1), (1, 4))
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.75, 1.0]], atol=1e-7)


def test_stitch_has_no_seams_across_patches(impl: ModuleType) -> None:
    # Two 1x1 patch masks side by side: interpolation runs across the patch border.
    out = impl.stitch(np.array([[[0.0]], [[1.0]]], dtype=np.float32), (1, 2), (1, 4))
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.75, 1.0]], atol=1e-7)


def test_stitch_constant_and_identity(impl: ModuleType) -> None:
    out = impl.stitch(np.full((6, 3, 2), 0.25, dtype=np.float32), (2, 3), (23, 17))
    assert out.shape == (23, 17) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.25, atol=1e-7)
    masks = np.random.default_rng(2).random((4, 3, 5)).astype(np.float32)
    ident = impl.stitch(masks, (2, 2), (6, 10))
    np.testing.assert_allclose(ident, _twins.untile(masks, (2, 2), (6, 10)), atol=1e-7)


@pytest.mark.parametrize(("grid", "mask_hw", "out_hw"), [((2, 2), (4, 4), (32, 32)), ((3, 4), (3, 2), (37, 29))])
def test_stitch_matches_cv2_resize(
    impl: ModuleType, grid: tuple[int, int], mask_hw: tuple[int, int], out_hw: tuple[int, int]
) -> None:
    rows, cols = grid
    mh, mw = mask_hw
    masks = np.random.default_rng(3).random((rows * cols, mh, mw)).astype(np.float32)
    canvas = _twins.untile(masks, grid, (rows * mh, cols * mw))
    ph, pw = -(-out_hw[0] // rows), -(-out_hw[1] // cols)
    expected = cv2.resize(canvas, (cols * pw, rows * ph), interpolation=cv2.INTER_LINEAR)[: out_hw[0], : out_hw[1]]
    # cv2 uses 11-bit fixed-point weights only for uint8; for float32 it is exact up to rounding.
    np.testing.assert_allclose(impl.stitch(masks, grid, out_hw), expected, atol=1e-5)


def test_stitch_multithreaded_matches_twin() -> None:
    # Large enough (>= 2 * 2**20 output pixels) for the native stitch to split rows over threads.
    masks = np.random.default_rng(4).random((64, 48, 56), dtype=np.float32)
    out = _native.stitch(masks, (8, 8), (1537, 1793))
    np.testing.assert_allclose(out, _twins.stitch(masks, (8, 8), (1537, 1793)), rtol=1e-5, atol=1e-6)


def test_thread_count_override_in_subprocess() -> None:
    code = (
        "import numpy as np\n"
        "from patchloupe import _native, _twins\n"
        "m = np.random.default_rng(5).random((12, 40, 30), dtype=np.float32)\n"
        "a = _native.stitch(m, (3, 4), (1500, 1900))\n"
        "np.testing.assert_allclose(a, _twins.stitch(m, (3, 4), (1500, 1900)), rtol=1e-5, atol=1e-6)\n"
    )
    env = {**os.environ, "PATCHLOUPE_NUM_THREADS": "3"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


# --------------------------------------------------------------------------------------------------
# knn_mean_distance
# --------------------------------------------------------------------------------------------------
def test_knn_mean_distance_by_hand(impl: ModuleType) -> None:
    # a 1 x 5 grid, position 0's row: itself 0, a near twin at 1 (inside exclude=1), then 9, 4, 16
    d2 = np.array([[0.0, 0.0, 9.0, 4.0, 16.0]], np.float32)
    np.testing.assert_allclose(impl.knn_mean_distance(d2, (1, 5), 1, 2), [(2 + 3) / 2], rtol=1e-6)
    np.testing.assert_allclose(impl.knn_mean_distance(d2, (1, 5), 0, 1), [0.0])  # only itself excluded
    # the same row as position 2 of the grid (first=2): its window is columns 1-3, leaving 0 and 16
    np.testing.assert_allclose(impl.knn_mean_distance(d2, (1, 5), 1, 2, first=2), [2.0], rtol=1e-6)
    # negative squared distances (rounding in |a|^2 + |b|^2 - 2ab) count as 0; a batch keeps its axis
    neg = np.array([[[-1e-3, 5.0, 1.0, 4.0]]], np.float32)
    np.testing.assert_allclose(impl.knn_mean_distance(neg, (2, 2), 0, 3, first=1), [[(0 + 1 + 2) / 3]], rtol=1e-6)


def test_knn_mean_distance_window_is_two_dimensional(impl: ModuleType) -> None:
    """A 4 x 4 grid, position (1, 1) with exclude 1: the 3 x 3 block around it is left out, nothing else."""
    d2 = np.arange(16, dtype=np.float32)[None] ** 2  # distance j to column j
    left = sorted(set(range(16)) - {0, 1, 2, 4, 5, 6, 8, 9, 10})  # 3, 7, 11, 12, ...
    np.testing.assert_allclose(impl.knn_mean_distance(d2, (4, 4), 1, 3, first=5), [np.mean(left[:3])], rtol=1e-6)


@st.composite
def knn_cases(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, int], int, int, int]:
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    exclude = draw(st.integers(0, 3))
    side = min(2 * exclude + 1, max(h, w))
    room = h * w - min(side, h) * min(side, w)
    assume(room >= 1)
    k = draw(st.integers(1, room))
    first = draw(st.integers(0, h * w - 1))
    rows = draw(st.integers(1, h * w - first))
    batch = draw(st.integers(1, 3))
    elements = st.floats(-1, 100, width=32) | st.sampled_from([0.0, 1.0, 4.0])  # ties included
    d2 = draw(hnp.arrays(np.float32, (batch, rows, h * w), elements=elements))
    return d2, (h, w), exclude, k, first


@PROPERTY
@given(knn_cases())
def test_prop_knn_mean_distance_native_equals_twin(case: tuple[np.ndarray, tuple[int, int], int, int, int]) -> None:
    d2, grid, exclude, k, first = case
    out = _native.knn_mean_distance(d2, grid, exclude, k, first)
    assert out.shape == d2.shape[:2] and out.dtype == np.float32
    np.testing.assert_allclose(out, _twins.knn_mean_distance(d2, grid, exclude, k, first), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_native.knn_mean_distance(d2[0], grid, exclude, k, first), out[0], rtol=0, atol=0)


def test_knn_mean_distance_multithreaded_matches_twin() -> None:
    # 4096 rows of a 64 x 64 grid: 16 M elements, enough for the native selection to split rows over threads
    d2 = np.random.default_rng(6).random((1, 4096, 4096), dtype=np.float32)
    out = _native.knn_mean_distance(d2, (64, 64), 2, 8)
    np.testing.assert_allclose(out, _twins.knn_mean_distance(d2, (64, 64), 2, 8), rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# bad input: every class, both implementations, error naming the argument
# --------------------------------------------------------------------------------------------------
U8 = np.zeros((8, 8), dtype=np.uint8)
F32 = np.zeros((8, 8, 3), dtype=np.float32)
PATCHES = np.zeros((4, 4, 4), dtype=np.uint8)
VERD = np.zeros((2, 3, 3), dtype=bool)
MASKS = np.zeros((2, 4, 2, 2), dtype=np.float32)
PM = np.zeros((4, 2, 2), dtype=np.float32)
NAN_MAPS = np.full((2, 3, 3), np.nan, dtype=np.float32)
NAN_MASKS = MASKS.copy()
NAN_MASKS[1, 2, 1, 0] = np.nan
D2 = np.ones((1, 16, 16), dtype=np.float32)
NAN_D2 = D2.copy()
NAN_D2[0, 3, 7] = np.nan

BAD: list[tuple[str, str, tuple[Any, ...], type[Exception], str]] = [
    # tile
    ("tile-float64", "tile", (U8.astype(np.float64), (2, 2)), TypeError, "image"),
    ("tile-int16", "tile", (U8.astype(np.int16), (2, 2)), TypeError, "image"),
    ("tile-bool", "tile", (U8.astype(bool), (2, 2)), TypeError, "image"),
    ("tile-bigendian", "tile", (F32.astype(">f4"), (2, 2)), TypeError, "image"),
    ("tile-object", "tile", ("not an image", (2, 2)), TypeError, "image"),
    ("tile-1d", "tile", (np.zeros(8, np.uint8), (1, 1)), ValueError, "image"),
    ("tile-4d", "tile", (np.zeros((2, 2, 2, 2), np.uint8), (1, 1)), ValueError, "image"),
    ("tile-empty", "tile", (np.zeros((0, 4), np.uint8), (1, 1)), ValueError, "image"),
    ("tile-empty-channels", "tile", (np.zeros((4, 4, 0), np.float32), (1, 1)), ValueError, "image"),
    ("tile-grid-too-big", "tile", (U8, (9, 2)), ValueError, "grid"),
    ("tile-grid-zero", "tile", (U8, (0, 2)), ValueError, "grid"),
    ("tile-grid-negative", "tile", (U8, (2, -2)), ValueError, "grid"),
    ("tile-grid-len", "tile", (U8, (2, 2, 2)), ValueError, "grid"),
    ("tile-grid-float", "tile", (U8, (2.0, 2)), TypeError, "grid"),
    ("tile-grid-bool", "tile", (U8, (True, 2)), TypeError, "grid"),
    ("tile-grid-none", "tile", (U8, None), TypeError, "grid"),
    ("tile-grid-overflow", "tile", (U8, (2, 1 << 70)), ValueError, "grid"),
    ("tile-absurd", "tile", (np.broadcast_to(np.uint8(0), (1 << 20, 1 << 20)), (2, 2)), ValueError, "image"),
    # untile
    ("untile-float64", "untile", (PATCHES.astype(np.float64), (2, 2), (8, 8)), TypeError, "patches"),
    ("untile-2d", "untile", (np.zeros((4, 4), np.uint8), (2, 2), (8, 8)), ValueError, "patches"),
    ("untile-empty", "untile", (np.zeros((0, 4, 4), np.uint8), (2, 2), (8, 8)), ValueError, "patches"),
    ("untile-count", "untile", (PATCHES[:3], (2, 2), (8, 8)), ValueError, "patches"),
    ("untile-shape-size", "untile", (PATCHES, (2, 2), (9, 8)), ValueError, "out_shape"),
    ("untile-shape-len", "untile", (PATCHES, (2, 2), (8, 8, 1)), ValueError, "out_shape"),
    ("untile-shape-channels", "untile", (np.zeros((4, 4, 4, 3), np.uint8), (2, 2), (8, 8, 1)), ValueError, "out_shape"),
    ("untile-shape-negative", "untile", (PATCHES, (2, 2), (-8, 8)), ValueError, "out_shape"),
    ("untile-shape-huge", "untile", (PATCHES, (2, 2), (1 << 62, 8)), ValueError, "out_shape"),
    ("untile-shape-overflow", "untile", (PATCHES, (2, 2), (1 << 64, 8)), ValueError, "out_shape"),
    ("untile-shape-type", "untile", (PATCHES, (2, 2), "88"), TypeError, "out_shape"),
    ("untile-grid-too-big", "untile", (PATCHES, (9, 1), (8, 8)), ValueError, "grid"),
    # neighbor_triplets
    ("triplets-direction", "neighbor_triplets", (3, 3, "up"), ValueError, "direction"),
    ("triplets-direction-type", "neighbor_triplets", (3, 3, 1), TypeError, "direction"),
    ("triplets-rows-zero", "neighbor_triplets", (0, 3, "ltr"), ValueError, "rows"),
    ("triplets-cols-negative", "neighbor_triplets", (3, -1, "ltr"), ValueError, "cols"),
    ("triplets-rows-float", "neighbor_triplets", (3.0, 3, "ltr"), TypeError, "rows"),
    ("triplets-huge", "neighbor_triplets", (1 << 40, 1 << 40, "ltr"), ValueError, "rows"),
    ("triplets-overflow", "neighbor_triplets", (3, 1 << 80, "ltr"), ValueError, "cols"),
    # intersect_maps
    ("maps-int", "intersect_maps", (VERD.astype(np.int32), VERD), TypeError, "verdicts"),
    ("maps-float64", "intersect_maps", (VERD.astype(np.float64), VERD), TypeError, "verdicts"),
    ("maps-2d", "intersect_maps", (VERD[0], VERD[0]), ValueError, "verdicts"),
    ("maps-empty", "intersect_maps", (VERD[:0], VERD[:0]), ValueError, "verdicts"),
    ("maps-valid-dtype", "intersect_maps", (VERD, VERD.astype(np.uint8)), TypeError, "valid"),
    ("maps-valid-shape", "intersect_maps", (VERD, VERD[:1]), ValueError, "valid"),
    ("maps-nan", "intersect_maps", (NAN_MAPS, VERD), ValueError, "verdicts"),
    # intersect_masks
    ("masks-float64", "intersect_masks", (MASKS.astype(np.float64),), TypeError, "masks"),
    ("masks-3d", "intersect_masks", (MASKS[0],), ValueError, "masks"),
    ("masks-empty", "intersect_masks", (MASKS[:, :0],), ValueError, "masks"),
    ("masks-nan", "intersect_masks", (NAN_MASKS,), ValueError, "masks"),
    # stitch
    ("stitch-float64", "stitch", (PM.astype(np.float64), (2, 2), (8, 8)), TypeError, "patch_masks"),
    ("stitch-uint8", "stitch", (PM.astype(np.uint8), (2, 2), (8, 8)), TypeError, "patch_masks"),
    ("stitch-2d", "stitch", (PM[0], (1, 1), (8, 8)), ValueError, "patch_masks"),
    ("stitch-empty", "stitch", (PM[:, :0], (2, 2), (8, 8)), ValueError, "patch_masks"),
    ("stitch-count", "stitch", (PM[:3], (2, 2), (8, 8)), ValueError, "patch_masks"),
    ("stitch-nan", "stitch", (np.full((4, 2, 2), np.nan, np.float32), (2, 2), (8, 8)), ValueError, "patch_masks"),
    ("stitch-grid-too-big", "stitch", (PM, (2, 2), (1, 8)), ValueError, "grid"),
    ("stitch-grid-zero", "stitch", (PM, (0, 4), (8, 8)), ValueError, "grid"),
    ("stitch-hw-zero", "stitch", (PM, (2, 2), (0, 8)), ValueError, "out_hw"),
    ("stitch-hw-negative", "stitch", (PM, (2, 2), (8, -8)), ValueError, "out_hw"),
    ("stitch-hw-absurd", "stitch", (PM, (2, 2), (1 << 31, 1 << 31)), ValueError, "out_hw"),
    ("stitch-hw-product", "stitch", (PM, (2, 2), (1 << 20, 1 << 20)), ValueError, "out_hw"),
    ("stitch-hw-overflow", "stitch", (PM, (2, 2), (1 << 64, 8)), ValueError, "out_hw"),
    ("stitch-hw-len", "stitch", (PM, (2, 2), (8,)), ValueError, "out_hw"),
    ("stitch-hw-type", "stitch", (PM, (2, 2), 8), TypeError, "out_hw"),
    # knn_mean_distance
    ("knn-float64", "knn_mean_distance", (D2.astype(np.float64), (4, 4), 1, 2), TypeError, "d2"),
    ("knn-1d", "knn_mean_distance", (D2[0, 0], (4, 4), 1, 2), ValueError, "d2"),
    ("knn-4d", "knn_mean_distance", (D2[None], (4, 4), 1, 2), ValueError, "d2"),
    ("knn-empty", "knn_mean_distance", (D2[:, :0], (4, 4), 1, 2), ValueError, "d2"),
    ("knn-nan", "knn_mean_distance", (NAN_D2, (4, 4), 1, 2), ValueError, "d2"),
    ("knn-grid-size", "knn_mean_distance", (D2, (4, 5), 1, 2), ValueError, "grid"),
    ("knn-grid-zero", "knn_mean_distance", (D2, (0, 16), 1, 2), ValueError, "grid"),
    ("knn-grid-len", "knn_mean_distance", (D2, (16,), 1, 2), ValueError, "grid"),
    ("knn-grid-float", "knn_mean_distance", (D2, (4.0, 4), 1, 2), TypeError, "grid"),
    ("knn-exclude-negative", "knn_mean_distance", (D2, (4, 4), -1, 2), ValueError, "exclude"),
    ("knn-exclude-float", "knn_mean_distance", (D2, (4, 4), 1.5, 2), TypeError, "exclude"),
    ("knn-k-zero", "knn_mean_distance", (D2, (4, 4), 1, 0), ValueError, "k"),
    ("knn-k-too-many", "knn_mean_distance", (D2, (4, 4), 1, 8), ValueError, "k"),
    ("knn-k-bool", "knn_mean_distance", (D2, (4, 4), 1, True), TypeError, "k"),
    ("knn-first-negative", "knn_mean_distance", (D2, (4, 4), 1, 2, -1), ValueError, "first"),
    ("knn-first-past-end", "knn_mean_distance", (D2, (4, 4), 1, 2, 1), ValueError, "first"),
    ("knn-first-huge", "knn_mean_distance", (D2, (4, 4), 1, 2, (1 << 63) - 2), ValueError, "first"),
    ("knn-exclude-huge", "knn_mean_distance", (D2, (4, 4), 1 << 62, 2), ValueError, "k"),
    ("knn-exclude-max", "knn_mean_distance", (D2, (4, 4), (1 << 63) - 1, 2), ValueError, "k"),
]


@pytest.mark.parametrize(("func", "args", "exc", "name"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_naming_argument(
    impl: ModuleType, func: str, args: tuple[Any, ...], exc: type[Exception], name: str
) -> None:
    with pytest.raises(exc, match=name):
        getattr(impl, func)(*args)


def test_keyword_arguments() -> None:
    image = np.zeros((4, 4), np.uint8)
    patches = _native.tile(image=image, grid=(2, 2))
    assert _native.untile(patches=patches, grid=(2, 2), out_shape=(4, 4)).shape == (4, 4)
    assert _native.neighbor_triplets(rows=1, cols=3, direction="ltr").shape == (1, 3)
    v = np.ones((1, 2, 2), bool)
    assert _native.intersect_maps(verdicts=v, valid=v).all()
    assert _native.intersect_masks(masks=np.zeros((1, 1, 1, 1), np.float32)).shape == (1, 1, 1)
    assert _native.stitch(patch_masks=np.zeros((1, 1, 1), np.float32), grid=(1, 1), out_hw=(3, 3)).shape == (3, 3)
    d2 = np.ones((2, 9), np.float32)
    assert _native.knn_mean_distance(d2=d2, grid=(3, 3), exclude=0, k=2, first=7).shape == (2,)


# --------------------------------------------------------------------------------------------------
# property tests: native == twin
# --------------------------------------------------------------------------------------------------
@st.composite
def images_and_grids(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, int]]:
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    shape: tuple[int, ...] = (h, w) if draw(st.booleans()) else (h, w, draw(st.integers(1, 4)))
    dtype = draw(st.sampled_from([np.uint8, np.float32]))
    elements = st.integers(0, 255) if dtype == np.uint8 else st.floats(-1e6, 1e6, width=32)
    image = draw(hnp.arrays(dtype, shape, elements=elements))
    view = draw(st.sampled_from(["plain", "flip", "fortran"]))
    if view == "flip":
        image = image[::-1, ::-1]
    elif view == "fortran":
        image = np.asfortranarray(image)
    return image, (draw(st.integers(1, h)), draw(st.integers(1, w)))


@PROPERTY
@given(images_and_grids())
def test_prop_tile_native_equals_twin(case: tuple[np.ndarray, tuple[int, int]]) -> None:
    image, grid = case
    patches = _native.tile(image, grid)
    np.testing.assert_array_equal(patches, _twins.tile(image, grid))
    assert patches.dtype == image.dtype
    back = _native.untile(patches, grid, image.shape)
    np.testing.assert_array_equal(back, image)
    np.testing.assert_array_equal(back, _twins.untile(patches, grid, image.shape))


@PROPERTY
@given(st.integers(1, 9), st.integers(1, 9), st.sampled_from(["ltr", "rtl", "ttb", "btt"]))
def test_prop_neighbor_triplets_native_equals_twin(rows: int, cols: int, direction: str) -> None:
    out = _native.neighbor_triplets(rows, cols, direction)
    np.testing.assert_array_equal(out, _twins.neighbor_triplets(rows, cols, direction))
    assert out.dtype == np.int64 and out.shape[1] == 3
    if len(out):
        assert out.min() >= 0 and out.max() < rows * cols


@st.composite
def verdict_maps(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    if draw(st.booleans()):
        verdicts = draw(hnp.arrays(np.bool_, shape))
    else:
        verdicts = draw(hnp.arrays(np.float32, shape, elements=st.floats(allow_nan=False, width=32)))
    return verdicts, draw(hnp.arrays(np.bool_, shape))


@PROPERTY
@given(verdict_maps())
def test_prop_intersect_maps_native_equals_twin(case: tuple[np.ndarray, np.ndarray]) -> None:
    verdicts, valid = case
    out = _native.intersect_maps(verdicts, valid)
    assert out.dtype == verdicts.dtype and out.shape == verdicts.shape[1:]
    np.testing.assert_array_equal(out, _twins.intersect_maps(verdicts, valid))


@PROPERTY
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 4), st.integers(1, 4)),
        elements=st.floats(allow_nan=False, width=32),
    )
)
def test_prop_intersect_masks_native_equals_twin(masks: np.ndarray) -> None:
    np.testing.assert_array_equal(_native.intersect_masks(masks), _twins.intersect_masks(masks))


@st.composite
def stitch_cases(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    mh, mw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    out_hw = (draw(st.integers(rows, 40)), draw(st.integers(cols, 40)))
    masks = draw(hnp.arrays(np.float32, (rows * cols, mh, mw), elements=st.floats(-10, 10, width=32)))
    return masks, (rows, cols), out_hw


@PROPERTY
@given(stitch_cases())
def test_prop_stitch_native_equals_twin(case: tuple[np.ndarray, tuple[int, int], tuple[int, int]]) -> None:
    masks, grid, out_hw = case
    out = _native.stitch(masks, grid, out_hw)
    assert out.shape == out_hw and out.dtype == np.float32
    np.testing.assert_allclose(out, _twins.stitch(masks, grid, out_hw), rtol=1e-5, atol=1e-5)
    # Bilinear interpolation never leaves the range of its inputs.
    assert out.min() >= masks.min() - 1e-5 and out.max() <= masks.max() + 1e-5
