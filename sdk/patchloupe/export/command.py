"""The ``export`` and ``benchmark`` commands of the ``patchloupe`` CLI (wired in ``patchloupe.cli``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_benchmark_parser", "add_export_parser", "cmd_benchmark", "cmd_export"]


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``patchloupe export MODEL --format onnx -o OUT [--half] [--int8 [--calibration DIR]] [--batch dynamic]``."""
    from patchloupe.export import DEFAULT_OPSET, FORMATS

    s = subparsers.add_parser("export", help="export a model as one graph for ONNX Runtime / OpenVINO / TensorRT")
    s.add_argument("model", nargs="?", default=None, help="model folder (default: the built-in model)")
    s.add_argument("--format", choices=FORMATS, default="onnx")
    s.add_argument("-o", "--out", required=True, help="graph file (model.onnx) or folder")
    s.add_argument("--half", action="store_true", default=None, help="float16 networks (default for engine)")
    s.add_argument("--int8", action="store_true", help="ONNX Runtime int8 quantization of the networks")
    s.add_argument("--calibration", help="folder of defect-free images for static int8 (default: dynamic)")
    s.add_argument("--batch", default="1", choices=["1", "dynamic"])
    s.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    s.add_argument("--simplify", action="store_true", help="run onnxslim on the graph")
    s.set_defaults(func=cmd_export)
    return s


def cmd_export(args: argparse.Namespace) -> int:
    from patchloupe import Detector

    cal = None
    if args.calibration:
        from patchloupe.data import list_images

        cal = list_images(args.calibration)
    det = Detector.load(args.model)
    batch = "dynamic" if args.batch == "dynamic" else 1
    path = det.export(
        args.out, format=args.format, half=args.half, int8=args.int8, calibration=cal, batch=batch,
        opset=args.opset, simplify=args.simplify,
    )  # fmt: skip
    print(f"wrote {path} and {path.with_suffix('.json').name}")
    return 0


def add_benchmark_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``patchloupe benchmark [--model M] [--data CATEGORY] [--formats ...] [--out DIR]``."""
    from patchloupe.benchmark import FORMATS

    s = subparsers.add_parser("benchmark", help="one model in every format: size, load time, ms/image, AUROC")
    s.add_argument("--model", default=None, help="model folder (default: the built-in model)")
    s.add_argument("--data", default=None, help="MVTec-layout category (default: generated sample data)")
    s.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--repeats", type=int, default=10)
    s.add_argument("--calibration", type=int, default=16, help="defect-free images for static int8 (0: dynamic)")
    s.add_argument("--out", default="benchmark_out", help="folder for the graphs, data and benchmark.json")
    s.set_defaults(func=cmd_benchmark)
    return s


def cmd_benchmark(args: argparse.Namespace) -> int:
    from patchloupe.benchmark import run_benchmark, to_markdown

    rows = run_benchmark(
        args.model, args.data, args.out, formats=args.formats, threads=args.threads, repeats=args.repeats,
        calibration=args.calibration,
    )  # fmt: skip
    Path(args.out, "benchmark.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(to_markdown(rows))
    return 0
