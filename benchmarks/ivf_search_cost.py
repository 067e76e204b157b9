"""Cost of the memory scorer's nearest-neighbour search, exact (torch) against the faiss inverted file, by memory size.

Builds a memory from the first ``--n-train`` magnetic tiles (random 10 % sampling), takes random subsets of
its fine (152-d) and context (128-d) banks of each ``--sizes`` and times, for one test tile's queries (1024 fine,
256 context positions at 256 x 256), the exact search and the inverted file at each ``--nprobe`` (median of
``--rounds``), with the build time of each inverted file and, at the largest fine size, the share of queries the
inverted file finds at their exact distance. This sets ``IVF_MIN_VECTORS`` (docs/benchmarks.md).

    python benchmarks/ivf_search_cost.py --n-train 700 --out runs/ivf_search_cost.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import cv2

HERE = Path(__file__).resolve().parent
log = logging.getLogger("ivf_search_cost")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "magnetic_tile"))
    p.add_argument("--n-train", type=int, default=700)
    p.add_argument("--sizes", default="1024,2048,4096,8192,16384,32768,71680")
    p.add_argument("--nprobe", default="4,8,16")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE.parent / "runs" / "ivf_search_cost.json"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = Path(a.data)
    if not (data / "train" / "good").is_dir():
        log.warning("no magnetic tile data at %s: nothing measured", data)
        return 0
    import torch
    from patchloupe.data import MVTecCategory, read_image
    from patchloupe.scorers.memory import (
        FeatureMemory,
        MemoryConfig,
        _exact_nearest,
        _ivf_distances,
        build_ivf,
        to_batch,
    )

    torch.set_num_threads(a.threads)
    cat = MVTecCategory(data)
    train = [read_image(p) for p in cat.train_good()[: a.n_train]]
    mem = FeatureMemory.build(train, (256, 256), MemoryConfig(sampling="random"), seed=0)
    del train
    tile = cv2.resize(read_image(cat.test_items()[5].path), (256, 256), interpolation=cv2.INTER_AREA)
    with torch.inference_mode():
        f, ctx = mem._tap_features(to_batch([tile]))
        queries = {"fine": f, "context": mem._project(ctx)}

    def median_ms(fn, *args) -> float:  # noqa: ANN001
        fn(*args)
        times = []
        for _ in range(a.rounds):
            t = time.perf_counter()
            fn(*args)
            times.append(1000 * (time.perf_counter() - t))
        return statistics.median(times)

    g = torch.Generator().manual_seed(0)
    rows = []
    for name, full in (("fine", mem.bank), ("context", mem.context_bank)):
        q = queries[name].permute(0, 2, 3, 1).reshape(-1, full.shape[1])
        for m in (int(v) for v in a.sizes.split(",")):
            if m > full.shape[0]:
                continue
            bank = full[torch.randperm(full.shape[0], generator=g)[:m]].contiguous()
            exact = _exact_nearest(q, bank, 4096)
            row = {
                "memory": name,
                "vectors": m,
                "queries": q.shape[0],
                "exact_ms": median_ms(_exact_nearest, q, bank, 4096),
            }
            for nprobe in (int(v) for v in a.nprobe.split(",")):
                t = time.perf_counter()
                index = build_ivf(bank, nprobe)
                row[f"ivf{nprobe}_build_s"] = time.perf_counter() - t
                row[f"ivf{nprobe}_ms"] = median_ms(_ivf_distances, index, q)
                d, _ = _ivf_distances(index, q)
                row[f"ivf{nprobe}_at_exact"] = float(((d - exact).abs() < 1e-3).float().mean())
            rows.append(row)
            log.info("%s", row)
    res = {"n_train": a.n_train, "threads": a.threads, "load": os.getloadavg()[0], "rows": rows}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    probes = a.nprobe.split(",")
    lines = [
        "| memory | vectors | queries | exact ms | " + " | ".join(f"nprobe {n} ms (at exact)" for n in probes) + " |"
    ]
    lines.append("|---|---:|---:|---:|" + "---:|" * len(probes))
    for r in rows:
        cells = " | ".join(f"{r[f'ivf{n}_ms']:.1f} ({r[f'ivf{n}_at_exact']:.2f})" for n in probes)
        lines.append(f"| {r['memory']} | {r['vectors']:,} | {r['queries']} | {r['exact_ms']:.1f} | {cells} |")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
