"""Detection benchmark (issue: the detector): fit + evaluate on held-out data the model never saw.

Sections (each can be run alone):
  families   fit on each generated family's train/good, evaluate on its test split
  shift      texture change: fit on style A, evaluate on style B of the same family, vs. fitting on B
  default    the built-in models (default zero-shot selfref, pattern) with no fitting, on generated styles
             and magnetic tile
  tile       ../shared/data/magnetic_tile (skipped cleanly when absent): fit on train/good, evaluate
  cost       fit wall time on N images and inspect latency (median, batch 1, 2 threads) per preset
  choice     which scorer Detector.fit(scorer="auto") picks per family and for magnetic tile (no fitting)

Usage:
  python benchmarks/detection.py --sections families,shift,default,tile,cost --out runs/detection.json
  python benchmarks/detection.py --scorer memory --sections tile,shift   # the feature-memory scorer
Results are appended as JSON; paste the tables printed at the end into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TILE = ROOT.parent / "shared" / "data" / "magnetic_tile"
log = logging.getLogger("bench.detection")


def _metrics(res: dict[str, Any]) -> dict[str, Any]:
    keys = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "n_images", "latency_ms_median")
    return {k: res.get(k) for k in keys}


def _cat(data: Path, fam: str, style: int) -> Path:
    """Folder that ``generate_dataset`` writes for a family in a style."""
    return data / (fam if style == 0 else f"{fam}_style{style}")


def _fit(train_dir: Path, args: argparse.Namespace, **kw: Any) -> Any:
    from patchloupe import Detector

    t0 = time.perf_counter()
    det = Detector.fit(
        train_dir,
        generator_steps=args.generator_steps,
        comparator_steps=args.comparator_steps,
        progress=False,
        seed=args.seed,
        scorer=args.scorer,
        **kw,
    )
    det.config.training["bench_fit_wall_s"] = round(time.perf_counter() - t0, 1)
    return det


def section_families(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    from patchloupe.data import FAMILIES, generate_dataset

    fams = args.families.split(",") if args.families else list(FAMILIES)
    generate_dataset(
        data,
        families=fams,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_defect_per_kind=args.n_test_defect,
        size=256,
        seed=args.seed,
        style=0,
    )
    rows = []
    for fam in fams:
        det = _fit(_cat(data, fam, 0) / "train" / "good", args)
        res = det.evaluate(_cat(data, fam, 0))
        rows.append(
            {
                "family": fam,
                "grid": list(det.config.grid),
                "fit_s": det.config.training["bench_fit_wall_s"],
                **_metrics(res),
            }
        )
        log.info("families %s", rows[-1])
    return rows


def section_shift(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    from patchloupe.data.dataset import generate_dataset

    rows = []
    for fam in args.shift_families.split(","):
        for style in (0, 1):
            generate_dataset(
                data,
                families=[fam],
                n_train=args.n_train,
                n_test_good=args.n_test_good,
                n_test_defect_per_kind=args.n_test_defect,
                size=256,
                seed=args.seed + style,
                style=style,
            )
        src = _fit(_cat(data, fam, 0) / "train" / "good", args)
        tgt = _fit(_cat(data, fam, 1) / "train" / "good", args)
        shifted = _metrics(src.evaluate(_cat(data, fam, 1)))
        same = _metrics(tgt.evaluate(_cat(data, fam, 1)))
        rows.append(
            {
                "family": fam,
                "fit_on": "style0",
                "eval_on": "style1",
                "shifted": shifted,
                "same_style": same,
                "image_auroc_drop": (same["image_auroc"] or 0) - (shifted["image_auroc"] or 0),
            }
        )
        log.info("shift %s", rows[-1])
    return rows


def section_default(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    from patchloupe import Detector
    from patchloupe.data import FAMILIES, generate_dataset
    from patchloupe.persistence import BUILTIN_MODELS, default_model_dir

    models = {name: Detector.load(default_model_dir(name)) for name in BUILTIN_MODELS}
    rows = []
    style = args.unseen_style
    fams = args.families.split(",") if args.families else list(FAMILIES)
    generate_dataset(
        data / "unseen",
        families=fams,
        n_train=0,
        n_test_good=args.n_test_good,
        n_test_defect_per_kind=args.n_test_defect,
        size=256,
        seed=args.seed + 100,
        style=style,
    )
    for name, det in models.items():
        for fam in fams:
            res = det.evaluate(_cat(data / "unseen", fam, style))
            rows.append({"model": name, "data": f"{fam}/style{style}", **_metrics(res)})
        if TILE.is_dir():
            rows.append({"model": name, "data": "magnetic_tile", **_metrics(det.evaluate(TILE))})
    return rows


def section_tile(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    if not TILE.is_dir():
        log.warning("magnetic_tile not found at %s: skipped", TILE)
        return []
    det = _fit(TILE / "train" / "good", args)
    res = det.evaluate(TILE)
    return [
        {
            "data": "magnetic_tile",
            "grid": list(det.config.grid),
            "fit_s": det.config.training["bench_fit_wall_s"],
            **_metrics(res),
            "threshold": det.threshold,
            "tp": res.get("tp"),
            "fp": res.get("fp"),
            "tn": res.get("tn"),
            "fn": res.get("fn"),
        }
    ]


def section_choice(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    """What ``scorer="auto"`` picks for each generated family (style 0) and magnetic tile, without fitting."""
    from patchloupe import Detector
    from patchloupe.data import FAMILIES, generate_dataset
    from patchloupe.fit import choose_scorer, collect_images, split_holdout
    from patchloupe.persistence import default_model_dir

    fams = args.families.split(",") if args.families else list(FAMILIES)
    generate_dataset(data, families=fams, n_train=args.n_train, n_test_good=args.n_test_good,
                     n_test_defect_per_kind=args.n_test_defect, size=256, seed=args.seed, style=0)  # fmt: skip
    base = Detector.load(default_model_dir("pattern"))
    folders = [(fam, _cat(data, fam, 0) / "train" / "good") for fam in fams]
    if TILE.is_dir():
        folders.append(("magnetic_tile", TILE / "train" / "good"))
    rows = []
    for name, folder in folders:
        _, hold = split_holdout(collect_images(folder), 0.2, args.seed)
        scorer, ratios, _ = choose_scorer(base.scorer.generator, hold, base.config.image_size)
        rows.append({"data": name, "scorer": scorer, "prediction_error_ratio": ratios})
        log.info("choice %s", rows[-1])
    return rows


def section_cost(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    from patchloupe import Detector
    from patchloupe.data.dataset import generate_dataset

    torch.set_num_threads(2)
    generate_dataset(
        data / "cost",
        families=["cloth"],
        n_train=args.cost_images,
        n_test_good=2,
        n_test_defect_per_kind=1,
        size=256,
        seed=args.seed,
        style=0,
    )
    train_dir = data / "cost" / "cloth" / "train" / "good"
    det = _fit(train_dir, args, grid=(4, 4))
    img = np.asarray(__import__("cv2").imread(str(next(train_dir.iterdir()))))[..., ::-1].copy()
    for _ in range(3):
        det.inspect(img)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        det.inspect(img)
        times.append((time.perf_counter() - t0) * 1000)
    default = Detector.load()  # the built-in default model
    dtimes = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        default.inspect(img)
        dtimes.append((time.perf_counter() - t0) * 1000)
    return [
        {
            "what": f"fit on {args.cost_images} images (256x256)",
            "wall_s": det.config.training["bench_fit_wall_s"],
            "generator_steps": args.generator_steps,
            "comparator_steps": args.comparator_steps,
        },
        {"what": "inspect 256x256, batch 1, 2 threads, fitted model", "median_ms": statistics.median(times)},
        {"what": "inspect 256x256, batch 1, 2 threads, default model", "median_ms": statistics.median(dtimes)},
    ]


SECTIONS = {
    "families": section_families,
    "shift": section_shift,
    "default": section_default,
    "tile": section_tile,
    "cost": section_cost,
    "choice": section_choice,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="families,shift,default,tile,cost")
    p.add_argument("--families", default=None, help="comma-separated generated families (default: all)")
    p.add_argument("--shift-families", default="cloth,mesh")
    p.add_argument("--unseen-style", type=int, default=1)
    p.add_argument("--n-train", type=int, default=60)
    p.add_argument("--n-test-good", type=int, default=20)
    p.add_argument("--n-test-defect", type=int, default=6)
    p.add_argument("--cost-images", type=int, default=200)
    p.add_argument("--generator-steps", type=int, default=300)
    p.add_argument("--comparator-steps", type=int, default=400)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=str(ROOT / "runs" / "bench_data"))
    p.add_argument("--out", default=str(ROOT / "runs" / "detection.json"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--scorer", choices=("pattern", "memory", "auto"), default="pattern", help="Detector.fit's scorer argument"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(out_path.read_text()) if out_path.is_file() else {}
    record["machine"] = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": args.threads,
        "date": date.today().isoformat(),
    }
    for section in args.sections.split(","):
        name = section if args.scorer == "pattern" else f"{section}_{args.scorer}"
        t0 = time.perf_counter()
        record[name] = {
            "rows": SECTIONS[section](args, data),
            "wall_s": round(time.perf_counter() - t0, 1),
            "args": vars(args),
        }
        out_path.write_text(json.dumps(record, indent=2, default=str))
        print(f"== {name} ({record[name]['wall_s']} s)")
        for row in record[name]["rows"]:
            print(json.dumps(row, default=str))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
