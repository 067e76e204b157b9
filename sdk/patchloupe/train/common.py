"""Training utilities shared by stage 1 (generator) and stage 2 (comparator).

Everything here is model-agnostic:

- **Weights** (:func:`save_weights`, :func:`load_weights`): a ``<name>.safetensors`` file with the
  tensors plus a ``<name>.json`` file with the caller's config; both written atomically (temp file
  in the same directory, ``fsync``, ``os.replace``). The JSON also records the SHA-256 of the
  tensor file (under the reserved key ``"__weights__"``) so a mismatched or truncated pair is caught
  with a clear error. Nothing is ever pickled.
- **Training checkpoints** (:class:`CheckpointManager`): model, optimizer, LR scheduler, AMP grad
  scaler, step counter, RNG states and caller extras. Arbitrary nested state dicts are split by
  :func:`encode_state` into a flat ``{path: tensor}`` dict (stored as safetensors) and a JSON tree
  that keeps Python types exact (tuples, int dict keys, floats round-trip bit-for-bit).
- **Schedules and seeding**: :func:`warmup_cosine`, :func:`seed_everything`, :func:`derive_seed`.
- **Progress** (:class:`Progress`): a tqdm bar (loss, lr, ETA) on a TTY, log lines otherwise.
- **Distributed** (:func:`init_distributed` & co.): torchrun env vars, gloo on CPU, nccl on GPU.
- **Devices / AMP** (:func:`resolve_device`, :func:`resolve_amp`, :func:`autocast`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import random
import re
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from patchloupe.fileio import atomic_write_bytes, atomic_write_json, fsync_dir, sha256_bytes

logger = logging.getLogger(__name__)

WEIGHTS_FORMAT = "patchloupe-weights/1"
CHECKPOINT_FORMAT = "patchloupe-checkpoint/1"
_RESERVED = "__weights__"

__all__ = [
    "CHECKPOINT_FORMAT",
    "WEIGHTS_FORMAT",
    "Checkpoint",
    "CheckpointError",
    "CheckpointManager",
    "DistInfo",
    "Progress",
    "WeightsError",
    "all_reduce_mean",
    "atomic_write_bytes",
    "atomic_write_json",
    "autocast",
    "barrier",
    "capture_rng_state",
    "cleanup_distributed",
    "decode_state",
    "derive_seed",
    "encode_state",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "load_weights",
    "resolve_amp",
    "resolve_device",
    "restore_rng_state",
    "save_weights",
    "seed_everything",
    "unwrap_model",
    "warmup_cosine",
]


class WeightsError(ValueError):
    """A weights file pair is missing, corrupt or inconsistent."""


class CheckpointError(WeightsError):
    """A training checkpoint is missing, corrupt or does not fit the run being resumed."""


# ---------------------------------------------------------------------------------------------
# atomic files
# ---------------------------------------------------------------------------------------------


_fsync_dir = fsync_dir


# ---------------------------------------------------------------------------------------------
# weights = <name>.safetensors + <name>.json
# ---------------------------------------------------------------------------------------------


def unwrap_model(module: nn.Module) -> nn.Module:
    """Strip ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile`` wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


def _plain_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors with no shared storage (safetensors refuses aliasing)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state entry {key!r} is a {type(value).__name__}, not a tensor")
        # a private contiguous CPU copy: breaks aliasing (tied weights, views) and live references
        out[key] = value.detach().to("cpu", copy=True).contiguous()
    return out


_sha256 = sha256_bytes


def _weights_paths(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
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

    if _RESERVED in config:
        raise ValueError(f"config key {_RESERVED!r} is reserved")
    if isinstance(module_or_state_dict, nn.Module):
        state = unwrap_model(module_or_state_dict).state_dict()
    else:
        state = dict(module_or_state_dict)
    tensors = _plain_tensors(state)
    data = st_save(tensors, metadata={"format": WEIGHTS_FORMAT})
    st_path, json_path = _weights_paths(directory, name)
    doc = dict(config)
    try:
        json.dumps(doc)
    except TypeError as exc:
        raise TypeError(f"config for {name!r} is not JSON-serialisable: {exc}") from exc
    doc[_RESERVED] = {
        "format": WEIGHTS_FORMAT,
        "file": st_path.name,
        "num_bytes": len(data),
        "sha256": _sha256(data),
        "num_tensors": len(tensors),
        "num_elements": int(sum(t.numel() for t in tensors.values())),
    }
    atomic_write_bytes(st_path, data)
    atomic_write_json(json_path, doc)
    logger.debug("saved %d tensors (%d bytes) to %s", len(tensors), len(data), st_path)
    return st_path, json_path


def _read_json(path: Path, what: str, error: type[WeightsError]) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{what}: {path} is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise error(f"{what}: {path} must hold a JSON object, got {type(doc).__name__}")
    return doc


def _read_tensors(
    st_path: Path, info: Mapping[str, Any] | None, what: str, error: type[WeightsError], verify: bool, device: Any
) -> dict[str, torch.Tensor]:
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
        if digest is not None and digest != _sha256(data):
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
    st_path, json_path = _weights_paths(directory, name)
    what = f"weights {name!r}"
    config = _read_json(json_path, what, WeightsError)
    info = config.pop(_RESERVED, None)
    if info is not None and not isinstance(info, dict):
        raise WeightsError(f"{what}: malformed {_RESERVED!r} entry in {json_path}")
    return _read_tensors(st_path, info, what, WeightsError, verify, device), config


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
# RNG
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python ``random``, NumPy's legacy global RNG and torch (CPU and all CUDA devices).

    ``deterministic=True`` also asks torch for deterministic kernels (``warn_only``) and disables
    cuDNN benchmarking; CPU training here is deterministic without it.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integers, e.g. ``derive_seed(seed, rank, step)``.

    Stateless (``numpy.random.SeedSequence``), so a step's randomness depends only on its keys: this
    is what makes resumed and multi-rank runs reproducible without saving sampler state.
    """
    entropy = [int(k) % 2**63 for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy-global, torch CPU and CUDA RNG states (for :func:`encode_state`)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are restored when the device count matches)."""
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"].to(torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in cuda])
        else:
            logger.warning(
                "checkpoint has %d CUDA RNG states, %d devices here: not restored", len(cuda), torch.cuda.device_count()
            )


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
        st_path, json_path = _weights_paths(self.directory, name)
        what = f"checkpoint {json_path}"
        doc = _read_json(json_path, what, CheckpointError)
        info = doc.pop(_RESERVED, None)
        if doc.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{what}: unknown format {doc.get('format')!r}")
        tensors = _read_tensors(st_path, info, what, CheckpointError, True, None)
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


# ---------------------------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------------------------


def warmup_cosine(step: int, total: int, warmup: int, base_lr: float = 1.0, min_lr: float = 0.0) -> float:
    """Learning rate for 0-based optimizer ``step`` of ``total``.

    Linear warm-up ``base_lr * (step + 1) / warmup`` for ``step < warmup``, then cosine decay from
    ``base_lr`` to ``min_lr`` reached at ``step = total - 1``; ``min_lr`` after that. With the
    default ``base_lr=1.0`` it is a multiplier, e.g. for ``torch.optim.lr_scheduler.LambdaLR``
    (``lambda s: warmup_cosine(s, total, warmup, 1.0, min_lr / lr)``).
    """
    if total <= 0:
        raise ValueError("total must be positive")
    warmup = max(0, min(int(warmup), total))
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = total - warmup - 1
    if span <= 0:
        return base_lr if step < total else min_lr
    t = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))


# ---------------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------------


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """Training progress: a tqdm bar on a TTY, periodic log lines otherwise.

    ``enabled=False`` (or a non-TTY stderr, or a non-main rank via ``enabled=is_main_process()``)
    turns the bar off; log lines (``logging.INFO``, every ``log_every`` updates and at the end, with
    rate and ETA) are still emitted unless ``log=False``. Use as a context manager or call
    :meth:`close`.
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "train",
        enabled: bool = True,
        log_every: int = 50,
        log: bool = True,
        log_to: logging.Logger | None = None,
    ) -> None:
        self.total = int(total)
        self.n = int(initial)
        self.desc = desc
        self.log_every = max(1, int(log_every))
        self.log = log
        self.logger = log_to or logger
        self._t0 = time.perf_counter()
        self._n0 = self.n
        self._metrics: dict[str, float] = {}
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.n, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, n: int = 1, **metrics: float) -> None:
        """Advance by ``n`` steps; ``metrics`` (e.g. ``loss=..., lr=...``) are shown / logged."""
        self.n += n
        if metrics:
            self._metrics.update(metrics)
        if self._bar is not None:
            if metrics:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in self._metrics.items()}, refresh=False)
            self._bar.update(n)
        elif self.log and (self.n % self.log_every == 0 or self.n >= self.total):
            self.logger.info("%s", self.line())

    def eta_seconds(self) -> float:
        """Estimated seconds to ``total`` from the rate since construction (``inf`` before any step)."""
        done = self.n - self._n0
        elapsed = time.perf_counter() - self._t0
        if done <= 0:
            return math.inf
        return (self.total - self.n) * elapsed / done

    def line(self) -> str:
        """One status line: ``desc step n/total metrics (rate, elapsed, ETA)``."""
        elapsed = time.perf_counter() - self._t0
        done = self.n - self._n0
        rate = done / elapsed if elapsed > 0 else 0.0
        mets = " ".join(f"{k} {v:.4g}" for k, v in self._metrics.items())
        return (
            f"{self.desc} step {self.n}/{self.total} {mets} ({rate:.2f} step/s, elapsed "
            f"{_fmt_duration(elapsed)}, ETA {_fmt_duration(self.eta_seconds())})"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# devices and AMP
# ---------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """``None`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU; strings -> ``torch.device``."""
    if device is None:
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


def resolve_amp(amp: str | bool | None, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp`` in ``"auto"`` / ``"bf16"`` / ``"fp16"`` / ``"off"`` (or bool / None).

    ``"auto"``: bf16 on CUDA devices that support it, fp16 on older CUDA devices, off on CPU (CPU
    autocast is usually slower and changes numerics). ``fp16`` needs a ``torch.amp.GradScaler``;
    callers should create one exactly when this returns ``torch.float16``.
    """
    if amp is None or amp is False or amp == "off" or amp == "none":
        return None
    if amp is True or amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("fp16 autocast is only supported on CUDA; use amp='bf16' or 'off' on CPU")
        return torch.float16
    raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {amp!r}")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# distributed
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    """Process-group facts for this process (``world_size == 1`` when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in non-distributed runs)."""
    return get_rank() == 0


def init_distributed(backend: str | None = None, *, timeout_s: float = 1800.0, required: bool = False) -> DistInfo:
    """Join the process group described by torchrun's env vars (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``).

    Without those variables (or with ``WORLD_SIZE=1``) this is a no-op returning a single-process
    :class:`DistInfo`, unless ``required=True`` (then ``RuntimeError``). Backend: ``nccl`` when CUDA is
    available, else ``gloo``. On CUDA the process binds to ``cuda:<LOCAL_RANK>``. An existing process
    group is reused (``initialized_here=False``; :func:`cleanup_distributed` then leaves it alone).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            backend=str(dist.get_backend()),
            initialized_here=False,
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        if required:
            raise RuntimeError("distributed=True but WORLD_SIZE is not set (launch with torchrun)")
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        kwargs["device_id"] = torch.device(f"cuda:{local_rank}")
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    logger.info("joined process group: rank %d/%d (local %d), backend %s", rank, world_size, local_rank, backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend, initialized_here=True)


def barrier() -> None:
    """``dist.barrier()`` in a distributed run, no-op otherwise."""
    import torch.distributed as dist

    if is_distributed():
        if dist.get_backend() == "nccl" and torch.cuda.is_available():
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_mean(value: float | torch.Tensor, device: torch.device | None = None) -> float:
    """Mean of a scalar over all ranks (the value itself when not distributed)."""
    import torch.distributed as dist

    if not is_distributed():
        return float(value)
    t = torch.as_tensor(value, dtype=torch.float64, device=device or "cpu").detach().clone().reshape(1)
    if dist.get_backend() == "nccl":
        t = t.to(torch.device("cuda", torch.cuda.current_device()), torch.float32)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def cleanup_distributed(info: DistInfo | None = None) -> None:
    """Destroy the process group if :func:`init_distributed` created it (``info=None``: if one exists)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if info is not None and not info.initialized_here:
        return
    dist.destroy_process_group()


@contextlib.contextmanager
def distributed_context(backend: str | None = None, *, required: bool = False) -> Iterator[DistInfo]:
    """``with distributed_context() as info:`` = :func:`init_distributed` + :func:`cleanup_distributed`."""
    info = init_distributed(backend, required=required)
    try:
        yield info
    finally:
        cleanup_distributed(info)
