"""The memory scorer: nearest-neighbour distance to a memory of ImageNet features of defect-free
images (the PatchCore recipe), for surfaces that are not a regular texture (README, "Choosing a
scorer"). It is not the paper's method.

Pipeline for a batch of RGB images resized to the detector's ``image_size``:
``(B, 3, H, W)`` -> frozen ImageNet features (EfficientNet-Lite0 by default, or MobileNetV2; see
``patchloupe.models.backbone``) at stride 8 and 16, each averaged over its 3x3 neighbourhood (zero
padding counted, as PatchCore does), the stride-16 map upsampled to stride 8 and concatenated ->
``(B, C, H/8, W/8)`` -> Euclidean distance of every position to its nearest memory vector ->
upsampled to ``(H, W)`` and Gaussian-blurred -> ``m = 1 - exp(-d / scale)`` in [0, 1), with ``scale``
fixed at fit time.

The *context memory* (``context_taps``, default for EfficientNet-Lite0: blocks 4, 10 and 13, i.e. stride
8, 16 and 32) sets each image's peak: the same pipeline on features that also see the stride-32 block,
averaged over 2x2 positions (``context_pool``) and projected by PCA (fitted on the training features)
to ``context_dim`` dimensions, with its own coreset. The map keeps the shape of the fine map ``b`` and
takes its height from the context map ``c``: ``d = b * max(c) / max(b)`` (:func:`rescale_to_peak`), so
the image score ``max(m)`` is the context score (why: docs/benchmarks.md, memory ablation).

:class:`MemoryScorer` wraps a :class:`FeatureMemory` as a ``Scorer``: the field is the map ``m`` at the
model size (``pixel_rule = "resize"``), a patch's score is the maximum of ``m`` over the patch.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from patchloupe.models.backbone import TRUNKS, BackboneUnavailable, build_trunk, default_weights_path, load_backbone
from patchloupe.scorers.base import Scorer, patch_maxima

log = logging.getLogger(__name__)

#: Default context-memory taps per backbone (see the module docstring). Measured on magnetic tile for
#: EfficientNet-Lite0 only; MobileNetV2 models get no context memory unless ``context_taps`` is given.
CONTEXT_TAPS: dict[str, tuple[int, ...]] = {"efficientnet_lite0": (4, 10, 13)}

#: Nearest-neighbour searches (``MemoryConfig.search``); "ivf" needs faiss-cpu (the ``faiss`` extra).
SEARCHES = ("exact", "ivf")
#: Inverted lists an "ivf" search visits per query (measured: docs/benchmarks.md, "Inverted-file search").
NPROBE = 16
#: Memories with fewer vectors than this are searched exactly even with ``search="ivf"`` (the inverted
#: file does not pay there: docs/benchmarks.md, "Inverted-file search").
IVF_MIN_VECTORS = 2048
#: OpenMP threads of the faiss calls. faiss-cpu bundles its own OpenMP runtime beside torch's, so matching
#: torch's thread count makes two thread pools spin against each other on a small host: slower by measurement
#: (docs/benchmarks.md, "Inverted-file search"); one thread keeps the search predictable.
FAISS_THREADS = 1


@dataclass
class MemoryConfig:
    """Settings of a feature memory (saved in ``detector.json`` under ``memory``)."""

    backbone: str = "efficientnet_lite0"
    taps: tuple[int, ...] = ()  # empty: the backbone's stride-8 and stride-16 blocks (``TRUNKS``)
    coreset_fraction: float = 0.1
    sampling: str = "greedy"
    blur_sigma: float = 8.0
    scale: float = 1.0
    context_taps: tuple[int, ...] | None = None  # None: CONTEXT_TAPS[backbone]; (): no context memory
    context_dim: int = 128
    context_pool: int = 2  # the context search runs on 2x2-averaged positions (stride 16): 1/16 the work
    search: str = "ivf"  # "exact" (torch, every memory vector) | "ivf" (faiss inverted file; see FeatureMemory.nearest)
    nprobe: int = NPROBE  # inverted lists an "ivf" search visits per query

    def __post_init__(self) -> None:
        if self.backbone not in TRUNKS:
            raise ValueError(f"backbone must be one of {sorted(TRUNKS)}, got {self.backbone!r}")
        # sorted: the trunk returns its taps in block order, and the features concatenate them so
        self.taps = tuple(sorted(int(t) for t in self.taps)) or TRUNKS[self.backbone][1]
        if self.context_taps is None:
            self.context_taps = CONTEXT_TAPS.get(self.backbone, ())
        self.context_taps = tuple(sorted(int(t) for t in self.context_taps))
        if int(self.context_dim) < 1:
            raise ValueError(f"context_dim must be >= 1, got {self.context_dim}")
        self.context_dim = int(self.context_dim)
        if int(self.context_pool) < 1:
            raise ValueError(f"context_pool must be >= 1, got {self.context_pool}")
        self.context_pool = int(self.context_pool)
        if not 0.0 < float(self.coreset_fraction) <= 1.0:
            raise ValueError(f"coreset_fraction must be in (0, 1], got {self.coreset_fraction}")
        if self.sampling not in ("greedy", "random"):
            raise ValueError(f"sampling must be 'greedy' or 'random', got {self.sampling!r}")
        if not float(self.blur_sigma) >= 0.0:
            raise ValueError(f"blur_sigma must be >= 0, got {self.blur_sigma}")
        if not (math.isfinite(float(self.scale)) and 1e-6 <= float(self.scale) <= 1e6):
            raise ValueError(f"scale must be a positive number in [1e-6, 1e6], got {self.scale}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {self.search!r}")
        if isinstance(self.nprobe, bool) or int(self.nprobe) != self.nprobe or int(self.nprobe) < 1:
            raise ValueError(f"nprobe must be a whole number >= 1, got {self.nprobe!r}")
        self.nprobe = int(self.nprobe)

    @property
    def trunk_taps(self) -> tuple[int, ...]:
        """The blocks the trunk must return: the fine taps and the context taps, in block order."""
        return tuple(sorted(set(self.taps) | set(self.context_taps)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["taps"] = list(self.taps)
        d["context_taps"] = list(self.context_taps)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MemoryConfig:
        """Config from ``to_dict`` output; a missing ``context_taps`` means *no* context memory and a missing
        ``search`` means ``"exact"`` (unlike ``MemoryConfig()``), which is how models saved before the context
        memory or the inverted-file search keep their scores."""
        keys = [f.name for f in fields(cls) if f.name not in ("context_taps", "search")]
        return cls(
            **{k: d[k] for k in keys if k in d},
            context_taps=tuple(d.get("context_taps", ())),
            search=d.get("search", "exact"),
        )


def greedy_coreset(
    x: torch.Tensor, n: int, seed: int = 0, proj_dim: int = 64, chunk: int = 65536, progress: bool = False
) -> torch.Tensor:
    """Indices ``(n,)`` of a greedy k-center subset of ``x`` ``(N, C)``: each pick is the point farthest
    from those already picked (distances in a random ``proj_dim``-d projection, as PatchCore does).

    Exact greedy costs ``n * N * proj_dim``, which for 700 images (N = 716,800, n = 71,680) is a quarter
    of an hour on 2 CPU cores. So ``x`` is cut into consecutive runs of at most ``chunk`` vectors and
    each run gets its own greedy selection of its share of ``n``; with one run this is exact greedy.
    """
    N = x.shape[0]
    if not 0 < n <= N:
        raise ValueError(f"coreset size must be in 1..{N}, got {n}")
    if n == N:
        return torch.arange(N)
    g = torch.Generator().manual_seed(seed)
    z = x.float()
    if z.shape[1] > proj_dim:
        z = z @ (torch.randn(z.shape[1], proj_dim, generator=g) / math.sqrt(proj_dim))
    z = z.contiguous()
    bounds = list(range(0, N, chunk)) + [N]
    shares = [round(n * e / N) for e in bounds]  # cumulative picks at each boundary: sums to n exactly
    bar = _bar(n, progress, "coreset")
    out = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny per-step ops: extra threads only spin (36 ms vs 1.4 ms a step on 2 busy cores)
    try:
        for (lo, hi), (k0, k1) in zip(zip(bounds, bounds[1:]), zip(shares, shares[1:])):
            if k1 > k0:
                out.append(lo + _greedy(z[lo:hi], k1 - k0, int(torch.randint(hi - lo, (1,), generator=g)), bar))
    finally:
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()
    return torch.cat(out)


def _greedy(z: torch.Tensor, n: int, first: int, bar: Any) -> torch.Tensor:
    """Exact greedy k-center on ``z`` ``(N, D)`` starting from index ``first``; ``n`` indices."""
    sq = z.square().sum(1)
    picked = torch.empty(n, dtype=torch.long)
    picked[0] = first
    mind = torch.full((z.shape[0],), float("inf"))
    for i in range(1, n):
        c = z[picked[i - 1]]
        d = torch.addmv(sq, z, c, alpha=-2.0).add_(float(c.square().sum()))  # |z - c|^2
        torch.minimum(mind, d, out=mind)
        picked[i] = int(torch.argmax(mind))
        if bar is not None and i % 1000 == 0:
            bar.update(1000)
    if bar is not None:
        bar.update(n - 1000 * ((n - 1) // 1000))
    return picked


def _bar(total: int, enabled: bool, desc: str):  # noqa: ANN202 - tqdm or None
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img" if desc == "features" else "pt")


class FeatureMemory(nn.Module):
    """Frozen ImageNet trunk (``config.backbone``) + a memory ``bank`` ``(M, C)`` of defect-free feature
    vectors (None: empty), and, when ``config.context_taps`` is set, a context memory ``context_bank`` ``(M2, k)`` of
    PCA-projected context features (``context_mean`` ``(Cc,)``, ``context_proj`` ``(Cc, k)``; empty until
    the first :meth:`extend` fits them)."""

    def __init__(
        self,
        config: MemoryConfig,
        bank: torch.Tensor | None,
        trunk: nn.Module | None = None,
        context: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        taps = config.trunk_taps
        self.trunk = trunk if trunk is not None else build_trunk(config.backbone, taps)
        self.trunk.eval().requires_grad_(False)
        if tuple(self.trunk.taps) != taps:
            raise ValueError(f"trunk taps {tuple(self.trunk.taps)} differ from the config's {taps}")
        width = dict(zip(self.trunk.taps, self.trunk.channels))
        self.channels = sum(width[t] for t in config.taps)
        bank = torch.zeros(0, self.channels) if bank is None else bank
        if bank.ndim != 2 or bank.shape[1] != self.channels:
            raise ValueError(f"bank must be (M, {self.channels}), got {tuple(bank.shape)}")
        self.register_buffer("bank", bank.float().contiguous())
        self.has_context = bool(config.context_taps)
        if self.has_context:
            cc = sum(width[t] for t in config.context_taps)
            k = min(config.context_dim, cc)
            ctx = context or {}
            for name, default in (
                ("context_bank", torch.zeros(0, k)),
                ("context_mean", torch.zeros(0)),
                ("context_proj", torch.zeros(0, k)),
            ):
                t = ctx.get(name, default)
                self.register_buffer(name, t.float().contiguous())
            proj, bank_ = self.context_proj, self.context_bank
            if self.context_mean.numel() not in (0, cc) or proj.shape != (self.context_mean.numel(), k):
                raise ValueError(f"context projection must be ({cc}, {k}), got {tuple(proj.shape)}")
            if bank_.ndim != 2 or bank_.shape[1] != k:
                raise ValueError(f"context bank must be (M, {k}), got {tuple(bank_.shape)}")

    @classmethod
    def from_state(
        cls, config: MemoryConfig, state: dict[str, torch.Tensor], trunk: nn.Module | None = None
    ) -> FeatureMemory:
        """A memory from a saved ``state_dict`` (float tensors are cast to float32; ValueError if one holds NaN or
        infinite values) around ``trunk`` (default: a fresh ``config.backbone`` trunk, whose weights the state sets)."""
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ValueError(f"memory tensors {bad} hold NaN or infinite values")
        context = {k: v for k, v in state.items() if k.startswith("context_")}
        mem = cls(config, state["bank"], trunk, context=context or None)
        mem.load_state_dict(state)
        return mem

    # ---------------------------------------------------------------------------------- features
    @torch.inference_mode()
    def _tap_features(self, x: torch.Tensor, folded: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """RGB float ``(B, 3, H, W)`` -> (features ``(B, C, H/8, W/8)``, unprojected context features
        ``(B, Cc, H/8/p, W/8/p)`` with ``p = context_pool``, or None), from one trunk pass (through the
        BatchNorm-folded copy of :meth:`_inference_trunk` unless ``folded=False``)."""
        x = x.to(self.bank.device)  # (channels-last input: no measurable gain, docs/benchmarks.md)
        maps = dict(zip(self.trunk.taps, (self._inference_trunk() if folded else self.trunk)(x)))
        ctx = None
        if self.has_context:
            ctx = _aggregate([maps[t] for t in self.config.context_taps])
            if self.config.context_pool > 1:
                ctx = F.avg_pool2d(ctx, self.config.context_pool, ceil_mode=True)
        return _aggregate([maps[t] for t in self.config.taps]), ctx

    @torch.inference_mode()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """RGB float ``(B, 3, H, W)`` in [0, 1] -> locally aggregated features ``(B, C, H/8, W/8)``."""
        return self._tap_features(x)[0]

    def _project(self, f: torch.Tensor) -> torch.Tensor:
        """Context features ``(B, Cc, h, w)`` -> PCA-projected ``(B, k, h, w)``."""
        if self.context_mean.numel() == 0:
            raise RuntimeError("the context memory has no projection yet: build the memory with extend()")
        return torch.einsum("bchw,ck->bkhw", f - self.context_mean[None, :, None, None], self.context_proj)

    @torch.inference_mode()
    def distances(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """RGB float ``(B, 3, H, W)`` -> Euclidean distance to the nearest vector of the fine memory
        ``(B, H/8, W/8)`` (with a context memory, :meth:`raw_map` also rescales it)."""
        return self.nearest(self.features(x), chunk)

    @torch.inference_mode()
    def nearest(
        self, f: torch.Tensor, chunk: int = 4096, bank: torch.Tensor | None = None, exact: bool = False
    ) -> torch.Tensor:
        """Features ``(B, C, h, w)`` -> Euclidean distance of each position to its nearest vector of ``bank``
        (default: the memory ``bank``) ``(B, h, w)``.

        ``config.search == "exact"`` (or ``exact=True``, or a bank other than the fine memory ``bank``, or
        one with fewer than ``IVF_MIN_VECTORS`` rows, or one off the CPU) compares every memory vector. So the
        context memory, which sets each image's score (:func:`rescale_to_peak`), is always searched exactly:
        with it, image scores are the exact search's and the inverted file changes only the map's shape.
        ``"ivf"`` searches a faiss inverted file (``IndexIVFFlat``, about ``4 sqrt(M)`` lists, ``nprobe``
        of them visited per query), built from the bank on first use and rebuilt when the bank changes
        (it is not saved: the model folder holds the bank only). The inverted file only ever skips memory
        vectors, so its distances are never below the exact ones; calibration runs through the same
        search, and without faiss installed (one warning, then exact search) the distances can only go
        down, so the calibrated false-alarm rate stays an upper bound. Exported graphs (``MemoryGraph``)
        always search exactly."""
        b, c, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, c)
        bank = (self.bank if bank is None else bank).to(q.dtype)
        if bank.shape[0] == 0:
            raise RuntimeError("the memory bank is empty: build the memory with extend()")
        index = None if exact or q.device.type != "cpu" else self._ivf_index(bank)
        if index is not None:
            d, found = _ivf_distances(index, q)
            if not bool(found.all()):  # every visited list empty (rare): those queries searched exactly
                d[~found] = _exact_nearest(q[~found], bank, chunk)
            return d.reshape(b, h, w)
        return _exact_nearest(q, bank, chunk).reshape(b, h, w)

    def _ivf_index(self, bank: torch.Tensor) -> Any:
        """The cached faiss inverted file of ``bank`` when it is this memory's (fine) ``bank``, or None where
        the search is exact (see :meth:`nearest`)."""
        if self.config.search != "ivf" or bank.shape[0] < IVF_MIN_VECTORS or bank.dtype != torch.float32:
            return None
        if bank is not self.bank or _faiss() is None:  # the context memory is always searched exactly
            return None
        name = "bank"
        cache = self.__dict__.setdefault("_ivf_cache", {})  # name -> (bank, its version, nprobe, index)
        hit = cache.get(name)
        if hit is None or hit[0] is not bank or hit[1:3] != (_version(bank), self.config.nprobe):
            hit = cache[name] = (bank, _version(bank), self.config.nprobe, build_ivf(bank, self.config.nprobe))
        return hit[3]

    def _inference_trunk(self) -> nn.Module:
        """The trunk with its BatchNorms folded into the convolutions (``trunk.fused()``, where the trunk has
        one: EfficientNet-Lite0), cached and rebuilt when the trunk's weights change; else the trunk itself."""
        fuse = getattr(self.trunk, "fused", None)
        if fuse is None or self.trunk.training:
            return self.trunk
        hit = self.__dict__.get("_fused_trunk")  # (trunk, its tensors, their (pointer, version)s, folded copy)
        if hit is None or hit[0] is not self.trunk or _stamp(hit[1]) != hit[2]:  # in-place edits show as versions
            tensors = tuple(itertools.chain(self.trunk.parameters(), self.trunk.buffers()))
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, whatever mode the caller is in
                hit = self.__dict__["_fused_trunk"] = (self.trunk, tensors, _stamp(tensors), fuse().eval())
        return hit[3]

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> FeatureMemory:  # .to(), .half(), ...: caches go
        self.__dict__.pop("_fused_trunk", None)
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:  # may replace tensors (assign=True): caches go
        self.__dict__.pop("_fused_trunk", None)
        return super().load_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:  # derived caches (faiss indexes do not pickle): rebuilt on demand
        state = self.__dict__.copy()
        state.pop("_ivf_cache", None)
        state.pop("_fused_trunk", None)
        return state

    def _blurred(self, d: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Distances ``(B, h, w)`` -> upsampled (bilinear) to ``size`` and blurred ``(B, H, W)``: both steps are
        linear and separable, so this is ``A_h @ d @ A_w.T`` with the two ``(size, h|w)`` matrices of
        :func:`upsample_blur_matrix` (the same map as :func:`upsample_blur`, the exported graphs' convolutions, to
        float rounding, at a small fraction of the 49-tap convolutions' cost)."""
        sigma = float(self.config.blur_sigma)
        a_h = upsample_blur_matrix(d.shape[-2], int(size[0]), sigma).to(d.device, d.dtype)
        a_w = upsample_blur_matrix(d.shape[-1], int(size[1]), sigma).to(d.device, d.dtype)
        return a_h @ d @ a_w.T

    @torch.inference_mode()
    def raw_map(self, x: torch.Tensor) -> torch.Tensor:
        """RGB float ``(B, 3, H, W)`` -> distance map ``(B, H, W)``, upsampled and blurred (unnormalised).

        With a context memory the map is rescaled per image so that its maximum is the context map's."""
        f, ctx = self._tap_features(x)
        b = self._blurred(self.nearest(f), x.shape[-2:])
        if not self.has_context:
            return b
        c = self._blurred(self.nearest(self._project(ctx), bank=self.context_bank), x.shape[-2:])
        return rescale_to_peak(b, c)

    @torch.inference_mode()
    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """RGB float ``(B, 3, H, W)`` -> anomaly map ``(B, H, W)`` in [0, 1): ``1 - exp(-d / scale)``."""
        return -torch.expm1(-self.raw_map(x) / self.config.scale)

    def flops(self, image_size: tuple[int, int]) -> int:
        """FLOPs (2 x MACs) of the trunk's convolutions and the nearest-neighbour searches for one image (the
        exact search's count: an ``"ivf"`` search computes fewer distances)."""
        total = 0
        hooks = []

        def count(mod: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
            nonlocal total
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += 2 * out.numel() * k

        for m in self.trunk.modules():
            if isinstance(m, nn.Conv2d):
                hooks.append(m.register_forward_hook(count))
        try:
            with torch.inference_mode():
                maps = dict(zip(self.trunk.taps, self.trunk(torch.zeros(1, 3, *image_size, device=self.bank.device))))
        finally:
            for h in hooks:
                h.remove()
        h, w = maps[self.config.taps[0]].shape[-2:]  # the fine features' grid
        search = h * w * self.bank.numel()
        if self.has_context:
            p = self.config.context_pool
            search += math.ceil(h / p) * math.ceil(w / p) * self.context_bank.numel()
        return int(total + 2 * search)

    def num_entries(self) -> int:
        """Numbers held in the memory banks (both, with a context memory)."""
        return int(self.bank.numel() + (self.context_bank.numel() if self.has_context else 0))

    # ---------------------------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        images: Sequence[np.ndarray],
        image_size: tuple[int, int] | None,
        config: MemoryConfig | None = None,
        weights: str | None = None,
        batch_size: int = 16,
        seed: int = 0,
        progress: bool = False,
    ) -> FeatureMemory:
        """Memory from defect-free RGB uint8 images (any size; resized to ``image_size`` = (H, W)).

        The bank keeps ``coreset_fraction`` of all feature vectors, chosen by ``config.sampling``
        (greedy k-center coreset, or uniformly at random); so does the context bank, after a PCA
        fitted on these images' context features; ``config.scale`` is left as given (``fit`` sets it
        from held-out images with ``set_scale``).
        """
        config = config or MemoryConfig()
        mem = cls(config, None, load_backbone(weights, config.trunk_taps, config.backbone))
        return mem.extend(images, image_size, batch_size, seed, progress)

    def extend(
        self,
        images: Sequence[np.ndarray],
        image_size: tuple[int, int] | None,
        batch_size: int = 16,
        seed: int = 0,
        progress: bool = False,
        counted: int | None = None,
    ) -> FeatureMemory:
        """Add ``coreset_fraction`` of the feature vectors of more defect-free images to the bank (and of
        their context vectors to the context bank), chosen among those images' vectors by
        ``config.sampling``; the first call also fits the context PCA. ``counted`` (default: all of them):
        the number of images whose vectors set how many are kept, so extra images (e.g. photometric copies)
        compete for the same memory size instead of growing it. Returns ``self``."""
        share = 1.0 if counted is None else min(1.0, max(1, int(counted)) / max(1, len(images)))
        feats, ctxs = [], []
        bar = _bar(len(images), progress, "features")
        for x in _batches(images, image_size, batch_size):
            # the trunk itself, not its folded copy: a greedy coreset's picks follow float rounding, and the
            # bank stays the one earlier releases built from these images (the folded trunk differs by ~1e-6)
            f, ctx = self._tap_features(x, folded=False)
            feats.append(_rows(f))
            if ctx is not None:  # unprojected until the PCA exists (pooled 2x2 by default, so small)
                ctxs.append(_rows(ctx) if self.context_mean.numel() == 0 else _rows(self._project(ctx)))
            if bar is not None:
                bar.update(x.shape[0])
        if bar is not None:
            bar.close()
        allf = torch.cat(feats)
        self.bank = torch.cat([self.bank, allf[self._choose(allf, seed, progress, share)].float()]).contiguous()
        if self.has_context:
            allc = torch.cat(ctxs)
            if self.context_mean.numel() == 0:
                self.context_mean, self.context_proj = _pca(allc, self.context_proj.shape[1], seed)
                allc = (allc - self.context_mean) @ self.context_proj
            idx = self._choose(allc, seed + 7, progress, share)
            self.context_bank = torch.cat([self.context_bank, allc[idx].float()]).contiguous()
        return self

    def _choose(self, allf: torch.Tensor, seed: int, progress: bool, share: float = 1.0) -> torch.Tensor:
        """Indices of ``coreset_fraction`` (times ``share``) of the rows of ``allf`` ``(N, C)`` by
        ``config.sampling``."""
        n = max(1, round(self.config.coreset_fraction * share * allf.shape[0]))
        log.info("feature memory: keeping %d of %d vectors", n, allf.shape[0])
        if self.config.sampling == "greedy":
            return greedy_coreset(allf.cpu(), n, seed=seed, progress=progress).to(allf.device)
        return torch.randperm(allf.shape[0], generator=torch.Generator().manual_seed(seed))[:n].to(allf.device)

    def set_scale(
        self, images: Sequence[np.ndarray], image_size: tuple[int, int] | None, batch_size: int = 16
    ) -> float:
        """Set ``scale`` to the mean per-image maximum raw distance over defect-free ``images``."""
        return self.scale_from_peaks(self.peak_distances(images, image_size, batch_size))

    def peak_distances(
        self, images: Sequence[np.ndarray], image_size: tuple[int, int] | None, batch_size: int = 16
    ) -> torch.Tensor:
        """Per-image maximum of the raw (blurred, unnormalised) distance map -> ``(N,)``."""
        return torch.cat([self.raw_map(x).amax(dim=(1, 2)) for x in _batches(images, image_size, batch_size)])

    def scale_from_peaks(self, peaks: torch.Tensor) -> float:
        """Set ``scale`` to the mean of ``peak_distances`` of defect-free images; the image scores those
        images get are then ``1 - exp(-peaks / scale)``."""
        scale = float(peaks.mean())
        self.config.scale = scale if math.isfinite(scale) and scale > 0.0 else 1.0
        return self.config.scale


_FAISS: list[Any] = []  # [module or None] once looked up


def _faiss() -> Any:
    """The faiss module, or None (logged once) when faiss-cpu is not installed."""
    if not _FAISS:
        try:
            import faiss
        except ImportError:
            log.warning(
                "faiss is not installed (pip install 'patchloupe[faiss]'): the memory is searched exactly, which is "
                "slower; exact distances are never above the inverted file's, so the false-alarm rate can only go down"
            )
            faiss = None
        _FAISS.append(faiss)
    return _FAISS[0]


def _stamp(tensors: Sequence[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    """Each tensor's (data pointer, version): changes when a tensor is moved or modified in place."""
    return tuple((t.data_ptr(), _version(t)) for t in tensors)


def _version(t: torch.Tensor) -> int:
    """The in-place version counter of ``t`` (inference tensors have none: 0)."""
    try:
        return int(t._version)
    except RuntimeError:
        return 0


def build_ivf(bank: torch.Tensor, nprobe: int, seed: int = 0) -> Any:
    """A faiss ``IndexIVFFlat`` (L2) of ``bank`` ``(M, C)``: ``round(4 sqrt(M))`` lists from k-means on the
    bank (seeded; 5 iterations on at most 32 vectors per list, chosen by measurement: docs/benchmarks.md),
    ``nprobe`` visited per query."""
    faiss = _faiss()
    x = np.ascontiguousarray(bank.detach().cpu().numpy(), dtype=np.float32)
    m, d = x.shape
    nlist = max(1, min(m, round(4 * math.sqrt(m))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
    index.cp.seed = seed
    index.cp.niter = 5
    index.cp.min_points_per_centroid = 1  # no warning for small memories
    index.cp.max_points_per_centroid = 32
    index.verbose = False
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(FAISS_THREADS)
    try:
        index.train(x)
        index.add(x)
    finally:
        faiss.omp_set_num_threads(threads)
    index.nprobe = int(nprobe)
    return index


def _ivf_distances(index: Any, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries ``(N, C)`` -> Euclidean distance to their nearest vector found by ``index`` ``(N,)`` and
    whether one was found ``(N,)`` bool (False where every visited list is empty)."""
    faiss = _faiss()
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(FAISS_THREADS)
    try:
        d2, ids = index.search(np.ascontiguousarray(q.detach().cpu().numpy(), dtype=np.float32), 1)
    finally:
        faiss.omp_set_num_threads(threads)
    return torch.from_numpy(d2[:, 0]).to(q.dtype).clamp_min_(0.0).sqrt_(), torch.from_numpy(ids[:, 0] >= 0)


def _exact_nearest(q: torch.Tensor, bank: torch.Tensor, chunk: int) -> torch.Tensor:
    """Queries ``(N, C)`` -> Euclidean distance to their nearest row of ``bank`` ``(M, C)`` ``(N,)``, comparing all."""
    bn = bank.square().sum(1)
    out = torch.empty(q.shape[0], dtype=q.dtype, device=q.device)
    for i in range(0, q.shape[0], chunk):
        qi = q[i : i + chunk]
        d2 = torch.addmm(bn[None], qi, bank.T, alpha=-2.0).add_(qi.square().sum(1, keepdim=True))
        out[i : i + chunk] = d2.min(1).values.clamp_min_(0.0).sqrt_()
    return out


def rescale_to_peak(b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Fine maps ``b`` ``(B, H, W)`` scaled per image so that each maximum equals that of the context
    map ``c`` ``(B, H, W)``; an all-zero fine map is replaced by ``c`` (so the peak is never lost)."""
    bmax = b.amax(dim=(1, 2), keepdim=True)
    cmax = c.amax(dim=(1, 2), keepdim=True)
    return torch.where(bmax > 0, b * (cmax / torch.where(bmax > 0, bmax, torch.ones_like(bmax))), c)


def _rows(f: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B * h * w, C)``."""
    return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])


def _aggregate(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Tap outputs -> each averaged over its 3x3 neighbourhood (zero padding counted), resized to the
    first's size and concatenated ``(B, sum C, h, w)``."""
    size = maps[0].shape[-2:]
    maps = [F.avg_pool2d(f, 3, 1, 1) for f in maps]
    return torch.cat([f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear") for f in maps], 1)


def _pca(x: torch.Tensor, k: int, seed: int, max_rows: int = 200_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(C,)`` and the top-``k`` principal directions ``(C, k)`` of the rows of ``x`` ``(N, C)``
    (covariance from at most ``max_rows`` rows drawn at random)."""
    if x.shape[0] > max_rows:
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_rows]]
    x = x.double()
    mean = x.mean(0)
    xc = x - mean
    _, vecs = torch.linalg.eigh(xc.T @ xc / max(1, xc.shape[0] - 1))
    return mean.float(), vecs[:, -k:].flip(1).float().contiguous()


def _batches(images: Sequence[np.ndarray], image_size: tuple[int, int] | None, batch_size: int):  # noqa: ANN202
    """Float batches ``(B, 3, H, W)``: resized to ``image_size``, or one native-size image at a time when None."""
    from patchloupe.preprocess import resize_for_model

    if image_size is None:
        for im in images:
            yield to_batch([im])
        return
    for i in range(0, len(images), batch_size):
        yield to_batch([resize_for_model(im, image_size) for im in images[i : i + batch_size]])


def to_batch(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """RGB uint8 images ``(H, W, 3)`` of one size, or one ``(B, H, W, 3)`` array -> float ``(B, 3, H, W)`` in
    [0, 1]."""
    batch = images if isinstance(images, np.ndarray) else np.stack(images)
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)


@functools.lru_cache(maxsize=32)
def upsample_blur_matrix(n_in: int, n_out: int, sigma: float) -> torch.Tensor:
    """float32 ``(n_out, n_in)``: one axis of bilinear upsampling (``align_corners=False``) from ``n_in`` to
    ``n_out`` samples followed by :func:`_gaussian_blur` along that axis, computed in float64 by running
    both on the unit vectors."""
    with torch.inference_mode(False), torch.no_grad():  # a plain tensor: cached, used in and out of inference mode
        eye = torch.eye(n_in, dtype=torch.float64)[:, None, :, None]  # n_in one-column images (n_in, 1)
        up = F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=False)
        return _gaussian_blur(up, sigma)[:, 0, :, 0].T.float().contiguous()


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, 1, H, W)`` with reflect padding (identity for sigma 0)."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    pad_h = min(r, x.shape[-2] - 1)
    pad_w = min(r, x.shape[-1] - 1)
    if pad_w > 0:
        kw = k[r - pad_w : r + pad_w + 1]
        x = F.conv2d(F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect"), (kw / kw.sum()).view(1, 1, 1, -1))
    if pad_h > 0:
        kh = k[r - pad_h : r + pad_h + 1]
        x = F.conv2d(F.pad(x, (0, 0, pad_h, pad_h), mode="reflect"), (kh / kh.sum()).view(1, 1, -1, 1))
    return x


#: memory rows per nearest-neighbour step in an exported graph: the step's distance matrix is
#: ``B x (H/8 * W/8) x SEARCH_CHUNK`` floats (32 MiB per 256 x 256 image), the graph's peak buffer
SEARCH_CHUNK = 8192


class MemoryScorer(Scorer):
    """A :class:`FeatureMemory` on an ``image_size`` image; ``grid`` sets the resolution of the patch scores."""

    name: ClassVar[str] = "memory"
    pixel_rule: ClassVar[str] = "resize"
    entries: ClassVar[tuple[str, ...]] = ("memory",)

    def __init__(self, memory: FeatureMemory, image_size: tuple[int, int], grid: tuple[int, int]) -> None:
        from patchloupe.preprocess import check_geometry

        self.memory = memory.eval()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.grid = (int(grid[0]), int(grid[1]))
        check_geometry(self.image_size, self.grid)

    @property
    def config(self) -> MemoryConfig:
        return self.memory.config

    def settings(self) -> dict[str, Any]:
        return self.memory.config.to_dict()

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"memory": self.memory.state_dict()}

    @classmethod
    def from_saved(
        cls,
        settings: dict[str, Any],
        tensors: dict[str, dict[str, torch.Tensor]],
        image_size: tuple[int, int],
        grid: tuple[int, int],
    ) -> MemoryScorer:
        return cls(FeatureMemory.from_state(MemoryConfig.from_dict(settings), tensors["memory"]), image_size, grid)

    def to(self, device: Any) -> MemoryScorer:
        self.memory.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.memory.bank.device

    @torch.inference_mode()
    def infer(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(B, H', W', 3)`` -> patch scores ``(B, rows, cols)`` (the map's maximum per patch) and
        the anomaly map ``(B, H', W')``."""
        x = to_batch(inputs).to(self.device)
        amap = self.memory.anomaly_map(x).float().cpu().numpy()
        return patch_maxima(amap, self.grid), amap

    def flops(self) -> int:
        """The feature trunk plus the nearest-neighbour searches over both memories."""
        return self.memory.flops(self.image_size)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.memory.trunk.parameters()) + self.memory.num_entries()

    def export_module(self, half: bool = False, chunk: int = SEARCH_CHUNK) -> MemoryGraph:
        """The whole scorer as one traceable network (``patchloupe.export``): see :class:`MemoryGraph`."""
        return MemoryGraph(self, half=half, chunk=chunk)


class MemoryGraph(nn.Module):
    """:meth:`MemoryScorer.infer` as one static-shape graph: uint8 RGB ``(B, H, W, 3)`` at the model size ->
    image scores ``(B,)``, patch scores ``(B, rows, cols)`` and the anomaly map ``(B, H, W)`` (the field).

    The trunk, the 3x3 aggregation, the nearest-neighbour search over the fine memory and (when present)
    the PCA-projected context memory, the upsampling + blur, :func:`rescale_to_peak` and
    ``1 - exp(-d / scale)`` are those of :class:`FeatureMemory`; the search walks each memory in runs of
    ``chunk`` rows (a minimum per run, then the minimum of the runs), so the largest intermediate is
    ``B x positions x chunk`` floats whatever the memory's size. ``half`` runs the trunk in float16
    and the search in float32 (float16 squared distances cancel badly).

    The graph always searches **exactly** (every memory vector), whatever ``config.search`` says: an exported
    model's distances are never above the torch scorer's ``"ivf"`` ones (and equal to ``search="exact"``).
    """

    def __init__(self, scorer: MemoryScorer, half: bool = False, chunk: int = SEARCH_CHUNK) -> None:
        super().__init__()
        mem = scorer.memory
        if mem.bank.shape[0] == 0:
            raise RuntimeError("the memory bank is empty: build the memory with extend() before exporting")
        if mem.has_context and mem.context_mean.numel() == 0:
            raise RuntimeError("the context memory has no projection yet: build the memory with extend()")
        self.dtype = torch.float16 if half else torch.float32
        self.trunk = copy.deepcopy(mem.trunk).to("cpu", self.dtype).eval()
        self.config = mem.config
        self.has_context = mem.has_context
        self.grid = scorer.grid
        self.image_size = scorer.image_size
        self.chunk = int(chunk)
        self.register_buffer("bank", mem.bank.detach().float().cpu().clone())
        if self.has_context:
            for name in ("context_bank", "context_mean", "context_proj"):
                self.register_buffer(name, getattr(mem, name).detach().float().cpu().clone())

    def _nearest(self, f: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        return chunked_nearest(f, bank, self.chunk)

    def _blurred(self, d: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return upsample_blur(d, size, self.config.blur_sigma)

    def _features(self, x: torch.Tensor, context: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """RGB float32 ``(B, 3, H, W)`` -> (features ``(B, C, h, w)``, PCA-projected context features
        ``(B, k, h', w')`` or None without a context memory or ``context=False``), float32, from one trunk pass
        (in float16 when ``half``)."""
        maps = dict(zip(self.trunk.taps, [m.to(torch.float32) for m in self.trunk(x.to(self.dtype))]))
        f = _aggregate([maps[t] for t in self.config.taps])
        if not (self.has_context and context):
            return f, None
        ctx = _aggregate([maps[t] for t in self.config.context_taps])
        if self.config.context_pool > 1:
            ctx = F.avg_pool2d(ctx, self.config.context_pool, ceil_mode=True)
        return f, ((ctx.permute(0, 2, 3, 1) - self.context_mean) @ self.context_proj).permute(0, 3, 1, 2)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = self.image_size
        f, proj = self._features(images.permute(0, 3, 1, 2).to(torch.float32) / 255.0)
        d = self._blurred(self._nearest(f, self.bank), size)
        if proj is not None:
            d = rescale_to_peak(d, self._blurred(self._nearest(proj, self.context_bank), size))
        return graph_outputs(1.0 - torch.exp(-d / self.config.scale), self.grid)


def chunked_nearest(f: torch.Tensor, bank: torch.Tensor, chunk: int = SEARCH_CHUNK) -> torch.Tensor:
    """Features ``(B, C, h, w)`` -> distance to the nearest row of ``bank`` ``(M, C)`` ``(B, h, w)``, the bank
    walked in runs of ``chunk`` rows (a minimum per run, then the minimum of the runs), so an exported graph's
    largest intermediate is ``B x hw x chunk`` floats whatever the bank's size."""
    b, c, h, w = f.shape
    q = f.permute(0, 2, 3, 1).reshape(-1, h * w, c)
    qn = q.square().sum(-1)
    best = None
    for i in range(0, bank.shape[0], chunk):
        part = bank[i : i + chunk]
        d2 = part.square().sum(1) - 2.0 * (q @ part.T)  # (B, hw, chunk)
        m = d2.amin(-1)
        best = m if best is None else torch.minimum(best, m)
    return (best + qn).clamp_min(0.0).sqrt().reshape(-1, h, w)


def upsample_blur(d: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """Distances ``(B, h, w)`` -> bilinearly upsampled to ``size`` and Gaussian-blurred (``sigma``) ``(B, H, W)``."""
    d = F.interpolate(d[:, None], size=size, mode="bilinear", align_corners=False)
    return _gaussian_blur(d, sigma)[:, 0]


def graph_outputs(amap: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An exported graph's outputs from its anomaly map ``(B, H, W)`` (H, W divisible by ``grid``): image scores
    ``(B,)``, patch scores ``(B, rows, cols)`` (each patch's maximum, as ``patch_maxima``) and the map itself."""
    rows, cols = grid
    h, w = amap.shape[-2:]
    patch = amap.reshape(-1, rows, h // rows, cols, w // cols).amax(dim=(2, 4))
    return patch.reshape(patch.shape[0], -1).amax(1), patch, amap


def fit_memory(
    train: Sequence[np.ndarray],
    hold: Sequence[np.ndarray],
    image_size: tuple[int, int],
    grid: tuple[int, int],
    *,
    coreset_fraction: float,
    seed: int,
    progress: bool,
) -> tuple[MemoryScorer, list[float], dict[str, Any]]:
    """Build the memory from ``train``, set its scale from the held-out images ``hold`` and return the
    scorer, the held-out image scores (for calibration, as ``inspect`` computes them) and a record.

    The held-out images join the memory only after their scores are taken: more memory can only lower
    the distances, so a threshold calibrated on those scores keeps the false-alarm rate an upper bound.
    """
    memory = FeatureMemory.build(
        train, image_size, MemoryConfig(coreset_fraction=coreset_fraction), seed=seed, progress=progress
    )
    peaks = memory.peak_distances(hold, image_size)  # one pass over the held-out images serves scale and threshold
    scale = memory.scale_from_peaks(peaks)
    scores = (-torch.expm1(-peaks / scale)).tolist()  # image score = max of 1 - exp(-d / scale)
    n_before = int(memory.bank.shape[0])
    memory.extend(hold, image_size, seed=seed + 1, progress=progress)
    record = {"memory_size_at_calibration": n_before, "memory_size": int(memory.bank.shape[0])}
    return MemoryScorer(memory, image_size, grid), scores, record


def memory_available() -> bool:
    """Whether the memory scorer's default trunk weights are installed (only ``fit`` needs them)."""
    try:
        default_weights_path(MemoryConfig().backbone)
    except BackboneUnavailable:
        return False
    return True
