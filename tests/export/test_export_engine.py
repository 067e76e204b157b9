"""patchloupe.export.engine and patchloupe.runtimes.trt: the TensorRT path (GPU tests marked ``gpu``)."""

from __future__ import annotations

import numpy as np
import pytest
from patchloupe import Detector
from patchloupe.export.engine import MISSING_TENSORRT, tensorrt_problem


def test_engine_export_says_what_is_missing(tiny_pattern_detector, tmp_path) -> None:
    problem = tensorrt_problem()
    if problem is None:
        pytest.skip("TensorRT and a CUDA device are present")
    assert problem.startswith(MISSING_TENSORRT)
    with pytest.raises(RuntimeError, match="trtexec --onnx=model.onnx"):
        tiny_pattern_detector.export(tmp_path / "e", format="engine")
    assert not any(tmp_path.iterdir())


def test_topk_problem_names_tensorrts_limit(small_selfref_detector, tmp_path) -> None:
    onnx = pytest.importorskip("onnx", reason="export needs the 'export' extra")
    from onnx import TensorProto, helper
    from patchloupe.export.engine import TOPK_MAX, topk_problem, topk_sizes
    from patchloupe.export.onnx_graph import write_onnx

    write_onnx(small_selfref_detector.scorer, tmp_path / "s.onnx", simplify=False)
    graph = onnx.load(str(tmp_path / "s.onnx"))
    # k = 8 nearest positions, the self-reference's median over the 8 x 8 positions of a 64 x 64 image (K = 32),
    # the gate's lower quartile of them (K = floor(0.25 * 63) + 1 = 16), the medians of the four 8-cell border bands
    # (K = 4) and the smaller halves of the position classes (at most 8 cells, K = 4): constants
    assert sorted(topk_sizes(graph)) == [4, 4, 4, 4, 4, 8, 16, 32] and topk_problem(graph) is None
    k = helper.make_tensor("k", TensorProto.INT64, [1], [TOPK_MAX + 1])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2 * TOPK_MAX])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, TOPK_MAX + 1])
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [1, TOPK_MAX + 1])
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"])
    big = helper.make_model(helper.make_graph([node], "g", [x], [v, i], [k]))
    assert f"at most {TOPK_MAX}" in topk_problem(big)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["pattern", "memory", "selfref"])
def test_engine_matches_torch(
    tiny_pattern_detector, small_memory_detector, small_selfref_detector, tmp_path, kind: str
) -> None:
    pytest.importorskip("tensorrt")
    from test_runtimes_ort import INPUTS

    ref = {"pattern": tiny_pattern_detector, "memory": small_memory_detector, "selfref": small_selfref_detector}[kind]
    det = Detector.load(ref.export(tmp_path / "m.engine", format="engine", half=False, batch="dynamic"))
    assert det.scorer.runtime == "tensorrt"
    for w, g in zip(ref.inspect_many(INPUTS[kind]), det.inspect_many(INPUTS[kind], batch_size=3)):
        assert abs(w.score - g.score) <= 1e-3
        assert np.abs(g.anomaly_map - w.anomaly_map).max() <= 1e-2
