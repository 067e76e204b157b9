"""The scorer interface that the ``Detector`` facade drives (torch-free, so runtimes can implement it).

A scorer turns images resized to the model size into

* patch scores ``(B, rows, cols)`` in [0, 1] (higher = more anomalous; a patch is anomalous when its
  score reaches the threshold, and the image score is the maximum), and
* a pixel *field* per image, which ``patchloupe.pixelmaps`` turns into the anomaly map and the outline
  at the input's size by the scorer's ``pixel_rule``: ``"stitch"`` (per-patch fields ``(P, mh, mw)``,
  stitched bilinearly and weighted by the patch scores) or ``"resize"`` (one field ``(H', W')`` at the
  model size that is the score map itself).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

__all__ = ["Scorer", "patch_maxima"]


class Scorer(ABC):
    """One way of scoring images; see the module docstring for the contract."""

    #: registered name (``patchloupe.scorers.SCORERS``), saved in ``detector.json``
    name: ClassVar[str]
    #: how ``patchloupe.pixelmaps`` turns the field into pixel maps: "stitch" or "resize"
    pixel_rule: ClassVar[str]

    image_size: tuple[int, int]
    grid: tuple[int, int]

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """uint8 ``(H', W', 3)`` at the model size -> this scorer's per-image input (default: itself)."""
        return image

    @abstractmethod
    def infer(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stacked ``prepare`` outputs ``(B, ...)`` -> patch scores float64 ``(B, rows, cols)`` in [0, 1]
        and fields float32 ``(B, P, mh, mw)`` (stitch rule) or ``(B, H', W')`` (resize rule)."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """JSON-safe settings saved in ``detector.json`` under ``scorer_config``."""

    @abstractmethod
    def tensors(self) -> dict[str, dict[str, Any]]:
        """The weights to save: ``{entry: {name: tensor}}``, one safetensors file per entry."""

    @classmethod
    @abstractmethod
    def from_saved(
        cls,
        settings: dict[str, Any],
        tensors: dict[str, dict[str, Any]],
        image_size: tuple[int, int],
        grid: tuple[int, int],
    ) -> Scorer:
        """Rebuild from ``settings()`` and ``tensors()`` output (raises ValueError/KeyError/TypeError/RuntimeError
        when they do not fit each other)."""

    #: the tensor entries ``from_saved`` needs
    entries: ClassVar[tuple[str, ...]] = ()

    def to(self, device: Any) -> Scorer:
        """Move to ``device`` (a torch device or its name); returns ``self``."""
        return self

    def calibrating(self) -> contextlib.AbstractContextManager[None]:
        """A context the detector scores its calibration images in (default: nothing changes; a scorer whose scores
        depend on the threshold being calibrated, such as a stream pool's admission, suspends that)."""
        return contextlib.nullcontext()

    @property
    def device(self) -> str:
        return "cpu"

    def flops(self) -> int:
        """Network FLOPs (2 x MACs) to score one image."""
        raise NotImplementedError

    def num_params(self) -> int:
        """Numbers held by the networks and memories the scorer runs."""
        raise NotImplementedError

    def image_scores(self, resized: Sequence[np.ndarray], batch_size: int = 8) -> np.ndarray:
        """Image scores ``(N,)`` (max patch score) of uint8 images already at the model size."""
        out = []
        for i in range(0, len(resized), batch_size):
            scores, _ = self.infer(np.stack([self.prepare(im) for im in resized[i : i + batch_size]]))
            out.append(scores.reshape(len(scores), -1).max(axis=1))
        return np.concatenate(out) if out else np.zeros(0)


def patch_maxima(amap: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Score maps ``(B, H, W)`` (H, W divisible by the grid) -> each patch's maximum, float64 ``(B, rows, cols)``."""
    b, h, w = amap.shape
    rows, cols = grid
    return amap.reshape(b, rows, h // rows, cols, w // cols).max(axis=(2, 4)).astype(np.float64)
