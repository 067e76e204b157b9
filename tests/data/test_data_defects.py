from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from patchloupe.data.defects import DATASET_DEFECTS, DEFECT_KINDS, MIN_CHANGE, make_defect, synthesize_defect
from patchloupe.data.textures import FAMILIES, render_texture


def _patch(family: str, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return render_texture(family, size, np.random.default_rng(seed)).astype(np.float32) / 255


def _check_exact(patch: np.ndarray, out: np.ndarray, mask: np.ndarray) -> None:
    assert out.dtype == np.float32 and out.shape == patch.shape
    assert mask.dtype == np.float32 and mask.shape == patch.shape[:2]
    assert set(np.unique(mask)) <= {0.0, 1.0}
    m = mask > 0
    assert m.any(), "empty mask"
    np.testing.assert_array_equal(out[~m], patch[~m])  # bit-identical outside
    assert (np.abs(out - patch).max(axis=2)[m] >= MIN_CHANGE).all()  # every masked pixel changed
    assert out.min() >= 0 and out.max() <= 1


def test_kinds_listed() -> None:
    assert set(DEFECT_KINDS) == {"perlin", "cutpaste", "scratch", "hole", "stain", "warp"}


@pytest.mark.parametrize("kind", DEFECT_KINDS)
@pytest.mark.parametrize("size", [(32, 32), (64, 64), (72, 100), (224, 224)])
def test_each_kind_exact_mask(kind: str, size: tuple[int, int]) -> None:
    rng = np.random.default_rng([zlib.crc32(kind.encode()), *size])
    for fam in FAMILIES[:: 2 if size[0] > 100 else 1]:
        patch = _patch(fam, size, seed=int(rng.integers(1000)))
        out, mask = synthesize_defect(patch, rng, kind)
        _check_exact(patch, out, mask)
        assert 0 < mask.mean() < 0.9


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_flat_patch_still_gets_a_defect(kind: str) -> None:
    # cut-paste and warp cannot change a uniform patch: the fallback must still give an exact, non-empty mask
    patch = np.full((48, 48, 3), 0.5, np.float32)
    out, mask = synthesize_defect(patch, np.random.default_rng(3), kind)
    _check_exact(patch, out, mask)


@pytest.mark.parametrize("kind", [*DEFECT_KINDS, None])
def test_deterministic(kind: str | None) -> None:
    patch = _patch("cloth", (64, 64))
    src = _patch("wood", (80, 90))
    a = synthesize_defect(patch, np.random.default_rng(7), kind, source=src)
    b = synthesize_defect(patch, np.random.default_rng(7), kind, source=src)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    c = synthesize_defect(patch, np.random.default_rng(8), kind, source=src)
    assert a[1].tobytes() != c[1].tobytes()


def test_source_is_used() -> None:
    patch = np.full((64, 64, 3), 0.2, np.float32)
    src = np.full((40, 40, 3), 0.9, np.float32)  # smaller than the patch: resized
    for seed in range(5):
        out, mask = synthesize_defect(patch, np.random.default_rng(seed), "cutpaste", source=src)
        vals = np.unique(out[mask > 0].reshape(-1, 3), axis=0)
        assert len(vals) == 1 and vals[0][0] > 0.6  # the (brightness-jittered) donor colour
        out, mask = synthesize_defect(patch, np.random.default_rng(seed), "perlin", source=src)
        inside = out[mask > 0]
        assert (inside >= 0.2 + MIN_CHANGE - 1e-6).all() and (inside <= 0.9 + 1e-6).all()  # a blend of the two


def test_area_controls_size() -> None:
    patch = _patch("leather", (96, 96))
    for kind in ("hole", "stain", "perlin", "cutpaste"):
        small = np.mean(
            [synthesize_defect(patch, np.random.default_rng(s), kind, area=0.01)[1].mean() for s in range(8)]
        )
        big = np.mean([synthesize_defect(patch, np.random.default_rng(s), kind, area=0.2)[1].mean() for s in range(8)])
        assert small < big, kind


def test_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown defect kind"):
        synthesize_defect(np.zeros((8, 8, 3), np.float32), rng, "smudge")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        synthesize_defect(np.zeros((8, 8), np.float32), rng)
    with pytest.raises(ValueError, match="float"):
        synthesize_defect(np.zeros((8, 8, 3), np.uint8), rng)
    with pytest.raises(ValueError, match="source"):
        synthesize_defect(np.zeros((8, 8, 3), np.float32), rng, "perlin", source=np.zeros((8, 8), np.float32))


@settings(max_examples=30, deadline=None)
@given(
    h=st.integers(4, 80),
    w=st.integers(4, 80),
    seed=st.integers(0, 2**31),
    kind=st.sampled_from([*DEFECT_KINDS, None]),
    flat=st.booleans(),
)
def test_property_exact_nonempty(h: int, w: int, seed: int, kind: str | None, flat: bool) -> None:
    rng = np.random.default_rng(seed)
    patch = np.full((h, w, 3), rng.random(), np.float32) if flat else rng.random((h, w, 3), dtype=np.float32)
    out, mask = synthesize_defect(patch, rng, kind)
    _check_exact(patch, out, mask)


def test_dataset_kinds_listed() -> None:
    assert len(DATASET_DEFECTS) >= 5
    assert set(DATASET_DEFECTS.values()) <= set(DEFECT_KINDS)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", list(DATASET_DEFECTS))
def test_make_defect_exact(family: str, kind: str) -> None:
    rng = np.random.default_rng(len(family) * 31 + len(kind))
    img = render_texture(family, 96, rng)
    out, mask = make_defect(img, kind, rng)
    assert out.dtype == np.uint8 and out.shape == img.shape and mask.dtype == bool and mask.shape == (96, 96)
    assert mask.any() and mask.mean() < 0.3
    np.testing.assert_array_equal((out != img).any(axis=2), mask)
    assert (np.abs(out.astype(int) - img).max(axis=2)[mask] >= 9).all()  # clearly changed, not rounding noise
    out2, mask2 = make_defect(img, kind, np.random.default_rng(len(family) * 31 + len(kind) + 1))
    again = make_defect(img, kind, np.random.default_rng(len(family) * 31 + len(kind) + 1))
    assert out2.tobytes() == again[0].tobytes() and mask2.tobytes() == again[1].tobytes()


def test_make_defect_errors() -> None:
    with pytest.raises(ValueError, match="uint8"):
        make_defect(np.zeros((8, 8, 3), np.float32), "hole", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown defect kind"):
        make_defect(np.zeros((8, 8, 3), np.uint8), "smudge", np.random.default_rng(0))
