"""The demo: generated data, the default scorer fitted per family beside the built-in model, overlays, summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from patchloupe.demo import run_demo


@pytest.mark.slow
def test_run_demo_fits_the_default_scorer_and_writes_the_summary(tmp_path: Path) -> None:
    from patchloupe.scorers.memory import memory_available

    if not memory_available():
        pytest.skip("the default scorer's trunk weights are not installed")
    summary = run_demo(out_dir=tmp_path / "out", data_dir=tmp_path / "data", families=("metal",))
    models = [r["model"] for r in summary["families"]]
    assert models == ["fitted (selfref)", "built-in (selfref)"]  # the built-in default is the zero-shot selfref
    for row in summary["families"]:
        assert row["n_images"] == 16 and 0.0 <= row["image_auroc"] <= 1.0
    fitted = summary["families"][0]
    assert fitted["image_auroc"] >= 0.8  # an obvious generated defect set: a broken fit would sit near 0.5
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["families"] == summary["families"]
    assert "fitted (selfref)" in (tmp_path / "out" / "summary.md").read_text()
    assert len(list((tmp_path / "out" / "metal").glob("*.png"))) >= 2  # overlays of the fitted model
