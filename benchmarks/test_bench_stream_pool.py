"""The cost of the stream pool (``Detector.pooled``, ``patchloupe.scorers.stream_pool``): ``inspect`` at 256 x 256,
batch 1, of a ``selfref`` model fitted on 10 generated metal images, with and without a pool of 16, on a stream of
the fitted surface (the drift gate stays closed: no extra work) and on a stream of another surface (wood: the
pool rule scores every image, one pool search per image). Each benchmark is interleaved with the reference workload
(``reference.py``) and asserts which rule scored the image. Not in the latency gate (no baseline yet).

    python -m pytest benchmarks/test_bench_stream_pool.py -q -p no:cacheprovider
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from patchloupe import Detector
from reference import interleaved


@pytest.fixture(scope="module")
def fitted() -> Detector:
    from patchloupe.data import render_texture
    from patchloupe.scorers.memory import memory_available

    if not memory_available():  # pragma: no cover - make installs the weights
        pytest.skip("the feature trunk's weights are not installed")
    torch.set_num_threads(1)
    return Detector.fit([render_texture("metal", (256, 256), rng=i) for i in range(10)], progress=False)


def _stream(family: str) -> list[np.ndarray]:
    from patchloupe.data import render_texture

    return [render_texture(family, (256, 256), rng=200 + i) for i in range(24)]


def _runner(det: Detector, images: list[np.ndarray]):  # noqa: ANN202 - the target of a benchmark
    frames = itertools.cycle(images)
    return lambda: det.inspect(next(frames), keep_image=False)


@pytest.mark.benchmark(group="stream-pool")
@pytest.mark.parametrize("family", ["metal", "wood"])
@pytest.mark.parametrize("pooled", [False, True], ids=["plain", "pooled"])
def test_bench_stream_pool(benchmark, fitted: Detector, family: str, pooled: bool) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    det = fitted.pooled(16) if pooled else fitted
    images = _stream(family)
    for im in images[:17]:  # a full pool first
        det.inspect(im, keep_image=False)
    r = interleaved(benchmark, _runner(det, images))
    assert r.anomaly_map.shape == (256, 256) and np.isfinite(r.score)
    if pooled:
        assert det.scorer.last_pooled == [family == "wood"]  # the pool rule only on the other surface
