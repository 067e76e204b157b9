"""Build the built-in default model: the self-reference scorer with no memory to speak of (zero-shot).

``Detector.load()`` must work on a surface it has never seen, so the built-in model scores each position by
its distance to the most similar positions of its *own* image (``SelfRefConfig(combine="self")``, see
``patchloupe.scorers.selfref``): no training image of the user's surface is needed. Generated textures (every
family and style, ``patchloupe.train.pretrain.pretrain_images``) set only what zero-shot scoring still needs:
the per-position scale of the self-reference (border positions find fewer matches), the score scale and the
threshold, calibrated on freshly rendered textures that the fit did not see. The feature memory is kept
minimal (the scorer needs one; ``combine="self"`` never reads it). The result is a regular model folder, the
one shipped in ``patchloupe/weights/selfref`` and returned by ``Detector.load()``.

    python -m patchloupe.train.default_selfref --out sdk/patchloupe/weights/selfref
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from patchloupe.config import DetectorConfig
from patchloupe.detector import Detector
from patchloupe.fit import MEMORY_GRID, split_holdout
from patchloupe.scorers.selfref import SelfRefConfig, fit_selfref
from patchloupe.train.pretrain import _EVAL_STREAM, pretrain_images

log = logging.getLogger(__name__)

__all__ = ["build_default_selfref"]


def build_default_selfref(
    out_dir: str | Path | None = None,
    *,
    images: Sequence[np.ndarray] | None = None,
    n_images_per_family_style: int = 6,
    n_calibration_per_family_style: int = 4,
    image_size: tuple[int, int] = (256, 256),
    false_alarm_rate: float = 0.01,
    coreset_fraction: float = 0.01,
    seed: int = 5,
    progress: bool = False,
    weights_dtype: torch.dtype = torch.float16,
) -> Detector:
    """Fit the zero-shot self-reference model on generated textures (every family and style,
    ``n_images_per_family_style`` each) or on ``images`` (RGB uint8, e.g. a subset of styles for a held-out
    measurement), calibrate it on ``n_calibration_per_family_style`` other generated textures of every style
    (with ``images``: on the fit's held-out fifth of them) and save it to ``out_dir`` (not saved when None);
    returns the detector."""
    t0 = time.perf_counter()
    far = false_alarm_rate
    generated = images is None
    if images is None:
        images = pretrain_images(n_images_per_family_style, image_size, seed=seed)
    train, hold = split_holdout(list(images), 0.2, seed)
    cfg = SelfRefConfig(combine="self", lighting_copies=0)
    scorer, hold_scores, record = fit_selfref(
        train, hold, image_size, MEMORY_GRID, coreset_fraction=coreset_fraction, seed=seed, progress=progress,
        config=cfg,
    )  # fmt: skip
    config = DetectorConfig(image_size=image_size, grid=MEMORY_GRID, false_alarm_rate=far, scorer="selfref")
    det = Detector(scorer, config)
    if generated:
        calib = pretrain_images(
            n_calibration_per_family_style, image_size, seed=seed + 23, stream=_EVAL_STREAM, augment=False
        )
        det.calibrate(calib, far)
    else:
        det.calibrate_from_scores(hold_scores, far)
    config.training = {
        "kind": "default-selfref",
        "n_images": len(images),
        "n_calibration": int(config.calibration["n_images"]),
        **record,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    if out_dir is not None:
        det.save(out_dir, weights_dtype=weights_dtype)
        log.info("default self-reference model written to %s (threshold %.4g)", out_dir, det.threshold)
    return det


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=6, help="generated textures per family and style")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    det = build_default_selfref(args.out, n_images_per_family_style=args.images, seed=args.seed)
    log.info("%r", det)
    return 0


if __name__ == "__main__":
    sys.exit(main())
