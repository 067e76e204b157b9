"""A saved model: ``DetectorConfig`` + scorer <-> model folder (format 3; formats 1 and 2 still load).

Format 3 ``detector.json``: the ``DetectorConfig`` fields, ``format_version``, ``scorer_config`` (the
scorer's ``settings()``) and the checksums; one safetensors file per entry of the scorer's
``tensors()`` (pattern: generator + comparator; memory: memory). Format 1 (pattern models, e.g. the
built-in default) kept the pattern settings at the top level; format 2 (memory models) kept them
under ``memory`` beside an unused generator and comparator, which are no longer read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from patchloupe.config import DetectorConfig
from patchloupe.errors import ModelError
from patchloupe.scorers import scorer_class
from patchloupe.scorers.base import Scorer

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
_COMMON = ("image_size", "grid", "threshold", "false_alarm_rate", "scorer", "input_policy", "calibration", "training")

__all__ = ["BUILTIN_MODELS", "FORMAT_VERSION", "READABLE_VERSIONS", "default_model_dir", "read_model", "write_model"]


#: The model folders shipped inside the package (``patchloupe/weights/<name>``): ``"selfref"``, the built-in
#: default (the self-reference scorer, zero-shot: ``patchloupe.train.default_selfref``), and ``"pattern"``, the
#: paper's pre-trained generator and comparator (``patchloupe.train.default_detector``), which
#: ``Detector.fit(scorer="pattern")`` fine-tunes.
BUILTIN_MODELS = ("selfref", "pattern")


def default_model_dir(name: str = "selfref") -> Path:
    """The folder of a built-in model shipped inside the package (default: the built-in default model)."""
    if name not in BUILTIN_MODELS:
        raise ValueError(f"built-in models are {BUILTIN_MODELS}, got {name!r}")
    return Path(__file__).resolve().parent / "weights" / name


def _split_meta(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``detector.json`` of any readable format -> (DetectorConfig kwargs, scorer settings)."""
    version = meta.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ModelError(
            f"model format version {version!r} is not supported (this patchloupe reads {READABLE_VERSIONS})"
        )
    scorer = meta.get("scorer", "pattern")
    need = ["image_size", "grid", "threshold", "false_alarm_rate"]
    if version == 1:
        need += ["directions", "generator", "comparator"]
    elif version == 2 and scorer == "memory":
        need += ["memory"]
    elif version == 3:
        need += ["scorer", "scorer_config"]
    missing = [k for k in need if k not in meta]
    if missing:
        raise ModelError(f"detector.json lacks {missing}")
    common = {k: meta[k] for k in _COMMON if k in meta}
    if version == 3:
        settings = meta["scorer_config"]
    elif scorer == "memory":
        settings = meta["memory"]
    else:
        settings = {k: meta[k] for k in ("directions", "score_temperature", "generator", "comparator") if k in meta}
    if not isinstance(settings, dict):
        raise ModelError("detector.json: the scorer settings must be a JSON object")
    return common, settings


def read_model(path: str | os.PathLike[str] | None = None, **runtime_options: Any) -> tuple[DetectorConfig, Scorer]:
    """Load a model folder (the built-in default model when ``path`` is None), or an exported graph
    (``patchloupe.artefact``: a ``.onnx``/``.xml``/``.engine`` file or its folder) with the runtime
    ``runtime_options`` select (``patchloupe.runtimes.load_graph``); any failure is a ``ModelError``."""
    from patchloupe.artefact import is_artefact

    if is_artefact(path):
        from patchloupe.runtimes import load_graph

        return load_graph(path, **runtime_options)
    if runtime_options:
        raise ValueError(f"runtime options {sorted(runtime_options)} apply to exported graphs only, not to {path!r}")
    from patchloupe.model_folder import read_model_folder  # torch: only for models saved by this package

    folder = Path(path) if path is not None else default_model_dir()
    meta, tensors = read_model_folder(folder)
    common, settings = _split_meta(meta)
    try:
        config = DetectorConfig(**common)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{str(folder)!r}: detector.json holds an invalid configuration ({exc})") from exc
    cls = scorer_class(config.scorer)
    missing = [e for e in cls.entries if e not in tensors]
    if missing:
        raise ModelError(f"{str(folder)!r} is missing {', '.join(f'{e}.safetensors' for e in missing)}")
    try:
        scorer = cls.from_saved(settings, tensors, config.image_size, config.grid)
    except (RuntimeError, TypeError, KeyError, ValueError, IndexError) as exc:
        detail = str(exc) if len(str(exc)) < 400 else str(exc)[:400] + " ..."
        raise ModelError(f"{str(folder)!r}: the scorer settings and weights do not fit ({detail})") from exc
    return config, scorer


def write_model(
    path: str | os.PathLike[str], config: DetectorConfig, scorer: Scorer, weights_dtype: Any = None
) -> Path:
    """Write ``config`` and ``scorer`` as a format-3 model folder (atomic; see ``patchloupe.model_folder``);
    ``weights_dtype`` (torch.float32 when None, or float16 / bfloat16) for the floating-point tensors."""
    import torch

    from patchloupe.model_folder import write_model_folder

    meta = {"format_version": FORMAT_VERSION, **config.to_dict(), "scorer_config": scorer.settings()}
    dtype = torch.float32 if weights_dtype is None else weights_dtype
    return write_model_folder(path, meta, scorer.tensors(), weights_dtype=dtype)
