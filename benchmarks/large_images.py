"""Large images and line-scan strips: squashed (resize) vs windowed input policy, and cost vs pixels.

    python benchmarks/large_images.py [--n 6] [--threads 1] [--out runs/large_images.json]

Accuracy: generated cloth strips of 4096 x 256 px with one small defect each (about 10-40 px across)
against good strips, inspected by the built-in default model with ``input_policy`` "resize" (every strip
squashed to 256 x 256) and "auto" (windows at the pixel scale of the training textures): image and
pixel AUROC. Cost: median ``inspect`` time of the windowed policy at scale 1 for 256², 1024², 4096 x 256
and 2448 x 2048 inputs, and its slope in ms per megapixel.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from patchloupe import Detector
from patchloupe.data import make_defect, render_texture
from patchloupe.metrics import image_auroc, pixel_auroc
from patchloupe.windows import InputPolicy

log = logging.getLogger("large_images")


def strips(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """``n`` good and ``n`` defective cloth strips (4096 x 256) with their masks and labels."""
    rng = np.random.default_rng(seed)
    images, masks, labels = [], [], []
    for i in range(2 * n):
        img = render_texture("cloth", (256, 4096), rng, style=0)
        mask = np.zeros(img.shape[:2], bool)
        if i >= n:  # a small defect in a 256 x 256 region somewhere along the strip
            x0 = int(rng.integers(0, 4096 - 256))
            crop, m = make_defect(img[:, x0 : x0 + 256].copy(), "hole", rng, area=(0.002, 0.01))
            img[:, x0 : x0 + 256] = crop
            mask[:, x0 : x0 + 256] = m
        images.append(img)
        masks.append(mask)
        labels.append(int(i >= n))
    return images, masks, labels


def accuracy(det: Detector, images: list, masks: list, labels: list) -> dict:
    out = {}
    for mode in ("resize", "auto"):
        det.config.input_policy = InputPolicy(mode=mode)
        t0 = time.perf_counter()
        res = [det.inspect(im, keep_image=False) for im in images]
        out[mode] = {
            "image_auroc": round(float(image_auroc(np.array(labels), np.array([r.score for r in res]))), 4),
            "pixel_auroc": round(float(pixel_auroc(masks, [r.anomaly_map for r in res])), 4),
            "ms_per_strip": round(1000 * (time.perf_counter() - t0) / len(images), 1),
        }
        log.info("%s: %s", mode, out[mode])
    return out


def cost(det: Detector, repeats: int = 3) -> dict:
    det.config.input_policy = InputPolicy(mode="windows", scale=1.0)
    rng = np.random.default_rng(1)
    out = {}
    for h, w in ((256, 256), (1024, 1024), (256, 4096), (2048, 2448)):
        img = render_texture("cloth", (h, w), rng)
        det.inspect(img, keep_image=False)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            det.inspect(img, keep_image=False)
            times.append(1000 * (time.perf_counter() - t0))
        out[f"{w}x{h}"] = {"megapixels": round(h * w / 1e6, 3), "ms_median": round(float(np.median(times)), 1)}
        log.info("%dx%d: %s", w, h, out[f"{w}x{h}"])
    mp = np.array([v["megapixels"] for v in out.values()])
    ms = np.array([v["ms_median"] for v in out.values()])
    out["slope_ms_per_megapixel"] = round(float(np.polyfit(mp, ms, 1)[0]), 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=6, help="good and defective strips each")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="runs/large_images.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    from patchloupe.persistence import default_model_dir

    det = Detector.load(default_model_dir("pattern"))  # the model the figures in docs/benchmarks.md were measured on
    result = {"accuracy": accuracy(det, *strips(args.n)), "cost": cost(det, args.repeats), "threads": args.threads}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    log.info("%s", json.dumps(result))


if __name__ == "__main__":
    main()
