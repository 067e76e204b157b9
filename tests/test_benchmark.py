"""patchloupe.benchmark: one table of formats measured in one run."""

from __future__ import annotations

import pytest
from patchloupe.benchmark import FORMATS, run_benchmark, to_markdown
from patchloupe.data import generate_dataset


@pytest.mark.slow
def test_benchmark_measures_torch_and_onnxruntime_and_reports_what_is_missing(small_memory_detector, tmp_path) -> None:
    small_memory_detector.save(tmp_path / "model")
    data = generate_dataset(tmp_path / "data", families=("cloth",), n_train=2, n_test_good=3,
                            n_test_defect_per_kind=1, size=64, seed=1, kinds=("hole",))[0]  # fmt: skip
    rows = run_benchmark(tmp_path / "model", data, tmp_path / "out", formats=("torch", "onnxruntime", "tensorrt"),
                         threads=1, repeats=2)  # fmt: skip
    by = {r["format"]: r for r in rows}
    for fmt in ("torch", "onnxruntime"):
        r = by[fmt]
        assert "status" not in r, r
        assert r["size_mb"] > 0 and r["load_s"] > 0 and r["ms_per_image"] > 0
        assert 0.0 <= r["image_auroc"] <= 1.0
    assert abs(by["torch"]["image_auroc"] - by["onnxruntime"]["image_auroc"]) <= 1e-6
    assert abs(by["torch"]["pixel_auroc"] - by["onnxruntime"]["pixel_auroc"]) <= 1e-3
    assert by["tensorrt"]["status"].startswith("unavailable")
    table = to_markdown(rows)
    assert table.count("\n") == 4 and "| onnxruntime |" in table


def test_unknown_format_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="formats must be among"):
        run_benchmark(None, None, tmp_path, formats=("torch", "coreml"))
    assert "onnxruntime-int8" in FORMATS
