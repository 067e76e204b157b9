"""Ablation of the memory scorer on an MVTec-layout category (default: ../shared/data/magnetic_tile).

For each backbone the training features are extracted once; for each way of choosing the memory
(greedy coreset or uniform random share) the nearest-neighbour distances of the test images are
computed once; each blur sigma then gives image AUROC (max of the blurred map), pixel AUROC and AUPRO
(maps resized to each image's original size).

With ``--context TAPS`` (e.g. ``4,10,13``) it instead builds the product's two memories
(``FeatureMemory.build``: the fine memory of ``taps`` and a PCA-projected context memory of TAPS, EfficientNet-Lite0)
and reports, per sigma, the fine map alone, the context map alone and the product's map (the fine
map rescaled to the context map's maximum).

Usage:
  python benchmarks/memory_ablation.py --out runs/memory_ablation.json
  python benchmarks/memory_ablation.py --context 4,10,13 --sigmas 8 --out runs/memory_context.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from patchloupe.scorers.memory import FeatureMemory

ROOT = Path(__file__).resolve().parents[1]
TILE = ROOT.parent / "shared" / "data" / "magnetic_tile"


def main(argv: list[str] | None = None) -> int:
    from patchloupe.data.mvtec import MVTecCategory
    from patchloupe.models.backbone import load_backbone
    from patchloupe.preprocess import load_rgb
    from patchloupe.scorers.memory import FeatureMemory, MemoryConfig, _gaussian_blur, greedy_coreset

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(TILE))
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--backbones", default="mobilenet_v2,efficientnet_lite0")
    p.add_argument("--sampling", default="greedy,random")
    p.add_argument("--sigmas", default="4,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--context", default="", help="context taps: evaluate the product's fine + context memories")
    p.add_argument("--context-dim", type=int, default=128)
    p.add_argument("--context-pool", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "runs" / "memory_ablation.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    if not root.is_dir():
        print(f"{root} not found: nothing to do", file=sys.stderr)
        return 0
    size = (args.image_size, args.image_size)
    cat = MVTecCategory(root)
    train = [load_rgb(f) for f in cat.train_good()]
    tests = cat.test_items()
    labels = np.array([t.label for t in tests], dtype=bool)
    test_images = [load_rgb(t.path) for t in tests]
    masks = [cat.load_mask(t, im.shape[:2]) > 0 for t, im in zip(tests, test_images)]
    rows = []
    if args.context:
        rows = _context_rows(args, size, train, test_images, labels, masks)
    for backbone in [] if args.context else args.backbones.split(","):
        cfg = MemoryConfig(backbone=backbone, context_taps=())  # the fine memory alone
        trunk = load_backbone(None, cfg.taps, backbone)
        mem = FeatureMemory(cfg, None, trunk)

        t0 = time.perf_counter()
        ftr = _features(mem, train, size)
        allf = ftr.permute(0, 2, 3, 1).reshape(-1, ftr.shape[1])
        fte = _features(mem, test_images, size)
        n = round(args.fraction * allf.shape[0])
        print(f"{backbone}: {allf.shape[0]} training vectors, {time.perf_counter() - t0:.0f} s", flush=True)
        for sampling in args.sampling.split(","):
            t0 = time.perf_counter()
            if sampling == "greedy":
                idx = greedy_coreset(allf, n)
            else:
                idx = torch.randperm(allf.shape[0], generator=torch.Generator().manual_seed(0))[:n]
            mem.bank = allf[idx].clone()
            t_bank = time.perf_counter() - t0
            d = torch.cat([mem.nearest(fte[i : i + 8]) for i in range(0, len(fte), 8)])  # (N, h, w)
            up = F.interpolate(d[:, None], size=size, mode="bilinear")
            for sigma in (float(v) for v in args.sigmas.split(",")):
                bl = _gaussian_blur(up, sigma)[:, 0].numpy()
                row = {
                    "backbone": backbone,
                    "sampling": sampling,
                    "fraction": args.fraction,
                    "memory": int(n),
                    "blur_sigma": sigma,
                    **_scores(bl, labels, masks),
                    "bank_s": round(t_bank, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"image_size": size, "rows": rows}, indent=2))
    return 0


def _context_rows(
    args: argparse.Namespace,
    size: tuple[int, int],
    train: list[np.ndarray],
    test_images: list[np.ndarray],
    labels: np.ndarray,
    masks: list[np.ndarray],
) -> list[dict]:
    """Fine map, context map and the product's rescaled map of ``FeatureMemory.build`` on all ``train``."""
    from patchloupe.preprocess import resize_for_model
    from patchloupe.scorers.memory import FeatureMemory, MemoryConfig, to_batch

    taps = tuple(int(t) for t in args.context.split(","))
    rows = []
    for sigma in (float(v) for v in args.sigmas.split(",")):
        cfg = MemoryConfig(coreset_fraction=args.fraction, blur_sigma=sigma, context_taps=taps,
                           context_dim=args.context_dim, context_pool=args.context_pool)  # fmt: skip
        t0 = time.perf_counter()
        mem = FeatureMemory.build(train, size, cfg, seed=0)
        t_build = time.perf_counter() - t0
        fine, ctx, prod = [], [], []
        for i in range(0, len(test_images), 8):
            x = to_batch([resize_for_model(im, size) for im in test_images[i : i + 8]])
            f, c = mem._tap_features(x)
            fine.append(mem._blurred(mem.nearest(f), size))
            ctx.append(mem._blurred(mem.nearest(mem._project(c), bank=mem.context_bank), size))
            prod.append(mem.raw_map(x))
        for name, maps_t in (("fine", fine), ("context", ctx), ("product", prod)):
            row = {
                "map": name,
                "taps": list(cfg.taps),
                "context_taps": list(taps),
                "context_dim": args.context_dim,
                "context_pool": args.context_pool,
                "fraction": args.fraction,
                "memory": [int(mem.bank.shape[0]), int(mem.context_bank.shape[0])],
                "blur_sigma": sigma,
                **_scores(torch.cat(maps_t).numpy(), labels, masks),
                "build_s": round(t_build, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _scores(bl: np.ndarray, labels: np.ndarray, masks: list[np.ndarray]) -> dict[str, float]:
    """Image AUROC (map maximum), pixel AUROC and AUPRO of maps ``(N, H, W)`` resized to each mask's size."""
    import cv2
    from patchloupe.metrics import aupro, image_auroc, pixel_auroc

    maps = [cv2.resize(bl[i], (m.shape[1], m.shape[0])) for i, m in enumerate(masks)]
    return {
        "image_auroc": image_auroc(labels, bl.reshape(len(bl), -1).max(1)),
        "pixel_auroc": pixel_auroc(masks, maps),
        "aupro": aupro(masks, maps),
    }


def _features(mem: FeatureMemory, images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """Locally aggregated features ``(N, C, h, w)`` of RGB uint8 images resized to ``size``."""
    from patchloupe.preprocess import resize_for_model
    from patchloupe.scorers.memory import to_batch

    batches = [images[i : i + 16] for i in range(0, len(images), 16)]
    return torch.cat([mem.features(to_batch([resize_for_model(im, size) for im in b])) for b in batches])


if __name__ == "__main__":
    sys.exit(main())
