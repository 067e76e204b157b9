"""Fuzz ``patchloupe._native`` (and its twins) with random and garbage arguments.

Every call must either return or raise ValueError / TypeError: never crash, hang or raise anything
else. The native module and its numpy twin must also agree: both return equal results, or both
raise the same exception class.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from patchloupe import _native, _twins

CASES_PER_FUNCTION = 300
DTYPES = [np.uint8, np.float32, np.float32, np.bool_, np.float64, np.int64, np.int8, np.complex64, ">f4", object]
GARBAGE: list[Any] = [None, "ab", 3, 2.5, b"xy", [], {}, {1, 2}, object(), np.float32(1.0), (1,), [1, 2, 3]]


def _dim(rng: np.random.Generator) -> int:
    return int(rng.choice([0, 1, 1, 2, 3, 4, 5, 7, 9]))


def _array(rng: np.random.Generator) -> Any:
    """A random small array (any dtype, 0-5 dims, maybe strided or with NaN) or garbage."""
    roll = rng.random()
    if roll < 0.05:
        return GARBAGE[rng.integers(len(GARBAGE))]
    dtype = np.dtype(DTYPES[rng.integers(len(DTYPES))])
    if roll < 0.1:  # absurdly large but free (zero strides)
        shape = (int(rng.choice([3, 1 << 20])), 1 << 20) + ((3,) if rng.random() < 0.5 else ())
        return np.broadcast_to(np.zeros((), dtype=dtype), shape)
    shape = tuple(_dim(rng) for _ in range(rng.integers(0, 6)))
    a = np.asarray(rng.random(shape) * 10).astype(dtype)
    if dtype.kind == "f" and a.size and rng.random() < 0.2:
        a.flat[rng.integers(a.size)] = np.nan
    if a.ndim and rng.random() < 0.3:
        a = a[::-1] if rng.random() < 0.5 else np.moveaxis(a, 0, -1)
    return a


def _int(rng: np.random.Generator) -> Any:
    roll = rng.random()
    if roll < 0.6:
        return int(rng.integers(1, 6))
    if roll < 0.75:
        return int(rng.choice([0, -1, -7]))
    if roll < 0.85:
        return int(rng.choice([1 << 31, 1 << 40, 1 << 63, 1 << 70, -(1 << 70)]))
    if roll < 0.9:
        return np.int16(rng.integers(1, 4))
    return GARBAGE[rng.integers(len(GARBAGE))]


def _ints(rng: np.random.Generator, typical: int) -> Any:
    roll = rng.random()
    if roll < 0.1:
        return GARBAGE[rng.integers(len(GARBAGE))]
    n = typical if roll < 0.8 else int(rng.integers(0, 5))
    values = [_int(rng) for _ in range(n)]
    kind = rng.random()
    if kind < 0.1 and all(isinstance(v, int) and abs(v) < 1 << 62 for v in values):
        return np.array(values, dtype=np.int64)  # a numpy array as the sequence
    return list(values) if kind < 0.3 else tuple(values)


def _tile_like(rng: np.random.Generator) -> tuple[Any, ...]:
    if rng.random() < 0.5:
        return (_array(rng), _ints(rng, 2))
    # Mostly valid shapes so that the success path is fuzzed too.
    h, w = int(rng.integers(1, 12)), int(rng.integers(1, 12))
    shape = (h, w) if rng.random() < 0.5 else (h, w, int(rng.integers(1, 4)))
    image = (rng.random(shape) * 255).astype(rng.choice([np.uint8, np.float32]))
    return (image, (int(rng.integers(1, h + 2)), int(rng.integers(1, w + 2))))


def _untile_like(rng: np.random.Generator) -> tuple[Any, ...]:
    if rng.random() < 0.5:
        return (_array(rng), _ints(rng, 2), _ints(rng, int(rng.choice([2, 3]))))
    image, grid = _tile_like(rng)
    try:
        patches = _twins.tile(image, grid)
    except (ValueError, TypeError):
        return (image, grid, np.shape(image))
    shape = list(np.shape(image))
    if rng.random() < 0.4:
        shape[int(rng.integers(len(shape)))] += int(rng.choice([-2, -1, 1, 5]))
    return (patches, grid, tuple(shape))


def _triplets_like(rng: np.random.Generator) -> tuple[Any, ...]:
    direction = rng.choice(["ltr", "rtl", "ttb", "btt", "LTR", "", "up"]) if rng.random() < 0.9 else _int(rng)
    return (_int(rng), _int(rng), str(direction) if isinstance(direction, np.str_) else direction)


def _maps_like(rng: np.random.Generator) -> tuple[Any, ...]:
    if rng.random() < 0.5:
        return (_array(rng), _array(rng))
    shape = (int(rng.integers(1, 5)), int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    verdicts = rng.random(shape) < 0.5 if rng.random() < 0.5 else rng.random(shape).astype(np.float32)
    valid_shape = shape if rng.random() < 0.8 else shape[::-1]
    return (verdicts, rng.random(valid_shape) < 0.5)


def _masks_like(rng: np.random.Generator) -> tuple[Any, ...]:
    if rng.random() < 0.5:
        return (_array(rng),)
    shape = tuple(int(rng.integers(1, 4)) for _ in range(4))
    return (rng.random(shape).astype(np.float32),)


def _stitch_like(rng: np.random.Generator) -> tuple[Any, ...]:
    if rng.random() < 0.5:
        return (_array(rng), _ints(rng, 2), _ints(rng, 2))
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    count = rows * cols if rng.random() < 0.8 else rows * cols + 1
    masks = rng.random((count, int(rng.integers(1, 4)), int(rng.integers(1, 4)))).astype(np.float32)
    out_hw = (int(rng.integers(0, 30)), int(rng.integers(0, 30)))
    if rng.random() < 0.1:
        out_hw = (1 << int(rng.integers(20, 70)), 1 << int(rng.integers(20, 70)))
    return (masks, (rows, cols), out_hw)


GENERATORS: dict[str, Callable[[np.random.Generator], tuple[Any, ...]]] = {
    "tile": _tile_like,
    "untile": _untile_like,
    "neighbor_triplets": _triplets_like,
    "intersect_maps": _maps_like,
    "intersect_masks": _masks_like,
    "stitch": _stitch_like,
}


def _outcome(module: ModuleType, name: str, args: tuple[Any, ...]) -> np.ndarray | type[Exception]:
    """The result, or the exception class when the call raised ValueError / TypeError (anything else fails)."""
    try:
        return getattr(module, name)(*args)
    except (ValueError, TypeError) as exc:
        return type(exc)


def _describe(args: tuple[Any, ...]) -> str:
    return repr(tuple(f"array{a.shape}:{a.dtype}" if isinstance(a, np.ndarray) else a for a in args))


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_fuzz_returns_or_raises_value_or_type_error(name: str) -> None:
    rng = np.random.default_rng(sorted(GENERATORS).index(name) + 1234)
    returned = 0
    for _ in range(CASES_PER_FUNCTION):
        args = GENERATORS[name](rng)
        native = _outcome(_native, name, args)
        twin = _outcome(_twins, name, args)
        if isinstance(native, type) or isinstance(twin, type):
            assert native is twin, f"{name}{_describe(args)}: native -> {native}, twin -> {twin}"
        else:
            returned += 1
            assert native.shape == twin.shape and native.dtype == twin.dtype
            np.testing.assert_allclose(native, twin, rtol=1e-5, atol=1e-5)
    assert returned > 0  # the success path was exercised too
