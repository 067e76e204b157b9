"""ONNX Runtime backend for exported graphs (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from patchloupe.runtimes.graph import GraphScorer

__all__ = ["OnnxScorer", "default_providers"]


def default_providers() -> list[str]:
    """TensorRT, then CUDA, then CPU: the execution providers this onnxruntime build has, in that order."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


class OnnxScorer(GraphScorer):
    """Runs an exported ``.onnx`` graph with ONNX Runtime.

    ``providers``: execution providers in order of preference (default: CPU only, so results match the
    CPU torch path; pass ``default_providers()`` for CUDA/TensorRT where present); ``threads``: intra-op
    threads (default: ONNX Runtime's choice)."""

    runtime = "onnxruntime"

    def __init__(
        self, graph: Path, meta: dict[str, Any], providers: Sequence[Any] | None = None, threads: int | None = None
    ) -> None:
        super().__init__(graph, meta)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("running an .onnx model needs onnxruntime: pip install onnxruntime") from exc
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        providers = list(providers) if providers else ["CPUExecutionProvider"]
        unknown = [p for p in providers if (p[0] if isinstance(p, tuple) else p) not in ort.get_available_providers()]
        if unknown:
            raise ValueError(f"providers {unknown} are not in this onnxruntime ({ort.get_available_providers()})")
        self.session = ort.InferenceSession(str(graph), sess_options=opts, providers=providers)
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: batch})))
