"""Fast checks of the metric and geometry helpers of ``benchmarks/generator_quality.py``."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import nn


def _load() -> ModuleType:
    path = Path(__file__).resolve().parent / "generator_quality.py"
    spec = importlib.util.spec_from_file_location("generator_quality", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("generator_quality", mod)
    spec.loader.exec_module(mod)
    return mod


gq = _load()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _smooth_pair(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A textured image and a noisy, shifted-brightness copy (SSIM well inside (0, 1))."""
    h, w, _ = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = 0.5 + 0.3 * np.sin(xx[..., None] / 3.0 + np.arange(3)) * np.cos(yy[..., None] / 5.0)
    other = np.clip(0.9 * base + 0.05 + rng.normal(0.0, 0.08, shape), 0.0, 1.0)
    return base, other


@pytest.mark.parametrize("shape", [(64, 64, 3), (23, 31, 3), (11, 11, 3)])
def test_ssim_matches_skimage(shape: tuple[int, int, int]) -> None:
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    pairs = [_smooth_pair(rng, shape), (rng.random(shape), rng.random(shape))]
    x = torch.from_numpy(np.stack([a for a, _ in pairs])).permute(0, 3, 1, 2)
    y = torch.from_numpy(np.stack([b for _, b in pairs])).permute(0, 3, 1, 2)
    ours = gq.ssim(x.float(), y.float()).numpy()
    ref = [
        metrics.structural_similarity(
            a.astype(np.float32),
            b.astype(np.float32),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=-1,
        )
        for a, b in pairs
    ]
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert 0.2 < ours[0] < 0.99 and abs(ours[1]) < 0.1


def test_ssim_identity_symmetry_and_7x7_window() -> None:
    x = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    y = (x + 0.1 * torch.rand(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    np.testing.assert_allclose(gq.ssim(x, x).numpy(), 1.0, atol=1e-12)
    torch.testing.assert_close(gq.ssim(x, y), gq.ssim(y, x))
    # transposing both images does not change it (the column-wise pass relies on that)
    torch.testing.assert_close(gq.ssim(x, y), gq.ssim(x.transpose(-1, -2), y.transpose(-1, -2)))
    s7 = gq.ssim(x, y, win_size=7)
    assert s7.shape == (3,) and bool(((s7 > 0) & (s7 < 1)).all())
    with pytest.raises(ValueError):
        gq.ssim(x[..., :10, :10], y[..., :10, :10])
    k = gq.gaussian_kernel1d(11, 1.5)
    assert k.shape == (11,) and abs(float(k.sum()) - 1.0) < 1e-12 and int(k.argmax()) == 5


def test_psnr_known_values() -> None:
    x = torch.zeros(2, 3, 8, 8)
    y = torch.stack([torch.full((3, 8, 8), 0.1), torch.zeros(3, 8, 8)])
    np.testing.assert_allclose(gq.psnr(y, x).numpy(), [20.0, 100.0], atol=1e-5)  # mse 0.01; floored mse 1e-10


def test_triplet_plan_counts_and_directions() -> None:
    plan = gq.triplet_plan((4, 4))
    assert [(len(t), tr) for t, tr in plan] == [(16, False), (16, True)]
    rows, cols = plan[0][0].tolist(), plan[1][0].tolist()
    assert [0, 1, 2] in rows and [2, 1, 0] in rows  # ltr, rtl
    assert [0, 4, 8] in cols and [8, 4, 0] in cols  # ttb, btt (indices in image reading order)
    assert [(len(t), tr) for t, tr in gq.triplet_plan((2, 3))] == [(4, False)]  # no columns of 3


class _CopySecond(nn.Module):
    """A fake generator: predicts the ``second`` patch, but only correctly if the input is transposed back."""

    def predict_targets(self, patches: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
        return patches[triplets[:, 1]] + 0.0


def _toy_patches(n: int = 3, grid: tuple[int, int] = (4, 4), size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, grid[0] * grid[1], 3, size, size, generator=g)


def test_evaluate_triplets_copy_generator_equals_copy_baseline() -> None:
    patches = _toy_patches()
    mean = gq.mean_patch(patches)
    torch.testing.assert_close(mean, patches.reshape(-1, 3, 16, 16).mean(0))
    res = gq.evaluate_triplets(_CopySecond(), patches, mean, (4, 4), batch_images=2)
    assert res["n"] == 3 * 32
    assert res["psnr"]["gen"] == res["psnr"]["copy"] and res["ssim"]["gen"] == res["ssim"]["copy"]
    assert res["psnr"]["mean"] > res["psnr"]["copy"]  # uniform noise: the mean beats a random neighbour


def test_mean_patch_of_images_chunks() -> None:
    rng = np.random.default_rng(4)
    imgs = [(rng.random((32, 32, 3)) * 255).astype(np.uint8) for _ in range(5)]
    full = gq.mean_patch(gq.images_to_patches(imgs, (32, 32), (2, 2)))
    torch.testing.assert_close(gq.mean_patch_of_images(imgs, (32, 32), (2, 2), chunk=2), full)


def test_evaluate_triplets_constant_images() -> None:
    patches = torch.full((2, 16, 3, 12, 12), 0.25)
    res = gq.evaluate_triplets(None, patches, torch.full((3, 12, 12), 0.25), (4, 4))
    assert res["n"] == 64 and "gen" not in res["psnr"]
    assert res["psnr"]["copy"] == pytest.approx(100.0) and res["ssim"]["mean"] == pytest.approx(1.0)


def test_full_grid_predict_matches_forward_and_evaluate_prediction() -> None:
    from patchloupe.models.generator import build_generator
    from patchloupe.train.stage1 import evaluate_prediction

    torch.manual_seed(0)
    gen = build_generator("tiny").eval()
    rng = np.random.default_rng(0)
    img = (rng.random((128, 128, 3)) * 255).astype(np.uint8)
    patches = gq.images_to_patches([img], (128, 128), (4, 4))
    assert patches.shape == (1, 16, 3, 32, 32)
    plan = gq.triplet_plan((4, 4))
    with torch.inference_mode():
        pred, trip = gq.full_grid_predict(gen, patches, plan)
        flat = patches[0]
        col = [i for i, t in enumerate(trip.tolist()) if t == [0, 4, 8]][0]
        direct = gen(flat[None, 0].transpose(-1, -2), flat[None, 4].transpose(-1, -2)).transpose(-1, -2)
    torch.testing.assert_close(pred[col : col + 1], direct.clamp(0, 1), atol=1e-5, rtol=1e-5)
    res = gq.evaluate_triplets(gen, patches, gq.mean_patch(patches), (4, 4))
    ref = evaluate_prediction(gen, [img], image_size=(128, 128), grid=(4, 4), directions=gq.DIRECTIONS)
    assert res["n"] == ref["n"] == 32
    assert res["psnr"]["gen"] == pytest.approx(ref["psnr"], abs=1e-3)
    assert res["psnr"]["copy"] == pytest.approx(ref["psnr_copy"], abs=1e-3)


def test_time_full_grid_tiny() -> None:
    from patchloupe.models.generator import build_generator

    torch.manual_seed(0)
    gen = build_generator("tiny").eval()
    t = gq.time_full_grid(gen, (32, 32), (4, 4), repeats=2, warmup=1, threads=1)
    assert t["targets"] == 32 and t["patches"] == 16 and t["threads"] == 1
    assert 0 < t["sdpa"]["median_ms"] and 0 < t["reference"]["median_ms"] and t["max_abs_diff"] < 1e-4
    assert "| sdpa |" in gq.timing_table(t)


def test_tables_render() -> None:
    row = {"n": 10, "psnr": {"gen": 20.0, "copy": 18.0, "mean": 15.0}, "ssim": {"gen": 0.5, "copy": 0.6, "mean": 0.1}}
    table = gq.quality_table({"cloth": row})
    assert "| cloth | 10 | **20.00** / 18.00 / 15.00 | 0.500 / **0.600** / 0.100 |" in table
    ft = gq.finetune_table(
        {"cloth": {"train_images": 4, "train": {"steps": 3, "wall_s": 1.0}, "before": row, "after": row}}
    )
    assert "20.00 -> 20.00" in ft
