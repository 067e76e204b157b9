"""The self-reference scorer: a position is normal when it matches its own image's regular pattern *or*
the training memory; a defect matches neither.

Pipeline for a batch of RGB images resized to the detector's ``image_size`` ``(B, 3, H, W)``:

1. lighting normalisation, ``normalize``: ``"flat"`` (default, :func:`flat_field`) divides the image by the
   least-squares plane of its luminance and multiplies it by ``level`` (0.45; with ``fit_level`` the training
   images' median brightness, measured and not the default: docs/benchmarks.md, section 10): a global gain and a
   linear illumination gradient are removed, colour and contrast kept; ``"logplane"``
   (:func:`normalize_lighting`) also removes a colour cast and a gamma (the per-channel plane of the log
   intensity, divided by its std) but measured worse under a texture change; ``"plane"`` is that in the linear
   domain; ``"none"`` feeds the image as it is;
2. the memory scorer's features (``patchloupe.scorers.memory.FeatureMemory``: EfficientNet-Lite0 stride
   8 + 16 taps, 3x3-averaged) ``(B, C, h, w)``;
3. self-reference (zero-shot, after Aota et al., WACV 2023): for each position the mean Euclidean
   distance to its ``k`` nearest positions of the *same* image, positions within ``exclude`` cells
   (Chebyshev) left out, divided by the image's median of that distance, then normalised for position: the
   trunk's zero padding makes cells near a border, most of all near a corner, find fewer matches in their own
   image, by an amount that depends on the texture. An image like the fitted surface (the gate of step 5) divides
   each outer band of ``border`` cells by its own median when above 1 (:func:`border_normalize`) and then by
   ``position_scale``, the median of that ratio per position over held-out defect-free images (that surface's
   handicap, measured); any other image divides each cell by the median of its position class when above 1
   (:func:`class_normalize`: the cells at the same distances from the borders, up to ``position_classes`` cells
   deep, measured in the image itself) and then by ``class_scale``, fitted likewise (models fitted before the
   classes: the bands for every image) -> ``s`` ``(B, h, w)``, ~1 on normal texture;
4. memory distance: each position's distance to its nearest training memory vector, divided by the
   median of those distances over held-out defect-free images (fixed at fit time) -> ``m``, ~1 on
   normal images of the fitted surface. At fit time the memory also holds up to ``lighting_copies``
   photometric copies of training images (a random gain 0.6-1.6, gamma 0.7-1.4 or linear illumination
   ramp each), so a lamp that ages or an exposure that drifts stays inside the memory; with a context
   memory (the memory scorer's, ``context_taps``) its distance divided by its held-out median -> ``c``. The
   copies compete with the training images for the memory size the training images alone would get
   (``copies_grow_memory=False``), so they cost no search time;
5. ``combine``: ``"gate"`` (default: an image whose lower quartile of ``m`` (``gate_quantile``: a quarter of
   its positions match the memory, so a defect over most of a fitted-surface image does not leave the memory
   branch, where the self-reference would match a large defect with itself) is below ``gate`` and whose share of
   clipped pixels (:func:`clipped_fraction`) is at most ``clip_limit`` (the largest share among the fit's defect-free
   images plus ``clip_margin``), i.e. one that resembles the fitted surface, is scored by the memory alone, as
   the memory scorer scores it: the shape of ``m`` with the height of ``c`` when there is a context memory (or
   the larger of that and the self-reference's height, ``self_gain``, when probe defects chose it at fit:
   :meth:`SelfRefScorer.height_map`); any other image, e.g. after a change of texture or a gain that clips part
   of it, by ``min(s, m)``: normal when either reference matches; at most 1 on a cell whose pixels are more than
   ``clip_cells`` clipped, since clipped pixels carry no texture to compare: :func:`cap_clipped`), ``"min"``,
   ``"mean"``, ``"self"`` or ``"memory"`` of ``s`` and ``m``; upsampled and Gaussian-blurred like the memory map, then
   ``1 - exp(-d / scale)`` with ``scale`` the mean held-out image peak.

:class:`SelfRefScorer` is a ``Scorer`` with ``pixel_rule = "resize"`` (the field is the map at the model
size; a patch's score is the map's maximum over it). Figures: docs/benchmarks.md, "Robustness".
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from patchloupe import _native
from patchloupe.models.backbone import build_trunk, load_backbone
from patchloupe.preprocess import resize_for_model
from patchloupe.scorers.base import Scorer, patch_maxima
from patchloupe.scorers.memory import (
    SEARCH_CHUNK,
    FeatureMemory,
    MemoryConfig,
    MemoryGraph,
    _batches,
    graph_outputs,
    rescale_to_peak,
    to_batch,
)

log = logging.getLogger(__name__)

COMBINES = ("min", "gate", "mean", "self", "memory")
NORMALIZES = ("flat", "logplane", "plane", "none")

__all__ = [
    "SelfRefConfig",
    "SelfRefGraph",
    "SelfRefScorer",
    "SelfRefParts",
    "border_normalize",
    "class_normalize",
    "clipped_fraction",
    "fit_selfref",
    "flat_field",
    "lighting_copies",
    "normalize_lighting",
    "position_classes",
    "self_distances",
]


class SelfRefParts(NamedTuple):
    """What :meth:`SelfRefScorer.parts` returns for a batch of ``B`` images."""

    s: torch.Tensor  # (B, h, w) self-reference, scaled (+inf where the search was skipped)
    d: torch.Tensor  # (B, h, w) raw distance to the fine memory
    c: torch.Tensor | None  # (B, h', w') raw distance to the context memory, None without one
    clipped: torch.Tensor  # (B,) share of clipped pixels (clipped_fraction)
    cells: torch.Tensor | None = None  # (B, h, w) share of clipped pixels per feature cell (clipped_cells), or None


@dataclass
class SelfRefConfig:
    """Settings of the self-reference scorer (saved in ``detector.json`` beside the memory's)."""

    k: int = 8
    exclude: int = 2
    border: int = 1  # images like the fitted surface (all with position_classes=0): bands each by their own median
    position_classes: int = 8  # each cell divided by its position class's median, classes to this many cells deep
    combine: str = "gate"
    normalize: str = "flat"
    level: float = 0.45  # normalize="flat": the mean brightness (in [0, 1]) every image is brought to
    fit_level: bool = False  # fit only: level = the median brightness of the training images
    gate: float = 2.0  # combine="gate": an image whose gate_quantile of m is below this is scored by the memory alone
    gate_quantile: float = 0.25  # combine="gate": the (lower) quantile of an image's m the gate reads (0.5: median)
    clip_margin: float = 0.01  # fit only: clip_limit = the largest clipped share of the fit's images + this
    clip_limit: float = 1.0  # combine="gate": an image with more clipped pixels goes to min(s, m) (1: never)
    clip_cells: float = 0.5  # combine="gate": min(s, m) is at most 1 on cells with more clipped pixels (1: off)
    select_height: bool = True  # fit only: let probe defects decide whether the self-reference joins the height
    self_gain: float = 0.0  # combine="gate": a memory-scored image's height also counts gain * s + offset (0: off)
    self_offset: float = 0.0
    lighting_copies: int = 64  # fit only: at most this many photometric copies of training images join the memory
    copies_grow_memory: bool = False  # fit only: the copies compete for the training images' memory size (True: add)
    memory_scale: float = 1.0
    context_scale: float = 1.0
    scale: float = 1.0
    #: a stream pool (``patchloupe.scorers.stream_pool``) multiplies the maps its rule scored by this before the scale:
    #: calibrated for the built-in model on streams of generated good images (1: not calibrated, fitted models)
    pool_gain: float = 1.0

    def __post_init__(self) -> None:
        if int(self.k) < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if int(self.exclude) < 0:
            raise ValueError(f"exclude must be >= 0, got {self.exclude}")
        if int(self.border) < 0:
            raise ValueError(f"border must be >= 0, got {self.border}")
        if int(self.position_classes) < 0:
            raise ValueError(f"position_classes must be >= 0, got {self.position_classes}")
        self.k, self.exclude, self.border = int(self.k), int(self.exclude), int(self.border)
        self.position_classes = int(self.position_classes)
        if int(self.lighting_copies) < 0:
            raise ValueError(f"lighting_copies must be >= 0, got {self.lighting_copies}")
        self.lighting_copies = int(self.lighting_copies)
        for name in ("copies_grow_memory", "fit_level", "select_height"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not (0.0 < float(self.level) <= 1.0):
            raise ValueError(f"level must be in (0, 1], got {self.level}")
        self.level = float(self.level)
        if not (math.isfinite(float(self.self_gain)) and float(self.self_gain) >= 0.0):
            raise ValueError(f"self_gain must be >= 0, got {self.self_gain}")
        if not math.isfinite(float(self.self_offset)):
            raise ValueError(f"self_offset must be finite, got {self.self_offset}")
        self.self_gain, self.self_offset = float(self.self_gain), float(self.self_offset)
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")
        if self.normalize not in NORMALIZES:
            raise ValueError(f"normalize must be one of {NORMALIZES}, got {self.normalize!r}")
        if not (0.0 <= float(self.gate_quantile) <= 1.0):
            raise ValueError(f"gate_quantile must be in [0, 1], got {self.gate_quantile}")
        self.gate_quantile = float(self.gate_quantile)
        for name in ("clip_margin", "clip_limit", "clip_cells"):
            v = float(getattr(self, name))
            if not (0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {v}")
            setattr(self, name, v)
        for name in ("gate", "memory_scale", "context_scale", "scale", "pool_gain"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0.0):
                raise ValueError(f"{name} must be positive, got {v}")
            setattr(self, name, v)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SelfRefConfig:
        """Config from ``asdict`` output; a missing ``combine`` is ``"min"`` (the default of models saved before
        ``"gate"`` became it), a missing ``lighting_copies``, ``border`` and ``position_classes`` are 0 and a missing
        ``clip_limit`` and ``clip_cells`` 1 and a missing ``gate_quantile`` 0.5 (the median), so older models keep
        their scores."""
        d = {"combine": "min", "lighting_copies": 0, "border": 0, "position_classes": 0, "clip_limit": 1.0,
             "clip_cells": 1.0, "gate_quantile": 0.5, **d}  # fmt: skip
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def lighting_copies(images: Sequence[np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """Up to ``n`` photometric copies of ``images`` (RGB uint8, any sizes): ``ceil(n / len)`` per image, at most
    2 each, images chosen in a seeded order; each copy gets one random change: a gain in [0.6, 1.6], a gamma in
    [0.7, 1.4] or a linear illumination ramp of +-20-40 % in a random direction."""
    if n <= 0 or not images:
        return []
    rng = np.random.default_rng(seed)
    per = min(2, math.ceil(n / len(images)))
    order = rng.permutation(len(images))
    out: list[np.ndarray] = []
    for i in order:
        for _ in range(per):
            if len(out) >= n:
                return out
            x = images[int(i)].astype(np.float32) / 255.0
            kind = int(rng.integers(3))
            if kind == 0:
                y = x * np.float32(rng.uniform(0.6, 1.6))
            elif kind == 1:
                y = x ** np.float32(rng.uniform(0.7, 1.4))
            else:
                h, w = x.shape[:2]
                a, t = rng.uniform(0.2, 0.4), rng.uniform(0.0, 2.0 * np.pi)
                yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
                r = np.cos(t) * (xx / max(1, w - 1) - 0.5) + np.sin(t) * (yy / max(1, h - 1) - 0.5)
                y = x * (1.0 + a * r / max(float(np.abs(r).max()), 1e-6))[..., None].astype(np.float32)
            out.append(np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return out


def normalize_lighting(x: torch.Tensor, eps: float = 1.0 / 64, log_domain: bool = True) -> torch.Tensor:
    """RGB ``(B, 3, H, W)`` in [0, 1] -> the same with gain, colour cast, linear gradient and gamma removed
    (see the module docstring, step 1), in [0, 1]; ``log_domain=False`` ("plane") fits the plane to the
    intensities themselves (an offset and an additive gradient are removed exactly, a gain by the std)."""
    b, c, h, w = x.shape
    lg = torch.log(x.float() + eps) if log_domain else x.float()
    u = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=lg.dtype)[None, None, None, :]
    v = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=lg.dtype)[None, None, :, None]
    # the basis (1, u, v) is orthogonal on a regular grid, so the least-squares plane is three projections
    r = lg - lg.mean(dim=(2, 3), keepdim=True)
    r = r - u * ((r * u).sum(dim=(2, 3), keepdim=True) / (u.square().sum() * h))
    r = r - v * ((r * v).sum(dim=(2, 3), keepdim=True) / (v.square().sum() * w))
    std = r.flatten(1).std(dim=1).clamp_min(1e-4)[:, None, None, None]
    return (0.5 + 0.15 * r / std).clamp_(0.0, 1.0)


def flat_field(x: torch.Tensor, level: float = 0.45) -> torch.Tensor:
    """RGB ``(B, 3, H, W)`` in [0, 1] divided by the least-squares plane of its luminance and brought to a mean
    of ``level`` (a global gain and a linear illumination gradient removed; colour and contrast kept)."""
    b, c, h, w = x.shape
    x = x.float()
    # the basis (1, u, v) is orthogonal on a regular grid, so the plane is three projections, and those need only
    # the luminance's column and row sums (no (B, 1, H, W) luminance image: this runs before every trunk pass); a
    # single row or column has no slope along it (linspace(-1, 1, 1) is [-1], not orthogonal to the constant)
    u = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype) * float(w > 1)
    v = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype) * float(h > 1)
    # (B, W), (B, H) mean luminance; summed in this order because a channel reduction of a channels-last image
    # (to_batch's) is ten times slower
    cols, rows = x.sum(dim=2).sum(dim=1) / (c * h), x.sum(dim=(1, 3)) / (c * w)
    mean = cols.mean(dim=1)
    gu = (cols * u).sum(dim=1) / u.square().sum().clamp_min(1e-12)
    gv = (rows * v).sum(dim=1) / v.square().sum().clamp_min(1e-12)
    plane = mean[:, None, None] + gu[:, None, None] * u[None, None, :] + gv[:, None, None] * v[None, :, None]
    return (x * (level / plane.clamp_min(0.02))[:, None]).clamp_(0.0, 1.0)


def clipped_pixels(x: torch.Tensor) -> torch.Tensor:
    """RGB ``(B, 3, H, W)`` in [0, 1] (uint8 / 255) -> bool ``(B, H, W)``: a channel at either end of the range (<= 1
    or >= 254 of 255)."""
    # |x - 1/2| > 1/2 - 1.5/255 is "<= 1 or >= 254 of 255": one elementwise pass before the channel maximum (timed in
    # docs/benchmarks.md, section 13), written with the operators every exported graph has
    return (x - 0.5).abs().amax(dim=1) > 0.5 - 1.5 / 255.0


def clipped_fraction(x: torch.Tensor) -> torch.Tensor:
    """RGB ``(B, 3, H, W)`` in [0, 1] (uint8 / 255) -> ``(B,)`` the share of clipped pixels (:func:`clipped_pixels`):
    clipped pixels carry no texture, and a gain or an illumination gradient that clips part of the image moves its
    features off the memory however the image is normalised."""
    return clipped_pixels(x).flatten(1).float().mean(dim=1)


@functools.lru_cache(maxsize=32)
def cell_average_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """float32 ``(n_out, n_in)``: row ``i`` averages samples ``floor(i n_in / n_out)`` to ``ceil((i + 1) n_in /
    n_out) - 1`` (``adaptive_avg_pool``'s windows, as a matrix: a constant in a traced graph; read-only)."""
    a = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        a[i, lo:hi] = 1.0 / (hi - lo)
    with torch.inference_mode(False):  # a plain tensor: cached, used in and out of inference mode
        return torch.from_numpy(a)


def cell_share(px: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """bool ``(B, H, W)`` -> float32 ``(B, h, w)`` the share of true pixels in each cell of the ``h x w`` feature
    grid (``adaptive_avg_pool2d``'s cells, as two matrix products with constant matrices)."""
    a_h = cell_average_matrix(int(px.shape[-2]), int(grid[0])).to(px.device)
    a_w = cell_average_matrix(int(px.shape[-1]), int(grid[1])).to(px.device)
    return a_h @ px.float() @ a_w.T


def clipped_cells(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """RGB ``(B, 3, H, W)`` in [0, 1] -> ``(B, h, w)`` the share of clipped pixels (:func:`clipped_pixels`) in each
    cell of the ``h x w`` feature grid (:func:`cell_share`)."""
    return cell_share(clipped_pixels(x), grid)


def cap_clipped(far: torch.Tensor, cells: torch.Tensor | None, limit: float) -> torch.Tensor:
    """``min(s, m)`` ``(B, h, w)`` -> the same, at most 1 (normal) on cells whose clipped share ``cells`` ``(B, h, w)``
    is above ``limit``: clipped pixels carry no texture to compare, so a cell that is mostly clipped is no evidence
    of a defect (unchanged for ``cells`` None or ``limit`` >= 1)."""
    if cells is None or limit >= 1.0:
        return far
    return torch.where(cells > limit, far.clamp_max(1.0), far)


class LightingTrunk(nn.Module):
    """A feature trunk behind :func:`normalize_lighting` (or nothing, ``normalize="none"``); keeps the
    trunk's ``taps`` and ``channels`` so ``FeatureMemory`` takes it as its own."""

    def __init__(self, net: nn.Module, normalize: str, level: float = 0.45) -> None:
        super().__init__()
        self.net = net
        self.normalize = normalize
        self.level = float(level)
        self.taps = tuple(net.taps)
        self.channels = tuple(net.channels)

    @property
    def fused(self) -> Callable[[], LightingTrunk] | None:
        """Like the inner trunk's ``fused`` (BatchNorm folded into the convolutions, ``FeatureMemory`` runs it at
        inference): a builder of the same normalisation in front of the folded trunk, or None without one."""
        inner = getattr(self.net, "fused", None)
        if inner is None:
            return None
        return lambda: LightingTrunk(inner(), self.normalize, self.level)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.normalize == "none":
            return self.net(x)
        if self.normalize == "flat":
            return self.net(flat_field(x, self.level))
        return self.net(normalize_lighting(x, log_domain=self.normalize == "logplane"))


@torch.inference_mode()
def self_distances(f: torch.Tensor, k: int, exclude: int, chunk: int = 1024, use_native: bool = True) -> torch.Tensor:
    """Features ``(B, C, h, w)`` -> each position's mean Euclidean distance to its ``k`` nearest positions
    of the same image outside its ``(2 exclude + 1)^2`` neighbourhood ``(B, h, w)``. On the CPU the selection
    runs in the native module (``_native.knn_mean_distance``; ``use_native=False``: masked ``topk``, the
    reference it is tested against and what :class:`SelfRefGraph` exports)."""
    b, c, h, w = f.shape
    n = h * w
    q = f.flatten(2).transpose(1, 2).float()  # (B, N, C)
    sq = q.square().sum(-1)  # (B, N)
    kk = min(k, n - min(n, (2 * exclude + 1) ** 2))
    if kk < 1:
        raise ValueError(f"a {h}x{w} feature map leaves no positions outside exclude={exclude}")
    out = torch.empty(b, n, dtype=q.dtype, device=f.device)
    native = use_native and f.device.type == "cpu" and q.dtype == torch.float32
    # the cached mask (a few MB up to MASK_CACHE_MAX positions) instead of two (chunk, N) index differences per chunk
    cached = _device_mask(h, w, exclude, str(f.device)) if n <= MASK_CACHE_MAX else None
    if cached is None:
        yy = torch.arange(h, device=f.device).repeat_interleave(w)
        xx = torch.arange(w, device=f.device).repeat(h)
    for i in range(0, n, chunk):
        qi = q[:, i : i + chunk]
        d2 = torch.baddbmm(sq[:, None, :], qi, q.transpose(1, 2), alpha=-2.0).add_(sq[:, i : i + chunk, None])
        if native:  # the k smallest outside the window in one pass (cpp/knn.cpp), ~3x faster than mask + topk
            try:
                out[:, i : i + chunk] = torch.from_numpy(
                    _native.knn_mean_distance(d2.numpy(), (h, w), exclude, kk, first=i)
                )
                continue
            except ValueError:  # a NaN feature: the torch path below propagates it as before
                pass
        if cached is not None:
            near = cached[i : i + chunk]
        else:
            dy, dx = (yy[i : i + chunk, None] - yy[None]).abs(), (xx[i : i + chunk, None] - xx[None]).abs()
            near = (dy <= exclude) & (dx <= exclude)
        d2.masked_fill_(near[None], float("inf"))
        out[:, i : i + chunk] = d2.topk(kk, dim=-1, largest=False).values.clamp_min_(0.0).sqrt_().mean(-1)
    return out.reshape(b, h, w)


def _scaled(s: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``s`` ``(B, h, w)`` divided by a per-position scale ``(h, w)`` fitted at the model size (left as it is on
    another grid)."""
    if tuple(int(v) for v in scale.shape) != tuple(int(v) for v in s.shape[1:]):
        return s
    return s / scale.to(s.device)


def _build_memory(mcfg: MemoryConfig, cfg: SelfRefConfig, weights: str | None = None) -> FeatureMemory:
    trunk = LightingTrunk(load_backbone(weights, mcfg.trunk_taps, mcfg.backbone), cfg.normalize, cfg.level)
    return FeatureMemory(mcfg, None, trunk)


class SelfRefScorer(Scorer):
    """Self-reference + memory on an ``image_size`` image; ``grid`` sets the resolution of the patch scores."""

    name: ClassVar[str] = "selfref"
    pixel_rule: ClassVar[str] = "resize"
    entries: ClassVar[tuple[str, ...]] = ("memory", "selfref")

    def __init__(
        self,
        memory: FeatureMemory,
        config: SelfRefConfig,
        image_size: tuple[int, int],
        grid: tuple[int, int],
        position_scale: torch.Tensor | None = None,
        class_scale: torch.Tensor | None = None,
    ) -> None:
        from patchloupe.preprocess import check_geometry

        if not isinstance(memory.trunk, LightingTrunk):
            raise TypeError("the memory's trunk must be a LightingTrunk")
        self.memory = memory.eval()
        self.config = config
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.grid = (int(grid[0]), int(grid[1]))
        check_geometry(self.image_size, self.grid)
        trunk = memory.trunk
        if (trunk.normalize, trunk.level) != (config.normalize, config.level):  # the export graph reads the config
            raise ValueError(
                f"the memory's trunk normalises with {trunk.normalize!r} at level {trunk.level}, the config says "
                f"{config.normalize!r} at {config.level}"
            )
        h, w = math.ceil(self.image_size[0] / 8), math.ceil(self.image_size[1] / 8)  # the stride-8 grid
        scales = []
        for name, t in (("position_scale", position_scale), ("class_scale", class_scale)):
            t = torch.ones(h, w) if t is None else t.float().cpu().contiguous()
            if tuple(t.shape) != (h, w) or not bool((t > 0).all()):
                raise ValueError(f"{name} must be positive ({h}, {w}), got {tuple(t.shape)}")
            scales.append(t)
        #: the median band-normalised self-reference per position over held-out images ``(H/8, W/8)``: border
        #: positions find fewer matches in their own image, so the fitted surface's ``s`` is divided by it (ones
        #: until ``fit_selfref`` sets it)
        self.position_scale = scales[0]
        #: the same for the class-normalised self-reference (:func:`class_normalize`), the other surfaces' ``s``
        #: (ones for models fitted before the classes, which do not use it)
        self.class_scale = scales[1]

    def settings(self) -> dict[str, Any]:
        return {"memory": self.memory.config.to_dict(), "selfref": asdict(self.config)}

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        scales = {"position_scale": self.position_scale, "class_scale": self.class_scale}
        return {"memory": self.memory.state_dict(), "selfref": scales}

    @classmethod
    def from_saved(
        cls,
        settings: dict[str, Any],
        tensors: dict[str, dict[str, torch.Tensor]],
        image_size: tuple[int, int],
        grid: tuple[int, int],
    ) -> SelfRefScorer:
        mcfg = MemoryConfig.from_dict(settings["memory"])
        cfg = SelfRefConfig.from_dict(settings["selfref"])
        trunk = LightingTrunk(build_trunk(mcfg.backbone, mcfg.trunk_taps), cfg.normalize, cfg.level)
        memory = FeatureMemory.from_state(mcfg, tensors["memory"], trunk)
        ps = tensors["selfref"]["position_scale"]
        cs = tensors["selfref"].get("class_scale")  # models saved before the classes have none (and need none)
        for name, t in (("position_scale", ps), ("class_scale", cs)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} holds NaN or infinite values")
        return cls(memory, cfg, image_size, grid, ps, cs)

    def to(self, device: Any) -> SelfRefScorer:
        self.memory.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.memory.bank.device

    # ------------------------------------------------------------------------------------------ maps
    @torch.inference_mode()
    def parts(self, x: torch.Tensor, every: bool = False, branch: str = "auto") -> SelfRefParts:
        """RGB float ``(B, 3, H, W)`` -> (self-reference ``s``, raw memory distance ``d``) ``(B, h, w)`` at the
        feature grid, the raw context-memory distance ``(B, h', w')`` (None without a context memory) and the
        clipped share of each image ``(B,)``; ``s`` is already divided by its per-image median and normalised for
        position (:meth:`self_reference`), the distances are not scaled.

        ``branch="auto"``: an image the memory alone scores (``combine="gate"``, :meth:`near`) gets the fitted
        surface's self-reference (``"near"``: bands and ``position_scale``; it only sets heights,
        :meth:`height_map`), any other image the self-reference of a surface the fit never saw (``"far"``: position
        classes and ``class_scale``); ``"near"`` / ``"far"`` force one for every image. With ``combine="gate"`` a
        memory-scored image does not need ``s``: unless ``every`` or ``self_gain`` > 0, its self-reference search is
        skipped and its ``s`` is ``+inf`` (``min(s, m)`` is then ``m``). ``cells``, the clipped share per feature
        cell (:func:`clipped_cells`), is None unless ``combine="gate"``, ``clip_cells`` < 1 and an image of the batch
        goes to ``min(s, m)`` (only there is it read)."""
        return self.parts_and_features(x, every, branch)[0]

    @torch.inference_mode()
    def parts_and_features(
        self, x: torch.Tensor, every: bool = False, branch: str = "auto"
    ) -> tuple[SelfRefParts, torch.Tensor]:
        """:meth:`parts` and the features they were computed from ``(B, C, h, w)`` (one trunk pass; a reference
        of other images, ``patchloupe.scorers.stream_pool``, compares them)."""
        if branch not in ("auto", "near", "far"):
            raise ValueError(f"branch must be 'auto', 'near' or 'far', got {branch!r}")
        gate = self.config.combine == "gate"
        f, d, c, clipped, px = self._memory_parts(x)
        near = self.near(d, clipped) if gate else torch.zeros(f.shape[0], dtype=torch.bool, device=f.device)
        every = every or not gate or self.config.self_gain > 0.0  # the self-reference sets heights too
        todo = torch.ones_like(near) if every else ~near
        s = torch.full(d.shape, math.inf, dtype=torch.float32, device=f.device)
        if bool(todo.any()):
            which = near[todo] if branch == "auto" else torch.full_like(near[todo], branch == "near")
            s[todo] = self.self_reference(f[todo], which).float()
        cells = None  # only min(s, m) reads them: computed when an image goes there
        if gate and self.config.clip_cells < 1.0 and not bool(near.all()):
            cells = self._cells(x, px, d.shape[-2:]).to(d.device)
        return SelfRefParts(s, d, c, clipped, cells), f

    def _memory_parts(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """RGB float ``(B, 3, H, W)`` -> (features ``(B, C, h, w)``, raw memory distance ``(B, h, w)``, raw
        context-memory distance (only ``combine="gate"`` reads it; else None), clipped share ``(B,)``, and the
        clipped pixels ``(B, H, W)`` (:func:`clipped_pixels`) when the share was measured, else None)."""
        gate = self.config.combine == "gate"
        # only the gate reads the clipped share, and a clip_limit of 1 never excludes an image: zeros then
        px = clipped_pixels(x) if gate and self.config.clip_limit < 1.0 else None
        clipped = px.flatten(1).float().mean(dim=1) if px is not None else x.new_zeros(x.shape[0])
        f, ctx = self.memory._tap_features(x)
        d = self.memory.nearest(f)
        c = None
        if ctx is not None and gate:
            c = self.memory.nearest(self.memory._project(ctx), bank=self.memory.context_bank)
        return f, d, c, clipped.to(d.device), px

    def _cells(self, x: torch.Tensor, px: torch.Tensor | None, grid: tuple[int, int]) -> torch.Tensor:
        """The clipped share per feature cell ``(B, h, w)`` (:func:`clipped_cells`), from ``px`` when
        :meth:`_memory_parts` measured it."""
        return cell_share(clipped_pixels(x) if px is None else px, grid)

    @torch.inference_mode()
    def fit_parts(self, x: torch.Tensor) -> tuple[SelfRefParts, torch.Tensor]:
        """For fitting, from one trunk pass: :meth:`parts` of every image with the fitted surface's self-reference
        (``branch="near"``) and the other branch's ``s`` ``(B, h, w)`` (``branch="far"``; the same tensor for
        models without the classes)."""
        f, d, c, clipped, px = self._memory_parts(x)
        raw = self._raw_self_reference(f)
        fitted = _scaled(border_normalize(raw, self.config.border), self.position_scale).float()
        other = fitted
        if self.config.position_classes > 0:
            other = _scaled(class_normalize(raw, self.config.position_classes), self.class_scale).float()
        cap = self.config.combine == "gate" and self.config.clip_cells < 1.0  # only the gate's min(s, m) reads them
        cells = self._cells(x, px, d.shape[-2:]).to(d.device) if cap else None
        return SelfRefParts(fitted, d, c, clipped, cells), other

    def _raw_self_reference(self, f: torch.Tensor) -> torch.Tensor:
        """Features ``(B, C, h, w)`` -> :func:`self_distances` divided by each image's median ``(B, h, w)``."""
        raw = self_distances(f, self.config.k, self.config.exclude)
        return raw / raw.flatten(1).median(dim=1).values.clamp_min(1e-6)[:, None, None]

    def self_reference(self, f: torch.Tensor, near: torch.Tensor) -> torch.Tensor:
        """Features ``(B, C, h, w)`` and bool ``(B,)`` -> ``s`` ``(B, h, w)``: :func:`self_distances` divided by its
        image median, then for a ``near`` image (one like the fitted surface) each outer band by its own median
        (:func:`border_normalize`) and ``position_scale``, the fitted surface's per-position handicap, and for any
        other image each position class by its own median (:func:`class_normalize`) and ``class_scale``, since
        the fitted handicap is another texture's (models fitted before the classes, ``position_classes=0``: the
        bands for every image)."""
        cfg = self.config
        raw = self._raw_self_reference(f)
        near = near.to(raw.device)
        if cfg.position_classes <= 0 or bool(near.all()):
            return _scaled(border_normalize(raw, cfg.border), self.position_scale)
        other = _scaled(class_normalize(raw, cfg.position_classes), self.class_scale)
        if not bool(near.any()):
            return other
        return torch.where(near[:, None, None], _scaled(border_normalize(raw, cfg.border), self.position_scale), other)

    def combine(
        self, s: torch.Tensor, d: torch.Tensor, clipped: torch.Tensor | None = None, cells: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(``s``, raw memory distance ``d``) ``(B, h, w)`` -> the combined map ``(B, h, w)`` at the feature grid
        (``"gate"``: before the context memory sets the height of the memory-scored images, see :meth:`blend`;
        ``clipped`` ``(B,)`` as in :meth:`near`; ``cells`` ``(B, h, w)`` the clipped share per cell, which caps
        ``min(s, m)`` at 1 where above ``clip_cells``: :func:`cap_clipped`)."""
        m = d / self.config.memory_scale
        how = self.config.combine
        if how == "min":
            return torch.minimum(s, m)
        if how == "gate":  # the image resembles the fitted surface: the memory alone; else either reference
            far = cap_clipped(torch.minimum(s, m), cells, self.config.clip_cells)
            return torch.where(self.near(d, clipped)[:, None, None], m, far)
        if how == "mean":
            return 0.5 * (s + m)
        return s if how == "self" else m

    def near(self, d: torch.Tensor, clipped: torch.Tensor | None = None) -> torch.Tensor:
        """Raw memory distances ``(B, h, w)`` and the clipped share of each image ``(B,)`` (None: not known, taken
        as 0) -> bool ``(B,)``: the image resembles the fitted surface (the ``gate_quantile`` of its scaled memory
        distance is below ``gate`` and it has no more clipped pixels than ``clip_limit``)."""
        m = (d / self.config.memory_scale).flatten(1)
        near = lower_quantile(m, self.config.gate_quantile) < self.config.gate
        return near if clipped is None else near & (clipped.to(near.device) <= self.config.clip_limit)

    def blend(
        self,
        s: torch.Tensor,
        d: torch.Tensor,
        c: torch.Tensor | None,
        size: tuple[int, int],
        clipped: torch.Tensor | None = None,
        cells: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The parts -> the combined map upsampled to ``size`` and blurred ``(B, H, W)`` (unnormalised). With a
        context memory, a memory-scored image keeps its map's shape and takes the height of ``c / context_scale``
        (``patchloupe.scorers.memory.rescale_to_peak``: how the memory scorer ranks images), or with ``self_gain``
        the larger of that and the self-reference's height in the same units (:meth:`height_map`)."""
        if c is None:
            return self.memory._blurred(self.combine(s, d, clipped, cells), size)
        near = self.near(d, clipped)
        if self.config.combine == "gate" and bool(near.all()):  # the usual batch on the fitted surface: m alone
            m = self.memory._blurred(d / self.config.memory_scale, size)
            return rescale_to_peak(m, self.height_map(s, c, size))
        out = self.memory._blurred(self.combine(s, d, clipped, cells), size)
        ctx = rescale_to_peak(out, self.height_map(s, c, size))
        return torch.where(near[:, None, None], ctx, out)

    def height_map(self, s: torch.Tensor, c: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``s`` ``(B, h, w)`` and the raw context distance ``c`` ``(B, h', w')`` -> the map ``(B, H, W)`` whose
        maximum is a memory-scored image's height: ``c / context_scale`` blurred, and with ``self_gain`` > 0 its
        maximum with ``self_gain * blur(s) + self_offset`` (the self-reference in the context memory's units: the
        affine map that matches the two heights' mean and spread over the held-out images, see ``fit_selfref``)."""
        cfg = self.config
        ctx = self.memory._blurred(c / cfg.context_scale, size)
        if cfg.self_gain <= 0.0:
            return ctx
        return torch.maximum(ctx, cfg.self_gain * self.memory._blurred(s, size) + cfg.self_offset)

    @torch.inference_mode()
    def raw_map(self, x: torch.Tensor) -> torch.Tensor:
        """RGB float ``(B, 3, H, W)`` -> combined map upsampled and blurred ``(B, H, W)`` (unnormalised)."""
        s, d, c, clipped, cells = self.parts(x)
        return self.blend(s, d, c, x.shape[-2:], clipped, cells)

    @torch.inference_mode()
    def infer(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(B, H', W', 3)`` -> patch scores ``(B, rows, cols)`` (the map's maximum per patch) and
        the anomaly map ``(B, H', W')`` in [0, 1)."""
        x = to_batch(inputs).to(self.device)
        amap = (-torch.expm1(-self.raw_map(x) / self.config.scale)).float().cpu().numpy()
        return patch_maxima(amap, self.grid), amap

    def flops(self) -> int:
        """The memory's trunk and search plus the self-reference search (``2 N^2 C`` per image)."""
        h, w = self.image_size[0] // 8, self.image_size[1] // 8
        return int(self.memory.flops(self.image_size) + 2 * (h * w) ** 2 * self.memory.channels)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.memory.trunk.parameters()) + self.memory.num_entries()

    def export_module(self, half: bool = False, chunk: int = SEARCH_CHUNK) -> SelfRefGraph:
        """The whole scorer as one traceable network (``patchloupe.export``): see :class:`SelfRefGraph`."""
        return SelfRefGraph(self, half=half, chunk=chunk)


@functools.lru_cache(maxsize=16)
def exclusion_mask(h: int, w: int, exclude: int) -> torch.Tensor:
    """Bool ``(h w, h w)``: position pairs of an ``h x w`` grid within ``exclude`` cells (Chebyshev) of each
    other, the pairs :func:`self_distances` leaves out (numpy-built, so a traced graph holds it as a constant;
    read-only)."""
    yy, xx = np.divmod(np.arange(h * w), w)
    near = (np.abs(yy[:, None] - yy[None]) <= exclude) & (np.abs(xx[:, None] - xx[None]) <= exclude)
    return torch.from_numpy(near)


#: grids of at most this many positions reuse a cached exclusion mask in :func:`self_distances` (4,096: 16 MB)
MASK_CACHE_MAX = 4096


@functools.lru_cache(maxsize=8)
def _device_mask(h: int, w: int, exclude: int, device: str) -> torch.Tensor:
    """:func:`exclusion_mask` on ``device`` (cached: the self-reference of every image of a size reuses it)."""
    with torch.inference_mode(False), torch.no_grad():  # a plain tensor: cached, used in and out of inference mode
        return exclusion_mask(h, w, exclude).to(device)


def lower_quantile(v: torch.Tensor, q: float) -> torch.Tensor:
    """``(B, N)`` -> ``(B,)`` the lower ``q``-quantile, the ``i = floor(q (N - 1))``-th smallest value (0-based;
    ``q=0.5`` is :func:`lower_median`), as the largest of the ``i + 1`` smallest, or above the median as the smallest
    of the ``N - i`` largest (ONNX TopK, with K at most the median's: TensorRT's TopK limit; no quantile op)."""
    n = int(v.shape[1])  # int(): a constant K when traced
    i = min(n - 1, int(math.floor(q * (n - 1) + 1e-9)))  # (the 1e-9: q (N - 1) a float's width below an integer)
    if n - i < i + 1:  # above the median: the smallest of the n - i largest, so K stays <= (N + 1) // 2 (TensorRT)
        return v.topk(n - i, dim=1, largest=True).values.amin(1)
    return v.topk(i + 1, dim=1, largest=False).values.amax(1)


def lower_median(v: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` -> ``(B,)`` the lower median (``torch.median``'s: the ``(N - 1) // 2``-th smallest value), as
    :func:`lower_quantile` 0.5: the largest of the ``(N + 1) // 2`` smallest (ONNX has no median operator)."""
    return lower_quantile(v, 0.5)


@functools.lru_cache(maxsize=16)
def border_bands(h: int, w: int, width: int) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """The top, bottom, left and right bands of ``width`` cells of an ``h x w`` grid, each as (bool mask
    ``(h, w)``, flat indices of its cells ``(n,)``) (numpy-built, so a traced graph holds them as constants;
    read-only)."""
    rows, cols = np.mgrid[0:h, 0:w]
    bands = (rows < width, rows >= h - width, cols < width, cols >= w - width)
    return tuple((torch.from_numpy(b), torch.from_numpy(np.flatnonzero(b))) for b in bands)


def border_normalize(s: torch.Tensor, width: int) -> torch.Tensor:
    """Self-reference ``(B, h, w)`` (already divided by its image median) -> the same with each outer band of
    ``width`` cells divided by that band's per-image lower median when it is above 1: a border cell finds fewer
    matches in its own image, by how much depends on the texture's period, so each image's own borders set it
    (``width`` 0: unchanged). Bands are measured on the input, so a corner gets the factors of both its bands."""
    if width <= 0:
        return s
    h, w = int(s.shape[1]), int(s.shape[2])
    if 2 * width >= min(h, w):
        return s
    flat = s.flatten(1)
    out = s
    for mask, idx in border_bands(h, w, width):
        f = lower_median(flat.index_select(1, idx.to(s.device))).clamp_min(1.0)  # (B,)
        out = out / torch.where(mask.to(s.device), f[:, None, None], torch.ones_like(f)[:, None, None])
    return out


@functools.lru_cache(maxsize=16)
def position_classes(h: int, w: int, depth: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The position classes of an ``h x w`` grid: a cell's class is the unordered pair of its distances (in cells) to
    the nearer of the top and bottom borders and to the nearer of the left and right ones, each capped at
    ``depth``: the four corners form one class, the eight cells beside them another, ..., and the cells ``depth`` or
    more cells from every border one. Returns
    (class of each cell ``(h w,)``, the flat indices of each class's cells ``(K, n_max)`` padded with ``h w``, the
    position of each class's lower median in its sorted values ``(K,)``) (numpy-built, so a traced graph holds them
    as constants; read-only)."""
    rows, cols = np.mgrid[0:h, 0:w]
    dr = np.minimum(np.minimum(rows, h - 1 - rows), depth)
    dc = np.minimum(np.minimum(cols, w - 1 - cols), depth)
    key = (np.minimum(dr, dc) * (depth + 1) + np.maximum(dr, dc)).ravel()
    _, cls = np.unique(key, return_inverse=True)
    members = [np.flatnonzero(cls == k) for k in range(int(cls.max()) + 1)]
    n_max = max(len(m) for m in members)
    idx = np.full((len(members), n_max), h * w, dtype=np.int64)
    for k, m in enumerate(members):
        idx[k, : len(m)] = m
    med = np.array([(len(m) - 1) // 2 for m in members], dtype=np.int64)
    return torch.from_numpy(cls.astype(np.int64)), torch.from_numpy(idx), torch.from_numpy(med)


def class_normalize(s: torch.Tensor, depth: int) -> torch.Tensor:
    """Self-reference ``(B, h, w)`` (already divided by its image median) -> each cell divided by the per-image lower
    median of its position class (:func:`position_classes`) when that is above 1. The trunk's zero padding changes
    features up to its receptive field from the border, so cells near a border, and most of all near a corner, find
    fewer matches in their own image, by an amount that depends on the texture; cells at the same distances from the
    borders share that handicap, and their median measures it in each image (no fitting: it holds for a texture the
    fit never saw). A defect keeps its height unless it covers more than half of its class (a corner class has 4
    cells)."""
    b, h, w = s.shape
    h, w = int(h), int(w)  # while tracing the sizes are traced values; the classes must be the cached constants
    cls, idx, med = (t.to(s.device) for t in position_classes(h, w, int(depth)))
    flat = torch.cat([s.reshape(-1, h * w), torch.full_like(s.reshape(-1, h * w)[:, :1], float("inf"))], 1)
    vals = flat[:, idx.flatten()].reshape(-1, int(idx.shape[0]), int(idx.shape[1]))  # (B, K, n_max), +inf padded
    # every lower median is among a class's (n_max + 1) // 2 smallest values: sort only those (ONNX TopK, ascending;
    # no larger a K than the image median's, TensorRT's TopK limit)
    half = (int(idx.shape[1]) + 1) // 2
    srt = vals.topk(half, dim=-1, largest=False).values
    at = torch.arange(int(idx.shape[0]), device=s.device) * half + med  # each class's lower median
    f = srt.flatten(1).index_select(1, at).clamp_min(1.0)  # (B, K) (a Gather: GatherElements is not everywhere)
    return s / f.index_select(1, cls).reshape(-1, h, w)


class SelfRefGraph(MemoryGraph):
    """:meth:`SelfRefScorer.infer` as one static-shape graph: uint8 RGB ``(B, H, W, 3)`` at the model size ->
    image scores ``(B,)``, patch scores ``(B, rows, cols)`` and the anomaly map ``(B, H, W)`` (the field).

    The lighting normalisation (``config.normalize``, in float32), the trunk and the memory searches are
    :class:`MemoryGraph`'s (the fine and context memories walked in runs of ``chunk`` rows); the
    self-reference is :func:`self_distances` with its exclusion mask a constant and TopK for the ``k`` nearest;
    the per-image medians (of ``s`` and of its border bands) are :func:`lower_median`, the gate's quantile of the
    scaled memory distance :func:`lower_quantile`, those of the position classes (:func:`class_normalize`) one TopK
    over constant gathers;
    the gate also reads the clipped share (:func:`clipped_pixels`, averaged) and picks each image's self-reference (the
    bands and ``position_scale`` for a gated image, the classes and ``class_scale`` for the others, as
    :meth:`SelfRefScorer.self_reference`); then ``combine`` (``min(s, m)`` capped on the mostly clipped cells,
    :func:`cell_share` as two products with constant matrices), the height of a gated
    image (the context memory's, with ``self_gain`` its maximum with the self-reference's), the upsampling + blur
    and ``1 - exp(-d / scale)``
    as :meth:`SelfRefScorer.blend` and :meth:`SelfRefScorer.infer` compute them. ``half`` runs the trunk in
    float16, everything else in float32."""

    def __init__(self, scorer: SelfRefScorer, half: bool = False, chunk: int = SEARCH_CHUNK) -> None:
        super().__init__(scorer, half=half, chunk=chunk)  # type: ignore[arg-type]  (memory, grid, image_size)
        self.trunk = self.trunk.net  # the LightingTrunk's network: the normalisation runs here, in float32
        self.selfref = SelfRefConfig(**asdict(scorer.config))  # every combine and normalize exports
        self.use_context = self.has_context and self.selfref.combine == "gate"  # as SelfRefScorer.parts
        self.register_buffer("position_scale", scorer.position_scale.detach().float().cpu().clone())
        self.register_buffer("class_scale", scorer.class_scale.detach().float().cpu().clone())

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """RGB float32 ``(B, 3, H, W)`` -> the lighting normalisation of :class:`LightingTrunk`."""
        how = self.selfref.normalize
        if how == "none":
            return x
        if how == "flat":
            return flat_field(x, self.selfref.level)
        return normalize_lighting(x, log_domain=how == "logplane")

    def _self_distances(self, f: torch.Tensor) -> torch.Tensor:
        """:func:`self_distances` of features ``(B, C, h, w)`` -> ``(B, h, w)``, rows in runs of 1024 positions."""
        b, c, h, w = f.shape
        h, w = int(h), int(w)  # while tracing the sizes are traced values; the mask must be the cached constant
        n, k, ex = h * w, self.selfref.k, self.selfref.exclude
        kk = min(k, n - min(n, (2 * ex + 1) ** 2))
        if kk < 1:
            raise ValueError(f"a {h}x{w} feature map leaves no positions outside exclude={ex}")
        q = f.flatten(2).transpose(1, 2)  # (B, N, C)
        sq = q.square().sum(-1)  # (B, N)
        near = exclusion_mask(h, w, ex)
        out = []
        for i in range(0, n, 1024):
            d2 = (sq[:, None, :] - 2.0 * (q[:, i : i + 1024] @ q.transpose(1, 2))) + sq[:, i : i + 1024, None]
            d2 = torch.where(near[i : i + 1024], torch.full_like(d2, float("inf")), d2)
            out.append(d2.topk(kk, dim=-1, largest=False).values.clamp_min(0.0).sqrt().mean(-1))
        return torch.cat(out, 1).reshape(-1, h, w)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg, size = self.selfref, self.image_size
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        gate = cfg.combine == "gate"
        px = clipped_pixels(x) if gate and min(cfg.clip_limit, cfg.clip_cells) < 1.0 else None
        clipped = px.flatten(1).float().mean(dim=1) if px is not None and cfg.clip_limit < 1.0 else None
        x = self._normalize(x)
        f, proj = self._features(x, context=self.use_context)
        m = self._nearest(f, self.bank) / cfg.memory_scale
        near = None
        if cfg.combine == "gate":  # SelfRefScorer.near: the quantile of the scaled memory distance below the gate
            near = lower_quantile(m.flatten(1), cfg.gate_quantile) < cfg.gate
            if clipped is not None:  # "and" in float: the exported graph has no And on every runtime
                near = near.float() * (1.0 - (clipped > cfg.clip_limit).float()) > 0.5
            near = near[:, None, None]
        raw = self._self_distances(f)  # SelfRefScorer.self_reference
        raw = raw / lower_median(raw.flatten(1)).clamp_min(1e-6)[:, None, None]
        s = _scaled(border_normalize(raw, cfg.border), self.position_scale)
        if cfg.position_classes > 0:
            other = _scaled(class_normalize(raw, cfg.position_classes), self.class_scale)
            s = other if near is None else torch.where(near, s, other)
        if cfg.combine == "min":
            comb = torch.minimum(s, m)
        elif near is not None:
            far = torch.minimum(s, m)
            if px is not None and cfg.clip_cells < 1.0:  # SelfRefScorer.combine: cap_clipped on clipped_cells
                far = cap_clipped(far, cell_share(px, (int(m.shape[-2]), int(m.shape[-1]))), cfg.clip_cells)
            comb = torch.where(near, m, far)
        elif cfg.combine == "mean":
            comb = 0.5 * (s + m)
        else:
            comb = s if cfg.combine == "self" else m
        d = self._blurred(comb, size)
        if proj is not None:
            ctx = self._blurred(self._nearest(proj, self.context_bank) / cfg.context_scale, size)
            if cfg.self_gain > 0.0:  # SelfRefScorer.height_map
                ctx = torch.maximum(ctx, cfg.self_gain * self._blurred(s, size) + cfg.self_offset)
            d = torch.where(near, rescale_to_peak(d, ctx), d)
        return graph_outputs(1.0 - torch.exp(-d / cfg.scale), self.grid)


def fit_selfref(
    train: Sequence[np.ndarray],
    hold: Sequence[np.ndarray],
    image_size: tuple[int, int],
    grid: tuple[int, int],
    *,
    coreset_fraction: float,
    seed: int,
    progress: bool,
    config: SelfRefConfig | None = None,
    memory_config: MemoryConfig | None = None,
) -> tuple[SelfRefScorer, list[float], dict[str, Any]]:
    """Build the memory from ``train`` and up to ``config.lighting_copies`` photometric copies of it
    (:func:`lighting_copies`), set ``memory_scale`` / ``context_scale`` (median held-out distances) and ``scale``
    (mean held-out image peak) from the held-out images ``hold`` and return the scorer, the held-out image
    scores (for calibration, as ``inspect`` computes them) and a record. The held-out images join the memory
    after their scores are taken (as in ``fit_memory``: more memory only lowers the scores). Also fitted here:
    ``clip_limit`` (the largest clipped share among ``train`` and ``hold`` plus ``clip_margin``), ``level`` when
    ``fit_level``, and, with ``select_height`` and at least ``PROBE_MIN_HOLD`` held-out images,
    ``self_gain`` / ``self_offset`` (:func:`_select_height`, on probe defects drawn on the held-out images).

    ``memory_config`` defaults to ``MemoryConfig(coreset_fraction=...)`` (with the backbone's context memory)
    for ``combine="gate"`` and to the same without a context memory otherwise (only "gate" uses it)."""
    cfg = SelfRefConfig(**asdict(config)) if config is not None else SelfRefConfig()
    if memory_config is None:
        ctx = None if cfg.combine == "gate" else ()
        memory_config = MemoryConfig(coreset_fraction=coreset_fraction, context_taps=ctx)
    resized = [resize_for_model(im, image_size) for im in train]
    hold = [resize_for_model(im, image_size) for im in hold]
    if cfg.combine == "gate":
        shares = [float(v) for x in _batches([*resized, *hold], image_size, 16) for v in clipped_fraction(x)]
        cfg.clip_limit = min(1.0, max(shares, default=0.0) + cfg.clip_margin)
    if cfg.fit_level and resized:  # the fitted surface keeps its own brightness (and contrast) on average
        cfg.level = min(0.95, max(0.05, float(np.median([im.mean() for im in resized])) / 255.0))
    copies = lighting_copies(resized, cfg.lighting_copies, seed)
    counted = None if cfg.copies_grow_memory else len(resized)
    memory = _build_memory(memory_config, cfg).extend(
        resized + copies, image_size, seed=seed, progress=progress, counted=counted
    )
    scorer = SelfRefScorer(memory, cfg, image_size, grid)
    # each held-out image's self-reference both ways (the scales still ones): the fitted surface's, which sets the
    # height of a memory-scored image, and the one an image of another surface gets
    both = [scorer.fit_parts(x) for x in _batches(hold, image_size, 16)]
    parts, other = [p for p, _ in both], [t for _, t in both]
    if parts:
        scorer.position_scale = torch.cat([p.s for p in parts]).median(dim=0).values.clamp_min(1e-3).cpu()
        scorer.class_scale = torch.cat(other).median(dim=0).values.clamp_min(1e-3).cpu()
    parts = [p._replace(s=_scaled(p.s, scorer.position_scale)) for p in parts]
    other = [_scaled(t, scorer.class_scale) for t in other]
    med = float(torch.cat([p.d.flatten() for p in parts]).median())
    cfg.memory_scale = med if math.isfinite(med) and med > 0 else 1.0
    if parts and parts[0].c is not None:
        cmed = float(torch.cat([p.c.flatten() for p in parts]).median())
        cfg.context_scale = cmed if math.isfinite(cmed) and cmed > 0 else 1.0
    height = _select_height(scorer, parts, hold, image_size, seed) if cfg.select_height else {}
    gate = cfg.combine == "gate"  # each held-out image as inspect scores it (SelfRefScorer.parts, branch "auto")
    parts = [
        p._replace(s=torch.where(scorer.near(p.d, p.clipped)[:, None, None], p.s, t) if gate else t)
        for p, t in zip(parts, other)
    ]
    peaks = torch.cat([scorer.blend(*p[:3], image_size, p.clipped, p.cells).amax(dim=(1, 2)) for p in parts])
    scale = float(peaks.mean())
    cfg.scale = scale if math.isfinite(scale) and scale > 0 else 1.0
    scores = (-torch.expm1(-peaks / cfg.scale)).tolist()
    n_before = int(memory.bank.shape[0])
    memory.extend(hold, image_size, seed=seed + 1, progress=progress)
    record = {
        "memory_size_at_calibration": n_before,
        "memory_size": int(memory.bank.shape[0]),
        "lighting_copies": len(copies),
        "held_out_near": int(sum(int(scorer.near(p.d, p.clipped).sum()) for p in parts)),
        "clip_limit": cfg.clip_limit,
        **height,
    }
    return scorer, scores, record


#: probe-defected copies of the held-out images ``_select_height`` scores (at least this many, cycling the images)
PROBES_MIN = 48
#: the self-reference joins the image height only when it separates the probes at least this much better (AUROC)
PROBE_MARGIN = 0.05
#: fewest held-out images for the choice: with 4 (a 20-image fit) the matched spreads were too noisy (benchmarks.md)
PROBE_MIN_HOLD = 8


def _select_height(
    scorer: SelfRefScorer, parts: list[SelfRefParts], hold: Sequence[np.ndarray], size: tuple[int, int], seed: int
) -> dict[str, Any]:
    """Decide whether a memory-scored image's height also counts the self-reference (``self_gain``), from probe
    defects (``patchloupe.scorers.probes``) drawn on the held-out images: the two heights are put in common units
    by matching their mean and spread over the held-out images (``s``'s height ``a * peak + b``), and ``s`` joins
    when the larger of the two separates the probes from the held-out images by ``PROBE_MARGIN`` more AUROC than
    the context height alone. Needs a context memory and ``PROBE_MIN_HOLD`` held-out images; sets
    ``scorer.config`` in place and returns the record's entries. A surface that repeats within its images
    (textiles, motifs) gains from it; on one that does not (cast tiles) the self-reference is noisy and the
    context height stays alone."""
    from patchloupe.metrics import image_auroc
    from patchloupe.scorers.probes import probe_defects

    cfg = scorer.config
    if cfg.combine != "gate" or not parts or parts[0].c is None or len(hold) < PROBE_MIN_HOLD:
        return {}

    def heights(ps: Sequence[SelfRefParts]) -> tuple[torch.Tensor, torch.Tensor]:
        blur = scorer.memory._blurred
        c = torch.cat([blur(p.c / cfg.context_scale, size).amax(dim=(1, 2)) for p in ps])
        s = torch.cat([blur(p.s, size).amax(dim=(1, 2)) for p in ps])
        return c, s

    hc, hs = heights(parts)
    if not (float(hs.std()) > 1e-6 and float(hc.std()) > 1e-6):  # no spread to match the two heights by
        return {"self_height": False}
    gain = float(hc.std() / hs.std())
    offset = float(hc.mean() - gain * hs.mean())
    probes = probe_defects(hold, max(PROBES_MIN, len(hold)), seed)  # hold: already at the model size
    pc, ps = heights([scorer.parts(x, every=True, branch="near") for x in _batches(probes, size, 16)])
    y = np.r_[np.zeros(len(hc)), np.ones(len(pc))]
    hc, hs, pc, ps = (t.float().cpu() for t in (hc, hs, pc, ps))
    alone = image_auroc(y, torch.cat([hc, pc]).numpy())
    both = image_auroc(
        y, torch.cat([torch.maximum(hc, gain * hs + offset), torch.maximum(pc, gain * ps + offset)]).numpy()
    )
    use = math.isfinite(gain) and gain > 0.0 and both >= alone + PROBE_MARGIN
    cfg.self_gain, cfg.self_offset = (gain, offset) if use else (0.0, 0.0)
    log.info("probe defects: context height AUROC %.3f, with the self-reference %.3f -> %s", alone, both,
             "both" if use else "context alone")  # fmt: skip
    return {"probe_auroc_context": round(alone, 4), "probe_auroc_with_self": round(both, 4), "self_height": use}
