"""How the self-reference's position normalisation ranks images with no fitting at all (issue 11).

The self-reference of an image (``patchloupe.scorers.selfref.self_distances`` divided by its image median) is
higher near the borders, most of all near the corners: the trunk's zero padding changes features there, so those
cells find fewer matches in their own image. This script scores the generated test sets by the self-reference
alone (no memory, no fitted scale: what an image of a surface the fit never saw gets), normalised for position in
one of these ways:

- ``none``: not at all;
- ``bands``: each outer band of one cell divided by its own median when above 1 (``border_normalize``, the
  normalisation of the fitted surface's images);
- ``classes-D``: each cell divided by the median of its position class, classes up to ``D`` cells deep
  (``class_normalize``, ``SelfRefConfig.position_classes``; the default is 8).

Image AUROC (the peak of the upsampled, blurred map, as the scorer takes it) and pixel AUROC per test set. The test
sets are ``robustness.py``'s (run ``robustness.py --medium`` once to write them).

Usage:
  python benchmarks/selfref_positions.py --data runs/robust_data/medium --out runs/selfref_positions.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("selfref_positions")


def test_sets(data: Path, lighting: bool) -> list[Path]:
    """The MVTec-layout sets under ``data`` (``FAMILY`` and ``FAMILY_style1``; with ``lighting`` also
    ``lighting/FAMILY_KIND``) that have a test folder."""
    sets = sorted(p for p in data.iterdir() if (p / "test").is_dir())
    if lighting and (data / "lighting").is_dir():
        sets += sorted(p for p in (data / "lighting").iterdir() if (p / "test").is_dir())
    return sets


def features_of(folder: Path, memory: Any, size: tuple[int, int]) -> dict[str, Any]:
    """The trunk features of ``memory`` (the default scorer's: flat field, EfficientNet-Lite0 stride 8 + 16,
    ``(N, C, h, w)``), labels and masks (at ``size``) of a set's test images."""
    from patchloupe.data import MVTecCategory, read_image
    from patchloupe.preprocess import resize_for_model
    from patchloupe.scorers.memory import to_batch

    cat = MVTecCategory(folder)
    feats, labels, masks = [], [], []
    with torch.inference_mode():
        for item in cat.test_items():
            im = read_image(item.path)
            feats.append(memory.features(to_batch([resize_for_model(im, size)]))[0])
            labels.append(int(item.label))
            m = cat.load_mask(item).astype(np.uint8)
            masks.append(cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0)
    return {"f": torch.stack(feats), "y": np.array(labels), "mask": np.stack(masks)}


def normalised(s: torch.Tensor, how: str) -> torch.Tensor:
    """``s`` ``(N, h, w)`` divided by its image median -> normalised for position as ``how`` says."""
    from patchloupe.scorers.selfref import border_normalize, class_normalize

    if how == "none":
        return s
    if how == "bands":
        return border_normalize(s, 1)
    return class_normalize(s, int(how.split("-")[1]))


def evaluate(feats: dict[str, Any], ways: list[str], size: tuple[int, int]) -> dict[str, dict[str, float]]:
    """Image and pixel AUROC of the self-reference alone, normalised each way."""
    from patchloupe.metrics import image_auroc, pixel_auroc
    from patchloupe.scorers.memory import MemoryConfig, upsample_blur_matrix
    from patchloupe.scorers.selfref import SelfRefConfig, self_distances

    cfg = SelfRefConfig()
    s = self_distances(feats["f"].float(), cfg.k, cfg.exclude)
    s = s / s.flatten(1).median(dim=1).values.clamp_min(1e-6)[:, None, None]
    sigma = float(MemoryConfig().blur_sigma)
    a_h = upsample_blur_matrix(int(s.shape[1]), size[0], sigma)
    a_w = upsample_blur_matrix(int(s.shape[2]), size[1], sigma)
    out = {}
    for how in ways:
        maps = (a_h @ normalised(s, how) @ a_w.T).numpy()
        out[how] = {
            "image_auroc": image_auroc(feats["y"], maps.reshape(len(maps), -1).max(1)),
            "pixel_auroc": pixel_auroc(feats["mask"], maps),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "runs" / "robust_data" / "medium"))
    p.add_argument("--depths", default="3,5,7,8,9,11,15", help="the classes-D depths to compare")
    p.add_argument("--no-lighting", action="store_true", help="leave out the relit test sets")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "runs" / "selfref_positions.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    data, size = Path(args.data), (256, 256)
    if not data.is_dir():
        sys.exit(f"no test sets at {data}: run `python benchmarks/robustness.py --medium --sections generated` first")
    ways = ["none", "bands"] + [f"classes-{int(d)}" for d in args.depths.split(",")]
    from patchloupe.scorers.memory import MemoryConfig
    from patchloupe.scorers.selfref import SelfRefConfig, _build_memory

    memory = _build_memory(MemoryConfig(), SelfRefConfig())  # the default scorer's trunk, built once
    rows: dict[str, Any] = {}
    t0 = time.perf_counter()
    for folder in test_sets(data, not args.no_lighting):
        name = str(folder.relative_to(data))
        rows[name] = evaluate(features_of(folder, memory, size), ways, size)
        log.info("%s: %s", name, {k: round(v["image_auroc"], 3) for k, v in rows[name].items()})
    groups = {"texture": [k for k in rows if not k.startswith("lighting/")],
              "lighting": [k for k in rows if k.startswith("lighting/")]}  # fmt: skip
    summary = {
        g: {
            how: {m: round(float(np.mean([rows[k][how][m] for k in keys])), 4) for m in ("image_auroc", "pixel_auroc")}
            | {"min_image_auroc": round(float(min(rows[k][how]["image_auroc"] for k in keys)), 4)}
            for how in ways
        }
        for g, keys in groups.items()
        if keys
    }
    record = {"args": vars(args), "rows": rows, "summary": summary, "wall_s": round(time.perf_counter() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    lines = [
        "| test sets | normalisation | mean image AUROC | min image AUROC | mean pixel AUROC |",
        "|---|---|---|---|---|",
    ]
    for g, by in summary.items():
        for how, v in by.items():
            lines.append(f"| {g} ({len(groups[g])}) | {how} | {v['image_auroc']:.3f} | {v['min_image_auroc']:.3f} | "
                         f"{v['pixel_auroc']:.3f} |")  # fmt: skip
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
