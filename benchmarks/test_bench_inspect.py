"""The latency gate: ``Detector.inspect`` at 256 x 256, batch 1, through the public API, each benchmark timed
interleaved with the reference workload (``reference.py``), for the built-in models (the default, zero-shot
self-reference, and the pattern model, the paper's method) and small models of the default scorer of
``Detector.fit`` (``selfref``) and of the memory scorer fitted here.

``make bench-gate`` runs this file at 1 torch thread and ``bench_compare.py`` checks the ratios against
``benchmarks/baselines/``; ``make bench`` runs it at 1 and 2 threads with the other suites.

``PATCHLOUPE_BENCH_SLOWDOWN=N`` (test-only) makes every guarded round run ``inspect`` N times: the
injected regression that shows the gate catches a 2x slowdown (docs/benchmarks.md, "Latency guard").
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from patchloupe import Detector
from reference import interleaved, reference_workload

THREADS = [int(t) for t in os.environ.get("PATCHLOUPE_BENCH_THREADS", "1,2").split(",")]
SLOWDOWN = int(os.environ.get("PATCHLOUPE_BENCH_SLOWDOWN", "1"))


@pytest.fixture(params=THREADS, ids=[f"t{t}" for t in THREADS])
def threads(request: pytest.FixtureRequest):  # noqa: ANN201 - fixture
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    from patchloupe.data import render_texture

    return render_texture("metal", (256, 256), rng=100)


@pytest.fixture(scope="module")
def pattern_detector() -> Detector:
    """The built-in pattern model (the paper's method)."""
    from patchloupe.persistence import default_model_dir

    return Detector.load(default_model_dir("pattern"))


@pytest.fixture(scope="module")
def builtin_detector() -> Detector:
    """The built-in default model (zero-shot self-reference)."""
    return Detector.load()


def _fitted(scorer: str) -> Detector:
    """A ``scorer`` model fitted on 10 generated 256 x 256 metal images (a few seconds)."""
    from patchloupe.data import render_texture
    from patchloupe.scorers.memory import memory_available

    if not memory_available():  # pragma: no cover - make installs the weights
        pytest.skip("the feature trunk's weights are not installed")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Detector.fit(
            [render_texture("metal", (256, 256), rng=i) for i in range(10)], scorer=scorer, progress=False
        )
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def memory_detector() -> Detector:
    return _fitted("memory")


@pytest.fixture(scope="module")
def selfref_detector() -> Detector:
    return _fitted("selfref")


def _inspect(det: Detector, img: np.ndarray):  # noqa: ANN202 - the target of a benchmark
    def run():  # noqa: ANN202
        for _ in range(SLOWDOWN):
            r = det.inspect(img)
        return r

    return run


@pytest.mark.benchmark(group="gate")
def test_bench_reference(benchmark, threads: int) -> None:  # type: ignore[no-untyped-def]
    """The reference workload on its own (the divisor for the suites that are not interleaved)."""
    from reference import ROUNDS, WARMUP

    out = benchmark.pedantic(reference_workload, rounds=ROUNDS, warmup_rounds=WARMUP)
    assert np.isfinite(out)


@pytest.mark.benchmark(group="gate")
def test_bench_inspect_pattern(benchmark, threads: int, pattern_detector: Detector, image: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    assert pattern_detector.config.scorer == "pattern"
    r = interleaved(benchmark, _inspect(pattern_detector, image))
    assert r.anomaly_map.shape == (256, 256) and 0.0 <= r.score <= 1.0


@pytest.mark.benchmark(group="gate")
def test_bench_inspect_builtin(benchmark, threads: int, builtin_detector: Detector, image: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    assert builtin_detector.config.scorer == "selfref"
    r = interleaved(benchmark, _inspect(builtin_detector, image))
    assert r.anomaly_map.shape == (256, 256) and 0.0 <= r.score <= 1.0


@pytest.mark.benchmark(group="gate")
def test_bench_inspect_memory(benchmark, threads: int, memory_detector: Detector, image: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    assert memory_detector.config.scorer == "memory"
    r = interleaved(benchmark, _inspect(memory_detector, image))
    assert r.anomaly_map.shape == (256, 256) and np.isfinite(r.score)


@pytest.mark.benchmark(group="gate")
def test_bench_inspect_selfref(benchmark, threads: int, selfref_detector: Detector, image: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    assert selfref_detector.config.scorer == "selfref"
    r = interleaved(benchmark, _inspect(selfref_detector, image))
    assert r.anomaly_map.shape == (256, 256) and np.isfinite(r.score)
