"""An exported model on disk: the graph file plus ``<graph stem>.json`` beside it (torch-free).

The JSON makes the graph self-describing (README, "Deploy"): the ``DetectorConfig`` fields under
``detector`` (the threshold is metadata, never baked into the graph, so it stays adjustable), the
scorer's name and settings, its pixel rule, the model size and grid, the input contract (uint8 RGB
``(B, H, W, 3)``), the output names, the precision and batch, the patchloupe version, this format's
version and the graph's SHA-256 (checked on load).

An artefact is named either by its graph file (``model.onnx``, ``model.xml``, ``model.engine``) or by
the folder holding one (``folder/model.<ext>`` + ``folder/model.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from patchloupe.errors import ModelError
from patchloupe.fileio import atomic_write_json, sha256_file

KIND = "patchloupe-graph"
ARTEFACT_VERSION = 1
#: graph format -> file suffix
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml", "engine": ".engine"}
GRAPH_STEM = "model"

__all__ = ["ARTEFACT_VERSION", "GRAPH_STEM", "KIND", "SUFFIXES", "is_artefact", "meta_path", "read_meta", "write_meta"]


def meta_path(graph: str | os.PathLike[str]) -> Path:
    """The JSON beside ``graph``."""
    return Path(graph).with_suffix(".json")


def _graph_in(path: Path) -> Path | None:
    """The graph file ``path`` names (itself, or the one graph in the folder), or None."""
    if path.is_file() and path.suffix in SUFFIXES.values():
        return path
    if path.is_dir() and (path / f"{GRAPH_STEM}.json").is_file():
        for suffix in SUFFIXES.values():
            if (path / f"{GRAPH_STEM}{suffix}").is_file():
                return path / f"{GRAPH_STEM}{suffix}"
    return None


def is_artefact(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` names an exported graph (a graph file or a folder holding one with its JSON)."""
    return path is not None and _graph_in(Path(path)) is not None


def write_meta(graph: Path, meta: dict[str, Any]) -> Path:
    """Write ``meta`` (plus kind, version and the graph's checksum) beside ``graph``; returns the JSON's path."""
    full = {"kind": KIND, "artefact_version": ARTEFACT_VERSION, **meta, "graph": graph.name}
    full["graph_sha256"] = sha256_file(graph)
    return atomic_write_json(meta_path(graph), full)


def read_meta(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """(graph file, metadata) of the artefact ``path`` names; checks kind, version and checksum (``ModelError``)."""
    graph = _graph_in(Path(path))
    if graph is None:
        raise ModelError(f"{str(path)!r} is not an exported patchloupe graph (a .onnx/.xml/.engine file or its folder)")
    jpath = meta_path(graph)
    if not jpath.is_file():
        raise ModelError(f"{str(graph)!r} has no {jpath.name} beside it: export it with patchloupe (det.export)")
    try:
        meta = json.loads(jpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{str(jpath)!r} is not readable JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise ModelError(f"{str(jpath)!r} does not describe a patchloupe graph")
    if meta.get("artefact_version") != ARTEFACT_VERSION:
        raise ModelError(
            f"{str(jpath)!r}: artefact version {meta.get('artefact_version')!r} is not supported "
            f"(this patchloupe reads {ARTEFACT_VERSION})"
        )
    missing = [
        k for k in ("detector", "scorer", "pixel_rule", "graph_format", "graph_sha256", "outputs") if k not in meta
    ]
    if missing:
        raise ModelError(f"{str(jpath)!r} lacks {missing}")
    if sha256_file(graph) != meta["graph_sha256"]:
        raise ModelError(f"{str(graph)!r} does not match the checksum in {jpath.name} (modified or truncated)")
    return graph, meta
