"""The detector: bi-directional pattern prediction, comparison, intersection, and the public API.

Scoring (consistent with the binary decision):

* For every direction ``d`` in (ltr, rtl, ttb, btt) and every patch ``t`` that ``d`` can predict, the
  comparator gives a similarity probability ``P_d(t) = sigmoid(l)`` from its logit ``l``; the
  direction's patch score is ``a_d(t) = sigmoid(-l / T)`` with a temperature ``T``
  (``score_temperature``, default 8): at ``T = 1`` this is the paper's ``1 - P``; a larger ``T`` keeps
  the same order and the same 0.5 point but stops confident scores from rounding to exactly 0 or 1.
* The final patch score is ``a(t) = min_d a_d(t)`` over the directions that reach ``t`` (paper eq. 5,
  with the column-wise pass beyond the paper so that every patch has two independent verdicts).
  A patch is anomalous when ``a(t) >= threshold``.
* The image score is ``max_t a(t)``: an image is anomalous exactly when one of its patches is.
* The anomaly map is the per-pixel difference mask intersected (min) over the same directions,
  weighted by its patch's final score ``a(t)`` and stitched bilinearly at the input's size; the
  outline ``mask`` keeps the pixels of anomalous patches whose intersected difference mask is >= 0.5.

Column-wise directions run the same generator on transposed patches (a column is a row of the
transposed image), so one network serves all four directions.

With ``scorer="memory"`` (``patchloupe.memory``, not the paper's method) the pixel field is the
feature-memory anomaly map ``m`` in [0, 1) at the model's size (the fine memory's map, scaled per
image to the context memory's maximum); a patch's score is the maximum of
``m`` over the patch, the image score the maximum over the image (the same decision rule as above:
``is_anomalous == (score >= threshold) == patch_map.any()``); the outline keeps the pixels of
anomalous patches where ``m >= threshold``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from patchloupe import _native
from patchloupe.fileio import atomic_write_bytes
from patchloupe.preprocess import ImageLike, check_geometry, load_rgb, resize_for_model
from patchloupe.results import InspectionError, InspectionResult

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # written when the model holds a feature memory; pattern-only models stay at 1
_READABLE_VERSIONS = (1, 2)
SCORERS = ("pattern", "memory")
ROW_DIRECTIONS = ("ltr", "rtl")
COL_DIRECTIONS = ("ttb", "btt")
DIRECTIONS = ROW_DIRECTIONS + COL_DIRECTIONS
_WEIGHT_FILES = ("generator.safetensors", "comparator.safetensors")
_MEMORY_FILE = "memory.safetensors"  # trunk + bank of the feature-memory scorer, only when it is used


class ModelError(ValueError):
    """A model folder is missing, incomplete, corrupt or from an incompatible version."""


@dataclass
class DetectorConfig:
    """Everything besides the weights that defines a detector (saved as ``detector.json``)."""

    image_size: tuple[int, int] = (256, 256)
    grid: tuple[int, int] = (4, 4)
    directions: tuple[str, ...] = DIRECTIONS
    threshold: float = 0.5
    false_alarm_rate: float = 0.01
    score_temperature: float = 8.0
    scorer: str = "pattern"
    generator: dict[str, Any] = field(default_factory=dict)
    comparator: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        self.directions = tuple(self.directions)
        check_geometry(self.image_size, self.grid)
        if min(self.grid) < 3:
            raise ValueError(f"grid must be at least 3x3 so every patch has a neighbour pair, got {self.grid}")
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad or not self.directions:
            raise ValueError(f"directions must be a non-empty subset of {DIRECTIONS}, got {self.directions}")
        rows_ok = all(d in self.directions for d in ROW_DIRECTIONS)
        cols_ok = all(d in self.directions for d in COL_DIRECTIONS)
        if not (rows_ok or cols_ok):
            raise ValueError("directions must include both row directions or both column directions")
        if not float(self.score_temperature) > 0.0:
            raise ValueError(f"score_temperature must be positive, got {self.score_temperature}")
        if not 0.0 < float(self.false_alarm_rate) < 1.0:
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {self.false_alarm_rate}")
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {SCORERS}, got {self.scorer!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION if self.scorer == "memory" else 1,
            "image_size": list(self.image_size),
            "grid": list(self.grid),
            "directions": list(self.directions),
            "threshold": float(self.threshold),
            "false_alarm_rate": float(self.false_alarm_rate),
            "score_temperature": float(self.score_temperature),
            "scorer": self.scorer,
            "generator": self.generator,
            "comparator": self.comparator,
            "memory": self.memory,
            "calibration": self.calibration,
            "training": self.training,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        version = d.get("format_version")
        if version not in _READABLE_VERSIONS:
            raise ModelError(
                f"model format version {version!r} is not supported (this patchloupe reads {_READABLE_VERSIONS})"
            )
        keys = ("image_size", "grid", "directions", "threshold", "false_alarm_rate", "generator", "comparator")
        missing = [k for k in keys if k not in d]
        if missing:
            raise ModelError(f"detector.json lacks {missing}")
        extra = ("score_temperature", "scorer", "memory", "calibration", "training")
        kwargs = {k: d[k] for k in (*keys, *extra) if k in d}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"detector.json holds an invalid configuration ({exc})") from exc


@dataclass
class _Plan:
    """Triplets of one grid: row-wise ones on the patches, column-wise ones on transposed patches."""

    row: np.ndarray  # (Tr, 3) int64
    col: np.ndarray  # (Tc, 3) int64
    row_dir: np.ndarray  # (Tr,) direction index into config.directions
    col_dir: np.ndarray  # (Tc,)


def _make_plan(grid: tuple[int, int], directions: Sequence[str]) -> _Plan:
    rows, cols = grid
    parts: dict[str, list[np.ndarray]] = {"row": [], "col": [], "row_dir": [], "col_dir": []}
    for i, d in enumerate(directions):
        trip = np.asarray(_native.neighbor_triplets(rows, cols, d), dtype=np.int64)
        kind = "row" if d in ROW_DIRECTIONS else "col"
        parts[kind].append(trip)
        parts[f"{kind}_dir"].append(np.full(len(trip), i, dtype=np.int64))

    def cat(items: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate(items) if items else np.zeros(shape, dtype=np.int64)

    return _Plan(
        cat(parts["row"], (0, 3)), cat(parts["col"], (0, 3)), cat(parts["row_dir"], (0,)), cat(parts["col_dir"], (0,))
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_model_dir() -> Path:
    """The folder of the built-in default model shipped inside the package."""
    return Path(__file__).resolve().parent / "weights"


class Detector:
    """Find and outline defects after learning from defect-free images only.

    Example:
        >>> from patchloupe import Detector
        >>> det = Detector.load()                       # built-in default model, no download
        >>> r = det.inspect("part.png")                 # doctest: +SKIP
        >>> r.score, r.is_anomalous, r.mask.shape       # doctest: +SKIP
    """

    def __init__(
        self,
        generator: torch.nn.Module,
        comparator: torch.nn.Module,
        config: DetectorConfig,
        device: str | torch.device | None = None,
        memory: torch.nn.Module | None = None,
    ) -> None:
        if config.scorer == "memory" and memory is None:
            raise ValueError("scorer 'memory' needs a FeatureMemory (Detector.fit(..., scorer='memory') builds one)")
        self.config = config
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.generator = generator.to(self.device).eval()
        self.comparator = comparator.to(self.device).eval()
        self.memory = memory.to(self.device).eval() if memory is not None else None
        self._plan = _make_plan(config.grid, config.directions)

    # ------------------------------------------------------------------ threshold
    @property
    def threshold(self) -> float:
        """Image/patch score threshold (adjustable at run time)."""
        return float(self.config.threshold)

    @threshold.setter
    def threshold(self, value: float) -> None:
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"threshold must be finite, got {value}")
        self.config.threshold = value

    # ------------------------------------------------------------------ persistence
    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, device: str | torch.device | None = None) -> Detector:
        """Load a saved model folder, or the built-in default model when ``path`` is None.

        Example:
            >>> det = Detector.load()            # doctest: +SKIP
            >>> det = Detector.load("model_dir") # doctest: +SKIP
        """
        from safetensors.torch import load_file

        folder = Path(path) if path is not None else default_model_dir()
        if not folder.is_dir():
            raise ModelError(f"model folder {str(folder)!r} does not exist")
        meta_path = folder / "detector.json"
        if not meta_path.is_file():
            raise ModelError(f"{str(folder)!r} is not a patchloupe model: detector.json is missing")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{meta_path}: cannot read detector.json ({exc})") from exc
        if not isinstance(meta, dict):
            raise ModelError(f"{meta_path}: detector.json is not a JSON object")
        config = DetectorConfig.from_dict(meta)
        digests = meta.get("sha256", {})
        states = {}
        for name in (*_WEIGHT_FILES, *((_MEMORY_FILE,) if config.scorer == "memory" else ())):
            wpath = folder / name
            if not wpath.is_file():
                raise ModelError(f"{str(folder)!r} is missing {name}")
            if name in digests and _sha256(wpath) != digests[name]:
                raise ModelError(f"{wpath} does not match the checksum in detector.json (corrupt or mixed files)")
            try:
                states[name] = load_file(str(wpath))
            except Exception as exc:  # safetensors raises its own error types
                raise ModelError(f"{wpath}: corrupt weights file ({exc})") from exc
        from patchloupe.models.comparator import ComparatorConfig, PatternComparator
        from patchloupe.models.generator import GeneratorConfig, PatternGenerator

        try:
            generator = PatternGenerator(GeneratorConfig.from_dict(config.generator))
            generator.load_state_dict(states["generator.safetensors"])
            comparator = PatternComparator(ComparatorConfig.from_dict(config.comparator))
            comparator.load_state_dict(states["comparator.safetensors"])
            memory = None
            if config.scorer == "memory":
                from patchloupe.memory import FeatureMemory, MemoryConfig

                memory = FeatureMemory.from_state(MemoryConfig.from_dict(config.memory), states[_MEMORY_FILE])
        except (RuntimeError, TypeError, KeyError, ValueError) as exc:
            raise ModelError(f"{str(folder)!r}: weights do not fit the saved configuration ({exc})") from exc
        return cls(generator, comparator, config, device=device, memory=memory)

    def save(self, path: str | os.PathLike[str], weights_dtype: torch.dtype = torch.float32) -> Path:
        """Write the model as ``detector.json`` + safetensors weights; atomic (a folder swap).

        ``weights_dtype=torch.float16`` halves the files (floating-point tensors only; loading casts back).

        Example:
            >>> det.save("model_dir")            # doctest: +SKIP
        """
        from safetensors.torch import save

        folder = Path(path)
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{str(folder)!r} exists and is not a folder")
        if folder.is_dir() and any(folder.iterdir()) and not (folder / "detector.json").is_file():
            raise ValueError(
                f"{str(folder)!r} is a non-empty folder that holds no patchloupe model; refusing to replace it"
            )
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
        try:
            meta = self.config.to_dict()
            meta["sha256"] = {}
            modules = list(zip(_WEIGHT_FILES, (self.generator, self.comparator)))
            if self.config.scorer == "memory":
                modules.append((_MEMORY_FILE, self.memory))
            for name, module in modules:
                state = {
                    k: (v.to(weights_dtype) if v.is_floating_point() else v).detach().to("cpu").contiguous()
                    for k, v in module.state_dict().items()
                }
                atomic_write_bytes(tmp / name, save(state))
                meta["sha256"][name] = _sha256(tmp / name)
            atomic_write_bytes(tmp / "detector.json", json.dumps(meta, indent=2).encode())
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

    # ------------------------------------------------------------------ inference core
    def _prepare(self, image: ImageLike, bgr: bool) -> tuple[np.ndarray, np.ndarray]:
        """Image -> (RGB uint8 original (H, W, 3), model input): patches uint8 (P, ph, pw, 3) via the
        native tiler for the pattern scorer, the resized image uint8 (H', W', 3) for the memory scorer."""
        rgb = load_rgb(image, bgr=bgr)
        resized = resize_for_model(rgb, self.config.image_size)
        if self.config.scorer == "memory":
            return rgb, resized
        return rgb, np.asarray(_native.tile(resized, self.config.grid))

    def _infer(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs ``(B, ...)`` from ``_prepare`` -> patch scores ``(B, rows, cols)`` in [0, 1] and
        per-patch maps ``(B, P, mh, mw)`` (pattern: difference masks) or ``(B, H', W')`` (memory: anomaly map)."""
        if self.config.scorer == "memory":
            return self._infer_memory(inputs)
        return self._infer_pattern(inputs)

    @torch.inference_mode()
    def _infer_memory(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(B, H', W', 3)`` -> patch scores ``(B, rows, cols)`` (the map's maximum per patch) and
        the anomaly map ``(B, H', W')``."""
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        amap = self.memory.anomaly_map(x).float().cpu().numpy()
        b, h, w = amap.shape
        rows, cols = self.config.grid
        cells = amap.reshape(b, rows, h // rows, cols, w // cols)
        return cells.max(axis=(2, 4)).astype(np.float64), amap

    @torch.inference_mode()
    def _infer_pattern(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(B, P, ph, pw, 3)`` -> final patch scores ``(B, rows, cols)``, masks ``(B, P, mh, mw)``."""
        rows, cols = self.config.grid
        b, p = patches.shape[:2]
        x = torch.from_numpy(patches).to(self.device).permute(0, 1, 4, 2, 3).float().div_(255.0)
        flat = x.reshape(b * p, *x.shape[2:])  # (B*P, 3, ph, pw)
        offsets = (np.arange(b, dtype=np.int64) * p)[:, None, None]
        preds, targets, dirs = [], [], []
        for trip, dir_idx, transpose in (
            (self._plan.row, self._plan.row_dir, False),
            (self._plan.col, self._plan.col_dir, True),
        ):
            if not len(trip):
                continue
            all_trip = torch.from_numpy((trip[None] + offsets).reshape(-1, 3)).to(self.device)
            src = flat.transpose(-1, -2) if transpose else flat
            pred = self.generator.predict_targets(src.contiguous(), all_trip)
            preds.append(pred.transpose(-1, -2) if transpose else pred)
            targets.append(all_trip[:, 2])
            dirs.append(np.tile(dir_idx, b))
        pred = torch.cat(preds)
        target_idx = torch.cat(targets)
        real = flat[target_idx]
        _, mask, logit = self.comparator(pred.contiguous(), real.contiguous())
        score = (-logit.float()).cpu().numpy()  # mismatch logit; sigmoid(score / T) = 1 - P_d(t) at T = 1
        mask = mask.float().cpu().numpy()[:, 0]  # (N, mh, mw)
        dir_all = np.concatenate(dirs)
        tgt_all = target_idx.cpu().numpy()
        img_all, tgt_local = np.divmod(tgt_all, p)
        n_dir = len(self.config.directions)
        verdicts = np.zeros((b, n_dir, rows * cols), dtype=np.float32)
        valid = np.zeros((b, n_dir, rows * cols), dtype=bool)
        masks = np.ones((b, n_dir, p, *mask.shape[1:]), dtype=np.float32)  # 1 = neutral for the min
        verdicts[img_all, dir_all, tgt_local] = score
        valid[img_all, dir_all, tgt_local] = True
        masks[img_all, dir_all, tgt_local] = mask
        final_scores = np.stack(
            [
                np.asarray(
                    _native.intersect_maps(verdicts[i].reshape(n_dir, rows, cols), valid[i].reshape(n_dir, rows, cols))
                )
                for i in range(b)
            ]
        )
        final_masks = np.stack([np.asarray(_native.intersect_masks(masks[i])) for i in range(b)])
        # Intersect in logit space (min commutes with the monotone map), then map to [0, 1] with a
        # temperature so that confident scores do not all round to exactly 0 or 1 (ties would hurt ranking).
        final_scores = 1.0 / (1.0 + np.exp(-final_scores.astype(np.float64) / self.config.score_temperature))
        return final_scores, final_masks

    def _postprocess(
        self,
        rgb: np.ndarray,
        patch_scores: np.ndarray,
        masks: np.ndarray,
        threshold: float,
        keep_image: bool,
        source: str | None,
        timings: dict[str, float],
    ) -> InspectionResult:
        t0 = time.perf_counter()
        h, w = rgb.shape[:2]
        grid = self.config.grid
        patch_map = patch_scores >= threshold
        if self.config.scorer == "memory":
            # the map itself is the score field: resize it; the outline is where it reaches the threshold
            anomaly_map = cv2.resize(masks.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
            diff, cut = anomaly_map, threshold
        else:
            flat_scores = patch_scores.reshape(-1, 1, 1)
            anomaly_map = np.asarray(
                _native.stitch(np.ascontiguousarray(masks * flat_scores, dtype=np.float32), grid, (h, w))
            )
            diff, cut = None, 0.5
        np.clip(anomaly_map, 0.0, 1.0, out=anomaly_map)
        if patch_map.any():
            if diff is None:
                diff = np.asarray(_native.stitch(np.ascontiguousarray(masks, dtype=np.float32), grid, (h, w)))
            flagged = cv2.resize(patch_map.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
            mask = (diff >= cut) & flagged
            if not mask.any():  # nothing clear at pixel level: outline the strongest part of the flagged patches
                peak = diff[flagged].max()
                mask = (diff >= 0.5 * peak) & flagged
        else:
            mask = np.zeros((h, w), dtype=bool)
        score = float(patch_scores.max())
        timings["postprocess"] = (time.perf_counter() - t0) * 1000.0
        return InspectionResult(
            score=score,
            is_anomalous=bool(score >= threshold),
            threshold=float(threshold),
            anomaly_map=anomaly_map.astype(np.float32, copy=False),
            mask=mask,
            patch_map=patch_map,
            patch_scores=patch_scores.astype(np.float32),
            timings_ms=timings,
            image=rgb if keep_image else None,
            source=source,
        )

    # ------------------------------------------------------------------ public inference
    def inspect(
        self, image: ImageLike, threshold: float | None = None, bgr: bool = False, keep_image: bool = True
    ) -> InspectionResult:
        """Inspect one image.

        Args:
            image: a path, a numpy uint8 ``(H, W)`` or ``(H, W, 3)`` array (RGB unless ``bgr=True``,
                e.g. straight from ``cv2.imread``), or a PIL image.
            threshold: overrides ``self.threshold`` for this call.

        Example:
            >>> r = det.inspect("part.png")                            # doctest: +SKIP
            >>> r.score, r.is_anomalous, r.anomaly_map.shape, r.mask.any()  # doctest: +SKIP
        """
        return next(self._run([image], threshold, bgr, keep_image, batch_size=1, on_error="raise"))

    def inspect_many(
        self,
        images: Iterable[ImageLike],
        batch_size: int = 8,
        threshold: float | None = None,
        bgr: bool = False,
        keep_image: bool = True,
        on_error: str = "report",
    ) -> Iterator[InspectionResult | InspectionError]:
        """Inspect many images lazily, batched internally; yields one result per input, in order.

        ``on_error="report"`` yields an ``InspectionError`` for a bad item and goes on with the rest;
        ``"raise"`` stops at the first bad item.

        Example:
            >>> for r in det.inspect_many(["a.png", "b.png"], batch_size=8):   # doctest: +SKIP
            ...     print(r.source, r.score)
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if on_error not in ("report", "raise"):
            raise ValueError(f"on_error must be 'report' or 'raise', got {on_error!r}")
        return self._run(images, threshold, bgr, keep_image, batch_size, on_error)

    def _run(
        self,
        images: Iterable[ImageLike],
        threshold: float | None,
        bgr: bool,
        keep_image: bool,
        batch_size: int,
        on_error: str,
    ) -> Iterator[InspectionResult | InspectionError]:
        thr = self.threshold if threshold is None else float(threshold)
        if not np.isfinite(thr):
            raise ValueError(f"threshold must be finite, got {threshold}")
        pending: list[tuple[Any, ...]] = []  # (source, rgb | None, patches | error, preprocess_ms)

        def flush() -> Iterator[InspectionResult | InspectionError]:
            good = [item for item in pending if item[1] is not None]
            scores = masks = None
            infer_ms = 0.0
            if good:
                t0 = time.perf_counter()
                scores, masks = self._infer(np.stack([item[2] for item in good]))
                infer_ms = (time.perf_counter() - t0) * 1000.0 / len(good)
            k = 0
            for source, rgb, payload, pre_ms in pending:
                if rgb is None:
                    yield InspectionError(source=source, error=payload)
                    continue
                timings = {"preprocess": pre_ms, "inference": infer_ms}
                yield self._postprocess(rgb, scores[k], masks[k], thr, keep_image, source, timings)
                k += 1
            pending.clear()

        for image in images:
            source = str(image) if isinstance(image, (str, Path)) else None
            t0 = time.perf_counter()
            try:
                rgb, patches = self._prepare(image, bgr)
            except (ValueError, TypeError, OSError) as exc:
                if on_error == "raise":
                    raise
                log.warning("skipping %s: %s", source or "an input", exc)
                pending.append((source, None, f"{type(exc).__name__}: {exc}", 0.0))
            else:
                pending.append((source, rgb, patches, (time.perf_counter() - t0) * 1000.0))
            if sum(1 for item in pending if item[1] is not None) >= batch_size:
                yield from flush()
        if pending:
            yield from flush()

    # ------------------------------------------------------------------ fit and evaluate
    @classmethod
    def fit(cls, images: str | os.PathLike[str] | Sequence[ImageLike], **kwargs: Any) -> Detector:
        """Train a detector on defect-free images (a folder, or a list of paths/arrays).

        See ``patchloupe.fit.fit_detector`` for the options (scorer, grid, steps, hold-out share, false-alarm rate).

        Example:
            >>> det = Detector.fit("data/train/good")   # doctest: +SKIP
            >>> det.save("model_dir")                   # doctest: +SKIP
        """
        from patchloupe.fit import fit_detector

        return fit_detector(images, **kwargs)

    def evaluate(
        self, dataset: str | os.PathLike[str], batch_size: int = 8, progress: bool = False, max_fpr: float = 0.3
    ) -> dict[str, Any]:
        """Evaluate on an MVTec-AD-layout category folder.

        Returns image_auroc, pixel_auroc, aupro, f1_max (+ its threshold), counts and timings.

        Example:
            >>> det.evaluate("dataset/category")["image_auroc"]   # doctest: +SKIP
        """
        from patchloupe.evaluate import evaluate_detector

        return evaluate_detector(self, dataset, batch_size=batch_size, progress=progress, max_fpr=max_fpr)

    def calibrate(
        self, images: Sequence[ImageLike], false_alarm_rate: float | None = None, batch_size: int = 8
    ) -> float:
        """Set the threshold from defect-free images so that about ``false_alarm_rate`` of them are flagged.

        A few dozen held-out images cannot show a 1 % tail, so the threshold is the larger of (a) the
        ``1 - far`` empirical quantile of the scores (their maximum when there are fewer than ``1 / far``
        images) and (b) the ``1 - far`` quantile of a normal distribution fitted to the scores' logits;
        it is then raised by 1 % of the remaining headroom so the calibration images themselves pass.
        """
        scores = [r.score for r in self.inspect_many(images, batch_size=batch_size, keep_image=False, on_error="raise")]
        return self.calibrate_from_scores(scores, false_alarm_rate)

    def calibrate_from_scores(self, scores: Sequence[float], false_alarm_rate: float | None = None) -> float:
        """``calibrate`` for image scores already computed on defect-free images (same rule, same record).

        Example:
            >>> det.calibrate_from_scores([0.31, 0.42, 0.38], false_alarm_rate=0.01)   # doctest: +SKIP
        """
        from statistics import NormalDist

        far = self.config.false_alarm_rate if false_alarm_rate is None else float(false_alarm_rate)
        if not 0.0 < far < 1.0:
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {far}")
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) == 0:
            raise ValueError("calibration needs at least one defect-free image")
        empirical = float(np.quantile(scores, 1.0 - far, method="higher"))
        logits = np.log(np.clip(scores, 1e-7, 1 - 1e-7)) - np.log1p(-np.clip(scores, 1e-7, 1 - 1e-7))
        z = NormalDist().inv_cdf(1.0 - far)
        gaussian = float(1.0 / (1.0 + np.exp(-(logits.mean() + z * logits.std(ddof=1 if len(scores) > 1 else 0)))))
        base = max(empirical, gaussian)
        thr = min(1.0, base + 0.01 * (1.0 - base) + 1e-6)
        self.config.false_alarm_rate = far
        self.config.threshold = thr
        self.config.calibration = {
            "n_images": int(len(scores)),
            "false_alarm_rate": far,
            "score_mean": float(scores.mean()),
            "score_max": float(scores.max()),
            "empirical_quantile": empirical,
            "gaussian_logit_quantile": gaussian,
            "threshold": thr,
        }
        return thr

    def flops(self) -> int:
        """Network FLOPs (2 x MACs) to inspect one image. Pattern scorer: every patch encoded once per
        encoder and orientation, one decode and one comparison per reachable (direction, patch) pair.
        Memory scorer: the feature trunk plus the nearest-neighbour search over the memory bank."""
        if self.config.scorer == "memory":
            return self.memory.flops(self.config.image_size)
        ph, pw = check_geometry(self.config.image_size, self.config.grid)[0]
        total = 0
        for trip, size in ((self._plan.row, (ph, pw)), (self._plan.col, (pw, ph))):
            if len(trip):
                total += self.generator.prediction_flops(torch.from_numpy(trip), size)
                total += len(trip) * self.comparator.flops(ph, pw)
        return int(total)

    def num_params(self) -> int:
        """Parameters of the networks the scorer runs: generator + comparator (pattern), or the feature
        trunk + the entries of the memory banks (memory)."""
        if self.config.scorer == "memory":
            return sum(p.numel() for p in self.memory.trunk.parameters()) + self.memory.num_entries()
        return sum(p.numel() for m in (self.generator, self.comparator) for p in m.parameters())

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Detector(scorer={c.scorer!r}, image_size={c.image_size}, grid={c.grid}, directions={c.directions}, "
            f"threshold={c.threshold:.4g}, device={self.device})"
        )
