"""Trace a scorer's export network (``scorer.export_module``) to ONNX, check it and simplify it."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from patchloupe.models.attention import attention_backend

log = logging.getLogger(__name__)

__all__ = ["check_operators", "write_onnx", "ALLOWED_OPS"]

#: the operators an exported graph may use: all run on ONNX Runtime, OpenVINO and TensorRT's ONNX parser
ALLOWED_OPS = frozenset(
    "Add Sub Mul Div Pow Sqrt Exp Neg Abs Erf Sigmoid Relu Clip Max Min Where Equal Less Greater Not Cast "
    "MatMul Gemm Conv MaxPool AveragePool GlobalAveragePool Softmax LayerNormalization ReduceMean ReduceMax "
    "ReduceMin ReduceSum Reshape Transpose Concat Slice Gather Unsqueeze Squeeze Expand Shape Constant "
    "ConstantOfShape Pad Resize Identity Flatten Range Tile Split Mod Floor DequantizeLinear QuantizeLinear "
    "TopK Log Reciprocal ReduceProd".split()  # the self-reference scorer: k nearest / medians, the normalisations
)


def write_onnx(
    scorer: Any, path: Path, half: bool = False, batch: int | str = 1, opset: int = 17, simplify: bool = True
) -> dict[str, Any]:
    """Write ``scorer``'s graph to ``path``; returns facts for the artefact (operators, peak memory, sizes).

    The window attention is traced through the ``"reference"`` backend (``patchloupe.models.attention``):
    MatMul(q * scale, k^T) -> Add(bias + shift mask) -> Softmax -> MatMul, the form TensorRT fuses.
    """
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("export needs onnx: pip install 'patchloupe[export]'") from exc
    net = scorer.export_module(half=half).eval()
    h, w = scorer.image_size
    example = torch.zeros(1 if batch == 1 else 2, h, w, 3, dtype=torch.uint8)
    outputs = ["image_score", "patch_scores", "anomaly_map"] + (["field"] if scorer.pixel_rule == "stitch" else [])
    dynamic = None
    if batch == "dynamic":
        dynamic = {name: {0: "batch"} for name in ["images", *outputs]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():  # one eager pass first: cached per-size constants (Swin window masks) stay constants
        net(example)
    with warnings.catch_warnings(), attention_backend(net, "reference"), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on python ints taken from shapes (static by design)
        torch.onnx.export(
            net, (example,), str(path), input_names=["images"], output_names=outputs,
            dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True, dynamo=False,
        )  # fmt: skip
    model = onnx.load(str(path))
    if simplify:
        model = _slim(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    check_operators(model)
    ops = sorted({n.op_type for n in model.graph.node})
    return {"operators": ops, **_memory_facts(net, scorer)}


def _slim(model: Any) -> Any:
    """onnxslim's constant folding and dead-node removal when it is installed (same numbers, fewer nodes)."""
    try:
        import onnxslim
    except ImportError:
        log.info("onnxslim is not installed: the graph is not simplified")
        return model
    try:
        return onnxslim.slim(model)
    except Exception as exc:  # noqa: BLE001 - simplification is an optimisation, never a reason to fail
        log.warning("onnxslim failed (%s): keeping the unsimplified graph", exc)
        return model


def check_operators(model: Any) -> None:
    """Raise ``ValueError`` when the graph uses an operator outside :data:`ALLOWED_OPS`."""
    bad = sorted({n.op_type for n in model.graph.node} - ALLOWED_OPS)
    if bad:
        raise ValueError(f"the exported graph uses operators not supported everywhere: {bad}")


def _memory_facts(net: torch.nn.Module, scorer: Any) -> dict[str, Any]:
    """The nearest-neighbour search's largest buffer, for scorers that search a memory."""
    chunk = getattr(net, "chunk", None)
    if chunk is None:
        return {}
    h, w = scorer.image_size
    positions = (h // 8) * (w // 8)
    rows = min(chunk, int(net.bank.shape[0]))
    return {"search_chunk": int(chunk), "search_peak_bytes_per_image": int(positions * rows * 4)}
