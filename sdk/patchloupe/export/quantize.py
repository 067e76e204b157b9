"""int8 graphs: ONNX Runtime quantization of an exported ``.onnx`` graph's networks (not its arithmetic).

Only nodes inside the scorer's networks are quantized (the generator and comparator, or the memory's
trunk: node names with a module scope); the graph's own arithmetic (the nearest-neighbour search, the
intersection, the maps) stays float32, since int8 squared distances or logits would change verdicts.
Static quantization (QDQ, per-channel weights) calibrates activations on defect-free images; without
them the weights are quantized and the activations are quantized on the fly (dynamic).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["quantize_onnx"]

_OPS = ["Conv", "MatMul", "Gemm"]


def _network_nodes_excluded(model: Any) -> list[str]:
    """Names of the quantizable nodes outside any module scope (``/MatMul_3``: the wrapper's own arithmetic)."""
    return [n.name for n in model.graph.node if n.op_type in _OPS and n.name.strip("/").count("/") == 0]


def quantize_onnx(path: Path, scorer: Any, calibration: Sequence[Any] | None = None) -> dict[str, Any]:
    """Quantize the graph at ``path`` in place; returns facts for the artefact."""
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
    except ImportError as exc:
        raise ImportError("int8 export needs onnxruntime: pip install 'patchloupe[export]'") from exc
    model = onnx.load(str(path))
    exclude = _network_nodes_excluded(model)
    tmp = path.with_suffix(".int8.onnx")
    if calibration is None:
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=_OPS,
                         nodes_to_exclude=exclude)  # fmt: skip
        mode, n_cal = "dynamic", 0
    else:
        from patchloupe.preprocess import load_rgb, resize_for_model

        images = [resize_for_model(load_rgb(im), scorer.image_size) for im in calibration]
        if not images:
            raise ValueError("static int8 quantization needs at least one calibration image")

        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it: Iterator[np.ndarray] = iter(images)

            def get_next(self) -> dict[str, np.ndarray] | None:
                im = next(self._it, None)
                return None if im is None else {"images": im[None]}

        quantize_static(
            str(path), str(tmp), _Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=_OPS,
            nodes_to_exclude=exclude, per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
        )  # fmt: skip
        mode, n_cal = "static", len(images)
    tmp.replace(path)
    log.info("int8 (%s) quantization: %d arithmetic nodes kept in float32", mode, len(exclude))
    return {"quantization": {"mode": mode, "calibration_images": n_cal, "float_nodes": len(exclude)}}
