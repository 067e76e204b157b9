"""InspectionResult: summary, bounded plotting and saving."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from patchloupe import results
from patchloupe.data import IMAGE_SUFFIXES, read_image
from patchloupe.results import InspectionError, InspectionResult


def _result(h: int = 60, w: int = 80, line: bool = False) -> InspectionResult:
    rng = np.random.default_rng(0)
    amap = np.zeros((h, w), np.float32)
    mask = np.zeros((h, w), bool)
    if line:  # a one-pixel scratch
        mask[h // 2, w // 4 : w // 2] = True
    else:
        mask[10:20, 30:45] = True
    amap[mask] = 0.9
    return InspectionResult(
        score=0.9,
        is_anomalous=True,
        threshold=0.5,
        anomaly_map=amap,
        mask=mask,
        patch_map=np.eye(4, dtype=bool),
        patch_scores=np.full((4, 4), 0.25, np.float32),
        timings_ms={"preprocess": 1.0, "inference": 2.0, "postprocess": 0.5},
        image=rng.integers(0, 200, (h, w, 3), dtype=np.uint8),
        source="part.png",
    )


def test_to_dict_matches_a_reference() -> None:
    r = _result()
    d = r.to_dict()
    ys, xs = np.nonzero(r.mask)
    assert d["defect_bbox_xyxy"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == [30, 10, 45, 20]
    assert d["defect_area_px"] == 150 and d["image_hw"] == [60, 80] and d["source"] == "part.png"
    r.mask[:] = False
    assert r.to_dict()["defect_bbox_xyxy"] is None and r.to_dict()["defect_area_px"] == 0
    json.dumps(d)
    assert InspectionError("x.png", "ImageError: bad").to_dict() == {"source": "x.png", "error": "ImageError: bad"}


def test_plot_full_size_and_bounded() -> None:
    r = _result(300, 200, line=True)
    assert r.plot().shape == (300, 600, 3)
    small = r.plot(max_side=100)
    assert small.shape == (100, 3 * 67, 3)
    outline = small[:, 2 * 67 :].astype(int)
    red = (outline[..., 0] > 200) & (outline[..., 1] < 60) & (outline[..., 2] < 60)
    assert red[40:60].any()  # the one-pixel scratch survives a 3x reduction
    assert r.plot(max_side=1000).shape == (300, 600, 3)  # never enlarged
    with pytest.raises(ValueError, match="max_side"):
        r.plot(max_side=0)
    r.image = None
    with pytest.raises(ValueError, match="no image"):
        r.plot()


def test_save_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "SAVE_MAX_SIDE", 64)
    r = _result(256, 128)
    out = r.save(tmp_path / "r.png")
    assert read_image(out).shape == (64, 3 * 32, 3)
    assert json.loads(out.with_suffix(".json").read_text())["image_hw"] == [256, 128]  # the full-size result


@pytest.mark.parametrize("suffix", [*IMAGE_SUFFIXES, ".PNG", ".Jpg"])
def test_save_formats(tmp_path: Path, suffix: str) -> None:
    out = _result().save(tmp_path / f"r{suffix}")
    assert out == tmp_path / f"r{suffix}"
    assert cv2.imread(str(out)).shape == (60, 240, 3)
    assert json.loads(out.with_suffix(".json").read_text())["score"] == pytest.approx(0.9)


def test_save_without_suffix_writes_png(tmp_path: Path) -> None:
    out = _result().save(tmp_path / "sub" / "r")
    assert out.name == "r.png" and out.read_bytes()[:4] == b"\x89PNG" and (tmp_path / "sub" / "r.json").is_file()


@pytest.mark.parametrize("suffix", [".xyz", ".json", ".tif", ".webp"])
def test_save_refuses_other_suffixes(tmp_path: Path, suffix: str) -> None:
    with pytest.raises(ValueError, match=rf"'\{suffix}': use one of \.png, \.jpg, \.jpeg, \.bmp"):
        _result().save(tmp_path / f"r{suffix}")
    assert not list(tmp_path.iterdir())
