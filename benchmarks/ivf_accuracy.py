"""The memory scorer's inverted-file search (``MemoryConfig.search="ivf"``) against the exact search on magnetic tile.

One memory is built from the first ``--n-train`` ``train/good`` tiles (``FeatureMemory.build``; ``--sampling
random`` for 700 tiles, where the greedy coreset takes a quarter of an hour) with its scale set on every 10th
training tile; every ``--n-test``-th-spaced test tile (256 x 256) is then scored with ``search="exact"`` and
with ``"ivf"`` at each ``--nprobe`` (the image score: the anomaly map's maximum, as ``inspect`` reports it):
max / median absolute score difference, the smallest signed one (the inverted file never finds a nearer
vector, so it should be >= 0 up to rounding), image AUROC, the largest anomaly-map difference (per image over its
pixels: the maximum and the median over images), and the median ms of ``anomaly_map`` per image.

    python benchmarks/ivf_accuracy.py --n-train 60 --n-test 200 --out runs/ivf_accuracy_60.json
    python benchmarks/ivf_accuracy.py --n-train 700 --sampling random --n-test 200 --out runs/ivf_accuracy_700.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
log = logging.getLogger("ivf_accuracy")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "magnetic_tile"))
    p.add_argument("--n-train", type=int, default=60)
    p.add_argument("--sampling", default="greedy")
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--nprobe", default="4,8,16,32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE.parent / "runs" / "ivf_accuracy.json"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = Path(a.data)
    if not (data / "train" / "good").is_dir():
        log.warning("no magnetic tile data at %s: nothing measured", data)
        return 0
    import torch
    from patchloupe.data import MVTecCategory, read_image
    from patchloupe.metrics import image_auroc
    from patchloupe.scorers.memory import FeatureMemory, MemoryConfig, to_batch

    torch.set_num_threads(a.threads)
    cat = MVTecCategory(data)
    items = cat.test_items()
    items = items[:: max(1, len(items) // a.n_test)][: a.n_test]
    y = np.array([it.label for it in items])
    tiles = [cv2.resize(read_image(it.path), (256, 256), interpolation=cv2.INTER_AREA) for it in items]
    train = [read_image(p) for p in cat.train_good()[: a.n_train]]
    t = time.perf_counter()
    mem = FeatureMemory.build(train, (256, 256), MemoryConfig(sampling=a.sampling), seed=0)
    mem.set_scale(train[::10], (256, 256))
    res: dict = {
        "n_train": len(train),
        "n_test": len(items),
        "sampling": a.sampling,
        "build_s": time.perf_counter() - t,
    }
    res.update(bank=list(mem.bank.shape), context_bank=list(mem.context_bank.shape), load_at_start=os.getloadavg()[0])
    del train

    def scores() -> tuple[np.ndarray, float, list]:
        out, ms, maps = [], [], []
        for im in tiles:
            t0 = time.perf_counter()
            amap = mem.anomaly_map(to_batch([im]))[0]
            ms.append(1000 * (time.perf_counter() - t0))
            out.append(float(amap.max()))
            maps.append(amap)
        return np.array(out), float(np.median(ms)), maps

    mem.config.search = "exact"
    exact, ms, exact_maps = scores()
    res["exact"] = {"ms": ms, "auroc": float(image_auroc(y, exact))}
    log.info("exact: %s", res["exact"])
    mem.config.search = "ivf"
    for nprobe in (int(v) for v in a.nprobe.split(",")):
        mem.config.nprobe = nprobe
        t0 = time.perf_counter()
        mem.anomaly_map(to_batch(tiles[:1]))  # builds the inverted files
        first = time.perf_counter() - t0
        sc, ms, maps = scores()
        d = sc - exact
        pix = np.array([float((m - e).abs().max()) for m, e in zip(maps, exact_maps)])  # per image, over pixels
        res[f"ivf_nprobe{nprobe}"] = {
            "ms": ms,
            "first_call_s": first,
            "max_abs_diff": float(np.abs(d).max()),
            "median_abs_diff": float(np.median(np.abs(d))),
            "min_signed_diff": float(d.min()),
            "auroc": float(image_auroc(y, sc)),
            "map_max_abs_diff": float(pix.max()),
            "map_median_of_image_max_abs_diff": float(np.median(pix)),
        }
        log.info("nprobe %d: %s", nprobe, res[f"ivf_nprobe{nprobe}"])
    res["load_at_end"] = os.getloadavg()[0]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    sys.stdout.write(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
