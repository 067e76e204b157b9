"""``make demo`` / ``patchloupe demo``: generate sample data, inspect it with the default model,
write overlays (original | anomaly map | outline) and a metrics summary."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEMO_FAMILIES = ("cloth", "mesh", "metal")
OVERLAYS_PER_KIND = 2


def run_demo(
    out_dir: str | os.PathLike[str] = "demo_out",
    data_dir: str | os.PathLike[str] = "sample_data",
    families: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the summary dict (also written to ``out_dir/summary.json`` and ``summary.md``)."""
    from patchloupe import Detector
    from patchloupe.data import FAMILIES, MVTecCategory, generate_dataset

    t0 = time.perf_counter()
    fams = [f for f in (families or DEMO_FAMILIES) if f in FAMILIES] or list(FAMILIES)[:3]
    out, data = Path(out_dir), Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    generate_dataset(data, families=fams, n_train=0, n_test_good=6, n_test_defect_per_kind=2, size=256, seed=7)
    det = Detector.load()
    rows = []
    for fam in fams:
        metrics = det.evaluate(data / fam)
        cat = MVTecCategory(data / fam)
        shown: dict[str, int] = {}
        picks = []
        for item in cat.test_items():
            if shown.get(item.defect, 0) < OVERLAYS_PER_KIND:
                shown[item.defect] = shown.get(item.defect, 0) + 1
                picks.append(item)
        for item, res in zip(picks, det.inspect_many([it.path for it in picks])):
            if res.ok:
                res.save(out / fam / f"{item.defect}_{item.path.stem}.png")
        rows.append(
            {
                "family": fam,
                **{
                    k: metrics.get(k)
                    for k in (
                        "image_auroc",
                        "pixel_auroc",
                        "aupro",
                        "f1_max",
                        "n_images",
                        "latency_ms_median",
                        "tp",
                        "fp",
                        "tn",
                        "fn",
                    )
                },
            }
        )
    wall = time.perf_counter() - t0
    lines = [
        "| family | image AUROC | pixel AUROC | AUPRO | F1-max | TP/FP/TN/FN | ms/img |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {_f(r['image_auroc'])} | {_f(r['pixel_auroc'])} | {_f(r['aupro'])} | "
            f"{_f(r['f1_max'])} | {r['tp']}/{r['fp']}/{r['tn']}/{r['fn']} | {_f(r['latency_ms_median'], 1)} |"
        )
    text = (
        f"patchloupe demo: default model {det!r}\n"
        + "\n".join(lines)
        + f"\noverlays and summary in {out}/ ({wall:.1f} s)"
    )
    summary = {"model": repr(det), "threshold": det.threshold, "families": rows, "wall_s": round(wall, 2), "text": text}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(text + "\n")
    return summary


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
