"""Generator timing: one full-grid, both-direction prediction per image (``predict_targets``), sdpa vs reference.

A 4 x 4 grid gives 16 patches; left-to-right (i, i+1 -> i+2) and right-to-left (i+2, i+1 -> i) rows
give 2 x 8 targets decoded in one batch. ``edge``: a 256 x 256 image (64 x 64 patches); ``paper``:
896 x 896 (224 x 224 patches, marked slow). Run: ``make bench`` or
``pytest benchmarks/test_bench_generator.py --benchmark-only -m "benchmark"`` (add ``-m slow`` for paper).
"""

from __future__ import annotations

import functools

import pytest
import torch
from patchloupe.models.attention import attention_backend
from patchloupe.models.generator import PatternGenerator, build_generator

GRID = (4, 4)


def _triplets(rows: int, cols: int) -> torch.Tensor:
    ltr = [(r * cols + c, r * cols + c + 1, r * cols + c + 2) for r in range(rows) for c in range(cols - 2)]
    return torch.tensor(ltr + [(b, m, a) for (a, m, b) in ltr])


@functools.cache
def _setup(preset: str) -> tuple[PatternGenerator, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Model, patches (16, 3, h, w), triplets (16, 3) and the reference-backend prediction."""
    torch.manual_seed(0)
    gen = build_generator(preset).eval()
    patches = torch.rand(GRID[0] * GRID[1], 3, *gen.config.patch_size)
    trip = _triplets(*GRID)
    with torch.inference_mode(), attention_backend(gen, "reference"):
        ref = gen.predict_targets(patches, trip)
    return gen, patches, trip, ref


def _bench(benchmark, preset: str, backend: str, rounds: int) -> None:  # type: ignore[no-untyped-def]
    gen, patches, trip, ref = _setup(preset)

    def run() -> torch.Tensor:
        with torch.inference_mode(), attention_backend(gen, backend):
            return gen.predict_targets(patches, trip)

    out = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    assert out.shape == (16, 3, *gen.config.patch_size)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    benchmark.extra_info.update(
        preset=preset,
        backend=backend,
        params=gen.num_params(),
        gflops_per_image=round(gen.prediction_flops(trip) / 1e9, 3),
        threads=torch.get_num_threads(),
    )


@pytest.mark.benchmark
@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_bench_edge_full_grid(benchmark, backend: str) -> None:  # type: ignore[no-untyped-def]
    _bench(benchmark, "edge", backend, rounds=15)


@pytest.mark.benchmark
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_bench_paper_full_grid(benchmark, backend: str) -> None:  # type: ignore[no-untyped-def]
    _bench(benchmark, "paper", backend, rounds=3)
