"""Weights files: ``<name>.safetensors`` (tensors) + ``<name>.json`` (the caller's config), written atomically.

Both files are written atomically (temp file in the same directory, ``fsync``, ``os.replace``; see
:mod:`patchloupe.fileio`). The JSON also records the SHA-256 of the tensor file (under the reserved
key ``"__weights__"``) so a mismatched or truncated pair is caught with a clear error. Nothing is
ever pickled. :mod:`patchloupe.train.checkpoint` stores training checkpoints in the same format.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from patchloupe.fileio import atomic_write_bytes, atomic_write_json, sha256_bytes
from patchloupe.train.distributed import unwrap_model

logger = logging.getLogger(__name__)

WEIGHTS_FORMAT = "patchloupe-weights/1"
RESERVED_KEY = "__weights__"

__all__ = ["RESERVED_KEY", "WEIGHTS_FORMAT", "WeightsError", "load_weights", "save_weights"]


class WeightsError(ValueError):
    """A weights file pair is missing, corrupt or inconsistent."""


def _plain_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors with no shared storage (safetensors refuses aliasing)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state entry {key!r} is a {type(value).__name__}, not a tensor")
        # a private contiguous CPU copy: breaks aliasing (tied weights, views) and live references
        out[key] = value.detach().to("cpu", copy=True).contiguous()
    return out


def weights_paths(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """``(<directory>/<name>.safetensors, <directory>/<name>.json)``; ``name`` must be a plain file stem."""
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"invalid weights name {name!r}")
    d = Path(directory)
    return d / f"{name}.safetensors", d / f"{name}.json"


def save_weights(
    module_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    directory: str | os.PathLike[str],
    name: str,
) -> tuple[Path, Path]:
    """Write ``<directory>/<name>.safetensors`` (tensors) and ``<directory>/<name>.json`` (config).

    ``module_or_state_dict``: an ``nn.Module`` (DDP/compile wrappers are stripped, its
    ``state_dict()`` is saved) or a ``{name: tensor}`` mapping. ``config`` must be JSON-serialisable;
    the key ``"__weights__"`` is reserved (file format, tensor-file size and SHA-256). The tensor file
    is written first, then the JSON, each atomically; a crash in between leaves a JSON whose hash no
    longer matches, which :func:`load_weights` reports. Returns ``(safetensors_path, json_path)``.
    """
    from safetensors.torch import save as st_save

    if RESERVED_KEY in config:
        raise ValueError(f"config key {RESERVED_KEY!r} is reserved")
    if isinstance(module_or_state_dict, nn.Module):
        state = unwrap_model(module_or_state_dict).state_dict()
    else:
        state = dict(module_or_state_dict)
    tensors = _plain_tensors(state)
    data = st_save(tensors, metadata={"format": WEIGHTS_FORMAT})
    st_path, json_path = weights_paths(directory, name)
    doc = dict(config)
    try:
        json.dumps(doc)
    except TypeError as exc:
        raise TypeError(f"config for {name!r} is not JSON-serialisable: {exc}") from exc
    doc[RESERVED_KEY] = {
        "format": WEIGHTS_FORMAT,
        "file": st_path.name,
        "num_bytes": len(data),
        "sha256": sha256_bytes(data),
        "num_tensors": len(tensors),
        "num_elements": int(sum(t.numel() for t in tensors.values())),
    }
    atomic_write_bytes(st_path, data)
    atomic_write_json(json_path, doc)
    logger.debug("saved %d tensors (%d bytes) to %s", len(tensors), len(data), st_path)
    return st_path, json_path


def read_json(path: Path, what: str, error: type[WeightsError]) -> dict[str, Any]:
    """The JSON object in ``path``; ``FileNotFoundError`` when missing, ``error`` when unreadable or not an object."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{what}: {path} is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise error(f"{what}: {path} must hold a JSON object, got {type(doc).__name__}")
    return doc


def read_tensors(
    st_path: Path, info: Mapping[str, Any] | None, what: str, error: type[WeightsError], verify: bool, device: Any
) -> dict[str, torch.Tensor]:
    """Tensors of ``st_path`` (on ``device``; ``None`` = CPU), checked against ``info`` (size, SHA-256) when ``verify``.

    ``info`` is the reserved ``"__weights__"`` entry of the paired JSON; ``error`` is raised on a mismatch.
    """
    from safetensors.torch import load as st_load

    if not st_path.is_file():
        raise FileNotFoundError(f"{what}: {st_path} does not exist")
    data = st_path.read_bytes()
    if verify and info is not None:
        size, digest = info.get("num_bytes"), info.get("sha256")
        if size is not None and size != len(data):
            raise error(
                f"{what}: {st_path} has {len(data)} bytes but its JSON expects {size} "
                "(truncated file or a mismatched .json/.safetensors pair)"
            )
        if digest is not None and digest != sha256_bytes(data):
            raise error(f"{what}: {st_path} does not match the SHA-256 recorded in its JSON (corrupt or mismatched)")
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError / various
        raise error(f"{what}: {st_path} is not a valid safetensors file ({exc})") from exc
    if device is not None and str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors


def load_weights(
    directory: str | os.PathLike[str], name: str, *, device: str | torch.device | None = None, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a pair written by :func:`save_weights` -> ``(state_dict, config)``.

    Tensors are returned on ``device`` (CPU by default); ``config`` is the dict given to
    :func:`save_weights` (without the reserved ``"__weights__"`` entry). Raises ``FileNotFoundError``
    when a file is missing and :class:`WeightsError` (a ``ValueError``) when a file is corrupt or the
    pair does not belong together (size / SHA-256 check; ``verify=False`` skips the hash).
    """
    st_path, json_path = weights_paths(directory, name)
    what = f"weights {name!r}"
    config = read_json(json_path, what, WeightsError)
    info = config.pop(RESERVED_KEY, None)
    if info is not None and not isinstance(info, dict):
        raise WeightsError(f"{what}: malformed {RESERVED_KEY!r} entry in {json_path}")
    return read_tensors(st_path, info, what, WeightsError, verify, device), config
