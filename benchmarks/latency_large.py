"""PatchCore vs the memory scorer and the default scorer (selfref) with all 700 magnetic tiles' memories
(``latency.py`` uses 60 tiles).

PatchCore's exact greedy coreset on 700 tiles (71,680 of 716,800 vectors) takes about an hour on 2 cores, and
neither search depends on *which* vectors are kept, so both memories here are **random** 10 % subsets:

* PatchCore (``patchcore.py``): MobileNetV2 features of the tiles, a random 10 % as its bank (71,680 x 128);
* the memory scorer: ``FeatureMemory.build(tiles, MemoryConfig(sampling="random"))`` (71,680 x 152 fine +
  17,920 x 128 context vectors), its scale set on every 10th tile, as a ``Detector`` (threshold 0.5, not
  calibrated: the threshold does not change the work), with ``search="ivf"`` (the default) and ``"exact"``;
* the default scorer (``selfref``): the same random memory built through its lighting-normalising trunk, with
  ``search="ivf"``; its scales are left at 1 (they do not change the work).

All timed interleaved in one process (``latency.interleaved``: batch 1, 256 x 256, the order rotating each
round) at each thread count; also the first ``inspect`` after loading (which builds the inverted files).

    python benchmarks/latency_large.py --rounds 20 --out runs/latency_large.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
log = logging.getLogger("latency_large")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "magnetic_tile"))
    p.add_argument("--n-train", type=int, default=700)
    p.add_argument("--n-test", type=int, default=10)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--out", default=str(HERE.parent / "runs" / "latency_large.json"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = Path(a.data)
    if not (data / "train" / "good").is_dir():
        log.warning("no magnetic tile data at %s: nothing measured", data)
        return 0
    sys.path.insert(0, str(HERE))
    import torch
    from latency import _tiles, interleaved
    from patchcore import PatchCore
    from patchloupe import Detector
    from patchloupe.detector import DetectorConfig
    from patchloupe.scorers.memory import FeatureMemory, MemoryConfig, MemoryScorer

    torch.set_num_threads(1)
    train, test256 = _tiles(data, a.n_train, a.n_test)
    res: dict = {"n_train": len(train), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    res["load_at_start"] = os.getloadavg()[0]

    t = time.perf_counter()
    pc = PatchCore(seed=0)
    pc.image_size = (256, 256)
    z = torch.cat([pc.features(x).permute(0, 2, 3, 1).reshape(-1, 128) for x in pc._batches(train)])
    keep = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(0))[: round(0.1 * z.shape[0])]
    pc.bank = z[keep].contiguous()
    pc._bank_sq = pc.bank.square().sum(1)
    del z
    res["patchcore_bank"] = list(pc.bank.shape)
    res["patchcore_build_s"] = time.perf_counter() - t

    t = time.perf_counter()
    mem = FeatureMemory.build(train, (256, 256), MemoryConfig(sampling="random"), seed=0)
    mem.set_scale(train[::10], (256, 256))
    res["memory_build_s"] = time.perf_counter() - t
    res["memory_bank"], res["memory_context_bank"] = list(mem.bank.shape), list(mem.context_bank.shape)
    cfg = DetectorConfig(image_size=(256, 256), grid=(8, 8), scorer="memory", threshold=0.5)
    models = {"patchcore": pc}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Detector(MemoryScorer(mem, (256, 256), (8, 8)), cfg).save(Path(tmp) / "memory")
        for search in ("ivf", "exact"):
            meta = json.loads((folder / "detector.json").read_text())
            meta["scorer_config"]["search"] = search
            (folder / "detector.json").write_text(json.dumps(meta))
            t = time.perf_counter()
            det = Detector.load(folder)
            t1 = time.perf_counter()
            det.inspect(test256[0])
            res[f"memory_{search}_load_s"], res[f"memory_{search}_first_inspect_s"] = t1 - t, time.perf_counter() - t1
            models[f"memory_{search}"] = det
    from patchloupe.scorers.selfref import SelfRefConfig, SelfRefScorer, _build_memory

    t = time.perf_counter()
    srmem = _build_memory(MemoryConfig(sampling="random"), SelfRefConfig()).extend(train, (256, 256), seed=0)
    res["selfref_build_s"] = time.perf_counter() - t
    srcfg = DetectorConfig(image_size=(256, 256), grid=(8, 8), scorer="selfref", threshold=0.5)
    models["selfref"] = Detector(SelfRefScorer(srmem, SelfRefConfig(), (256, 256), (8, 8)), srcfg)
    scores = {n: [float(m.inspect(im).score) for im in test256] for n, m in models.items() if n.startswith("memory")}
    diff = np.abs(np.array(scores["memory_ivf"]) - np.array(scores["memory_exact"]))
    res["ivf_vs_exact_score_diff"] = {"max": float(diff.max()), "median": float(np.median(diff))}
    res["interleaved"] = [interleaved(models, test256, int(n), a.rounds) for n in a.threads.split(",")]
    res["load_at_end"] = os.getloadavg()[0]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    lines = [
        "| threads | load | PatchCore ms | memory, ivf ms (x PatchCore) | memory, exact ms (x PatchCore) "
        "| default scorer (selfref) ms (x PatchCore) |"
    ]
    lines.append("|---:|---:|---:|---:|---:|---:|")
    for it in res["interleaved"]:
        m = it["median_ms"]
        pcm = m["patchcore"]
        lines.append(
            f"| {it['threads']} | {it['load']:.1f} | {pcm:.1f} | {m['memory_ivf']:.1f} ({m['memory_ivf'] / pcm:.2f}) "
            f"| {m['memory_exact']:.1f} ({m['memory_exact'] / pcm:.2f}) "
            f"| {m['selfref']:.1f} ({m['selfref'] / pcm:.2f}) |"
        )
    sys.stdout.write(json.dumps({k: v for k, v in res.items() if k != "interleaved"}) + "\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
