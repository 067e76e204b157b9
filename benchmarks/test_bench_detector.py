"""Detector latency per preset at 256 x 256 (batch 1): a pytest-benchmark test that also checks results.

Timings: `make bench` (2 threads, see benchmarks/conftest.py). CI runs these with --benchmark-disable.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from patchloupe import Detector
from patchloupe.detector import DetectorConfig
from patchloupe.models.comparator import ComparatorConfig, PatternComparator
from patchloupe.models.generator import build_generator
from patchloupe.scorers.pattern import PatternScorer


def preset_detector(preset: str, image: int = 256, grid: int = 4) -> Detector:
    """A randomly initialised detector with ``preset``'s generator at ``image`` px on a ``grid`` grid."""
    torch.manual_seed(0)
    patch = image // grid
    gen = build_generator(preset, patch_size=(patch, patch))
    comp = PatternComparator(ComparatorConfig())
    cfg = DetectorConfig(image_size=(image, image), grid=(grid, grid))
    return Detector(PatternScorer(gen, comp, (image, image), (grid, grid)), cfg)


@pytest.mark.benchmark
@pytest.mark.parametrize("preset", ["tiny", "edge", pytest.param("paper", marks=pytest.mark.slow)])
def test_bench_inspect_256(benchmark, preset: str) -> None:  # type: ignore[no-untyped-def]
    det = preset_detector(preset)
    img = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    r = benchmark(det.inspect, img)
    assert r.anomaly_map.shape == (256, 256) and 0.0 <= r.score <= 1.0
    assert det.flops() > 0 and det.num_params() > 0


def test_pattern_model_inspects(benchmark) -> None:  # type: ignore[no-untyped-def]
    from patchloupe.persistence import default_model_dir

    det = Detector.load(default_model_dir("pattern"))
    img = np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    r = benchmark(det.inspect, img)
    assert r.anomaly_map.shape == (256, 256)


def test_default_model_inspects(benchmark) -> None:  # type: ignore[no-untyped-def]
    det = Detector.load()
    img = np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    r = benchmark(det.inspect, img)
    assert r.anomaly_map.shape == (256, 256)
