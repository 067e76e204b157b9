"""``GraphScorer``: the part of every runtime's scorer that does not depend on the runtime (torch-free).

A runtime implements ``_run(batch) -> {output name: array}`` for a uint8 batch ``(B, H, W, 3)``;
this class handles a graph exported for batch 1 (runs images one at a time), picks the patch scores
and the field the graph's metadata names, and answers the ``Scorer`` questions from the metadata.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from patchloupe.scorers.base import Scorer

__all__ = ["GraphScorer"]


class GraphScorer(Scorer):
    """A ``Scorer`` backed by an exported graph; ``name`` and ``pixel_rule`` are those of the exported scorer."""

    runtime: str = ""

    def __init__(self, graph: Path, meta: dict[str, Any]) -> None:
        self.graph_path = Path(graph)
        self.meta = meta
        self.name = meta["scorer"]  # type: ignore[misc]  (per instance: the scorer that was exported)
        self.pixel_rule = meta["pixel_rule"]  # type: ignore[misc]
        self.image_size = tuple(meta["detector"]["image_size"])  # type: ignore[assignment]
        self.grid = tuple(meta["detector"]["grid"])  # type: ignore[assignment]
        self.batch = meta.get("batch", 1)
        self.input_name = meta.get("input", {}).get("name", "images")
        self.patch_output = meta["outputs"]["patch_scores"]
        self.field_output = meta["outputs"]["field"]

    @abstractmethod
    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 ``(B, H, W, 3)`` -> the graph's outputs by name (B = 1 for a batch-1 graph)."""

    def infer(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(B, H', W', 3)`` at the model size -> patch scores float64 ``(B, rows, cols)`` and fields."""
        inputs = np.ascontiguousarray(inputs, dtype=np.uint8)
        if inputs.ndim != 4 or tuple(inputs.shape[1:3]) != tuple(self.image_size) or inputs.shape[3] != 3:
            raise ValueError(f"expected uint8 (B, {self.image_size[0]}, {self.image_size[1]}, 3), got {inputs.shape}")
        parts = [inputs[i : i + 1] for i in range(len(inputs))] if self.batch == 1 else [inputs]
        outs = [self._run(p) for p in parts]
        scores = np.concatenate([o[self.patch_output] for o in outs]).astype(np.float64)
        fields = np.concatenate([o[self.field_output] for o in outs]).astype(np.float32, copy=False)
        return scores, fields

    def run_all(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the graph for uint8 ``(B, H, W, 3)`` (for checks and other-language parity)."""
        parts = [inputs[i : i + 1] for i in range(len(inputs))] if self.batch == 1 else [inputs]
        outs = [self._run(np.ascontiguousarray(p, dtype=np.uint8)) for p in parts]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def settings(self) -> dict[str, Any]:
        return dict(self.meta.get("scorer_config", {}))

    def tensors(self) -> dict[str, dict[str, Any]]:
        raise NotImplementedError("an exported graph holds no torch tensors: save the torch model instead")

    @classmethod
    def from_saved(cls, settings, tensors, image_size, grid):  # noqa: ANN001, ANN206 - not applicable
        raise NotImplementedError("exported graphs are loaded with patchloupe.runtimes.load_graph")

    @property
    def device(self) -> str:
        return self.runtime

    def flops(self) -> int:
        return int(self.meta.get("flops", 0))

    def num_params(self) -> int:
        return int(self.meta.get("num_params", 0))

    def __repr__(self) -> str:
        precision = self.meta.get("precision")
        return f"{type(self).__name__}({str(self.graph_path)!r}, scorer={self.name!r}, precision={precision})"
