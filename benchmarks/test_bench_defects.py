"""Defect synthesis speed on 64 x 64 patches (the comparator's training patches); CPU time, not wall time."""

from __future__ import annotations

import time

import numpy as np
from patchloupe.data.defects import DEFECT_KINDS, synthesize_defect
from patchloupe.data.textures import FAMILIES, render_texture


def _patch(family: str, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return render_texture(family, size, np.random.default_rng(seed)).astype(np.float32) / 255


def test_fast_on_64px_patches() -> None:
    rng = np.random.default_rng(0)
    patches = [_patch(f, (64, 64), i) for i, f in enumerate(FAMILIES)]
    times = []
    for i in range(120):
        t = time.process_time()
        synthesize_defect(patches[i % len(patches)], rng, DEFECT_KINDS[i % len(DEFECT_KINDS)])
        times.append(time.process_time() - t)
    assert np.median(times) < 5e-3
