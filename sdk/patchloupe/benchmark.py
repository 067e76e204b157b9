"""``patchloupe benchmark``: one model in every available format, measured side by side in one run.

For a model (default: the built-in one) and an MVTec-layout category (default: generated sample data),
one row per format (torch, torch+Triton on CUDA, ONNX Runtime fp32 / fp16 / int8, OpenVINO, TensorRT):
file size, load time, median ms per image (batch 1, warm, the scorer's ``infer`` on an image already at
the model size, ``threads`` threads) and the image / pixel AUROC of ``Detector.evaluate``. A format
that cannot run here gets a row saying why.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMATS = ("torch", "torch+triton", "onnxruntime", "onnxruntime-fp16", "onnxruntime-int8", "openvino", "tensorrt")

__all__ = ["FORMATS", "run_benchmark", "to_markdown"]


def _size_mb(paths: Sequence[Path]) -> float:
    total = 0
    for p in paths:
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            total += p.stat().st_size
    return total / 2**20


def _median_ms(scorer: Any, image: np.ndarray, repeats: int) -> float:
    x = scorer.prepare(image)[None]
    for _ in range(2):  # warm-up
        scorer.infer(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scorer.infer(x)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def run_benchmark(
    model: str | os.PathLike[str] | None = None,
    dataset: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] = "benchmark_out",
    formats: Sequence[str] = FORMATS,
    threads: int = 2,
    repeats: int = 10,
    calibration: int = 16,
) -> list[dict[str, Any]]:
    """Measure ``model`` in each of ``formats`` (see the module docstring); returns one dict per format.

    ``calibration``: defect-free images (the category's ``train/good``, else its ``test/good``) for the
    static int8 quantization; 0 quantizes dynamically."""
    import torch

    from patchloupe import Detector
    from patchloupe.data import list_images
    from patchloupe.preprocess import load_rgb, resize_for_model

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"formats must be among {FORMATS}, got {bad}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dataset is None:
        from patchloupe.data import generate_dataset

        dataset = generate_dataset(out / "data", families=("cloth",), n_train=8, n_test_good=8,
                                   n_test_defect_per_kind=2, size=256, seed=7)[0]  # fmt: skip
    dataset = Path(dataset)
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ref = Detector.load(model)
    torch_load = time.perf_counter() - t0
    goods = list_images(dataset / "train" / "good") if (dataset / "train" / "good").is_dir() else []
    goods = goods or list_images(dataset / "test" / "good")
    probe = resize_for_model(load_rgb(goods[0]), ref.config.image_size)
    cal = [load_rgb(p) for p in goods[:calibration]] or None
    model_files = [Path(model)] if model is not None else [Path(__file__).parent / "weights"]
    rows = []
    for fmt in formats:
        row: dict[str, Any] = {"format": fmt}
        try:
            if fmt in ("torch", "torch+triton"):
                if fmt == "torch+triton" and not torch.cuda.is_available():
                    raise RuntimeError("needs a CUDA device")
                det, load_s = ref, torch_load
                if fmt == "torch+triton":
                    det = Detector.load(model, device="cuda")
                row.update(size_mb=_size_mb(model_files), load_s=load_s)
            else:
                det, export_s, load_s, files = _exported(ref, fmt, out, cal, threads)
                row.update(size_mb=_size_mb(files), load_s=load_s, export_s=export_s)
            row["ms_per_image"] = _median_ms(det.scorer, probe, repeats)
            metrics = det.evaluate(dataset)
            row.update(image_auroc=metrics["image_auroc"], pixel_auroc=metrics["pixel_auroc"])
        except (ImportError, RuntimeError, ValueError, OSError) as exc:
            log.warning("benchmark %s: %s", fmt, exc)
            row["status"] = f"unavailable: {str(exc).splitlines()[0][:160]}"
        rows.append(row)
    return rows


def _exported(ref: Any, fmt: str, out: Path, cal: list | None, threads: int) -> tuple[Any, float, float, list[Path]]:
    """Export ``ref`` for ``fmt`` (reusing the fp32 ONNX graph for OpenVINO) and load it; times in seconds."""
    from patchloupe import Detector

    kwargs: dict[str, Any] = {
        "onnxruntime": {},
        "onnxruntime-fp16": {"half": True},
        "onnxruntime-int8": {"int8": True, "calibration": cal},
        "openvino": {},
        "tensorrt": {"format": "engine", "half": True},
    }[fmt]
    name = {"openvino": "onnxruntime"}.get(fmt, fmt)
    target = out / "graphs" / name
    t0 = time.perf_counter()
    if not (target / "model.json").is_file():
        ref.export(target, **kwargs)
    export_s = time.perf_counter() - t0
    options: dict[str, Any] = {"threads": threads} if fmt != "tensorrt" else {}
    if fmt == "openvino":
        options["runtime"] = "openvino"
    t0 = time.perf_counter()
    det = Detector.load(target, **options)
    return det, export_s, time.perf_counter() - t0, [target]


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table."""

    def f(v: Any, digits: int = 3) -> str:
        return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = [
        "| format | file MB | load s | ms/image (b1) | image AUROC | pixel AUROC | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['format']} | {f(r.get('size_mb'), 1)} | {f(r.get('load_s'), 2)} | {f(r.get('ms_per_image'), 1)} | "
            f"{f(r.get('image_auroc'))} | {f(r.get('pixel_auroc'))} | {r.get('status', '')} |"
        )
    return "\n".join(lines)
