"""patchloupe.runtimes.ov: OpenVINO results equal the torch path's (from the ONNX graph and from IR)."""

from __future__ import annotations

import pytest
from patchloupe import Detector

pytest.importorskip("openvino")

from patchloupe.runtimes.ov import OpenVinoScorer  # noqa: E402
from test_runtimes_ort import INPUTS, assert_parity  # noqa: E402


@pytest.mark.parametrize("kind", ["pattern", "memory", "selfref"])
def test_openvino_matches_torch(
    tiny_pattern_detector, small_memory_detector, small_selfref_detector, exported_graphs, kind: str
) -> None:
    ref = {"pattern": tiny_pattern_detector, "memory": small_memory_detector, "selfref": small_selfref_detector}[kind]
    det = Detector.load(exported_graphs[kind], runtime="openvino", threads=1)
    assert isinstance(det.scorer, OpenVinoScorer)
    assert_parity(ref, det, INPUTS[kind])


def test_tensorrt_runtime_cannot_read_an_onnx_graph(exported_graphs) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        Detector.load(exported_graphs["memory"], runtime="tensorrt")


@pytest.mark.slow
def test_openvino_ir_export_matches_torch(small_memory_detector, tmp_path) -> None:
    path = small_memory_detector.export(tmp_path / "ir", format="openvino")
    assert path.suffix == ".xml" and path.with_suffix(".bin").is_file()
    det = Detector.load(path.parent)
    assert isinstance(det.scorer, OpenVinoScorer) and det.scorer.meta["graph_format"] == "openvino"
    assert_parity(small_memory_detector, det, INPUTS["memory"])
