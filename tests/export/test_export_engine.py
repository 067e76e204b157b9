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


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["pattern", "memory"])
def test_engine_matches_torch(tiny_pattern_detector, small_memory_detector, tmp_path, kind: str) -> None:
    pytest.importorskip("tensorrt")
    from test_runtimes_ort import INPUTS

    ref = tiny_pattern_detector if kind == "pattern" else small_memory_detector
    det = Detector.load(ref.export(tmp_path / "m.engine", format="engine", half=False, batch="dynamic"))
    assert det.scorer.runtime == "tensorrt"
    for w, g in zip(ref.inspect_many(INPUTS[kind]), det.inspect_many(INPUTS[kind], batch_size=3)):
        assert abs(w.score - g.score) <= 1e-3
        assert np.abs(g.anomaly_map - w.anomaly_map).max() <= 1e-2
