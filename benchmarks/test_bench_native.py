"""pytest-benchmark: ``patchloupe._native`` (C++) against its numpy twins (``patchloupe._twins``).

Each benchmark times one implementation on one image size and asserts that its result equals the
other implementation's. Groups are named ``<op>-<size>`` so the table puts native and twin side by
side. CI runs these with ``--benchmark-disable`` (each body runs once).

Sizes are H x W RGB images: 256x256, 1024x1024 and a 4096 x 3000 camera frame (3000 rows, 4096
columns), on an 8 x 8 grid; stitch uses patch/4 masks, intersections use four directions.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from patchloupe import _native, _twins

pytestmark = pytest.mark.benchmark

GRID = (8, 8)
SIZES = {"256x256": (256, 256), "1024x1024": (1024, 1024), "4096x3000": (3000, 4096)}
IMPLS = {"native": _native, "twin": _twins}


@cache
def _inputs(size: str) -> dict[str, tuple[Any, ...]]:
    """Arguments of every benchmarked call for one image size (built once per size)."""
    h, w = SIZES[size]
    rows, cols = GRID
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    patches = _native.tile(image, GRID)
    ph, pw = patches.shape[1:3]
    mh, mw = max(1, ph // 4), max(1, pw // 4)
    masks = rng.random((4, rows * cols, mh, mw), dtype=np.float32)
    # Dense verdict maps: one verdict per 4 x 4 pixel block, four directions.
    vshape = (4, h // 4, w // 4)
    return {
        "tile": (image, GRID),
        "untile": (patches, GRID, image.shape),
        "stitch": (masks[0], GRID, (h, w)),
        "intersect_masks": (masks,),
        "intersect_maps_bool": (rng.random(vshape) < 0.5, rng.random(vshape) < 0.8),
        "intersect_maps_float": (rng.random(vshape, dtype=np.float32), rng.random(vshape) < 0.8),
    }


OPS: dict[str, str] = {
    "tile": "tile",
    "untile": "untile",
    "stitch": "stitch",
    "intersect_masks": "intersect_masks",
    "intersect_maps_bool": "intersect_maps",
    "intersect_maps_float": "intersect_maps",
}


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("op", list(OPS))
def test_bench_native_vs_twin(benchmark: Any, op: str, size: str, impl: str) -> None:
    args = _inputs(size)[op]
    module: ModuleType = IMPLS[impl]
    other: ModuleType = IMPLS["twin" if impl == "native" else "native"]
    fn: Callable[..., np.ndarray] = getattr(module, OPS[op])
    benchmark.group = f"{op}-{size}"
    result = benchmark(fn, *args)
    expected = getattr(other, OPS[op])(*args)
    assert result.shape == expected.shape and result.dtype == expected.dtype
    if op == "stitch":
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("path", ["native", "topk"])
@pytest.mark.parametrize("grid", [(32, 32), (64, 64)], ids=["32x32", "64x64"])
def test_bench_self_distances(benchmark: Any, grid: tuple[int, int], path: str) -> None:
    """The self-reference's k = 8 nearest positions outside the 5 x 5 window, 152-channel features (the default
    scorer's at 256 x 256 and 512 x 512), 1 torch thread: the native selection (``_native.knn_mean_distance``)
    against the masked ``topk``; both give the same distances."""
    import torch
    from patchloupe.scorers.selfref import self_distances

    f = torch.randn(1, 152, *grid, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        benchmark.group = f"self_distances-{grid[0]}x{grid[1]}"
        got = benchmark(self_distances, f, 8, 2, use_native=path == "native")
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got, self_distances(f, 8, 2, use_native=path != "native"), atol=1e-4, rtol=1e-5)
