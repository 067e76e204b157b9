"""The model folder: ``detector.json`` + one safetensors file per tensor entry, with checksums.

This is the only module that reads or writes model folders. (Interim version: the folder is replaced
by a rename swap.)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from patchloupe.fileio import atomic_write_bytes, sha256_file

META_FILE = "detector.json"

__all__ = ["META_FILE", "ModelError", "read_model_folder", "write_model_folder"]


class ModelError(ValueError):
    """A model folder is missing, incomplete, corrupt or from an incompatible version."""


def write_model_folder(
    path: str | os.PathLike[str], meta: dict[str, Any], tensors: dict[str, dict[str, Any]], weights_dtype: Any = None
) -> Path:
    """Write ``meta`` as ``detector.json`` and each entry of ``tensors`` as ``<entry>.safetensors``."""
    import torch
    from safetensors.torch import save

    dtype = torch.float32 if weights_dtype is None else weights_dtype
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"weights_dtype must be torch.float32, float16 or bfloat16, got {weights_dtype!r}")
    folder = Path(path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / META_FILE).is_file():
        raise ValueError(
            f"{str(folder)!r} is a non-empty folder that holds no patchloupe model; refusing to replace it"
        )
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        meta = dict(meta, sha256={})
        for entry, state in tensors.items():
            name = f"{entry}.safetensors"
            plain = {
                k: (v.to(dtype) if v.is_floating_point() else v).detach().to("cpu").contiguous()
                for k, v in state.items()
            }
            atomic_write_bytes(tmp / name, save(plain))
            meta["sha256"][name] = sha256_file(tmp / name)
        atomic_write_bytes(tmp / META_FILE, json.dumps(meta, indent=2).encode())
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def read_model_folder(
    path: str | os.PathLike[str], required: Sequence[str] | Callable[[dict[str, Any]], Sequence[str]] = ()
) -> tuple[dict[str, Any], dict]:
    """``(meta, {entry: {name: tensor}})`` of the ``required`` entries (a list, or a function of the meta
    that returns one); every failure is a ``ModelError``."""
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.exists():
        raise ModelError(f"model folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise ModelError(f"model path {str(folder)!r} is not a folder")
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise ModelError(f"{str(folder)!r} is not a patchloupe model: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelError(f"{meta_path}: cannot read {META_FILE} ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelError(f"{meta_path}: {META_FILE} is not a JSON object")
    digests = meta.get("sha256", {})
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise ModelError(f"{meta_path}: 'sha256' must map file names to hex digests")
    if callable(required):
        required = required(meta)
    states = {}
    for entry in required:
        name = f"{entry}.safetensors"
        wpath = folder / name
        if not wpath.is_file():
            raise ModelError(f"{str(folder)!r} is missing {name}")
        if name in digests and sha256_file(wpath) != digests[name]:
            raise ModelError(f"{wpath} does not match the checksum in {META_FILE} (corrupt or mixed files)")
        try:
            state = load_file(str(wpath))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"{wpath}: corrupt weights file ({exc})") from exc
        states[entry] = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return meta, states
