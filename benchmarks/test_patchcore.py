"""The PatchCore baseline (``benchmarks/patchcore.py``) on tiny generated stripes: shapes, the coreset, and
that it separates obvious defects from defect-free images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from patchcore import PatchCore, evaluate_patchcore, greedy_coreset
from patchloupe.data import write_image
from patchloupe.models.backbone import BackboneUnavailable, default_weights_path

try:
    default_weights_path("mobilenet_v2")
    _HAVE_WEIGHTS = True
except BackboneUnavailable:
    _HAVE_WEIGHTS = False
needs_weights = pytest.mark.skipif(not _HAVE_WEIGHTS, reason="MobileNetV2 weights not installed")


def _stripes(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A defect-free RGB image: vertical stripes (period 8 px, random phase) with a little noise."""
    x = np.arange(size)
    row = 0.5 + 0.35 * np.sin(2 * np.pi * (x + rng.integers(8)) / 8)
    img = np.repeat(row[None, :, None], size, 0).repeat(3, 2) + rng.normal(0, 0.03, (size, size, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _defect(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A stripes image with a 12 x 12 red square at a random place, and its mask."""
    img = _stripes(rng, size)
    y, x = rng.integers(8, size - 20, 2)
    img[y : y + 12, x : x + 12] = (230, 20, 20)
    mask = np.zeros((size, size), bool)
    mask[y : y + 12, x : x + 12] = True
    return img, mask


def test_greedy_coreset_covers_every_cluster() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = (centres[:, None] + 0.1 * torch.randn(4, 50, 2, generator=g)).reshape(-1, 2)
    idx = greedy_coreset(x, 4, seed=1)
    assert sorted(set((idx // 50).tolist())) == [0, 1, 2, 3]  # one pick per cluster
    assert idx.unique().numel() == 4
    with pytest.raises(ValueError, match="coreset size"):
        greedy_coreset(x, 0)


@needs_weights
def test_patchcore_separates_obvious_defects() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pc = PatchCore(batch_size=4).fit([_stripes(rng) for _ in range(8)], image_size=(64, 64))
    assert pc.bank is not None and pc.bank.shape == (round(0.1 * 8 * 8 * 8), 32 + 96)
    good = [_stripes(rng) for _ in range(4)]
    bad, masks = zip(*[_defect(rng) for _ in range(4)])
    scores, maps = pc.predict(good + list(bad))
    assert scores.shape == (8,) and maps.shape == (8, 64, 64) and maps.dtype == np.float32
    np.testing.assert_allclose(scores, maps.reshape(8, -1).max(1))
    assert scores[4:].min() > scores[:4].max()  # every defect above every defect-free image
    for m, gt in zip(maps[4:], masks):  # the peak lies on (or next to) the square
        y, x = np.unravel_index(np.argmax(m), m.shape)
        ys, xs = np.nonzero(gt)
        assert ys.min() - 6 <= y <= ys.max() + 6 and xs.min() - 6 <= x <= xs.max() + 6
    # inputs of another size are resized to the model size; maps stay at the model size
    s2, m2 = pc.predict([np.ascontiguousarray(np.repeat(np.repeat(bad[0], 2, 0), 2, 1))])
    assert m2.shape == (1, 64, 64) and s2[0] > scores[:4].max()


@needs_weights
def test_patchcore_errors() -> None:
    pc = PatchCore()
    with pytest.raises(RuntimeError, match="before fit"):
        pc.predict([np.zeros((32, 32, 3), np.uint8)])
    with pytest.raises(ValueError, match="at least one"):
        pc.fit([])
    with pytest.raises(ValueError, match="RGB uint8"):
        pc.fit([np.zeros((32, 32), np.uint8)], image_size=(32, 32))
    with pytest.raises(ValueError, match="coreset_ratio"):
        PatchCore(coreset_ratio=0)


@needs_weights
def test_evaluate_patchcore_on_a_tiny_category(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "stripes"
    for i in range(6):
        write_image(root / "train" / "good" / f"{i:03d}.png", _stripes(rng))
    for i in range(3):
        write_image(root / "test" / "good" / f"{i:03d}.png", _stripes(rng))
        img, mask = _defect(rng)
        write_image(root / "test" / "square" / f"{i:03d}.png", img)
        write_image(root / "ground_truth" / "square" / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    res = evaluate_patchcore(root, image_size=(64, 64))
    assert res["n_train"] == 6 and res["n_test"] == 6 and res["memory_size"] == round(0.1 * 6 * 64)
    assert res["image_auroc"] == 1.0 and res["per_kind_image_auroc"] == {"square": 1.0}
    assert res["pixel_auroc"] > 0.9
