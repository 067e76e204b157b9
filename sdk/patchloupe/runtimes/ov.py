"""OpenVINO backend for exported graphs (``.xml`` IR or ``.onnx``; torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from patchloupe.runtimes.graph import GraphScorer

__all__ = ["OpenVinoScorer"]


class OpenVinoScorer(GraphScorer):
    """Runs an exported graph with OpenVINO on ``device`` (default ``"CPU"``).

    ``precision`` is OpenVINO's inference precision hint: ``"f32"`` by default, so that a CPU with
    bf16/fp16 units does not silently trade accuracy for speed; ``threads``: inference threads."""

    runtime = "openvino"

    def __init__(
        self,
        graph: Path,
        meta: dict[str, Any],
        device: str = "CPU",
        threads: int | None = None,
        precision: str = "f32",
    ) -> None:
        super().__init__(graph, meta)
        try:
            import openvino as ov
        except ImportError as exc:
            raise ImportError("running a model with OpenVINO needs it: pip install openvino") from exc
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(graph)), device, config)
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.request = self.compiled.create_infer_request()

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        res = self.request.infer({self.input_name: batch})
        return {name: np.array(res[out]) for name, out in zip(self.output_names, self.compiled.outputs)}
