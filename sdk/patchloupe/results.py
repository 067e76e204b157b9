"""Inspection results: what ``Detector.inspect`` returns, with plotting and serialisation."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from patchloupe.data.io import IMAGE_SUFFIXES
from patchloupe.fileio import atomic_write_bytes

#: ``InspectionResult.save`` draws its panel with the input's longer side scaled down to this many pixels when it
#: is larger (the ``.json`` beside it always describes the full-size result); ``plot()`` alone stays full size.
SAVE_MAX_SIDE = 2048


@dataclass
class InspectionResult:
    """The verdict on one image.

    Attributes:
        score: image anomaly score in [0, 1], higher = more anomalous (max of the final patch scores).
        is_anomalous: ``score >= threshold``, i.e. at least one patch is anomalous in every direction
            that could predict it.
        threshold: the threshold that was applied.
        anomaly_map: float32 ``(H, W)`` at the input's original size, in [0, 1].
        mask: bool ``(H, W)``: the outlined defect pixels (empty when ``is_anomalous`` is False).
        patch_map: bool ``(rows, cols)``: the final intersected patch verdicts.
        patch_scores: float32 ``(rows, cols)``: the final intersected patch scores.
        timings_ms: ``{"preprocess", "inference", "postprocess"}`` in milliseconds.
        image: the RGB uint8 ``(H, W, 3)`` input (kept for ``plot``; not serialised).
        source: where the image came from (path, frame id, or ``None``).
    """

    score: float
    is_anomalous: bool
    threshold: float
    anomaly_map: np.ndarray
    mask: np.ndarray
    patch_map: np.ndarray
    patch_scores: np.ndarray
    timings_ms: dict[str, float]
    image: np.ndarray | None = field(default=None, repr=False)
    source: str | None = None
    ok: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no pixel arrays except the small patch map)."""
        mask = np.asarray(self.mask, dtype=bool)
        rows, cols = mask.any(axis=1), mask.any(axis=0)  # O(H + W) memory, not O(defect pixels)
        bbox = None
        if rows.any():
            ys, xs = np.flatnonzero(rows), np.flatnonzero(cols)
            bbox = [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1]
        return {
            "source": self.source,
            "score": float(self.score),
            "is_anomalous": bool(self.is_anomalous),
            "threshold": float(self.threshold),
            "patch_map": self.patch_map.astype(int).tolist(),
            "patch_scores": [[round(float(v), 6) for v in row] for row in self.patch_scores],
            "defect_area_px": int(np.count_nonzero(mask)),
            "defect_bbox_xyxy": bbox,
            "image_hw": [int(self.anomaly_map.shape[0]), int(self.anomaly_map.shape[1])],
            "timings_ms": {k: round(float(v), 3) for k, v in self.timings_ms.items()},
        }

    def plot(self, max_side: int | None = None) -> np.ndarray:
        """RGB uint8 ``(H, 3*W, 3)`` panel: original | anomaly map overlay | defect outline.

        ``max_side``: draw the panel with the image's longer side scaled down to this many pixels when it is larger
        (area interpolation; the outline is traced at full size and scaled, so thin defects stay visible).
        """
        if self.image is None:
            raise ValueError("this result carries no image (inspect(..., keep_image=False)); cannot plot")
        img, amap = np.ascontiguousarray(self.image), np.asarray(self.anomaly_map, dtype=np.float32)
        mask = np.ascontiguousarray(self.mask, dtype=bool).view(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        h, w = img.shape[:2]
        if max_side is not None and int(max_side) < 1:
            raise ValueError(f"max_side must be positive, got {max_side}")
        if max_side is not None and max(h, w) > max_side:
            s = int(max_side) / max(h, w)
            size = (max(1, round(w * s)), max(1, round(h * s)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            amap = cv2.resize(amap, size, interpolation=cv2.INTER_AREA)
            contours = [np.floor(c * s).astype(np.int32) for c in contours]
        heat = cv2.applyColorMap(np.clip(amap * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
        heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
        overlay = cv2.addWeighted(img, 0.5, heat, 0.5, 0.0)
        outline = img.copy()
        thickness = max(1, round(min(img.shape[:2]) / 200))
        cv2.drawContours(outline, contours, -1, (255, 0, 0), thickness)
        panel = np.concatenate([img, overlay, outline], axis=1)
        label = f"{'ANOMALY' if self.is_anomalous else 'ok'} score={self.score:.3f} thr={self.threshold:.3f}"
        scale = max(0.35, min(img.shape[:2]) / 640)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(panel, (0, 0), (tw + 8, th + base + 8), (0, 0, 0), -1)
        color = (255, 80, 80) if self.is_anomalous else (80, 255, 80)
        cv2.putText(panel, label, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
        return panel

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``plot(max_side=SAVE_MAX_SIDE)`` as an image and ``to_dict()`` as a ``.json`` beside it.

        The format follows the suffix (PNG when there is none); ValueError naming it when it is not one of
        ``patchloupe.data.IMAGE_SUFFIXES``.
        """
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".png")
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            raise ValueError(f"cannot save a result as {path.suffix!r}: use one of {', '.join(IMAGE_SUFFIXES)}")
        panel = self.plot(max_side=SAVE_MAX_SIDE)
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(suffix, cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError(f"cannot encode an image with suffix {path.suffix!r}")
        atomic_write_bytes(path, buf.tobytes())
        atomic_write_bytes(path.with_suffix(".json"), json.dumps(self.to_dict(), indent=2).encode())
        return path


@dataclass
class InspectionError:
    """Stands in for a result when one item of a batch could not be inspected."""

    source: str | None
    error: str
    ok: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "error": self.error}
