"""Build the built-in pattern model (the paper's method) from a pre-trained generator.

Stage 2 on generic generated textures: the comparator learns to tell the frozen generator's
predictions from real patches carrying synthetic defects (all families and styles, all four
directions), then the threshold is calibrated on freshly rendered defect-free textures that neither
stage saw. The result is a regular model folder (``detector.json`` + safetensors), the one shipped in
``patchloupe/weights/pattern`` (``default_model_dir("pattern")``): the base that ``Detector.fit(scorer="pattern")``
fine-tunes. The built-in default model (``Detector.load()``) is ``patchloupe.train.default_selfref``'s.

    python -m patchloupe.train.default_detector --generator runs/pretrain_edge --out sdk/patchloupe/weights/pattern
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from patchloupe.config import DetectorConfig
from patchloupe.detector import Detector
from patchloupe.grid import DIRECTIONS
from patchloupe.models.comparator import ComparatorConfig, PatternComparator
from patchloupe.scorers.pattern import PatternConfig, PatternScorer
from patchloupe.train.pretrain import _EVAL_STREAM, load_generator, pretrain_images
from patchloupe.train.stage2 import train_comparator

log = logging.getLogger(__name__)


def build_default_detector(
    generator_dir: str | Path,
    out_dir: str | Path,
    *,
    comparator_steps: int = 1500,
    batch_size: int = 32,
    n_images_per_family_style: int = 16,
    n_calibration_per_family_style: int = 4,
    false_alarm_rate: float = 0.01,
    seed: int = 0,
    progress: bool = True,
    weights_dtype: torch.dtype = torch.float16,
) -> Detector:
    """Train the generic comparator on top of ``generator_dir``'s generator, calibrate, save to ``out_dir``."""
    t0 = time.perf_counter()
    generator, gcfg = load_generator(generator_dir)
    image_size = tuple(gcfg.get("image_size", (256, 256)))
    grid = tuple(gcfg.get("grid", (4, 4)))
    images = pretrain_images(n_images_per_family_style, image_size, seed=seed + 11)
    comparator = PatternComparator(ComparatorConfig())
    result = train_comparator(
        comparator,
        generator,
        images,
        image_size=image_size,
        grid=grid,
        steps=comparator_steps,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        directions=DIRECTIONS,
        precompute=2048,
    )
    comparator.eval()
    config = DetectorConfig(image_size=image_size, grid=grid, false_alarm_rate=false_alarm_rate)
    det = Detector(PatternScorer(generator, comparator, image_size, grid, PatternConfig(directions=DIRECTIONS)), config)
    calib = pretrain_images(
        n_calibration_per_family_style, image_size, seed=seed + 23, stream=_EVAL_STREAM, augment=False
    )
    det.calibrate(calib, false_alarm_rate)
    config.training = {
        "kind": "default",
        "generator": gcfg.get("training", {}),
        "comparator_steps": comparator_steps,
        "comparator_final_loss": float(result.final_loss),
        "n_images": len(images),
        "n_calibration": len(calib),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    det.save(out_dir, weights_dtype=weights_dtype)  # other files in out_dir (e.g. generator.json) are kept
    log.info("default detector written to %s (threshold %.4g)", out_dir, det.threshold)
    return det


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", required=True, help="folder with generator.safetensors + generator.json")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--images", type=int, default=16, help="training textures per family and style")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    det = build_default_detector(
        args.generator,
        args.out,
        comparator_steps=args.steps,
        batch_size=args.batch_size,
        n_images_per_family_style=args.images,
        seed=args.seed,
        progress=not args.no_progress,
    )
    log.info("%r", det)
    return 0


if __name__ == "__main__":
    sys.exit(main())
