"""Where a memory-scorer ``inspect`` spends its time, stage by stage, and what each speed-up of issue 13 buys.

Fits ``Detector.fit(tiles, scorer="memory")`` on the first ``--n-train`` magnetic tiles (or, without the data,
on generated metal textures) and times, interleaved round by round in one process at ``--threads``, medians:

* ``inspect``; ``anomaly_map`` alone; ``inspect`` with ``anomaly_map`` replaced by a cached result (the
  pipeline around the scorer: loading, resizing, pixel maps, outline, result);
* the trunk as built (NCHW input), with channels-last input, and folded (``_inference_trunk``);
* the fine search exact (torch) and through the inverted file; the context search;
* upsample + blur as convolutions (``_gaussian_blur(F.interpolate(...))``) and as two matrices (``_blurred``).

    python benchmarks/memory_profile.py --threads 1 --rounds 40 --out runs/memory_profile.json
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

HERE = Path(__file__).resolve().parent
log = logging.getLogger("memory_profile")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "magnetic_tile"))
    p.add_argument("--n-train", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--out", default=str(HERE.parent / "runs" / "memory_profile.json"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch
    import torch.nn.functional as F
    from patchloupe import Detector
    from patchloupe.scorers.memory import _gaussian_blur, to_batch

    torch.set_num_threads(a.threads)
    data = Path(a.data)
    if (data / "train" / "good").is_dir():
        sys.path.insert(0, str(HERE))
        from latency import _tiles

        train, test = _tiles(data, a.n_train, 5)
        source = f"{len(train)} magnetic tiles"
    else:
        from patchloupe.data import render_texture

        train = [render_texture("metal", (256, 256), rng=i) for i in range(a.n_train)]
        test = [render_texture("metal", (256, 256), rng=1000 + i) for i in range(5)]
        source = f"{len(train)} generated metal textures"
    det = Detector.fit(train, scorer="memory", image_size=(256, 256), progress=False)
    mem = det.scorer.memory
    x = to_batch(test[:1])
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        f, ctx = mem._tap_features(x)
        pj = mem._project(ctx)
    d = mem.nearest(f)
    cached = mem.anomaly_map(x)
    size = (256, 256)
    sigma = mem.config.blur_sigma

    def pipeline_only() -> None:
        real = mem.anomaly_map
        mem.anomaly_map = lambda _x: cached
        try:
            det.inspect(test[0])
        finally:
            mem.anomaly_map = real

    def timed_trunk(t, inp):  # noqa: ANN001, ANN202
        def run() -> None:
            with torch.inference_mode():
                t(inp)

        return run

    stages = {
        "inspect": lambda: det.inspect(test[0]),
        "anomaly_map": lambda: mem.anomaly_map(x),
        "pipeline without anomaly_map": pipeline_only,
        "trunk, NCHW input": timed_trunk(mem.trunk, x),
        "trunk, channels-last input": timed_trunk(mem.trunk, xc),
        "trunk, folded, NCHW input": timed_trunk(mem._inference_trunk(), x),
        "trunk, folded, channels-last": timed_trunk(mem._inference_trunk(), xc),
        "fine search, exact": lambda: mem.nearest(f, exact=True),
        f"fine search, {mem.config.search}": lambda: mem.nearest(f),
        "context search": lambda: mem.nearest(pj, bank=mem.context_bank),
        "upsample + blur, convolutions": lambda: _gaussian_blur(
            F.interpolate(d[:, None], size=size, mode="bilinear", align_corners=False), sigma
        ),
        "upsample + blur, two matrices": lambda: mem._blurred(d, size),
    }
    for fn in stages.values():  # warm-up (builds the inverted file and the folded trunk)
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in stages}
    for _ in range(a.rounds):
        for k, fn in stages.items():
            t = time.perf_counter()
            fn()
            times[k].append(1000 * (time.perf_counter() - t))
    res = {
        "source": source,
        "threads": a.threads,
        "rounds": a.rounds,
        "bank": list(mem.bank.shape),
        "context_bank": list(mem.context_bank.shape),
        "search": mem.config.search,
        "load": os.getloadavg()[0],
        "median_ms": {k: statistics.median(v) for k, v in times.items()},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    lines = [
        f"{source}; memory {res['bank']} + context {res['context_bank']}; {a.threads} thread(s), load "
        f"{res['load']:.1f}",
        "",
        "| stage | median ms |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in res["median_ms"].items()]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
