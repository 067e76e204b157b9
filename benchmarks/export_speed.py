"""torch eager vs ONNX Runtime vs OpenVINO on one model, batch 1, measured interleaved (so both see the same
machine load), for docs/benchmarks.md (issue 12).

    OMP_NUM_THREADS=2 python benchmarks/export_speed.py --model MODEL_DIR|default --graph GRAPH --threads 1 2

Prints the median ms of ``scorer.infer`` on one image at the model size (warm) per runtime and thread count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from patchloupe import Detector


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--graph", required=True)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    ref = Detector.load(None if args.model == "default" else args.model)
    img = np.random.default_rng(0).integers(0, 255, (*ref.config.image_size, 3), dtype=np.uint8)
    out = {}
    for n in args.threads:
        torch.set_num_threads(n)
        scorers = {
            "torch": ref.scorer,
            "onnxruntime": Detector.load(args.graph, threads=n).scorer,
            "openvino": Detector.load(args.graph, runtime="openvino", threads=n).scorer,
        }
        inputs = {k: s.prepare(img)[None] for k, s in scorers.items()}
        times: dict[str, list[float]] = {k: [] for k in scorers}
        for k, s in scorers.items():
            s.infer(inputs[k])  # warm-up
        for _ in range(args.repeats):
            for k, s in scorers.items():
                t0 = time.perf_counter()
                s.infer(inputs[k])
                times[k].append((time.perf_counter() - t0) * 1000.0)
        med = {k: round(statistics.median(v), 1) for k, v in times.items()}
        med["onnxruntime_speedup"] = round(med["torch"] / med["onnxruntime"], 2)
        out[f"{n} threads"] = med
        print(json.dumps({f"{n} threads": med}), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
