"""Run outputs: distinct names, JSON lines written as they come, results.json, overlays per --save."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from patchloupe.outputs import NameAllocator, RunOutputs
from patchloupe.results import InspectionError, InspectionResult
from patchloupe.stream import StreamResult


def _item(name: str, anomalous: bool | None) -> StreamResult:
    if anomalous is None:
        res = InspectionError(source=f"{name}.png", error="broken")
    else:
        z = np.zeros((8, 8), np.float32)
        score = 0.9 if anomalous else 0.1
        res = InspectionResult(score, anomalous, 0.5, z, z > 0, np.zeros((2, 2), bool), z[:2, :2], {})
        res.image = np.zeros((8, 8, 3), np.uint8)
        res.source = f"{name}.png"
    return StreamResult(res, f"{name}.png", 0, 1.0e9, None, name, 1.0)


def test_names_are_distinct_case_insensitively_and_never_the_summary() -> None:
    names = NameAllocator()
    got = [names.allocate(n) for n in ("results", "a", "A", "a", "sub/x", "sub/x_2", "sub/x")]
    assert got == ["results_2", "a", "A_2", "a_3", "sub/x", "sub/x_2", "sub/x_3"]


@pytest.mark.parametrize(("save", "overlays"), [("all", 2), ("flagged", 1), ("none", 0)])
def test_lines_summary_and_overlays(tmp_path: Path, save: str, overlays: int) -> None:
    out = RunOutputs(tmp_path / "o", save=save)
    records = [out.write(_item(n, a)) for n, a in (("x", True), ("y", False), ("z", None))]
    lines = [json.loads(x) for x in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert lines == records  # on disk as soon as written
    out.close()
    assert json.loads((tmp_path / "o" / "results.json").read_text()) == records
    assert len(list((tmp_path / "o").glob("*.png"))) == overlays
    assert records[2]["error"] == "broken" and records[2]["overlay"] is None


def test_empty_run_and_bad_mode(tmp_path: Path) -> None:
    RunOutputs(tmp_path / "o").close()
    assert json.loads((tmp_path / "o" / "results.json").read_text()) == []
    with pytest.raises(ValueError, match="save"):
        RunOutputs(tmp_path / "p", save="some")
