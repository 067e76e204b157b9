"""A reference of recent images for a stream whose surface has drifted from the fitted one (opt-in, stateful).

The default scorer (``selfref``) calls a position normal when it matches the training memory (``m``) or, for an
image its gate sees as another surface, the image's own pattern (``s``). After a texture change that the gate does
not see, the memory is the wrong reference. :class:`StreamPool` wraps a fitted ``selfref`` scorer and keeps the
features of the last ``size`` images it scored (a pool, after MuSc, ICLR 2024). For each image, in order:

1. **drift**: the ``drift_quantile`` quantile, over the image and its pool, of each image's median ``m`` (~1 on the
   fitted surface). At most ``drift``: the image is scored exactly as the wrapped scorer scores it (no extra work).
2. **likeness** (only past the drift level): ``P``, each position's distance to its nearest position in each pool
   image, averaged over the ``closest`` share of pool images nearest there; the image's likeness is its median
   ``P`` over its median raw memory distance, and the gate reads the median of that over the image and the pool
   images that had one. A changed surface resembles the other recent parts far more than the memory; a burst of
   defective parts of the fitted surface does not (the measured values: docs/benchmarks.md, section 15). At
   ``likeness`` or above: the wrapped scorer's map.
3. **pool rule** (both gates open): ``M = P`` divided by the median of the medians of ``P`` over the image and its
   pool (a running normaliser: ~1 on normal texture); an image the wrapped scorer's gate gives to the memory gets
   ``min(m, M)``, any other ``min(s, m, M)`` with clipped cells capped at 1, blurred like the memory map and mapped
   to [0, 1) with the fitted ``scale``, so the calibrated threshold keeps its meaning (times the model's
   ``pool_gain``, 1 for a fitted model);
4. **admission**: every image joins the pool, except one the pool rule scored at or above the detector's threshold
   (``Detector.threshold``, not a per-call override): a run of defective parts would find each other in the pool.
   See :meth:`StreamPool._join` for when a flagged image joins all the same.

The built-in model (``Detector.load()``, ``combine="self"``: no fitted surface, so nothing to drift from) has no
gates: from the second image on, each image is scored by ``min(s, M)``, its own pattern or the recent images (MuSc's
zero-shot setting, with a pool of recent parts instead of the whole test set). ``min(s, M)`` is never above ``s``,
for which the built-in threshold was calibrated, so the map is multiplied by the model's ``pool_gain``, the gain at
which streams of generated good images scored this way give the same threshold
(``patchloupe.train.default_selfref.calibrate_pool_gain``).

A result depends on the images scored before it: one ``StreamPool`` per stream, in the stream's order, not shared
between threads; :meth:`StreamPool.reset` forgets the pool. Windows of a large image are pool members like whole
images. Saving a detector that holds one saves the fitted model it wraps (the pool is run-time state); exported
graphs cannot hold it. Settings were chosen on the generated families and magnetic tile: docs/benchmarks.md,
sections 15-17.

Example:
    >>> det = Detector.load("model_dir").pooled()        # doctest: +SKIP
    >>> for r in det.inspect_many(frames): ...           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

from patchloupe.scorers.base import Scorer, patch_maxima
from patchloupe.scorers.memory import to_batch
from patchloupe.scorers.selfref import cap_clipped

__all__ = ["PoolConfig", "StreamPool", "cross_nearest", "pool_distance"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolConfig:
    """Settings of :class:`StreamPool` (see the module docstring for what each one gates)."""

    size: int = 16  # images held
    drift: float = 1.2  # the drift level above which the pool is considered
    drift_quantile: float = 0.25  # quantile over the image and its pool of each image's median m
    likeness: float = 0.9  # the pool is used only while the stream's likeness is below this
    closest: float = 0.3  # share of pool images averaged at each position
    admit_flagged: bool = False  # an image the pool rule flagged joins the pool too (see StreamPool)
    min_pool: int = 4  # with admit_flagged False: flagged images still join while the pool holds fewer than this

    def __post_init__(self) -> None:
        for name in ("size", "min_pool"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not isinstance(self.admit_flagged, bool):
            raise ValueError(f"admit_flagged must be True or False, got {self.admit_flagged!r}")
        for name in ("drift", "likeness"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        for name in ("drift_quantile", "closest"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {v!r}")


class _Seen(NamedTuple):
    """What the pool keeps of one scored image."""

    features: torch.Tensor  # (C, h, w)
    drift: float  # its median scaled memory distance
    pool_median: float  # median raw pool distance (nan: not measured, the drift gate was closed)
    likeness: float  # pool_median over its median raw memory distance (nan: not measured)


def cross_nearest(q: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Features of one image ``(C, h, w)`` and of ``P`` pool images ``(P, C, h, w)`` -> ``(P, h w)``: each position's
    Euclidean distance to the nearest position of each pool image."""
    a = q.flatten(1).T.float().contiguous()  # (N, C)
    r = pool.flatten(2).float()  # (P, C, N')
    rsq = r.square().sum(1)  # (P, N')
    out = torch.empty(r.shape[0], a.shape[0], dtype=a.dtype, device=a.device)
    # one (N, N') block per pool image, not a (P, N, N') tensor: the blocks stay in cache (4x faster at 16 x 1024^2);
    # |a|^2 is the same for every column, so it is added after the minimum
    for j in range(r.shape[0]):
        out[j] = torch.addmm(rsq[j][None, :], a, r[j], alpha=-2.0).amin(-1)
    return out.add_(a.square().sum(-1)[None]).clamp_min_(0.0).sqrt_()


def pool_distance(q: torch.Tensor, pool: torch.Tensor, closest: float) -> torch.Tensor:
    """:func:`cross_nearest` ``(P, h w)`` -> ``(h w,)``: at each position the mean over the ``closest`` share of pool
    images (at least one) nearest there, in feature units."""
    d = cross_nearest(q, pool)
    k = max(1, round(closest * d.shape[0]))
    return d.topk(k, dim=0, largest=False).values.mean(0)


def _finite(values: list[float]) -> torch.Tensor:
    return torch.tensor([v for v in values if math.isfinite(v)], dtype=torch.float32)


class StreamPool(Scorer):
    """A fitted ``selfref`` scorer (or the built-in model) plus a pool of the last ``config.size`` images it scored
    (module docstring)."""

    pixel_rule: ClassVar[str] = "resize"

    def __init__(self, base: Scorer, config: PoolConfig | None = None, threshold_from: Any = None) -> None:
        if isinstance(base, StreamPool):
            base = base.base
        if not hasattr(base, "parts_and_features"):
            raise TypeError(
                f"a stream pool needs the self-reference scorer ('selfref', the default of Detector.fit), "
                f"not a {base.name!r} scorer ({type(base).__name__})"
            )
        if base.config.combine not in ("gate", "self"):
            raise ValueError(
                f"a stream pool is built for the fitted default scorer (combine='gate') or the built-in model "
                f"(combine='self'); this model combines with {base.config.combine!r}"
            )
        self.base: Any = base
        #: the built-in model (no fitted surface): every image with a pool is scored by min(s, M), no gates
        self.zero_shot = base.config.combine == "self"
        self.config = config or PoolConfig()
        self.image_size = base.image_size
        self.grid = base.grid
        self._pool: deque[_Seen] = deque(maxlen=self.config.size)
        if threshold_from is not None and not hasattr(threshold_from, "threshold"):
            raise TypeError(
                f"threshold_from must hold the detector's threshold (a DetectorConfig), got {type(threshold_from)}"
            )
        #: what holds the detector's threshold (its ``DetectorConfig``: ``.threshold`` read at scoring time, so a
        #: later ``calibrate`` counts); None: every image joins the pool
        self.threshold_from = threshold_from
        self._joined: deque[bool] = deque(maxlen=self.config.size)  # whether each of the last images joined
        self._admit_all = False  # set while the detector calibrates (calibrating)
        self._open = False
        #: images scored, how many of them the pool rule scored, and how many it flagged and kept out of the pool
        self.seen = 0
        self.pooled = 0
        self.kept_out = 0
        #: for each image of the last ``infer`` call, whether the pool rule scored it
        self.last_pooled: list[bool] = []

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.base.name

    @property
    def entries(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.base.entries

    def reset(self) -> None:
        """Forget the pool (e.g. when the stream moves to another product on purpose)."""
        self._pool.clear()
        self._open = False
        self._joined.clear()
        self.last_pooled = []

    def stats(self) -> dict[str, Any]:
        """``{"seen", "pooled", "kept_out", "open", "held", "config"}``: images scored, scored by the pool rule,
        flagged by it and so kept out of the pool, whether the last image was scored by it, images held."""
        return {"seen": self.seen, "pooled": self.pooled, "kept_out": self.kept_out, "open": self._open,
                "held": len(self._pool), "config": asdict(self.config)}  # fmt: skip

    # ------------------------------------------------------------------ the Scorer contract, delegated
    def prepare(self, image: np.ndarray) -> np.ndarray:
        return self.base.prepare(image)

    def settings(self) -> dict[str, Any]:
        return self.base.settings()

    def tensors(self) -> dict[str, dict[str, Any]]:
        return self.base.tensors()

    @classmethod
    def from_saved(cls, settings: Any, tensors: Any, image_size: Any, grid: Any) -> Scorer:
        raise TypeError("a stream pool is run-time state: load the fitted model and call Detector.pooled()")

    def to(self, device: Any) -> StreamPool:
        self.base.to(device)
        self._pool = deque((s._replace(features=s.features.to(device)) for s in self._pool), maxlen=self.config.size)
        return self

    @property
    def device(self) -> Any:
        return self.base.device

    def flops(self) -> int:
        """The wrapped scorer's FLOPs (the pool search, ``2 P N^2 C``, runs only while the stream has drifted)."""
        return self.base.flops()

    def num_params(self) -> int:
        return self.base.num_params()

    def export_module(self, half: bool = False, **_: Any) -> Any:
        raise ValueError(
            "a stream pool cannot be exported (it is state of the stream, not of the model): export the detector "
            "without it"
        )

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def raw_map(self, x: torch.Tensor) -> torch.Tensor:
        """RGB float ``(B, 3, H, W)``, in stream order -> maps ``(B, H, W)`` (unnormalised); updates the pool."""
        sc = self.base
        size = tuple(x.shape[-2:])
        p, f = sc.parts_and_features(x)
        out = sc.blend(p.s, p.d, p.c, size, p.clipped, p.cells)
        m = p.d / sc.config.memory_scale
        near = sc.near(p.d, p.clipped)
        flags = []
        for i in range(x.shape[0]):
            big_m, seen = self._step(f[i], m[i], p.d[i])
            flags.append(big_m is not None)
            if big_m is None:
                self._join(seen, flagged=False)
                continue
            if self.zero_shot:
                rule = torch.minimum(p.s[i], big_m)
            elif bool(near[i]):
                rule = torch.minimum(m[i], big_m)
            else:
                cells = None if p.cells is None else p.cells[i : i + 1]
                low = torch.minimum(torch.minimum(p.s[i], m[i]), big_m)
                rule = cap_clipped(low[None], cells, sc.config.clip_cells)[0]
            out[i] = sc.memory._blurred(rule[None], size)[0] * sc.config.pool_gain
            self._join(seen, flagged=self._flags(out[i]))
        self.last_pooled = flags
        return out

    def _flags(self, raw: torch.Tensor) -> bool:
        """Whether a map ``(H, W)`` (unnormalised, as :meth:`raw_map` returns it) scores at or above the detector's
        threshold (False when the pool knows none)."""
        threshold = getattr(self.threshold_from, "threshold", None)
        if threshold is None:
            return False
        return -math.expm1(-float(raw.max()) / self.base.config.scale) >= float(threshold)

    @contextlib.contextmanager
    def calibrating(self) -> Iterator[None]:
        """While the detector calibrates, every image joins the pool: which images the threshold being replaced
        flags must not shape the scores the new one is taken from."""
        before, self._admit_all = self._admit_all, True
        try:
            yield
        finally:
            self._admit_all = before

    def _join(self, seen: _Seen, flagged: bool) -> None:
        """Add one scored image to the pool, unless the pool rule flagged it: a run of defective parts must not
        become the reference of the next ones. A flagged image joins anyway with ``admit_flagged`` or while
        calibrating, while the pool holds fewer than ``min_pool`` images (at most ``size``), and when at most a
        quarter of the last ``size`` images joined: a stream where nearly every part is flagged has more likely
        changed surface than turned defective, and one flagged part in about four then joins, so the pool holds
        the new surface's images after some 30 parts (``size`` 16)."""
        cfg = self.config
        admit = not flagged or cfg.admit_flagged or self._admit_all or len(self._pool) < min(cfg.min_pool, cfg.size)
        if not admit and len(self._joined) == cfg.size and sum(self._joined) <= cfg.size // 4:
            admit = True
        self._joined.append(admit)
        if admit:
            self._pool.append(seen)
        else:
            self.kept_out += 1

    def _step(self, f: torch.Tensor, m: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor | None, _Seen]:
        """One image's features ``(C, h, w)``, scaled and raw memory distances ``(h, w)`` -> ``M`` ``(h, w)`` when
        both gates are open (else None) and what the pool would keep of the image (:meth:`_join` decides)."""
        cfg = self.config
        drift = float(m.flatten().quantile(0.5))
        pool = list(self._pool)
        big_m, pool_median, likeness = None, math.nan, math.nan
        if pool and self.zero_shot:  # no fitted surface to drift from: the pool is the only other reference
            raw = pool_distance(f, torch.stack([s.features for s in pool]), cfg.closest)
            pool_median = float(raw.median())
            big_m = self._normalised(raw, pool_median, pool, m)
            self._open = True
        elif pool:
            level = float(torch.tensor([drift, *(s.drift for s in pool)]).quantile(cfg.drift_quantile))
            if level > cfg.drift:
                raw = pool_distance(f, torch.stack([s.features for s in pool]), cfg.closest)
                pool_median = float(raw.median())
                likeness = pool_median / max(float(d.flatten().median()), 1e-6)
                stream_likeness = float(_finite([likeness, *(s.likeness for s in pool)]).quantile(0.5))
                if stream_likeness < cfg.likeness:
                    big_m = self._normalised(raw, pool_median, pool, m)
                self._note(big_m is not None, level, stream_likeness)
            else:
                self._note(False, level, None)
        self.seen += 1
        self.pooled += big_m is not None
        return big_m, _Seen(f.detach().clone(), drift, pool_median, likeness)

    @staticmethod
    def _normalised(raw: torch.Tensor, pool_median: float, pool: list[_Seen], like: torch.Tensor) -> torch.Tensor:
        """Raw pool distances ``(h w,)`` -> ``M`` shaped and typed like ``like`` ``(h, w)``: divided by the median of
        the median pool distances of the image and its pool (a running normaliser, ~1 on normal texture)."""
        norm = float(_finite([pool_median, *(s.pool_median for s in pool)]).median())
        return (raw / max(norm, 1e-6)).reshape(like.shape).to(like.dtype)

    def _note(self, now: bool, level: float, likeness: float | None) -> None:
        """Log the pool rule starting (a warning: the surface changed) and stopping."""
        if now and not self._open:
            log.warning(
                "the stream has drifted from the fitted surface (drift level %.2f > %.2f) and its recent images "
                "resemble each other (likeness %.2f < %.2f): scoring against them as well",
                level, self.config.drift, likeness, self.config.likeness,
            )  # fmt: skip
        elif self._open and not now:
            why = f"drift level {level:.2f}" if likeness is None else f"likeness {likeness:.2f}"
            log.info("the stream pool is no longer used (%s)", why)
        self._open = now

    @torch.inference_mode()
    def infer(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(B, H', W', 3)`` in stream order -> patch scores ``(B, rows, cols)`` and maps ``(B, H', W')`` in
        [0, 1), as the wrapped scorer's; updates the pool."""
        x = to_batch(inputs).to(self.device)
        amap = (-torch.expm1(-self.raw_map(x) / self.base.config.scale)).float().cpu().numpy()
        return patch_maxima(amap, self.grid), amap
