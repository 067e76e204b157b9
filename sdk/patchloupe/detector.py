"""``Detector``: the public facade. It holds one scorer (``patchloupe.scorers``) and a ``DetectorConfig``
and never looks at which scorer it holds: scoring rules live in the scorer modules, pixel maps in
``patchloupe.pixelmaps``, the batching in ``patchloupe.pipeline``, files in ``patchloupe.persistence``."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from patchloupe import pipeline
from patchloupe.calibration import threshold_from_scores
from patchloupe.config import DetectorConfig, check_threshold
from patchloupe.errors import ModelError
from patchloupe.persistence import default_model_dir, read_model, write_model
from patchloupe.preprocess import ImageLike
from patchloupe.results import InspectionError, InspectionResult
from patchloupe.scorers.base import Scorer

__all__ = ["Detector", "DetectorConfig", "ModelError", "default_model_dir"]


class Detector:
    """Find and outline defects after learning from defect-free images only.

    Example:
        >>> from patchloupe import Detector
        >>> det = Detector.load()                       # built-in default model, no download
        >>> r = det.inspect("part.png")                 # doctest: +SKIP
        >>> r.score, r.is_anomalous, r.mask.shape       # doctest: +SKIP
    """

    def __init__(self, scorer: Scorer, config: DetectorConfig, device: Any = None) -> None:
        if scorer.name != config.scorer:
            raise ValueError(f"config says scorer {config.scorer!r} but a {scorer.name!r} scorer was given")
        if tuple(scorer.image_size) != tuple(config.image_size) or tuple(scorer.grid) != tuple(config.grid):
            raise ValueError(
                f"scorer geometry {scorer.image_size}/{scorer.grid} differs from the config's "
                f"{config.image_size}/{config.grid}"
            )
        self.config = config
        self.scorer = scorer.to(device) if device is not None else scorer

    @property
    def device(self) -> Any:
        return self.scorer.device

    # ------------------------------------------------------------------ threshold
    @property
    def threshold(self) -> float:
        """Image/patch score threshold in [0, 1] (adjustable at run time)."""
        return float(self.config.threshold)

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.config.threshold = check_threshold(value)

    # ------------------------------------------------------------------ persistence
    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, device: Any = None, **runtime_options: Any) -> Detector:
        """Load a saved model folder, the built-in default model when ``path`` is None, or an exported
        graph (``det.export``) run without torch; ``runtime_options`` go to its runtime (``runtime=
        "onnxruntime" | "openvino" | "tensorrt"``, ``providers=``, ``threads=``: ``patchloupe.runtimes``).

        Raises ``ModelError`` for anything that is not a complete, valid model folder or artefact.

        Example:
            >>> det = Detector.load()            # doctest: +SKIP
            >>> det = Detector.load("model_dir") # doctest: +SKIP
            >>> det = Detector.load("model.onnx", providers=["CPUExecutionProvider"])  # doctest: +SKIP
        """
        config, scorer = read_model(path, **runtime_options)
        return cls(scorer, config, device=device)

    def export(self, path: str | os.PathLike[str], format: str = "onnx", **options: Any) -> Path:  # noqa: A002
        """Export the scorer as one graph + its JSON for runtimes without torch (``patchloupe.export``:
        ``format="onnx" | "openvino" | "engine"``, ``half=``, ``int8=``, ``batch=1 | "dynamic"``, ``opset=``).

        Example:
            >>> det.export("model.onnx", batch="dynamic")   # doctest: +SKIP
        """
        from patchloupe.export import export_detector

        return export_detector(self, path, format=format, **options)

    def save(self, path: str | os.PathLike[str], weights_dtype: Any = None) -> Path:
        """Write the model folder (``detector.json`` + safetensors weights; atomic, see ``patchloupe.model_folder``).

        ``weights_dtype=torch.float16`` halves the files (floating-point tensors only; loading casts back).

        Example:
            >>> det.save("model_dir")            # doctest: +SKIP
        """
        return write_model(path, self.config, self.scorer, weights_dtype=weights_dtype)

    # ------------------------------------------------------------------ inference
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
        thr = self._threshold(threshold)
        policy = self.config.input_policy
        return next(pipeline.run(self.scorer, [image], thr, bgr, keep_image, 1, "raise", policy))

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
        ``"raise"`` stops at the first bad item. ``images`` is an iterable of images (a single path or
        a single image is a ``TypeError``: use ``inspect``).

        Example:
            >>> for r in det.inspect_many(["a.png", "b.png"], batch_size=8):   # doctest: +SKIP
            ...     print(r.source, r.score)
        """
        if isinstance(images, (str, bytes, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim != 4):
            raise TypeError(
                "inspect_many takes an iterable of images (a list of paths or arrays); use inspect() for one"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if on_error not in ("report", "raise"):
            raise ValueError(f"on_error must be 'report' or 'raise', got {on_error!r}")
        thr = self._threshold(threshold)
        return pipeline.run(self.scorer, images, thr, bgr, keep_image, batch_size, on_error, self.config.input_policy)

    def stream(self, source: Any, **kwargs: Any) -> Any:
        """Inspect a source (file, folder, glob, video, camera index, stream URL; ``watch=True`` for a hot
        folder) as frames arrive: a ``patchloupe.stream.Stream`` of ``StreamResult`` records (see
        ``patchloupe.stream.stream`` for the options)."""
        from patchloupe.stream import stream

        return stream(self, source, **kwargs)

    def pooled(self, size: int = 16, **options: Any) -> Detector:
        """A new detector that also compares each image with the last ``size`` images it inspected: a fitted model
        only while the stream has drifted from the fitted surface and its recent images resemble each other (a
        change of product or texture; ``patchloupe.scorers.stream_pool``: ``drift=``, ``likeness=``,
        ``drift_quantile=``, ``closest=``), the built-in model every image after the first (``closest=``). An image
        the pool rule flags at this detector's ``threshold`` (not a per-call ``threshold=``) does not join the pool
        (``admit_flagged=``, ``min_pool=``; ``calibrate`` admits every image). Results
        then depend on what was inspected before, in order: use one per stream. It shares
        this detector's fitted scorer and copies its config (threshold included); ``save`` writes the fitted model,
        ``export`` refuses. Needs a ``selfref`` model: a fitted one, or the built-in model, which has no fitted surface
        and so compares every image after the first with its pool (``TypeError`` for another scorer).

        Example:
            >>> det = Detector.load("model_dir").pooled()          # doctest: +SKIP
            >>> for r in det.stream("rtsp://10.0.0.5/line1"): ...  # doctest: +SKIP
        """
        from patchloupe.scorers.stream_pool import PoolConfig, StreamPool

        config = copy.deepcopy(self.config)
        return type(self)(StreamPool(self.scorer, PoolConfig(size=size, **options), threshold_from=config), config)

    def _threshold(self, threshold: float | None) -> float:
        return self.threshold if threshold is None else check_threshold(threshold)

    # ------------------------------------------------------------------ fit, calibrate, evaluate
    @classmethod
    def fit(cls, images: str | os.PathLike[str] | Sequence[ImageLike], **kwargs: Any) -> Detector:
        """Train a detector on defect-free images (a folder, or a list of paths/arrays).

        See ``patchloupe.fit.fit_detector`` for the options (scorer, grid, steps, hold-out share, false-alarm rate).

        Example:
            >>> det = Detector.fit("data/train/good")   # doctest: +SKIP
            >>> det.save("model_dir")                   # doctest: +SKIP
        """
        from patchloupe.fit import fit_detector

        config, scorer = fit_detector(images, **kwargs)
        return cls(scorer, config, device=kwargs.get("device"))

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
        """Set the threshold from defect-free images so that about ``false_alarm_rate`` of them are flagged
        (the rule: ``patchloupe.calibration.threshold_from_scores``); returns it."""
        with self.scorer.calibrating():
            results = self.inspect_many(images, batch_size=batch_size, keep_image=False, on_error="raise")
            scores = [r.score for r in results]
        return self.calibrate_from_scores(scores, false_alarm_rate)

    def calibrate_from_scores(self, scores: Sequence[float], false_alarm_rate: float | None = None) -> float:
        """``calibrate`` for image scores already computed on defect-free images (same rule, same record).

        Example:
            >>> det.calibrate_from_scores([0.31, 0.42, 0.38], false_alarm_rate=0.01)   # doctest: +SKIP
        """
        far = self.config.false_alarm_rate if false_alarm_rate is None else false_alarm_rate
        thr, record = threshold_from_scores(scores, far)
        self.config.false_alarm_rate = float(far)
        self.config.threshold = thr
        self.config.calibration = record
        return thr

    def flops(self) -> int:
        """Network FLOPs (2 x MACs) to inspect one image (``Scorer.flops``)."""
        return self.scorer.flops()

    def num_params(self) -> int:
        """Numbers held by the networks and memories the scorer runs."""
        return self.scorer.num_params()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Detector(scorer={c.scorer!r}, image_size={c.image_size}, grid={c.grid}, "
            f"threshold={c.threshold:.4g}, device={self.device})"
        )
