"""benchmarks/pool_reference.py helpers: the pools and the pooled distance against a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pool_reference import (
    cross_nearest,
    drift_levels,
    pool_distance,
    pool_likeness,
    pool_members,
    raw_pool_distance,
    sdk_maps,
    stream_order,
    summarize,
)


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


@pytest.mark.parametrize("kind", ["stream", "sorted"])
def test_stream_pools_hold_only_the_images_before_and_none_for_the_first(kind: str) -> None:
    members = pool_members(6, f"{kind}-2", seed=0)
    sizes = sorted(len(m) for m in members)
    assert sizes == [0, 1, 2, 2, 2, 2]  # the first image has no past, the second one image
    if kind == "sorted":  # the set's own order: image i's pool is i-1, i-2
        assert members == [[], [0], [1, 0], [2, 1], [3, 2], [4, 3]]


def test_stream_pool_distance_gives_no_pool_inf_and_a_running_normaliser() -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(1, 4, 3, 3, generator=g).repeat(4, 1, 1, 1) + 0.01 * torch.randn(4, 4, 3, 3, generator=g)
    m = pool_distance(f, pool_members(4, "sorted-2", seed=0), closest=0.5, stream=True)
    assert bool(m[0].isinf().all()) and bool(m[1:].isfinite().all())
    assert 0.3 < float(m[1:].median()) < 3.0  # each finite image is scaled by its own and its pool's medians


def test_drift_levels_are_a_quantile_over_the_image_and_its_pool() -> None:
    med = torch.tensor([1.0, 1.0, 3.0, 3.0])
    m = med[:, None, None] * torch.ones(4, 2, 2)
    members = [[], [0], [1, 0], [2, 1]]
    assert drift_levels(m, members, q=0.5).tolist() == [1.0, 1.0, 1.0, 3.0]
    assert drift_levels(m, members, q=0.0).tolist() == [1.0, 1.0, 1.0, 1.0]  # the most ordinary image of the pool


def test_a_low_spatial_quantile_ignores_a_local_defect() -> None:
    m = torch.ones(2, 4, 4)
    m[1, :2] = 5.0  # half of image 1 far from the memory: its median moves, its lowest tenth does not
    members = [[], [0]]
    assert drift_levels(m, [[], []], q=0.5)[1] > 1.0
    assert drift_levels(m, [[], []], q=0.5, spatial=0.1).tolist() == [1.0, 1.0]
    assert drift_levels(m, members, q=1.0, spatial=0.1).tolist() == [1.0, 1.0]


def test_pool_likeness_is_low_when_recent_images_resemble_each_other_more_than_the_memory() -> None:
    g = torch.Generator().manual_seed(0)
    same = torch.randn(1, 4, 3, 3, generator=g).repeat(3, 1, 1, 1) + 0.01 * torch.randn(3, 4, 3, 3, generator=g)
    members = [[], [0], [1, 0]]
    raw = raw_pool_distance(same, members, closest=1.0)
    far = torch.full((3, 3, 3), 2.0)  # the memory is far from all three
    like = pool_likeness(raw, far, members)
    assert math.isinf(like[0])  # no pool yet
    assert (like[1:] < 0.1).all()
    assert (pool_likeness(raw, far / 100, members)[1:] > 1.0).all()  # a memory closer than the pool


def test_summarize_reports_the_worst_drops_per_rule() -> None:
    def row(fit: int, test: int, change: str, img: float, pix: float) -> dict:
        return {"data": "wood", "fit": fit, "test": test, "change": change, "default": [img, pix]}

    rows = [row(0, 0, "none", 1.0, 0.98), row(1, 1, "none", 0.95, 0.97), row(0, 1, "none", 0.90, 0.96),
            row(1, 0, "none", 0.99, 0.90), row(0, 0, "gain", 0.97, 0.98)]  # fmt: skip
    got = summarize(rows)["default"]
    assert got["t1_img"] == pytest.approx(5.0) and got["t1_pix"] == pytest.approx(8.0)
    assert got["t2_img"] == pytest.approx(3.0) and got["fitted_min"] == [0.95, 0.97] and got["tile"] is None


@pytest.mark.parametrize("pool", ["stream-3", "sorted-3"])
def test_sdk_maps_feed_the_stream_order_and_return_the_set_order(pool: str) -> None:
    class Scorer:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def infer(self, x: np.ndarray) -> tuple[None, np.ndarray]:
            self.seen += [int(v) for v in x[:, 0, 0, 0]]
            return None, x[..., 0].astype(np.float32)

        def stats(self) -> dict[str, int]:
            return {"pooled": 2, "seen": len(self.seen)}

    class Det:
        def pooled(self, size: int):  # noqa: ANN202
            assert size == 3
            self.scorer = Scorer()
            return self

    imgs = [np.full((4, 4, 3), i, np.uint8) for i in range(7)]
    det = Det()
    maps, share = sdk_maps(det, imgs, pool, seed=2, batch=3)
    assert det.scorer.seen == [int(i) for i in stream_order(7, pool, 2)]
    assert [float(m[0, 0]) for m in maps] == list(range(7)) and share == pytest.approx(2 / 7)
    members = pool_members(7, pool, seed=2)
    order = list(det.scorer.seen)
    for k, i in enumerate(order):  # the benchmark's pool of each image is what the SDK held before it
        assert members[i] == order[max(0, k - 3) : k][::-1]
