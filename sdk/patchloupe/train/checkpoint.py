"""Training checkpoints: model, optimizer, LR scheduler, AMP grad scaler, step, RNG states and caller extras.

Arbitrary nested state dicts are split by :func:`encode_state` into a flat ``{path: tensor}`` dict
(stored as safetensors) and a JSON tree that keeps Python types exact (tuples, int dict keys, floats
round-trip bit-for-bit); files are a :mod:`patchloupe.train.weights` pair, written atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from patchloupe.fileio import atomic_write_json
from patchloupe.train.distributed import unwrap_model
from patchloupe.train.rng import capture_rng_state, restore_rng_state
from patchloupe.train.weights import RESERVED_KEY, WeightsError, read_json, read_tensors, save_weights, weights_paths

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "patchloupe-checkpoint/1"

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "CheckpointError", "CheckpointManager", "decode_state", "encode_state"]


class CheckpointError(WeightsError):
    """A training checkpoint is missing, corrupt or does not fit the run being resumed."""


# ---------------------------------------------------------------------------------------------
# generic, pickle-free state encoding (optimizer / scheduler / scaler / RNG state dicts)
# ---------------------------------------------------------------------------------------------


def encode_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """Split a nested state into JSON-able structure + a flat ``{path: tensor}`` dict (filled in place).

    Supported leaves: ``None``, ``bool``, ``int``, ``float``, ``str``, ``torch.Tensor``,
    ``np.ndarray`` / numpy scalars, nested in ``dict`` (any hashable scalar keys), ``list``,
    ``tuple``. Tensors are replaced by ``{"__tensor__": path}`` (arrays by ``{"__ndarray__": path}``),
    tuples by ``{"__tuple__": [...]}`` and dicts whose keys are not all ``str`` by
    ``{"__dict__": [[key, value], ...]}``, so :func:`decode_state` rebuilds the exact same types.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        key = prefix or "tensor"
        if key in tensors:
            raise ValueError(f"duplicate tensor path {key!r}")
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = prefix or "array"
        if key in tensors:
            raise ValueError(f"duplicate tensor path {key!r}")
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, tensors, f"{prefix}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, tensors, f"{prefix}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") and k.endswith("__") for k in obj):
            return {k: encode_state(v, tensors, f"{prefix}/{k}") for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"unsupported dict key type {type(k).__name__} at {prefix!r}")
            items.append([k, encode_state(v, tensors, f"{prefix}/{k}")])
        return {"__dict__": items}
    raise TypeError(f"cannot encode {type(obj).__name__} at {prefix!r} without pickling")


def decode_state(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_state`."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            ((tag, value),) = obj.items()
            if tag == "__tensor__":
                return tensors[value]
            if tag == "__ndarray__":
                return tensors[value].numpy().copy()
            if tag == "__tuple__":
                return tuple(decode_state(v, tensors) for v in value)
            if tag == "__dict__":
                return {k: decode_state(v, tensors) for k, v in value}
        return {k: decode_state(v, tensors) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A loaded training checkpoint (objects passed to :meth:`CheckpointManager.load` are restored)."""

    step: int
    path: Path
    extra: dict[str, Any]
    state: dict[str, Any]


class CheckpointManager:
    """Atomic training checkpoints in one directory.

    Layout: ``ckpt-<step:08d>.safetensors`` (all tensors: model, optimizer moments, RNG states...),
    ``ckpt-<step:08d>.json`` (everything else, exact types, plus the tensor file's SHA-256) and
    ``latest.json`` (``{"step": ..., "name": ...}``), which is replaced last, so it always points at a
    complete pair. The ``keep`` newest checkpoints are kept. Only call :meth:`save` on the main
    process in distributed runs (every rank may :meth:`load`).
    """

    _pattern = re.compile(r"^ckpt-(\d{8,})\.json$")

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.directory = Path(directory)
        self.keep = int(keep)

    @staticmethod
    def name_for(step: int) -> str:
        return f"ckpt-{int(step):08d}"

    def steps(self) -> list[int]:
        """Steps that have a checkpoint JSON on disk, ascending."""
        if not self.directory.is_dir():
            return []
        found = [int(m.group(1)) for p in self.directory.iterdir() if (m := self._pattern.match(p.name))]
        return sorted(found)

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or ``None`` when there is none."""
        pointer = self.directory / "latest.json"
        if pointer.is_file():
            try:
                doc = json.loads(pointer.read_text(encoding="utf-8"))
                step = int(doc["step"])
                if (self.directory / f"{self.name_for(step)}.json").is_file():
                    return step
            except (OSError, ValueError, KeyError, TypeError):
                logger.warning("ignoring unreadable %s", pointer)
        steps = self.steps()
        return steps[-1] if steps else None

    def save(
        self,
        step: int,
        *,
        model: nn.Module | Mapping[str, torch.Tensor],
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scaler: Any = None,
        extra: Mapping[str, Any] | None = None,
        rng: bool = True,
    ) -> Path:
        """Write the checkpoint for ``step`` and return the path of its JSON file.

        ``scheduler`` / ``scaler``: anything with ``state_dict()`` (LR scheduler, ``GradScaler``).
        ``extra``: JSON-able values and tensors of the caller (run config, sampler state, history).
        """
        tensors: dict[str, torch.Tensor] = {}
        model_sd = unwrap_model(model).state_dict() if isinstance(model, nn.Module) else dict(model)
        state: dict[str, Any] = {"model": {"__flat__": sorted(model_sd)}}
        for k, v in model_sd.items():
            tensors[f"model/{k}"] = v
        if optimizer is not None:
            state["optimizer"] = encode_state(optimizer.state_dict(), tensors, "optimizer")
        if scheduler is not None:
            state["scheduler"] = encode_state(scheduler.state_dict(), tensors, "scheduler")
        if scaler is not None:
            state["scaler"] = encode_state(scaler.state_dict(), tensors, "scaler")
        if rng:
            state["rng"] = encode_state(capture_rng_state(), tensors, "rng")
        state["extra"] = encode_state(dict(extra or {}), tensors, "extra")
        doc = {"format": CHECKPOINT_FORMAT, "step": int(step), "time": time.time(), "state": state}
        name = self.name_for(step)
        _, json_path = save_weights(tensors, doc, self.directory, name)
        atomic_write_json(self.directory / "latest.json", {"step": int(step), "name": name})
        self._prune(current=int(step))
        logger.info("checkpoint step %d -> %s", step, json_path)
        return json_path

    def _prune(self, current: int) -> None:
        old = [s for s in self.steps() if s != current]
        for s in old[: max(0, len(old) - (self.keep - 1))]:
            for suffix in (".json", ".safetensors"):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / f"{self.name_for(s)}{suffix}").unlink()

    def load(
        self,
        step: int | None = None,
        *,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scaler: Any = None,
        restore_rng: bool = True,
        device: str | torch.device | None = None,
        strict: bool = True,
    ) -> Checkpoint:
        """Load checkpoint ``step`` (default: the latest) and restore the given objects in place.

        Model/optimizer tensors are moved to ``device`` by their own ``load_state_dict`` logic
        (the optimizer follows its parameters' device). Raises ``FileNotFoundError`` when there is no
        checkpoint and :class:`CheckpointError` when it is corrupt or does not fit ``model``/``optimizer``.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
        name = self.name_for(step)
        st_path, json_path = weights_paths(self.directory, name)
        what = f"checkpoint {json_path}"
        doc = read_json(json_path, what, CheckpointError)
        info = doc.pop(RESERVED_KEY, None)
        if doc.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{what}: unknown format {doc.get('format')!r}")
        tensors = read_tensors(st_path, info, what, CheckpointError, True, None)
        raw = doc["state"]
        model_sd = {k: tensors[f"model/{k}"] for k in raw["model"]["__flat__"]}
        state: dict[str, Any] = {"model": model_sd}
        for key in ("optimizer", "scheduler", "scaler", "rng", "extra"):
            if key in raw:
                state[key] = decode_state(raw[key], tensors)
        try:
            if model is not None:
                target = unwrap_model(model)
                if device is not None:
                    model_sd = {k: v.to(device) for k, v in model_sd.items()}
                target.load_state_dict(model_sd, strict=strict)
            if optimizer is not None:
                if "optimizer" not in state:
                    raise CheckpointError(f"{what}: has no optimizer state")
                optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and "scheduler" in state:
                scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{what} does not fit the model/optimizer being resumed: {exc}") from exc
        if restore_rng and "rng" in state:
            restore_rng_state(state["rng"])
        return Checkpoint(step=int(doc["step"]), path=json_path, extra=state.get("extra", {}), state=state)
