"""Parity of exported graphs with torch on real-size models, for docs/benchmarks.md (issue 12).

    python benchmarks/export_parity.py --model MODEL_DIR|default --graph GRAPH --data CATEGORY --limit 30

Runs the torch detector, ONNX Runtime and OpenVINO on the category's test images (the first ``limit``
of each kind) through ``inspect_many`` and prints the largest image-score and anomaly-map differences
and the verdicts that differ at the model's threshold, as JSON.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from patchloupe import Detector
from patchloupe.data import MVTecCategory


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--graph", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=30)
    args = ap.parse_args()
    ref = Detector.load(None if args.model == "default" else args.model)
    items = MVTecCategory(args.data).test_items()
    by_kind: dict[str, list] = {}
    for it in items:
        by_kind.setdefault(it.defect, []).append(it.path)
    paths = [p for ps in by_kind.values() for p in ps[: max(1, args.limit // len(by_kind))]]
    want = list(ref.inspect_many(paths, keep_image=False, on_error="raise"))
    out = {"images": len(paths), "threshold": ref.threshold}
    for runtime in ("onnxruntime", "openvino"):
        det = Detector.load(args.graph, runtime=runtime, threads=2)
        got = list(det.inspect_many(paths, keep_image=False, on_error="raise"))
        out[runtime] = {
            "max_score_diff": max(abs(w.score - g.score) for w, g in zip(want, got)),
            "verdicts_differing": sum(w.is_anomalous != g.is_anomalous for w, g in zip(want, got)),
            "patch_verdicts_differing": int(sum((w.patch_map != g.patch_map).sum() for w, g in zip(want, got))),
            "max_map_diff": float(max(np.abs(w.anomaly_map - g.anomaly_map).max() for w, g in zip(want, got))),
            "mask_pixels_differing": float(np.mean([(w.mask != g.mask).mean() for w, g in zip(want, got)])),
        }
    out["anomalous_torch"] = sum(w.is_anomalous for w in want)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
