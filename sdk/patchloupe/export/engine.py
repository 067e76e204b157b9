"""TensorRT engines (``format="engine"``) from an exported ONNX graph, for Jetson and other NVIDIA GPUs.

The graph is built strongly typed when TensorRT offers it (TensorRT >= 9): the precision of every layer
is the ONNX graph's (float16 networks with ``half``, float32 search and intersection), so the engine
gives the numbers the ONNX graph gives. The equivalent command line (README, "Deploy")::

    trtexec --onnx=model.onnx --saveEngine=model.engine --stronglyTyped
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["MISSING_TENSORRT", "TOPK_MAX", "build_engine", "tensorrt_problem", "topk_problem", "topk_sizes"]

MISSING_TENSORRT = (
    "format='engine' needs TensorRT's Python package and a CUDA device: on a Jetson, JetPack ships it "
    "(sudo apt install python3-libnvinfer); elsewhere pip install tensorrt. Without them, export ONNX and "
    "build on the target: trtexec --onnx=model.onnx --saveEngine=model.engine --stronglyTyped"
)

#: dynamic-batch engines are built for batches 1..MAX_BATCH (optimised for OPT_BATCH)
MAX_BATCH, OPT_BATCH = 16, 4
#: TensorRT's TopK takes at most this many elements (the self-reference scorer's per-image medians take
#: half the positions of the stride-8 grid: (H/8 * W/8 + 1) // 2)
TOPK_MAX = 3840


def tensorrt_problem() -> str | None:
    """Why an engine cannot be built here (None when TensorRT and a CUDA device are present)."""
    try:
        import tensorrt as trt
    except ImportError:
        return MISSING_TENSORRT + " (tensorrt is not installed)"
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as exc:  # noqa: BLE001 - no GPU / driver shows up as a builder failure
        return f"{MISSING_TENSORRT} (TensorRT found no usable CUDA device: {exc})"
    if builder is None:
        return f"{MISSING_TENSORRT} (TensorRT found no usable CUDA device)"
    return None


def topk_sizes(model: Any) -> list[int]:
    """The constant ``K`` of each TopK node of the ONNX ``model`` (an initializer or a Constant node's output)."""
    from onnx import numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    return [int(numpy_helper.to_array(consts[n.input[1]]).max()) for n in model.graph.node
            if n.op_type == "TopK" and len(n.input) > 1 and n.input[1] in consts]  # fmt: skip


def topk_problem(model: Any) -> str | None:
    """Why TensorRT cannot run the ONNX ``model``'s TopK nodes (a ``K`` above :data:`TOPK_MAX`), or None."""
    ks = topk_sizes(model)
    if ks and max(ks) > TOPK_MAX:
        return (
            f"TensorRT's TopK takes at most {TOPK_MAX} elements, the graph needs {max(ks)} (the self-reference "
            "scorer's medians over the stride-8 positions: of the image and of its position classes): fit at a "
            "smaller image_size, or run the ONNX graph with ONNX Runtime's CUDA provider"
        )
    return None


def build_engine(onnx_file: Path, out: Path, half: bool = True, batch: int | str = 1) -> dict[str, Any]:
    """Build and write the engine; returns facts for the artefact (TensorRT version, typing)."""
    problem = tensorrt_problem()
    if problem is not None:
        raise RuntimeError(problem)
    import onnx

    problem = topk_problem(onnx.load(str(onnx_file)))
    if problem is not None:
        raise ValueError(problem)
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if strongly:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_file).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse the exported graph: {errors}")
    config = builder.create_builder_config()
    if half and not strongly:
        config.set_flag(trt.BuilderFlag.FP16)
    if batch == "dynamic":
        inp = network.get_input(0)
        _, h, w, c = inp.shape
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, (1, h, w, c), (OPT_BATCH, h, w, c), (MAX_BATCH, h, w, c))
        config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    Path(out).write_bytes(bytes(engine))
    return {"tensorrt_version": trt.__version__, "strongly_typed": strongly, "max_batch": MAX_BATCH}


def engine_artefact(onnx_graph: str | Path, out: str | Path | None = None) -> Path:
    """Build an engine from an exported ONNX artefact on the target device, without torch (Jetson recipe in
    the README): writes ``out`` (default: ``<stem>_trt.engine`` beside the graph; the JSON beside a graph is
    ``<stem>.json``, so the engine needs a stem of its own) and its JSON; returns its path."""
    from patchloupe.artefact import read_meta, write_meta

    graph, meta = read_meta(onnx_graph)
    if meta["graph_format"] != "onnx":
        raise ValueError(f"an engine is built from an ONNX graph, not from {meta['graph_format']!r}")
    target = Path(out) if out is not None else graph.with_name(f"{graph.stem}_trt.engine")
    if target.with_suffix(".json") == graph.with_suffix(".json"):
        raise ValueError(f"{target.name} would share {graph.stem}.json with the ONNX graph: give it another name")
    if target.suffix != ".engine":
        raise ValueError(f"the engine file must end with .engine, got {target.name}")
    info = build_engine(graph, target, half=meta.get("precision") == "fp16", batch=meta.get("batch", 1))
    drop = ("kind", "artefact_version", "graph", "graph_sha256")
    write_meta(target, {**{k: v for k, v in meta.items() if k not in drop}, "graph_format": "engine", **info})
    return target
