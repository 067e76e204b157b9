"""Generator prediction quality on held-out defect-free images, against two naive baselines.

For every texture family of :mod:`patchloupe.data.textures` (all styles, images from the held-out
evaluation stream the pre-training never drew from) and for the real magnetic-tile ``test/good``
images (when ``../shared/data/magnetic_tile`` exists), every triplet of the inference grid is
predicted the way :class:`patchloupe.detector.Detector` does it: row triplets (``ltr`` + ``rtl``) on
the patches, column triplets (``ttb`` + ``btt``) on the transposed patches, one
``predict_targets`` call each, predictions transposed back. On those triplets the script reports the
mean per-patch PSNR and SSIM (gaussian 11 x 11 window, sigma 1.5, RGB in [0, 1]) of

- ``gen``: the generator's prediction;
- ``copy``: the nearest input patch (``second``) copied as the prediction;
- ``mean``: the per-pixel mean of all grid patches of the family's *training* images (rendered from
  the default pre-training stream with another seed; magnetic tile: ``train/good``).

It then fine-tunes a copy of the generator on one family's training images
(:func:`patchloupe.train.stage1.train_generator`, all four directions, as ``Detector.fit`` does) and
reports held-out PSNR/SSIM before and after, optionally the same on magnetic tile, and times one
full-grid prediction (row + column directions, 1 image) with the ``sdpa`` and ``reference``
attention backends.

Run::

    python benchmarks/generator_quality.py [--generator DIR | --checkpoint DIR] [--out runs/generator_quality.json]
        [--n-per-style 4] [--finetune-family cloth --finetune-steps 300] [--tile-finetune-steps 300]

Prints markdown tables and writes a JSON report. Never copies the magnetic-tile images anywhere.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
MAGNETIC_TILE = REPO_ROOT.parent / "shared/data/magnetic_tile"
DIRECTIONS = ("ltr", "rtl", "ttb", "btt")
BASELINES = ("gen", "copy", "mean")
EVAL_SEED = 0  # held-out images: pretrain_images(..., seed=0, stream=_EVAL_STREAM), as evaluate_families
TRAIN_SEED = 1  # "training" images of a family: default pre-training stream, another seed than pre-training's 0


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def gaussian_kernel1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D gaussian, float64 ``(size,)`` (odd ``size``), as scipy's ``truncate`` radius."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be a positive odd int, got {size}")
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2.0 * sigma**2))
    return k / k.sum()


def _valid_filter_matrix(n: int, win_size: int, sigma: float) -> torch.Tensor:
    """float64 ``(n - win_size + 1, n)`` matrix applying the 1-D gaussian where it fits entirely."""
    k = gaussian_kernel1d(win_size, sigma)
    m = torch.zeros(n - win_size + 1, n, dtype=torch.float64)
    for i in range(m.shape[0]):
        m[i, i : i + win_size] = k
    return m


def ssim(
    x: torch.Tensor, y: torch.Tensor, *, win_size: int = 11, sigma: float = 1.5, data_range: float = 1.0
) -> torch.Tensor:
    """Mean SSIM per image of ``x``, ``y`` float ``(N, C, H, W)`` -> float64 ``(N,)``.

    Wang et al. 2004 with a gaussian window (``win_size`` x ``win_size``, ``sigma``), K1 = 0.01,
    K2 = 0.03, population (co)variances; the SSIM map is taken where the window fits entirely (no
    padding) and averaged over channels and positions. Equals
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)`` for ``win_size=11`` (skimage's
    reflect-padded borders are cropped before it averages).
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"x and y must be (N, C, H, W) of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    n, c, h, w = x.shape
    if h < win_size or w < win_size:
        raise ValueError(f"images of {h}x{w} are smaller than the {win_size}x{win_size} window")
    x, y = x.double(), y.double()
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (N, 5C, H, W)
    # separable "valid" gaussian filtering as two banded matrix products (much faster than a
    # depthwise float64 conv on CPU): out = Gh @ stack @ Gw^T
    out = _valid_filter_matrix(h, win_size, sigma) @ stack @ _valid_filter_matrix(w, win_size, sigma).t()
    mx, my, exx, eyy, exy = out.split(c, dim=1)
    vx, vy, cxy = exx - mx * mx, eyy - my * my, exy - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image of ``x``, ``y`` float ``(N, ...)`` -> float64 ``(N,)`` (MSE floored at 1e-10)."""
    if x.shape != y.shape:
        raise ValueError(f"x and y must have one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-10))


# ---------------------------------------------------------------------------------------------
# patches and triplets (the detector's geometry)
# ---------------------------------------------------------------------------------------------


def images_to_patches(images: Sequence[np.ndarray], image_size: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` (or gray ``(H, W)``) images -> float32 ``(N, rows*cols, 3, ph, pw)`` in [0, 1].

    Each image is resized to ``image_size`` with :func:`patchloupe.preprocess.resize_for_model`.
    """
    from patchloupe.preprocess import image_to_patches, resize_for_model, to_tensor

    if len(images) == 0:
        raise ValueError("no images")
    rgb = [im if im.ndim == 3 else np.repeat(im[:, :, None], 3, axis=2) for im in images]
    stack = np.stack([resize_for_model(im, image_size) for im in rgb])
    return image_to_patches(to_tensor(stack), grid)


def triplet_plan(grid: Sequence[int]) -> list[tuple[torch.Tensor, bool]]:
    """``[(row triplets ltr + rtl, False), (column triplets ttb + btt, True)]`` of a grid.

    Indices are in reading order; ``True`` means the generator runs on transposed patches (the
    detector's column-wise pass). Empty parts (a line shorter than 3 patches) are left out.
    """
    from patchloupe.train.sampling import grid_triplets

    rows, cols = (int(v) for v in grid)
    plan = []
    for dirs, transpose in ((("ltr", "rtl"), False), (("ttb", "btt"), True)):
        trip = torch.cat([grid_triplets(rows, cols, d) for d in dirs])
        if len(trip):
            plan.append((trip, transpose))
    if not plan:
        raise ValueError(f"grid {rows}x{cols} has no triplets")
    return plan


def full_grid_predict(
    generator: nn.Module, patches: torch.Tensor, plan: Sequence[tuple[torch.Tensor, bool]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Detector-style prediction of every planned target of a batch of images.

    ``patches`` float ``(B, P, 3, ph, pw)`` -> ``(pred (N, 3, ph, pw), triplets (N, 3))`` with
    ``triplets`` indexing the flattened ``(B * P)`` patches; predictions are in image orientation.
    """
    b, p = patches.shape[:2]
    flat = patches.reshape(b * p, *patches.shape[2:])
    offsets = (torch.arange(b, dtype=torch.int64) * p)[:, None, None]
    preds, trips = [], []
    for trip, transpose in plan:
        all_trip = (trip[None] + offsets).reshape(-1, 3)
        src = flat.transpose(-1, -2) if transpose else flat
        pred = generator.predict_targets(src.contiguous(), all_trip)
        preds.append(pred.transpose(-1, -2) if transpose else pred)
        trips.append(all_trip)
    return torch.cat(preds).float().clamp(0, 1), torch.cat(trips)


def mean_patch(patches: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean of all patches ``(N, P, 3, ph, pw)`` -> ``(3, ph, pw)``."""
    return patches.reshape(-1, *patches.shape[2:]).double().mean(dim=0).float()


def mean_patch_of_images(
    images: Sequence[np.ndarray], image_size: Sequence[int], grid: Sequence[int], *, chunk: int = 64
) -> torch.Tensor:
    """:func:`mean_patch` of :func:`images_to_patches`, accumulated ``chunk`` images at a time (bounded memory)."""
    total: torch.Tensor | None = None
    count = 0
    for i in range(0, len(images), chunk):
        p = images_to_patches(images[i : i + chunk], image_size, grid)
        flat = p.reshape(-1, *p.shape[2:]).double()
        total = flat.sum(dim=0) if total is None else total + flat.sum(dim=0)
        count += flat.shape[0]
    if total is None:
        raise ValueError("no images")
    return (total / count).float()


@torch.inference_mode()
def evaluate_triplets(
    generator: nn.Module | None,
    patches: torch.Tensor,
    mean: torch.Tensor,
    grid: Sequence[int],
    *,
    batch_images: int = 8,
) -> dict[str, Any]:
    """Mean PSNR / SSIM of the generator (``None``: skipped), copy-nearest and mean-patch predictions.

    ``patches`` ``(N, P, 3, ph, pw)`` held-out images, ``mean`` ``(3, ph, pw)`` -> ``{"n", "psnr":
    {"gen", "copy", "mean"}, "ssim": {...}}`` (``n``: triplets, i.e. predicted patches).
    """
    plan = triplet_plan(grid)
    if generator is not None:
        was_training = generator.training
        generator.eval()
    scores: dict[str, dict[str, list[torch.Tensor]]] = {m: {k: [] for k in BASELINES} for m in ("psnr", "ssim")}
    try:
        for i in range(0, patches.shape[0], batch_images):
            chunk = patches[i : i + batch_images]
            flat = chunk.reshape(-1, *chunk.shape[2:])
            if generator is not None:
                pred, trip = full_grid_predict(generator, chunk, plan)
            else:
                b, p = chunk.shape[:2]
                offsets = (torch.arange(b, dtype=torch.int64) * p)[:, None, None]
                trip = torch.cat([(t[None] + offsets).reshape(-1, 3) for t, _ in plan])
                pred = None
            target = flat[trip[:, 2]]
            cands = {"gen": pred, "copy": flat[trip[:, 1]], "mean": mean[None].expand_as(target)}
            for k, v in cands.items():
                if v is None:
                    continue
                scores["psnr"][k].append(psnr(v, target))
                scores["ssim"][k].append(ssim(v, target))
    finally:
        if generator is not None:
            generator.train(was_training)
    out: dict[str, Any] = {"n": int(torch.cat(scores["psnr"]["copy"]).numel())}
    for m in ("psnr", "ssim"):
        out[m] = {k: round(float(torch.cat(v).mean()), 4) for k, v in scores[m].items() if v}
    return out


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def family_images(family: str, n_per_style: int, image_size: Sequence[int], *, heldout: bool) -> list[np.ndarray]:
    """Defect-free renderings of ``family`` (all styles, no augmentation): held-out (evaluation stream,
    seed 0) or training (default pre-training stream, seed 1)."""
    from patchloupe.train.pretrain import _EVAL_STREAM, pretrain_images

    if heldout:
        return pretrain_images(
            n_per_style, image_size, seed=EVAL_SEED, families=[family], augment=False, stream=_EVAL_STREAM
        )
    return pretrain_images(n_per_style, image_size, seed=TRAIN_SEED, families=[family], augment=False)


def folder_images(folder: Path, limit: int = 0) -> list[np.ndarray]:
    """Read the images of ``folder`` (sorted; the first ``limit`` when > 0) as uint8 RGB arrays."""
    from patchloupe.data import list_images, read_image

    paths = list_images(folder)
    if limit > 0:
        paths = paths[:limit]
    return [read_image(p) for p in paths]


# ---------------------------------------------------------------------------------------------
# generator loading, fine-tuning, timing
# ---------------------------------------------------------------------------------------------


def load_any_generator(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any], str]:
    """``(generator in eval mode, {"image_size", "grid", ...}, description of the source)``."""
    from patchloupe.models.generator import PRESETS, build_generator
    from patchloupe.train.pretrain import default_generator_path, load_default_generator, load_generator

    grid = (4, 4)
    if args.checkpoint:
        from patchloupe.train.checkpoint import CheckpointManager

        gen = build_generator(args.preset)
        ckpt = CheckpointManager(Path(args.checkpoint)).load(model=gen, restore_rng=False)
        ph, pw = PRESETS[args.preset].patch_size
        cfg = {"image_size": [grid[0] * ph, grid[1] * pw], "grid": list(grid), "preset": args.preset}
        return gen.eval(), cfg, f"checkpoint {ckpt.path} (step {ckpt.step}, preset {args.preset})"
    if args.tiny:
        torch.manual_seed(0)
        gen = build_generator("tiny")
        ph, pw = gen.config.patch_size
        cfg = {"image_size": [grid[0] * ph, grid[1] * pw], "grid": list(grid), "preset": "tiny"}
        return gen.eval(), cfg, "randomly initialised tiny generator (smoke test)"
    if args.generator:
        gen, cfg = load_generator(args.generator)
        return gen, cfg, f"load_generator({args.generator})"
    gen, cfg = load_default_generator()
    return gen, cfg, f"load_default_generator() = {default_generator_path()}"


def finetune(
    generator: nn.Module,
    train_images: Sequence[np.ndarray],
    image_size: Sequence[int],
    grid: Sequence[int],
    steps: int,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """A fine-tuned copy of ``generator`` (``train_generator``, all four directions, as ``Detector.fit``)."""
    from patchloupe.train.stage1 import train_generator

    gen = copy.deepcopy(generator).train()
    res = train_generator(
        gen,
        list(train_images),
        image_size=tuple(image_size),
        grid=tuple(grid),
        steps=steps,
        directions=DIRECTIONS,
        progress=False,
        seed=seed,
    )
    return gen.eval(), {"steps": res.steps, "final_loss": round(res.final_loss, 6), "wall_s": round(res.wall_s, 1)}


@torch.inference_mode()
def time_full_grid(
    generator: nn.Module,
    patch_size: Sequence[int],
    grid: Sequence[int],
    *,
    backends: Sequence[str] = ("sdpa", "reference"),
    repeats: int = 20,
    warmup: int = 3,
    threads: int = 2,
) -> dict[str, Any]:
    """Median wall time (ms) of one Detector-style full-grid prediction of one image per backend.

    After ``warmup`` calls per backend, the backends are timed alternately ``repeats`` times each.
    """
    from patchloupe.models.attention import attention_backend

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        rows, cols = (int(v) for v in grid)
        patches = torch.rand(1, rows * cols, 3, *patch_size, generator=g)
        plan = triplet_plan(grid)
        generator.eval()
        load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
        out: dict[str, Any] = {
            "loadavg_before": load,
            "threads": threads,
            "repeats": repeats,
            "warmup": warmup,
            "targets": int(sum(len(t) for t, _ in plan)),
            "patches": rows * cols,
        }
        preds: dict[str, torch.Tensor] = {}
        times: dict[str, list[float]] = {b: [] for b in backends}
        for b in backends:
            with attention_backend(generator, b):
                for _ in range(warmup):
                    full_grid_predict(generator, patches, plan)
        for _ in range(repeats):  # interleaved, so a load change on the shared CPUs hits both backends alike
            for b in backends:
                with attention_backend(generator, b):
                    t0 = time.perf_counter()
                    preds[b] = full_grid_predict(generator, patches, plan)[0]
                    times[b].append((time.perf_counter() - t0) * 1000.0)
        for b in backends:
            out[b] = {
                "median_ms": round(float(np.median(times[b])), 2),
                "min_ms": round(float(np.min(times[b])), 2),
                "max_ms": round(float(np.max(times[b])), 2),
            }
        if len(preds) > 1:
            vals = list(preds.values())
            out["max_abs_diff"] = float(max((v - vals[0]).abs().max() for v in vals[1:]))
        return out
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def _triple(d: dict[str, float], fmt: str) -> str:
    best = max(d, key=d.__getitem__)
    return " / ".join(f"**{d[k]:{fmt}}**" if k == best else f"{d[k]:{fmt}}" for k in BASELINES if k in d)


def quality_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table of :func:`evaluate_triplets` results keyed by row name (best of three in bold)."""
    lines = [
        "| family | n triplets | PSNR dB gen / copy / mean | SSIM gen / copy / mean |",
        "| --- | ---: | --- | --- |",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['n']} | {_triple(r['psnr'], '.2f')} | {_triple(r['ssim'], '.3f')} |")
    return "\n".join(lines)


def finetune_table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| data | train images | steps | fine-tune wall s | n triplets | PSNR dB before -> after | "
        "SSIM before -> after | copy / mean PSNR | copy / mean SSIM |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        b, a = r["before"], r["after"]
        lines.append(
            f"| {name} | {r['train_images']} | {r['train']['steps']} | {r['train']['wall_s']} | {a['n']} | "
            f"{b['psnr']['gen']:.2f} -> {a['psnr']['gen']:.2f} | {b['ssim']['gen']:.3f} -> {a['ssim']['gen']:.3f} | "
            f"{a['psnr']['copy']:.2f} / {a['psnr']['mean']:.2f} | {a['ssim']['copy']:.3f} / {a['ssim']['mean']:.3f} |"
        )
    return "\n".join(lines)


def timing_table(t: dict[str, Any]) -> str:
    lines = ["| backend | median ms | min ms | max ms |", "| --- | ---: | ---: | ---: |"]
    for b in ("sdpa", "reference"):
        if b in t:
            lines.append(f"| {b} | {t[b]['median_ms']} | {t[b]['min_ms']} | {t[b]['max_ms']} |")
    return "\n".join(lines)


def _mean_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "n": int(sum(r["n"] for r in rows)),
        **{m: {k: round(float(np.mean([r[m][k] for r in rows])), 4) for k in BASELINES} for m in ("psnr", "ssim")},
    }


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--generator", default=None, help="folder with generator.safetensors/.json (default: packaged)")
    src.add_argument("--checkpoint", default=None, help="a pre-training checkpoints folder (latest.json) instead")
    src.add_argument("--tiny", action="store_true", help="a randomly initialised tiny generator (smoke test)")
    p.add_argument("--preset", default="edge", help="preset of --checkpoint (default edge)")
    p.add_argument("--out", default="runs/generator_quality.json", help="JSON report path")
    p.add_argument("--n-per-style", type=int, default=4, help="held-out images per family and style (default 4)")
    p.add_argument(
        "--n-train-per-style",
        type=int,
        default=16,
        help="training images per family and style for the mean patch and fine-tuning (default 16)",
    )
    p.add_argument("--families", nargs="+", default=None, help="texture families (default: all)")
    p.add_argument("--tile-limit", type=int, default=0, help="use only the first N magnetic-tile images per split")
    p.add_argument("--no-tile", action="store_true", help="skip the magnetic-tile rows")
    p.add_argument("--finetune-family", default="cloth", help="family to fine-tune on ('none' to skip)")
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--tile-finetune-steps", type=int, default=0, help="also fine-tune on magnetic tile (0 = skip)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for evaluation / fine-tuning (default 1)")
    p.add_argument(
        "--timing-threads", type=int, nargs="+", default=[2], help="torch thread counts to time with (default 2)"
    )
    p.add_argument("--timing-repeats", type=int, default=20)
    p.add_argument("--no-timing", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    from patchloupe.data.textures import FAMILIES

    gen, cfg, source = load_any_generator(args)
    image_size = tuple(int(v) for v in cfg["image_size"])
    grid = tuple(int(v) for v in cfg["grid"])
    print(f"generator: {source}; image {image_size[0]}x{image_size[1]}, grid {grid[0]}x{grid[1]}", flush=True)
    families = list(args.families or FAMILIES)

    quality: dict[str, dict[str, Any]] = {}
    heldout: dict[str, torch.Tensor] = {}
    train_imgs: dict[str, list[np.ndarray]] = {}
    means: dict[str, torch.Tensor] = {}
    for fam in families:
        t0 = time.perf_counter()
        heldout[fam] = images_to_patches(
            family_images(fam, args.n_per_style, image_size, heldout=True), image_size, grid
        )
        train_imgs[fam] = family_images(fam, args.n_train_per_style, image_size, heldout=False)
        means[fam] = mean_patch_of_images(train_imgs[fam], image_size, grid)
        quality[fam] = evaluate_triplets(gen, heldout[fam], means[fam], grid)
        quality[fam]["images"] = int(heldout[fam].shape[0])
        print(f"  {fam}: {quality[fam]} ({time.perf_counter() - t0:.1f} s)", flush=True)
    if len(families) > 1:
        quality["mean (synthetic families)"] = _mean_row([quality[f] for f in families])

    tile_note = None
    tile_train: list[np.ndarray] = []
    if args.no_tile:
        tile_note = "skipped (--no-tile)"
    elif not (MAGNETIC_TILE / "test/good").is_dir() or not (MAGNETIC_TILE / "train/good").is_dir():
        tile_note = f"skipped: {MAGNETIC_TILE} not found"
        print(f"magnetic tile {tile_note}", flush=True)
    else:
        t0 = time.perf_counter()
        tile_test = images_to_patches(folder_images(MAGNETIC_TILE / "test/good", args.tile_limit), image_size, grid)
        tile_train = folder_images(MAGNETIC_TILE / "train/good", args.tile_limit)
        heldout["magnetic_tile"] = tile_test
        means["magnetic_tile"] = mean_patch_of_images(tile_train, image_size, grid)
        r = evaluate_triplets(gen, tile_test, means["magnetic_tile"], grid)
        r["images"] = int(tile_test.shape[0])
        quality["magnetic_tile (test/good)"] = r
        print(f"  magnetic_tile: {r} ({time.perf_counter() - t0:.1f} s)", flush=True)

    ft: dict[str, dict[str, Any]] = {}
    jobs: list[tuple[str, str, list[np.ndarray], int]] = []
    if args.finetune_family != "none" and args.finetune_steps > 0:
        if args.finetune_family not in heldout:
            raise SystemExit(f"--finetune-family {args.finetune_family!r} is not among the evaluated families")
        fam = args.finetune_family
        jobs.append((fam, fam, train_imgs[fam], args.finetune_steps))
    if args.tile_finetune_steps > 0 and tile_train:
        jobs.append(("magnetic_tile (test/good)", "magnetic_tile", tile_train, args.tile_finetune_steps))
    for name, key, imgs, steps in jobs:
        tuned, info = finetune(gen, imgs, image_size, grid, steps)
        after = evaluate_triplets(tuned, heldout[key], means[key], grid)
        row = quality[name] if name in quality else quality[key]
        ft[name] = {"train_images": len(imgs), "train": info, "before": row, "after": after}
        print(f"  fine-tuned {name}: {info}; after {after}", flush=True)
        del tuned

    timing: list[dict[str, Any]] = []
    if not args.no_timing:
        patch = tuple(d // g for d, g in zip(image_size, grid, strict=True))
        for n_threads in args.timing_threads:
            timing.append(time_full_grid(gen, patch, grid, repeats=args.timing_repeats, threads=n_threads))

    wall = time.perf_counter() - t_start
    print()
    print(quality_table(quality))
    if tile_note:
        print(f"\nmagnetic tile: {tile_note}")
    if ft:
        print()
        print(finetune_table(ft))
    for t in timing:
        print(
            f"\nfull-grid prediction, 1 image, {t['patches']} patches, {t['targets']} targets, "
            f"{t['threads']} threads, median of {t['repeats']} (interleaved) after {t['warmup']} warm-up, "
            f"load average before {t['loadavg_before']}:"
        )
        print(timing_table(t))
        print(f"max |sdpa - reference| = {t.get('max_abs_diff', float('nan')):.2e}")
    print(f"\nwall time {wall:.1f} s")

    report = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(["python", __file__, *argv]),
        "torch": torch.__version__,
        "threads": args.threads,
        "timing_threads": args.timing_threads,
        "cpu_count": os.cpu_count(),
        "loadavg": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "generator": {
            "source": source,
            "image_size": list(image_size),
            "grid": list(grid),
            "preset": cfg.get("preset"),
            "training_steps": cfg.get("training", {}).get("steps"),
        },
        "data": {
            "heldout": f"pretrain_images(n={args.n_per_style}, seed={EVAL_SEED}, augment=False, "
            "stream=_EVAL_STREAM) per family, all styles; magnetic_tile test/good",
            "train": f"pretrain_images(n={args.n_train_per_style}, seed={TRAIN_SEED}, augment=False) "
            "per family; magnetic_tile train/good",
            "magnetic_tile": tile_note or str(MAGNETIC_TILE),
        },
        "metrics": "mean per-patch PSNR (dB) and SSIM (gaussian 11x11, sigma 1.5, RGB [0,1]) over all grid "
        "triplets, directions ltr+rtl (rows) and ttb+btt (columns, transposed patches)",
        "quality": quality,
        "finetune": ft,
        "timing": timing,
        "wall_s": round(wall, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
