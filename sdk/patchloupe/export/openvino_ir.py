"""OpenVINO IR (``.xml`` + ``.bin``) from an exported ONNX graph."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_ir"]


def write_ir(onnx_file: Path, out: Path, half: bool = False) -> None:
    """Convert ``onnx_file`` to ``out`` (``.xml``; weights in ``.bin`` beside it); ``half`` stores the weights
    as float16 (OpenVINO's CPU plugin still computes in float32)."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise ImportError("format='openvino' needs OpenVINO: pip install 'patchloupe[openvino]'") from exc
    ov.save_model(ov.convert_model(str(onnx_file)), str(out), compress_to_fp16=bool(half))
