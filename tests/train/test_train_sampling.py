"""Triplet sampling (``patchloupe.train.sampling``): grid triplets, sampler geometry, jitter and flips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from patchloupe.train.sampling import TripletSampler, grid_triplets, image_triplets


def test_grid_triplets_contract() -> None:
    assert grid_triplets(2, 4, "ltr").tolist() == [[0, 1, 2], [1, 2, 3], [4, 5, 6], [5, 6, 7]]
    assert grid_triplets(2, 4, "rtl").tolist() == [[2, 1, 0], [3, 2, 1], [6, 5, 4], [7, 6, 5]]
    assert grid_triplets(3, 2, "ttb").tolist() == [[0, 2, 4], [1, 3, 5]]
    assert grid_triplets(3, 2, "btt").tolist() == [[4, 2, 0], [5, 3, 1]]
    assert grid_triplets(4, 2, "ltr").shape == (0, 3)
    try:
        from patchloupe import _native
    except ImportError:  # pragma: no cover - native module not built
        return
    if hasattr(_native, "neighbor_triplets"):
        for d in ("ltr", "rtl", "ttb", "btt"):
            assert np.array_equal(np.asarray(_native.neighbor_triplets(4, 5, d)), grid_triplets(4, 5, d).numpy())


def test_sampler_shapes_determinism_and_aligned_geometry() -> None:
    imgs = [np.random.default_rng(i).integers(0, 256, (70, 90, 3), dtype=np.uint8) for i in range(3)]
    imgs.append(np.random.default_rng(9).integers(0, 256, (50, 50), dtype=np.uint8))  # gray
    s = TripletSampler(imgs, (64, 64), (4, 4), column_wise=True, seed=3, flips=True)
    assert s.images.shape == (4, 3, 64, 64) and s.images.dtype == torch.uint8
    first, second, target = s.sample(32)
    for t in (first, second, target):
        assert t.shape == (32, 3, 16, 16) and t.dtype == torch.float32 and 0 <= float(t.min()) <= float(t.max()) <= 1
    again = TripletSampler(imgs, (64, 64), (4, 4), column_wise=True, seed=3, flips=True).sample(32)
    assert all(torch.equal(a, b) for a, b in zip((first, second, target), again, strict=True))
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert torch.equal(s.sample(4, rng=rng_a)[0], s.sample(4, rng=rng_b)[0])

    from patchloupe.preprocess import image_to_patches

    patches = image_to_patches(s.images.float() / 255, (4, 4))  # (N, 16, 3, 16, 16)
    b = s.sample_aligned(64)
    assert bool(b.aligned.all()) and not bool(b.flipped.any())
    steps = {"ltr": 1, "rtl": -1, "ttb": 4, "btt": -4}
    for i in range(64):
        d, (p0, p1, p2) = b.direction[i], b.patch_index[i].tolist()
        assert p1 - p0 == p2 - p1 == steps[d]
        assert p0 // 4 == p2 // 4 if d in ("ltr", "rtl") else p0 % 4 == p2 % 4
        tr = (lambda x: x.transpose(-1, -2)) if d in ("ttb", "btt") else (lambda x: x)
        img = patches[b.image_index[i]]
        assert torch.equal(b.first[i], tr(img[p0])) and torch.equal(b.second[i], tr(img[p1]))
        assert torch.equal(b.target[i], tr(img[p2]))


def test_sampler_jitter_origins_and_flips() -> None:
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    s = TripletSampler([img], (64, 64), (4, 4), directions=("ltr", "rtl"), offset_jitter=1.0, flips=True, seed=1)
    b = s.sample_batch(64)
    assert not bool(b.aligned.any()) and bool(b.flipped.any()) and not bool(b.flipped.all())
    assert bool((b.patch_index == -1).all())
    full = s.images[0].float() / 255
    for i in range(64):
        (y0, x0), (y1, x1), (y2, x2) = b.origin[i].tolist()
        assert y0 == y1 == y2 and abs(x2 - x0) == 32 and x1 == (x0 + x2) // 2  # adjacent, first farther
        assert (x2 > x0) == (b.direction[i] == "ltr")
        real = full[:, y2 : y2 + 16, x2 : x2 + 16]
        assert torch.equal(b.target[i], real.flip(-2) if b.flipped[i] else real)  # vertical mirror only
    assert TripletSampler([img], (64, 64), (4, 4), offset_jitter=False).sample_batch(16).aligned.all()


def test_sampler_validation() -> None:
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="direction"):
        TripletSampler([img], (64, 64), (4, 4), directions=("up",))
    with pytest.raises(ValueError, match="3 grid columns"):
        TripletSampler([img], (64, 64), (4, 2))
    with pytest.raises(ValueError, match="square patches"):
        TripletSampler([img], (64, 96), (4, 4), column_wise=True)
    with pytest.raises(ValueError, match="uint8"):
        TripletSampler([img.astype(np.float32)], (64, 64), (4, 4))
    with pytest.raises(ValueError, match="at least one image"):
        TripletSampler([], (64, 64), (4, 4))


def test_image_triplets_matches_grid() -> None:
    x = torch.rand(2, 3, 48, 64)
    first, second, target, trip = image_triplets(x, (3, 4), "rtl")
    assert first.shape == (2, 6, 3, 16, 16) and trip.shape == (6, 3)
    assert torch.equal(target[1, 0], x[1, :, 0:16, 0:16]) and torch.equal(first[1, 0], x[1, :, 0:16, 32:48])
