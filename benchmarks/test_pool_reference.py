"""benchmarks/pool_reference.py helpers: the pools and the pooled distance against a brute-force reference."""

from __future__ import annotations

import pytest
import torch
from pool_reference import cross_nearest, pool_distance, pool_members


def test_cross_nearest_matches_brute_force() -> None:
    f = torch.randn(4, 5, 3, 2, generator=torch.Generator().manual_seed(0))
    got = cross_nearest(f, 1, [0, 3])
    for row, j in enumerate((0, 3)):
        a, b = f[1].flatten(1).T, f[j].flatten(1).T  # (N, C)
        want = torch.cdist(a, b).amin(1)
        assert torch.allclose(got[row], want, atol=1e-5)


@pytest.mark.parametrize("pool", ["all", "random-3", "rolling-3"])
def test_pool_members_never_hold_the_image_itself(pool: str) -> None:
    members = pool_members(6, pool, seed=0)
    assert len(members) == 6
    for i, m in enumerate(members):
        assert i not in m and len(set(m)) == len(m) == (5 if pool == "all" else 3)


def test_rolling_pool_is_the_images_just_before_in_one_order() -> None:
    members = pool_members(5, "rolling-2", seed=1)
    # every image is in exactly two pools (the two images after it in the order hold it)
    counts = [sum(i in m for m in members) for i in range(5)]
    assert counts == [2] * 5
    with pytest.raises(ValueError, match="unknown pool"):
        pool_members(5, "nearest-2", seed=0)


def test_pool_distance_is_low_on_shared_texture_and_high_on_a_unique_patch() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 8, 6, 6, generator=g)
    f = base.repeat(5, 1, 1, 1) + 0.01 * torch.randn(5, 8, 6, 6, generator=g)
    f[2, :, 3, 3] += 10.0  # a defect only image 2 has
    m = pool_distance(f, pool_members(5, "all", seed=0), closest=0.5)
    assert m.shape == (5, 6, 6)
    assert float(m[2, 3, 3]) > 50 * float(m.median())
    assert float(m[0].amax()) < 3.0
