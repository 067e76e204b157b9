"""Build the built-in default model: the self-reference scorer with no memory to speak of (zero-shot).

``Detector.load()`` must work on a surface it has never seen, so the built-in model scores each position by
its distance to the most similar positions of its *own* image (``SelfRefConfig(combine="self")``, see
``patchloupe.scorers.selfref``): no training image of the user's surface is needed. Generated textures (every
family and style, ``patchloupe.train.pretrain.pretrain_images``) set only what zero-shot scoring still needs:
the per-position scale of the self-reference (border positions find fewer matches), the score scale and the
threshold, calibrated on freshly rendered textures that the fit did not see, and the gain a stream pool
(``Detector.load().pooled()``) puts on its maps so that the same threshold holds there
(:func:`calibrate_pool_gain`). The feature memory is kept minimal (the scorer needs one; ``combine="self"`` never
reads it). The result is a regular model folder, the one shipped in ``patchloupe/weights/selfref`` and returned by
``Detector.load()``.

    python -m patchloupe.train.default_selfref --out sdk/patchloupe/weights/selfref
    python -m patchloupe.train.default_selfref --pool-gain-only --out sdk/patchloupe/weights/selfref
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from patchloupe.calibration import threshold_from_scores
from patchloupe.config import DetectorConfig
from patchloupe.detector import Detector
from patchloupe.fit import MEMORY_GRID, split_holdout
from patchloupe.scorers.selfref import SelfRefConfig, fit_selfref
from patchloupe.train.pretrain import _EVAL_STREAM, pretrain_images

log = logging.getLogger(__name__)

__all__ = ["build_default_selfref", "calibrate_pool_gain", "pool_streams"]

#: bounds of the pool gain's search (a gain outside them means the pooled scores are unlike the plain ones)
_GAIN_RANGE = (1.0 / 16.0, 16.0)


def pool_streams(n_per_family_style: int, image_size: tuple[int, int], seed: int) -> list[list[np.ndarray]]:
    """Streams of generated good images for :func:`calibrate_pool_gain`: one per (family, style), ``n_per_family_style``
    images each, rendered from the evaluation stream (never a pre-training image) with ``seed``."""
    flat = pretrain_images(n_per_family_style, image_size, seed=seed, stream=_EVAL_STREAM, augment=False)
    return [flat[i : i + n_per_family_style] for i in range(0, len(flat), n_per_family_style)]


def calibrate_pool_gain(
    det: Detector, streams: Sequence[Sequence[np.ndarray]], false_alarm_rate: float | None = None
) -> tuple[float, dict[str, Any]]:
    """The ``pool_gain`` of a zero-shot self-reference model (``combine="self"``): each stream of good images is
    inspected in order by a fresh ``det.pooled()``; the images scored with a pool (all but each stream's first) give
    scores ``1 - exp(-u)``, and the gain ``g`` is the one at which ``1 - exp(-g u)`` calibrates
    (``threshold_from_scores`` at ``false_alarm_rate``, default the model's) to ``det.threshold``: with it the pooled
    detector keeps the plain one's operating point (every image joins the pool here, flagged or not: the gain does
    not depend on the threshold it is calibrated to). Returns the gain (``det`` is not changed) and a record."""
    if getattr(det.scorer.config, "combine", None) != "self":
        raise ValueError("the pool gain is calibrated for a zero-shot self-reference model (combine='self')")
    far = det.config.false_alarm_rate if false_alarm_rate is None else false_alarm_rate
    current = float(det.scorer.config.pool_gain)
    u: list[float] = []
    for stream in streams:
        pooled = det.pooled(admit_flagged=True)  # every image joins: the gain must not depend on the threshold
        scores = [r.score for r in pooled.inspect_many(list(stream), keep_image=False, on_error="raise")]
        u += [-math.log1p(-min(s, 1.0 - 1e-7)) / current for s in scores[1:]]  # at gain 1
    if len(u) < 2:
        raise ValueError(f"the pool gain needs streams of 2 or more images ({len(u)} pooled image(s) given)")
    ua = np.asarray(u)

    def threshold_at(gain: float) -> float:
        return threshold_from_scores(-np.expm1(-gain * ua), far)[0]

    lo, hi = _GAIN_RANGE
    if not threshold_at(lo) <= det.threshold <= threshold_at(hi):
        log.warning("pool gain: the threshold %.4g is out of reach within %s; clamped", det.threshold, _GAIN_RANGE)
    for _ in range(60):  # the calibrated threshold grows with the gain
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if threshold_at(mid) < det.threshold else (lo, mid)
    gain = math.sqrt(lo * hi)
    record = {"n_streams": len(streams), "n_pooled_images": len(u), "false_alarm_rate": far, "gain": gain,
              "threshold_at_gain_1": threshold_at(1.0), "threshold": det.threshold}  # fmt: skip
    log.info("pool gain %.4g (%d pooled images; threshold at gain 1 %.4g)", gain, len(u), record["threshold_at_gain_1"])
    return gain, record


def build_default_selfref(
    out_dir: str | Path | None = None,
    *,
    images: Sequence[np.ndarray] | None = None,
    n_images_per_family_style: int = 6,
    n_calibration_per_family_style: int = 4,
    image_size: tuple[int, int] = (256, 256),
    false_alarm_rate: float = 0.01,
    coreset_fraction: float = 0.01,
    n_pool_per_family_style: int = 17,
    streams: Sequence[Sequence[np.ndarray]] | None = None,
    seed: int = 5,
    progress: bool = False,
    weights_dtype: torch.dtype = torch.float16,
) -> Detector:
    """Fit the zero-shot self-reference model on generated textures (every family and style,
    ``n_images_per_family_style`` each) or on ``images`` (RGB uint8, e.g. a subset of styles for a held-out
    measurement), calibrate it on ``n_calibration_per_family_style`` other generated textures of every style
    (with ``images``: on the fit's held-out fifth of them), set its ``pool_gain`` (:func:`calibrate_pool_gain`) on
    ``streams`` (each a sequence of good images of one surface; by default generated, ``n_pool_per_family_style``
    images per style, and with ``images`` none, which leaves the gain at 1) and save it to ``out_dir`` (not saved
    when None); returns the detector."""
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
    if generated and streams is None:
        streams = pool_streams(n_pool_per_family_style, image_size, seed + 29)
    pool = None
    if streams is not None:
        scorer.config.pool_gain, pool = calibrate_pool_gain(det, streams, far)
    else:
        log.info("no streams of good images: the pool gain stays 1")
    config.training = {
        "kind": "default-selfref",
        "n_images": len(images),
        "n_calibration": int(config.calibration["n_images"]),
        **record,
        "pool_gain": pool,
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
    p.add_argument("--pool-gain-only", action="store_true", help="only calibrate the pool gain of the model in --out")
    p.add_argument("--pool-images", type=int, default=17, help="generated images per family and style and pool stream")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pool_gain_only:
        det = Detector.load(args.out)
        streams = pool_streams(args.pool_images, tuple(det.config.image_size), args.seed + 29)
        gain, pool = calibrate_pool_gain(det, streams)
        det.scorer.config.pool_gain = gain
        det.config.training = {**(det.config.training or {}), "pool_gain": pool}
        det.save(args.out, weights_dtype=torch.float16)
        log.info("pool gain %.4g written to %s", gain, args.out)
        return 0
    det = build_default_selfref(
        args.out, n_images_per_family_style=args.images, n_pool_per_family_style=args.pool_images, seed=args.seed
    )
    log.info("%r", det)
    return 0


if __name__ == "__main__":
    sys.exit(main())
