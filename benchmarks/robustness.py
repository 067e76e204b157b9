"""Robustness benchmark (issue 11, targets 1-6): every scorer beside a plain PatchCore, in one run.

Targets measured (per scorer):
  1 texture change   fit on style A, evaluate on style B of the same family, both directions (0 <-> 1), against
                     fitting on B: image and pixel AUROC drop <= 2 points
  2 lighting change  fit on defect-free images, evaluate on the test images changed by a global gain (0.6-1.6),
                     a gamma (0.7-1.4) or a smooth linear illumination gradient (x0.7-1.3 .. x0.6-1.4 across the
                     image, random direction), each kind separately: image AUROC drop <= 2 points
  3 real surfaces    magnetic tile (../shared/data/magnetic_tile): image AUROC >= 0.985, pixel >= 0.87, and
                     >= PatchCore + 2 points image AUROC, >= its pixel AUROC
  4 families fitted  fit on each family's style 0: image >= 0.99, pixel >= 0.98
  5 held-out styles  (section "heldout") fitted once on style 0 of every family with two styles, evaluated on
                     their style 1: image >= 0.95; ``builtin-heldout`` is the built-in default model's recipe
                     built from those style-0 images only (the held-out measurement of ``Detector.load()``),
                     beside the shipped built-in models (not held out); ``builtin-heldout-pool`` and
                     ``builtin-pool`` add a stream pool (``Detector.pooled()``, file order), ``-pool-cal`` calibrates
                     that pooled detector on 20 freshly rendered good images of the evaluated style first,
                     ``-pool-primed`` after 16 more have filled its pool
  6 operating point  at the calibrated threshold: realised false-alarm rate and recall against the best recall
                     at that rate (``evaluate``'s operating point), worst case per scorer

Scorers: ``selfref`` (patchloupe.scorers.selfref) and its variants ``selfref-<name>`` (VARIANTS below),
``memory``, ``pattern`` (``Detector.fit`` with ``--pattern-steps``), ``patchcore`` (benchmarks/patchcore.py:
MobileNetV2, 10 % greedy coreset, no extras) and ``selfref-pool`` (the ``selfref`` fit with ``Detector.pooled()``,
a fresh stream pool per test set, inspected in file order; ``pooled_share``: the share of images the pool rule
scored; ``selfref-pool-c50`` averages the closest half of the pool: POOLS below). Every model is fitted once per
training set and evaluated on all its test sets, so the fits are shared between targets 1, 2 and 4.

Usage:
  python benchmarks/robustness.py --quick --out runs/robustness_quick.json
  python benchmarks/robustness.py --medium --sections generated --scorers selfref,memory,patchcore --out runs/rm.json
  python benchmarks/robustness.py --sections tile --out runs/robustness_tile.json
  python benchmarks/robustness.py --quick --sections heldout --scorers selfref,memory --out runs/heldout.json
Lighting-changed test sets are written beside the generated data (images only; masks are linked).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TILE = ROOT.parent / "shared" / "data" / "magnetic_tile"
log = logging.getLogger("bench.robustness")

#: selfref variants measured beside the default (``SelfRefConfig`` overrides)
VARIANTS: dict[str, dict[str, Any]] = {
    "selfref": {},
    "selfref-logplane": {"normalize": "logplane"},
    "selfref-nonorm": {"normalize": "none"},
    "selfref-level": {"fit_level": True},
    "selfref-noclip": {"clip_margin": 1.0},
    "selfref-min": {"combine": "min"},
    "selfref-nocopies": {"lighting_copies": 0},
    "selfref-grow": {"copies_grow_memory": True},
    "selfref-mnv2": {"memory": {"backbone": "mobilenet_v2", "context_taps": (6, 13, 16)}},
    "selfref-mnv2-noctx": {"memory": {"backbone": "mobilenet_v2", "context_taps": ()}},
    "selfref-mean": {"combine": "mean"},
    "selfref-self": {"combine": "self"},
    "selfref-memory": {"combine": "memory"},
    "selfref-k1": {"k": 1},
    "selfref-k32": {"k": 32},
    "selfref-bands": {"position_classes": 0},
    "selfref-ex3": {"exclude": 3},
    "selfref-blur4": {"memory": {"blur_sigma": 4.0}},
    "selfref-blur6": {"memory": {"blur_sigma": 6.0}},
    "selfref-q50": {"gate_quantile": 0.5},
    "selfref-q10": {"gate_quantile": 0.1},
    "selfref-nocap": {"clip_cells": 1.0},
}
#: stream-pool variants (``Detector.pooled`` options) of the ``selfref`` fit
POOLS: dict[str, dict[str, Any]] = {"selfref-pool": {}, "selfref-pool-c50": {"closest": 0.5}}
LIGHTING = ("gain", "gamma", "gradient")
KEYS = (
    "image_auroc", "pixel_auroc", "aupro", "f1_max", "n_images", "latency_ms_median", "tp", "fp", "tn", "fn",
    "realised_false_alarm_rate", "recall_at_threshold", "best_recall_at_that_false_alarm_rate", "pooled_share",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------- models
@dataclass
class _Result:
    ok: bool
    score: float
    anomaly_map: np.ndarray
    timings_ms: dict[str, float]
    error: str | None = None


class PatchCoreInspector:
    """benchmarks/patchcore.py's ``PatchCore`` behind the ``evaluate_detector`` protocol (threshold: +inf)."""

    threshold = float("inf")

    def __init__(self, images: list[np.ndarray], seed: int) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from patchcore import PatchCore

        self.pc = PatchCore(seed=seed).fit(images, (256, 256))

    def inspect_many(self, images: Iterable[Any], batch_size: int = 8, keep_image: bool = False) -> Iterator[Any]:
        from patchloupe.data import read_image

        for path in images:
            img = read_image(path)
            t0 = time.perf_counter()
            s, m = self.pc.predict([img])
            amap = cv2.resize(m[0], (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
            yield _Result(True, float(s[0]), amap, {"total": 1000 * (time.perf_counter() - t0)})

    def evaluate(self, folder: Path) -> dict[str, Any]:
        from patchloupe.evaluate import evaluate_detector

        return evaluate_detector(self, folder)


def fit_model(name: str, train_dir: Path | list[np.ndarray], args: argparse.Namespace) -> Any:
    """A fitted model (anything with ``evaluate(folder)``) for scorer ``name`` on the images of ``train_dir`` (a
    folder or the images themselves)."""
    from patchloupe import Detector
    from patchloupe.fit import collect_images

    images = collect_images(train_dir)
    if args.max_train and len(images) > args.max_train:
        order = np.random.default_rng(args.seed).permutation(len(images))[: args.max_train]
        images = [images[i] for i in sorted(order)]
    if name == "patchcore":
        return PatchCoreInspector(images, args.seed)
    if name in ("memory", "pattern"):
        steps = dict(zip(("generator_steps", "comparator_steps"), args.pattern_steps))
        return Detector.fit(images, scorer=name, seed=args.seed, progress=False, **steps)
    if name in VARIANTS:
        det = _fit_selfref(images, VARIANTS[name], args.seed)
        if name == "selfref" and isinstance(train_dir, Path):
            _FITTED[(str(train_dir), len(images), args.seed)] = det
        return det
    if name in POOLS:
        key = (str(train_dir), len(images), args.seed) if isinstance(train_dir, Path) else None
        det = _FITTED.get(key) if key else None
        if det is None:
            det = _fit_selfref(images, {}, args.seed)
        return PooledInspector(det, POOLS[name])
    raise ValueError(f"unknown scorer {name!r}")


class PooledInspector:
    """The default ``selfref`` detector with a stream pool (``Detector.pooled()``), a fresh pool per evaluated
    folder: each test set is one stream, inspected in its file order (defects of one kind in a run)."""

    def __init__(self, det: Any, options: dict[str, Any]) -> None:
        self.det, self.options = det, options

    def evaluate(self, folder: Path) -> dict[str, Any]:
        pooled = self.det.pooled(**self.options)
        self.prepare(pooled, folder)
        res = pooled.evaluate(folder)
        stats = pooled.scorer.stats()
        res["pooled_share"] = round(stats["pooled"] / max(stats["seen"], 1), 3)
        return res

    def prepare(self, pooled: Any, folder: Path) -> None:
        """Anything to do with a fresh pooled detector before it evaluates ``folder`` (nothing here)."""


class CalibratedPool(PooledInspector):
    """:class:`PooledInspector` whose pooled detector is first calibrated (``Detector.calibrate``) on ``n`` freshly
    rendered defect-free images of the evaluated folder's family and style (a user's few dozen good parts; the
    pool then starts from them), after ``prime`` more have filled its pool (0: the first calibration images are
    scored with a short pool or none)."""

    def __init__(self, det: Any, options: dict[str, Any], n: int = 20, prime: int = 0, seed: int = 1000) -> None:
        super().__init__(det, options)
        self.n, self.prime, self.seed = n, prime, seed

    def prepare(self, pooled: Any, folder: Path) -> None:
        from patchloupe.data import render_texture

        fam, _, style = folder.name.partition("_style")
        good = [render_texture(fam, (256, 256), rng=self.seed + i, style=int(style or 0))
                for i in range(self.prime + self.n)]  # fmt: skip
        for _ in pooled.inspect_many(good[: self.prime], keep_image=False):
            pass
        pooled.calibrate(good[self.prime :])


#: default selfref fits by training folder, shared by ``selfref`` and ``selfref-pool`` in one run
_FITTED: dict[tuple[str, int, int], Any] = {}


def _fit_selfref(images: list[np.ndarray], overrides: dict[str, Any], seed: int) -> Any:
    """``Detector.fit(images, scorer="selfref")`` with ``SelfRefConfig`` overrides (same steps as ``fit``); the
    overrides' ``"memory"`` entry, if any, holds ``MemoryConfig`` overrides."""
    from patchloupe import Detector
    from patchloupe.calibration import threshold_from_scores
    from patchloupe.config import DetectorConfig
    from patchloupe.fit import MEMORY_GRID, split_holdout
    from patchloupe.scorers.memory import MemoryConfig
    from patchloupe.scorers.selfref import SelfRefConfig, fit_selfref

    overrides = dict(overrides)
    memory = overrides.pop("memory", None)
    mcfg = MemoryConfig(coreset_fraction=0.1, **memory) if memory is not None else None
    train, hold = split_holdout(images, 0.2, seed)
    size = (256, 256)
    scorer, scores, record = fit_selfref(
        train, hold, size, MEMORY_GRID, coreset_fraction=0.1, seed=seed, progress=False,
        config=SelfRefConfig(**overrides), memory_config=mcfg,
    )  # fmt: skip
    threshold, calibration = threshold_from_scores(scores, 0.01)
    config = DetectorConfig(image_size=size, grid=MEMORY_GRID, threshold=threshold, scorer=scorer.name,
                            calibration=calibration, training=record)  # fmt: skip
    return Detector(scorer, config)


# ------------------------------------------------------------------------------------------------ data
def _cat(data: Path, fam: str, style: int) -> Path:
    return data / (fam if style == 0 else f"{fam}_style{style}")


def lighting_copy(src: Path, dst: Path, kind: str, seed: int) -> Path:
    """``src``'s test images changed by one lighting ``kind`` (a random strength per image) under ``dst``;
    ground truth and train are symbolic links to ``src``'s. Idempotent."""
    from patchloupe.data import read_image, write_image

    marker = dst / ".done"
    if marker.is_file():
        return dst
    rng = np.random.default_rng(seed)
    for sub in ("ground_truth", "train"):
        if (src / sub).exists() and not (dst / sub).exists():
            dst.mkdir(parents=True, exist_ok=True)
            (dst / sub).symlink_to((src / sub).resolve(), target_is_directory=True)
    for path in sorted((src / "test").glob("*/*")):
        x = read_image(path).astype(np.float64) / 255.0
        if kind == "gain":
            y = x * rng.uniform(0.6, 1.6)
        elif kind == "gamma":
            y = x ** rng.uniform(0.7, 1.4)
        else:
            h, w = x.shape[:2]
            a, t = rng.uniform(0.3, 0.4), rng.uniform(0, 2 * np.pi)
            yy, xx = np.mgrid[0:h, 0:w]
            ramp = (np.cos(t) * (xx / max(1, w - 1) - 0.5) + np.sin(t) * (yy / max(1, h - 1) - 0.5)) * 2.0
            y = x * (1.0 + a * ramp / np.abs(ramp).max())[..., None]
        out = dst / "test" / path.parent.name / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        write_image(out.with_suffix(".png"), np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8))
    marker.write_text(kind)
    return dst


def tile_subset(dst: Path, n_train: int, n_good: int, n_per_kind: int, seed: int) -> Path:
    """A seeded subset of magnetic tile under ``dst`` made of symbolic links (no image is copied)."""
    if (dst / ".done").is_file():
        return dst
    rng = np.random.default_rng(seed)

    def pick(folder: Path, n: int) -> list[Path]:
        files = sorted(folder.iterdir())
        return [files[i] for i in sorted(rng.permutation(len(files))[:n])]

    links = [(p, dst / "train" / "good" / p.name) for p in pick(TILE / "train" / "good", n_train)]
    links += [(p, dst / "test" / "good" / p.name) for p in pick(TILE / "test" / "good", n_good)]
    for kind_dir in sorted((TILE / "test").iterdir()):
        if kind_dir.name == "good":
            continue
        for p in pick(kind_dir, n_per_kind):
            links.append((p, dst / "test" / kind_dir.name / p.name))
            mask = TILE / "ground_truth" / kind_dir.name / f"{p.stem}_mask.png"
            links.append((mask, dst / "ground_truth" / kind_dir.name / mask.name))
    for src, link in links:
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(src.resolve())
    (dst / ".done").write_text("ok")
    return dst


def _metrics(res: dict[str, Any]) -> dict[str, Any]:
    return {k: res.get(k) for k in KEYS}


# -------------------------------------------------------------------------------------------- sections
def section_generated(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    """Targets 1, 2 and 4 on generated families (fits shared between them)."""
    from patchloupe.data import generate_dataset

    fams = args.families.split(",")
    shift = set(args.shift_families.split(","))
    light = set(args.lighting_families.split(","))
    gen = dict(n_train=args.n_train, n_test_good=args.n_test_good, n_test_defect_per_kind=args.n_test_defect,
               size=256, seed=args.seed)  # fmt: skip
    rows = []
    for fam in fams:
        generate_dataset(data, families=[fam], style=0, **gen)
        if fam in shift:
            generate_dataset(data, families=[fam], style=1, **gen)
        lit = {k: lighting_copy(_cat(data, fam, 0), data / "lighting" / f"{fam}_{k}", k, args.seed) for k in LIGHTING}
        for name in args.scorers.split(","):
            t0 = time.perf_counter()
            m0 = fit_model(name, _cat(data, fam, 0) / "train" / "good", args)
            fit_s = round(time.perf_counter() - t0, 1)
            evals = [("style0", "style0", "none", m0, _cat(data, fam, 0))]
            if fam in light:
                evals += [("style0", "style0", k, m0, lit[k]) for k in LIGHTING]
            if fam in shift:
                m1 = fit_model(name, _cat(data, fam, 1) / "train" / "good", args)
                evals += [
                    ("style1", "style1", "none", m1, _cat(data, fam, 1)),
                    ("style0", "style1", "none", m0, _cat(data, fam, 1)),
                    ("style1", "style0", "none", m1, _cat(data, fam, 0)),
                ]
            for fit_on, eval_on, change, model, folder in evals:
                rows.append({"data": fam, "scorer": name, "fit_on": fit_on, "eval_on": eval_on, "change": change,
                             "fit_s": fit_s, **_metrics(model.evaluate(folder))})  # fmt: skip
                log.info("%s", rows[-1])
    return rows


def section_tile(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    """Target 3 (and target 2 on tile with ``--tile-lighting``)."""
    if not TILE.is_dir():
        log.warning("magnetic_tile not found at %s: skipped", TILE)
        return []
    folder = TILE
    if args.quick:
        folder = tile_subset(data / "tile_quick", args.tile_quick[0], args.tile_quick[1], args.tile_quick[2], args.seed)
    rows = []
    lit = {}
    if args.tile_lighting:
        lit = {k: lighting_copy(folder, data / "lighting" / f"tile_{k}{'_quick' * args.quick}", k, args.seed)
               for k in LIGHTING}  # fmt: skip
    for name in args.scorers.split(","):
        t0 = time.perf_counter()
        model = fit_model(name, folder / "train" / "good", args)
        fit_s = round(time.perf_counter() - t0, 1)
        for change, f in [("none", folder), *lit.items()]:
            res = _metrics(model.evaluate(f))
            rows.append({"data": "magnetic_tile" + "_quick" * args.quick, "scorer": name, "fit_on": "train",
                         "eval_on": "test", "change": change, "fit_s": fit_s, **res})  # fmt: skip
            log.info("%s", rows[-1])
    return rows


def section_heldout(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    """Target 5 (no fitting on the evaluated style): every scorer but patchcore fitted once on style 0 of every
    family together (``--n-train`` images each), ``builtin-heldout`` (the built-in default model's recipe,
    ``patchloupe.train.default_selfref``, built from those style-0 images only: the held-out measurement of
    ``Detector.load()``), and the shipped built-in models ``builtin`` (``Detector.load()``) and
    ``builtin-pattern``, which saw every style in pre-training (their rows are not held out); each evaluated on
    style 1 of every family."""
    from patchloupe import Detector
    from patchloupe.data import FAMILIES, STYLES, generate_dataset
    from patchloupe.fit import collect_images
    from patchloupe.persistence import default_model_dir
    from patchloupe.train.default_selfref import build_default_selfref

    def model_for(name: str, train: list[Any]) -> Any:
        base, _, pool = name.partition("-pool")
        if base in ("builtin-heldout", "builtin") and name != base:  # the zero-shot model with a stream pool
            det = model_for(base, train)
            pools = {"": lambda: PooledInspector(det, {}), "-cal": lambda: CalibratedPool(det, {}),
                     "-primed": lambda: CalibratedPool(det, {}, prime=16)}  # fmt: skip
            if pool not in pools:
                raise ValueError(f"unknown scorer {name!r}")
            return pools[pool]()
        if name == "builtin-heldout":  # its pool gain from streams of the style-0 training images, one per family
            return build_default_selfref(images=train, seed=args.seed, streams=streams)
        if name.startswith("builtin"):
            return Detector.load(default_model_dir("pattern" if name == "builtin-pattern" else "selfref"))
        return fit_model(name, train, args)

    fams = [f for f in FAMILIES if len(STYLES[f]) > 1]
    gen = dict(n_test_good=args.n_test_good, n_test_defect_per_kind=args.n_test_defect, size=256, seed=args.seed)
    generate_dataset(data / "heldout", families=fams, style=0, n_train=args.n_train, **{**gen, "n_test_good": 1,
                     "n_test_defect_per_kind": 0})  # fmt: skip
    generate_dataset(data / "heldout", families=fams, style=1, n_train=0, **gen)
    streams = [collect_images(data / "heldout" / f / "train" / "good") for f in fams]
    train = [im for stream in streams for im in stream]
    rows = []
    builtins = ["builtin-heldout", "builtin", "builtin-pattern"]
    for name in [n for n in args.scorers.split(",") if n != "patchcore"] + builtins:
        t0 = time.perf_counter()
        model = model_for(name, train)
        fit_s = round(time.perf_counter() - t0, 1)
        for fam in fams:
            rows.append({"data": fam, "scorer": name, "fit_on": "all-style0", "eval_on": "style1", "change": "heldout",
                         "fit_s": fit_s, **_metrics(model.evaluate(data / "heldout" / f"{fam}_style1"))})  # fmt: skip
            log.info("%s", rows[-1])
    return rows


# --------------------------------------------------------------------------------------------- summary
def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per scorer: the worst case of each target (drops in AUROC points)."""
    out: dict[str, dict[str, Any]] = {}
    by = {(r["data"], r["scorer"], r["fit_on"], r["eval_on"], r["change"]): r for r in rows}
    pc = {r["data"]: r for r in rows if r["scorer"] == "patchcore" and r["change"] == "none" and "tile" in r["data"]}
    for (data, sc, fit_on, eval_on, change), r in by.items():
        s = out.setdefault(sc, {})
        if "tile" in data and change == "none":
            s["t3_tile_image"], s["t3_tile_pixel"] = r["image_auroc"], r["pixel_auroc"]
            if data in pc:
                s["t3_vs_patchcore_image_pts"] = round(100 * (r["image_auroc"] - pc[data]["image_auroc"]), 1)
                s["t3_vs_patchcore_pixel_pts"] = round(100 * (r["pixel_auroc"] - pc[data]["pixel_auroc"]), 1)
        if fit_on != eval_on:  # target 1: against the model fitted on the evaluation style
            same = by.get((data, sc, eval_on, eval_on, "none"))
            if same:
                for m in ("image", "pixel"):
                    d = round(100 * (same[f"{m}_auroc"] - r[f"{m}_auroc"]), 1)
                    key = f"t1_worst_{m}_drop_pts"
                    s[key] = max(s.get(key, -1e9), d)
        if change == "heldout":  # target 5
            s["t5_min_image"] = min(s.get("t5_min_image", 1.0), r["image_auroc"])
            continue
        if r.get("realised_false_alarm_rate") is not None and change == "none":  # target 6, worst case
            s["t6_worst_far"] = max(s.get("t6_worst_far", 0.0), r["realised_false_alarm_rate"])
            gap = round(100 * (r["best_recall_at_that_false_alarm_rate"] - r["recall_at_threshold"]), 1)
            s["t6_worst_recall_gap_pts"] = max(s.get("t6_worst_recall_gap_pts", -1e9), gap)
        if change != "none":  # target 2
            base = by.get((data, sc, fit_on, eval_on, "none"))
            if base:
                d = round(100 * (base["image_auroc"] - r["image_auroc"]), 1)
                s["t2_worst_image_drop_pts"] = max(s.get("t2_worst_image_drop_pts", -1e9), d)
        if "tile" not in data and fit_on == eval_on == "style0" and change == "none":  # target 4
            s["t4_min_image"] = min(s.get("t4_min_image", 1.0), r["image_auroc"])
            s["t4_min_pixel"] = min(s.get("t4_min_pixel", 1.0), r["pixel_auroc"])
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per evaluation (data, fit style, test style, lighting change), image / pixel AUROC per scorer."""
    scorers = list(dict.fromkeys(r["scorer"] for r in rows))
    cells: dict[tuple, dict[str, str]] = {}
    for r in rows:
        key = (r["data"], r["fit_on"], r["eval_on"], r["change"])
        cells.setdefault(key, {})[r["scorer"]] = f"{r['image_auroc']:.3f} / {r['pixel_auroc']:.3f}"
    out = ["| data | fit on | test on | change | " + " | ".join(scorers) + " |", "|---" * (4 + len(scorers)) + "|"]
    for key, c in cells.items():
        out.append("| " + " | ".join(key) + " | " + " | ".join(c.get(sc, "-") for sc in scorers) + " |")
    return "\n".join(out)


SECTIONS = {"generated": section_generated, "tile": section_tile, "heldout": section_heldout}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small subsets (see the defaults it sets below)")
    p.add_argument("--medium", action="store_true",
                   help="all families at 40 train / 20 good + 4 per defect kind (one misranked pair = 0.25 points); "
                        "the tile section and the pattern scorer's steps as --quick")  # fmt: skip
    p.add_argument("--sections", default="generated,tile,heldout")
    p.add_argument("--scorers", default="selfref,selfref-min,memory,pattern,patchcore")
    p.add_argument("--families", default=None, help="default: all (quick: cloth,mesh,metal)")
    p.add_argument("--shift-families", default=None, help="default: all (quick: cloth,mesh)")
    p.add_argument("--lighting-families", default=None, help="default: all (quick: cloth,metal)")
    p.add_argument("--n-train", type=int, default=None, help="default 60 (quick 20)")
    p.add_argument("--n-test-good", type=int, default=None, help="default 10 (quick 6)")
    p.add_argument("--n-test-defect", type=int, default=None, help="per kind; default 4 (quick 2)")
    p.add_argument("--max-train", type=int, default=0, help="fit on at most N training images (0: all)")
    p.add_argument("--tile-quick", type=int, nargs=3, default=(120, 40, 12), metavar=("TRAIN", "GOOD", "PER_KIND"))
    p.add_argument("--tile-lighting", action="store_true", help="also target 2 on magnetic tile")
    p.add_argument("--pattern-steps", type=int, nargs=2, default=None, help="default 300 400 (quick 100 150)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=str(ROOT / "runs" / "robust_data"))
    p.add_argument("--out", default=str(ROOT / "runs" / "robustness.json"))
    args = p.parse_args(argv)
    from patchloupe.data import FAMILIES

    m = args.medium
    q = args.quick = args.quick or m
    small = q and not m
    args.families = args.families or ("cloth,mesh,metal" if small else ",".join(FAMILIES))
    args.shift_families = args.shift_families or ("cloth,mesh" if small else ",".join(FAMILIES))
    args.lighting_families = args.lighting_families or ("cloth,metal" if small else ",".join(FAMILIES))
    args.n_train = args.n_train or (40 if m else 20 if q else 60)
    args.n_test_good = args.n_test_good or (20 if m else 6 if q else 10)
    args.n_test_defect = args.n_test_defect or (4 if m else 2 if q else 4)
    args.pattern_steps = tuple(args.pattern_steps or ((100, 150) if q else (300, 400)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    data = Path(args.data) / ("medium" if m else "quick" if q else "full")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads,
                    "date": date.today().isoformat()},
        "args": vars(args),
        "rows": [],
    }  # fmt: skip
    t0 = time.perf_counter()
    for section in args.sections.split(","):
        record["rows"] += SECTIONS[section](args, data)
        record["summary"] = summarise(record["rows"])
        record["wall_s"] = round(time.perf_counter() - t0, 1)
        out_path.write_text(json.dumps(record, indent=2, default=str))
    sys.stdout.write(markdown(record["rows"]) + "\n\n" + json.dumps(record["summary"], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
