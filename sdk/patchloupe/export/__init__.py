"""Export a detector's scorer as one graph for runtimes without torch (README, "Deploy").

``export_detector(det, path, format="onnx" | "openvino" | "engine", half=False, int8=False, batch=1 |
"dynamic", opset=17)`` writes the graph and its JSON (``patchloupe.artefact``) and returns the graph's
path. The network comes from the scorer (``scorer.export_module(half)``, e.g.
:class:`patchloupe.scorers.pattern.PatternGraph`), so this package never looks at which scorer it
exports. Graph contract: input ``images`` uint8 RGB ``(B, H, W, 3)`` at the model size; outputs
``image_score (B,)``, ``patch_scores (B, rows, cols)``, ``anomaly_map (B, H, W)`` and, for a scorer
whose field is not the map (the pattern scorer), ``field``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from patchloupe.artefact import GRAPH_STEM, SUFFIXES, write_meta

log = logging.getLogger(__name__)

FORMATS = tuple(SUFFIXES)
DEFAULT_OPSET = 17

__all__ = ["DEFAULT_OPSET", "FORMATS", "export_detector", "graph_path"]


def graph_path(path: str | os.PathLike[str], fmt: str) -> Path:
    """Where the graph goes: ``path`` itself when it ends with the format's suffix, else ``path/model.<ext>``."""
    p = Path(path)
    suffix = SUFFIXES[fmt]
    return p if p.suffix == suffix else p / f"{GRAPH_STEM}{suffix}"


def export_detector(
    det: Any,
    path: str | os.PathLike[str],
    format: str = "onnx",  # noqa: A002 - the public keyword
    half: bool | None = None,
    int8: bool = False,
    batch: int | str = 1,
    opset: int = DEFAULT_OPSET,
    calibration: Sequence[Any] | None = None,
    simplify: bool = False,
) -> Path:
    """Export the ``Detector`` ``det`` (see the module docstring); returns the graph file's path.

    ``half``: float16 networks (default: True for ``engine``, False otherwise); ``int8``: ONNX Runtime
    quantization of the ``onnx`` graph, static when ``calibration`` (defect-free images) is given, else
    dynamic; ``batch``: 1 or ``"dynamic"``; ``simplify``: run onnxslim on the graph (slow to export, and
    ONNX Runtime / OpenVINO / TensorRT fold the same constants themselves when they load it).
    Raises ``ValueError`` for a combination that cannot be exported faithfully and
    ``ImportError``/``RuntimeError`` naming what is missing.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if batch != "dynamic" and (isinstance(batch, bool) or batch != 1):
        raise ValueError(f"batch must be 1 or 'dynamic', got {batch!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 14 <= opset <= 21:
        raise ValueError(f"opset must be an integer in 14..21 (window attention needs >= 14), got {opset!r}")
    if half is None:
        half = format == "engine"
    if int8 and format != "onnx":
        raise ValueError(f"int8 is ONNX Runtime quantization: export format 'onnx', not {format!r}")
    if int8 and half:
        raise ValueError("int8 and half exclude each other: choose one")
    if calibration is not None and not int8:
        raise ValueError("calibration images are for int8 (static quantization) only")
    scorer = det.scorer
    if not hasattr(scorer, "export_module"):
        raise ValueError(f"a {type(scorer).__name__} cannot be exported (it has no export_module)")
    from patchloupe.export.onnx_graph import write_onnx

    if format == "engine":
        from patchloupe.export.engine import tensorrt_problem

        problem = tensorrt_problem()  # before the (slow) trace
        if problem is not None:
            raise RuntimeError(problem)
    out = graph_path(path, format)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx_file = out if format == "onnx" else out.with_suffix(".tmp.onnx")
    # OpenVINO stores float16 weights itself (compress_to_fp16) and computes in float32 on CPU
    net_half = half and format != "openvino"
    info = write_onnx(scorer, onnx_file, half=net_half, batch=batch, opset=opset, simplify=simplify)
    precision = "fp16" if half else "fp32"
    try:
        if int8:
            from patchloupe.export.quantize import quantize_onnx

            info.update(quantize_onnx(onnx_file, scorer, calibration))
            precision = "int8"
        elif format == "openvino":
            from patchloupe.export.openvino_ir import write_ir

            write_ir(onnx_file, out, half=half)
        elif format == "engine":
            from patchloupe.export.engine import build_engine

            info.update(build_engine(onnx_file, out, half=half, batch=batch))
    finally:
        if onnx_file != out and onnx_file.exists():
            onnx_file.unlink()
    write_meta(out, _metadata(det, format, precision, batch, opset, info))
    log.info("exported %s scorer to %s (%s, %s)", scorer.name, out, format, precision)
    return out


def _metadata(det: Any, fmt: str, precision: str, batch: int | str, opset: int, info: dict) -> dict[str, Any]:
    __version__ = sys.modules["patchloupe"].__version__  # the parent package (importing it would be a cycle)
    scorer = det.scorer
    h, w = scorer.image_size
    b = "B" if batch == "dynamic" else 1
    outputs = {"image_score": "image_score", "patch_scores": "patch_scores", "anomaly_map": "anomaly_map"}
    outputs["field"] = "field" if scorer.pixel_rule == "stitch" else "anomaly_map"
    return {
        "patchloupe_version": __version__,
        "graph_format": fmt,
        "precision": precision,
        "batch": batch,
        "opset": opset,
        "scorer": scorer.name,
        "pixel_rule": scorer.pixel_rule,
        "scorer_config": scorer.settings(),
        "detector": det.config.to_dict(),
        "input": {"name": "images", "dtype": "uint8", "shape": [b, h, w, 3], "layout": "NHWC", "channel_order": "RGB"},
        "outputs": outputs,
        "resize": {
            "to_model": "cv2.resize to (W, H): INTER_CUBIC when the input is smaller on either side, else INTER_AREA",
            "map_to_input": (
                "field x patch score per patch, untiled, bilinear resize with half-pixel centres (cv2.INTER_LINEAR)"
                if scorer.pixel_rule == "stitch"
                else "anomaly_map resized with cv2.INTER_LINEAR"
            ),
        },
        "flops": int(scorer.flops()),
        "num_params": int(scorer.num_params()),
        **info,
    }
