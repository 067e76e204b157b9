"""Export + runtimes benchmark for docs/benchmarks.md (issue 12): ``patchloupe.benchmark`` on the built-in
pattern model (generated sample data) and on a memory model fitted on 60 magnetic tiles (a test subset).

    OMP_NUM_THREADS=2 python benchmarks/export_runtimes.py --tiles ../shared/data/magnetic_tile --out /tmp/bench

Writes ``OUT/<model>/benchmark.json`` and prints the markdown tables. Nothing is copied into the repo:
the tile subset is a folder of symbolic links under OUT.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch
from patchloupe import Detector
from patchloupe.benchmark import FORMATS, run_benchmark, to_markdown
from patchloupe.data import list_images, read_image


def tile_subset(root: Path, out: Path, n_good: int = 30, per_kind: int = 6) -> Path:
    """An MVTec-layout category of symbolic links: ``n_good`` good and ``per_kind`` of each defect kind."""
    cat = out / "magnetic_tile_subset"
    for split in (root / "test").iterdir():
        n = n_good if split.name == "good" else per_kind
        dst = cat / "test" / split.name
        dst.mkdir(parents=True, exist_ok=True)
        for p in list_images(split)[:n]:
            if not (dst / p.name).exists():
                (dst / p.name).symlink_to(p.resolve())
            if split.name != "good":
                gt = root / "ground_truth" / split.name / f"{p.stem}_mask.png"
                gdst = cat / "ground_truth" / split.name
                gdst.mkdir(parents=True, exist_ok=True)
                if gt.exists() and not (gdst / gt.name).exists():
                    (gdst / gt.name).symlink_to(gt.resolve())
    good = cat / "train" / "good"
    good.mkdir(parents=True, exist_ok=True)
    for p in list_images(root / "train" / "good")[60:76]:  # calibration images for int8, not in the memory
        if not (good / p.name).exists():
            (good / p.name).symlink_to(p.resolve())
    return cat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", default="../shared/data/magnetic_tile")
    ap.add_argument("--out", default="/tmp/bench_export")
    ap.add_argument("--formats", nargs="+", default=list(FORMATS))
    ap.add_argument("--skip-pattern", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    tiles = Path(args.tiles)
    results = {}
    mem_dir = out / "tile_memory_model"
    if not (mem_dir / "detector.json").exists():
        torch.set_num_threads(2)
        t0 = time.perf_counter()
        train = [read_image(p) for p in list_images(tiles / "train" / "good")[:60]]
        det = Detector.fit(train, scorer="memory", image_size=(256, 256), progress=False)
        det.save(mem_dir)
        print(f"fitted the tile memory model in {time.perf_counter() - t0:.0f} s")
    subset = tile_subset(tiles, out)
    runs = [("memory-magnetic-tile", str(mem_dir), subset)]
    if not args.skip_pattern:
        runs.insert(0, ("pattern-default", None, None))
    for name, model, data in runs:
        rows = run_benchmark(model, data, out / name, formats=args.formats, threads=2, repeats=5)
        (out / name / "benchmark.json").write_text(json.dumps(rows, indent=2) + "\n")
        results[name] = rows
        print(f"\n### {name} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})\n\n{to_markdown(rows)}", flush=True)


if __name__ == "__main__":
    main()
