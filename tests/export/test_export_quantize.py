"""patchloupe.export.quantize: int8 graphs quantize the networks and keep the graph's arithmetic in float."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import striped_surface
from patchloupe import Detector

onnx = pytest.importorskip("onnx", reason="export needs the 'export' extra")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["memory", "selfref"])
@pytest.mark.parametrize("calibrated", [False, True])
def test_int8_memory_graph_runs_and_keeps_the_search_in_float(request, tmp_path, calibrated, kind: str) -> None:
    cal = [striped_surface(s + 300) for s in range(4)] if calibrated else None
    ref = request.getfixturevalue(f"small_{kind}_detector")
    path = ref.export(tmp_path / "q.onnx", int8=True, calibration=cal)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops & {"ConvInteger", "QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger"}
    det = Detector.load(path)
    q = det.scorer.meta["quantization"]
    assert q["mode"] == ("static" if calibrated else "dynamic") and q["float_nodes"] >= 1
    imgs = [striped_surface(s + 50, hole=s % 2 == 1) for s in range(4)]
    scores = [r.score for r in det.inspect_many(imgs)]
    assert all(np.isfinite(scores)) and all(0.0 <= s <= 1.0 for s in scores)
    # the search MatMuls (top-level nodes) are not quantized
    top = [n for n in onnx.load(str(path)).graph.node if n.name.strip("/").count("/") == 0]
    assert any(n.op_type == "MatMul" for n in top)
