"""Torch-free runtimes for exported graphs (``patchloupe.export``): each is a ``Scorer`` whose ``infer``
runs the graph, so ``patchloupe.pipeline`` and ``patchloupe.pixelmaps`` treat it like the torch scorer.

``load_graph(path, runtime=None, **options)`` -> ``(DetectorConfig, Scorer)``; the runtime defaults to
the graph's format (``.onnx``: ONNX Runtime, ``.xml``: OpenVINO, ``.engine``: TensorRT).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from patchloupe.artefact import read_meta
from patchloupe.config import DetectorConfig
from patchloupe.errors import ModelError
from patchloupe.scorers.base import Scorer

#: runtime name -> "module:Class"
RUNTIMES: dict[str, str] = {
    "onnxruntime": "patchloupe.runtimes.ort:OnnxScorer",
    "openvino": "patchloupe.runtimes.ov:OpenVinoScorer",
    "tensorrt": "patchloupe.runtimes.trt:TensorRTScorer",
}
#: graph format -> default runtime, and the runtimes that can read it
DEFAULT_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino", "engine": "tensorrt"}
READS = {"onnxruntime": ("onnx",), "openvino": ("onnx", "openvino"), "tensorrt": ("engine",)}

__all__ = ["RUNTIMES", "load_graph"]


def load_graph(
    path: str | os.PathLike[str], runtime: str | None = None, **options: Any
) -> tuple[DetectorConfig, Scorer]:
    """Load an exported graph with ``runtime`` (default: by its format); ``options`` go to the runtime
    (ONNX Runtime: ``providers``, ``threads``; OpenVINO: ``device``, ``threads``)."""
    graph, meta = read_meta(path)
    fmt = meta["graph_format"]
    runtime = runtime or DEFAULT_RUNTIME.get(fmt)
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {tuple(RUNTIMES)}, got {runtime!r}")
    if fmt not in READS[runtime]:
        raise ValueError(f"the {runtime} runtime cannot read a {fmt!r} graph (it reads {READS[runtime]})")
    try:
        config = DetectorConfig(**meta["detector"])
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{str(graph)!r}: the artefact holds an invalid configuration ({exc})") from exc
    module, cls = RUNTIMES[runtime].split(":")
    scorer = getattr(importlib.import_module(module), cls)(graph, meta, **options)
    return config, scorer
