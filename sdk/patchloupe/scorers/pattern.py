"""The pattern scorer: the paper's method (generator predicts each patch from two neighbours, the
comparator judges prediction against reality, the directions' verdicts are intersected).

Scoring (consistent with the binary decision):

* For every direction ``d`` in ``directions`` and every patch ``t`` that ``d`` can predict, the
  comparator gives a similarity probability ``P_d(t) = sigmoid(l)`` from its logit ``l``; the
  direction's patch score is ``a_d(t) = sigmoid(-l / T)`` with a temperature ``T``
  (``score_temperature``, default 8): at ``T = 1`` this is the paper's ``1 - P``; a larger ``T`` keeps
  the same order and the same 0.5 point but stops confident scores from rounding to exactly 0 or 1.
* The final patch score is ``a(t) = min_d a_d(t)`` over the directions that reach ``t`` (paper eq. 5,
  with the column-wise pass beyond the paper so that every patch has two independent verdicts).
* The pixel field of a patch is its difference mask intersected (min) over the same directions
  (``pixel_rule = "stitch"``, see ``patchloupe.pixelmaps``).

Column-wise directions run the same generator on transposed patches (a column is a row of the
transposed image), so one network serves all four directions.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from patchloupe import _native
from patchloupe.grid import COL_DIRECTIONS, DIRECTIONS, ROW_DIRECTIONS, neighbor_triplets
from patchloupe.models.comparator import ComparatorConfig, PatternComparator
from patchloupe.models.generator import GeneratorConfig, PatternGenerator
from patchloupe.preprocess import check_geometry
from patchloupe.scorers.base import Scorer

log = logging.getLogger(__name__)

__all__ = ["PatternConfig", "PatternGraph", "PatternScorer", "TripletPlan", "fit_pattern", "make_plan"]


@dataclass
class PatternConfig:
    """Settings of the pattern scorer (``scorer_config`` in ``detector.json``)."""

    directions: tuple[str, ...] = DIRECTIONS
    score_temperature: float = 8.0
    generator: dict[str, Any] = field(default_factory=dict)
    comparator: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.directions, (str, bytes)):
            raise ValueError(f"directions must be a list of direction names, got {self.directions!r}")
        self.directions = tuple(self.directions)
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad or not self.directions or len(set(self.directions)) != len(self.directions):
            raise ValueError(
                f"directions must be a non-empty subset of {DIRECTIONS} without repeats, got {self.directions}"
            )
        rows_ok = all(d in self.directions for d in ROW_DIRECTIONS)
        cols_ok = all(d in self.directions for d in COL_DIRECTIONS)
        if not (rows_ok or cols_ok):
            raise ValueError("directions must include both row directions or both column directions")
        t = self.score_temperature
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not (math.isfinite(t) and 1e-3 <= t <= 1e3):
            raise ValueError(f"score_temperature must be a number in [0.001, 1000], got {t!r}")
        self.score_temperature = float(t)

    def to_dict(self) -> dict[str, Any]:
        return {
            "directions": list(self.directions),
            "score_temperature": self.score_temperature,
            "generator": self.generator,
            "comparator": self.comparator,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatternConfig:
        keys = ("directions", "score_temperature", "generator", "comparator")
        return cls(**{k: d[k] for k in keys if k in d})


@dataclass
class TripletPlan:
    """Triplets of one grid: row-wise ones on the patches, column-wise ones on transposed patches."""

    row: np.ndarray  # (Tr, 3) int64
    col: np.ndarray  # (Tc, 3) int64
    row_dir: np.ndarray  # (Tr,) direction index into the scorer's directions
    col_dir: np.ndarray  # (Tc,)


def make_plan(grid: tuple[int, int], directions: Sequence[str]) -> TripletPlan:
    """The triplets of every direction on ``grid``, split into row-wise and column-wise passes."""
    parts: dict[str, list[np.ndarray]] = {"row": [], "col": [], "row_dir": [], "col_dir": []}
    for i, d in enumerate(directions):
        trip = neighbor_triplets(grid[0], grid[1], d)
        kind = "row" if d in ROW_DIRECTIONS else "col"
        parts[kind].append(trip)
        parts[f"{kind}_dir"].append(np.full(len(trip), i, dtype=np.int64))

    def cat(items: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate(items) if items else np.zeros(shape, dtype=np.int64)

    return TripletPlan(
        cat(parts["row"], (0, 3)), cat(parts["col"], (0, 3)), cat(parts["row_dir"], (0,)), cat(parts["col_dir"], (0,))
    )


class PatternScorer(Scorer):
    """Generator + comparator on a ``grid`` of patches of an ``image_size`` image."""

    name: ClassVar[str] = "pattern"
    pixel_rule: ClassVar[str] = "stitch"
    entries: ClassVar[tuple[str, ...]] = ("generator", "comparator")

    def __init__(
        self,
        generator: PatternGenerator,
        comparator: PatternComparator,
        image_size: tuple[int, int],
        grid: tuple[int, int],
        config: PatternConfig | None = None,
    ) -> None:
        self.config = config or PatternConfig()
        for name, net in (("generator", generator), ("comparator", comparator)):
            if hasattr(net, "config"):  # the saved settings follow the networks
                setattr(self.config, name, net.config.to_dict())
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.grid = (int(grid[0]), int(grid[1]))
        check_geometry(self.image_size, self.grid)
        if min(self.grid) < 3:
            raise ValueError(f"grid must be at least 3x3 so every patch has a neighbour pair, got {self.grid}")
        self.generator = generator.eval()
        self.comparator = comparator.eval()
        self.plan = make_plan(self.grid, self.config.directions)

    # ------------------------------------------------------------------ persistence
    def settings(self) -> dict[str, Any]:
        return self.config.to_dict()

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"generator": self.generator.state_dict(), "comparator": self.comparator.state_dict()}

    @classmethod
    def from_saved(
        cls,
        settings: dict[str, Any],
        tensors: dict[str, dict[str, torch.Tensor]],
        image_size: tuple[int, int],
        grid: tuple[int, int],
    ) -> PatternScorer:
        config = PatternConfig.from_dict(settings)
        generator = PatternGenerator(GeneratorConfig.from_dict(config.generator))
        generator.load_state_dict(tensors["generator"])
        comparator = PatternComparator(ComparatorConfig.from_dict(config.comparator))
        comparator.load_state_dict(tensors["comparator"])
        return cls(generator, comparator, image_size, grid, config)

    def to(self, device: Any) -> PatternScorer:
        self.generator.to(device)
        self.comparator.to(device)
        return self

    @property
    def device(self) -> torch.device:
        for t in (*self.generator.parameters(), *self.comparator.parameters()):
            return t.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ inference
    def prepare(self, image: np.ndarray) -> np.ndarray:
        """uint8 ``(H', W', 3)`` -> patches uint8 ``(P, ph, pw, 3)`` in reading order (native tiler)."""
        return np.asarray(_native.tile(image, self.grid))

    @torch.inference_mode()
    def infer(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(B, P, ph, pw, 3)`` -> final patch scores ``(B, rows, cols)``, masks ``(B, P, mh, mw)``."""
        rows, cols = self.grid
        b, p = inputs.shape[:2]
        dev = self.device
        x = torch.from_numpy(inputs).to(dev).permute(0, 1, 4, 2, 3).float().div_(255.0)
        flat = x.reshape(b * p, *x.shape[2:])  # (B*P, 3, ph, pw)
        offsets = (np.arange(b, dtype=np.int64) * p)[:, None, None]
        preds, targets, dirs = [], [], []
        for trip, dir_idx, transpose in (
            (self.plan.row, self.plan.row_dir, False),
            (self.plan.col, self.plan.col_dir, True),
        ):
            if not len(trip):
                continue
            all_trip = torch.from_numpy((trip[None] + offsets).reshape(-1, 3)).to(dev)
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
        img_all, tgt_local = np.divmod(target_idx.cpu().numpy(), p)
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

    def flops(self) -> int:
        """Every patch encoded once per encoder and orientation, one decode and one comparison per
        reachable (direction, patch) pair."""
        ph, pw = check_geometry(self.image_size, self.grid)[0]
        total = 0
        for trip, size in ((self.plan.row, (ph, pw)), (self.plan.col, (pw, ph))):
            if len(trip):
                total += self.generator.prediction_flops(torch.from_numpy(trip), size)
                total += len(trip) * self.comparator.flops(ph, pw)
        return int(total)

    def num_params(self) -> int:
        return sum(p.numel() for m in (self.generator, self.comparator) for p in m.parameters())

    def export_module(self, half: bool = False) -> PatternGraph:
        """The whole scorer as one traceable network (``patchloupe.export``): see :class:`PatternGraph`."""
        return PatternGraph(self, half=half)


class PatternGraph(torch.nn.Module):
    """:meth:`PatternScorer.infer` plus the stitch at the model size as one static-shape graph.

    uint8 RGB ``(B, H, W, 3)`` at the model size -> image scores ``(B,)``, patch scores ``(B, rows, cols)``,
    anomaly map ``(B, H, W)`` (``patchloupe.pixelmaps`` at the model size) and the intersected masks
    ``(B, P, mh, mw)`` (the field). The tiling is a reshape (the model size is a multiple of the grid, so
    ``_native.tile`` pads nothing); each encoder runs once on the distinct patches a pass needs (what
    ``predict_targets`` does with ``torch.unique``, here with indices fixed at build time); the
    intersection gathers, for every patch, the logits and masks of the directions that reach it and
    takes their minimum (``_native.intersect_maps`` / ``intersect_masks``: a patch no direction reaches
    gets 0 and an all-ones mask). ``half`` runs the two networks in float16 and the rest in float32.
    """

    def __init__(self, scorer: PatternScorer, half: bool = False) -> None:
        super().__init__()
        dtype = torch.float16 if half else torch.float32
        self.generator = copy.deepcopy(scorer.generator).to("cpu", dtype).eval()
        self.comparator = copy.deepcopy(scorer.comparator).to("cpu", dtype).eval()
        self.dtype = dtype
        self.grid = scorer.grid
        self.image_size = scorer.image_size
        self.temperature = scorer.config.score_temperature
        rows, cols = self.grid
        n_patches = rows * cols
        self.passes: list[tuple[str, bool, int, int, int]] = []
        owners: list[list[int]] = [[] for _ in range(n_patches)]  # positions (in pass order) of each patch's verdicts
        offset = 0
        for kind, trip in (("row", scorer.plan.row), ("col", scorer.plan.col)):
            if not len(trip):
                continue
            idx1, inv1 = np.unique(trip[:, 0], return_inverse=True)
            idx2, inv2 = np.unique(trip[:, 1], return_inverse=True)
            for name, arr in (("idx1", idx1), ("inv1", inv1), ("idx2", idx2), ("inv2", inv2), ("tgt", trip[:, 2])):
                self.register_buffer(f"{kind}_{name}", torch.from_numpy(np.asarray(arr, dtype=np.int64)))
            self.passes.append((kind, kind == "col", len(idx1), len(idx2), len(trip)))
            for k, t in enumerate(trip[:, 2]):
                owners[int(t)].append(offset + k)
            offset += len(trip)
        # (P, K): each patch's verdict positions, padded by repeating one (the min is unchanged); a patch no
        # direction reaches reads position ``offset``, the neutral column (logit 0, mask 1)
        width = max(1, max(len(o) for o in owners))
        table = [(o + [o[0]] * (width - len(o))) if o else [offset] * width for o in owners]
        self.register_buffer("table", torch.tensor(table, dtype=torch.int64))
        self.register_buffer("reached", torch.tensor([bool(o) for o in owners]))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, cols = self.grid
        h, w = self.image_size
        ph, pw = h // rows, w // cols
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0  # (B, 3, H, W)
        patches = x.reshape(-1, 3, rows, ph, cols, pw).permute(0, 2, 4, 1, 3, 5).reshape(-1, rows * cols, 3, ph, pw)
        patches = patches.to(self.dtype)
        logits, masks = [], []
        for kind, transpose, n1, n2, n in self.passes:
            src = patches.transpose(-1, -2) if transpose else patches
            sh, sw = src.shape[-2:]
            feats = []
            for which, (count, idx, inv) in enumerate(
                ((n1, getattr(self, f"{kind}_idx1"), getattr(self, f"{kind}_inv1")),
                 (n2, getattr(self, f"{kind}_idx2"), getattr(self, f"{kind}_inv2")))
            ):  # fmt: skip
                enc = self.generator.encode(src[:, idx].reshape(-1, 3, sh, sw), which)
                feats.append([f.reshape(-1, count, *f.shape[1:])[:, inv].reshape(-1, *f.shape[1:]) for f in enc])
            pred = self.generator.decode(feats[0], feats[1], (sh, sw))
            pred = pred.transpose(-1, -2) if transpose else pred
            real = patches[:, getattr(self, f"{kind}_tgt")].reshape(-1, 3, ph, pw)
            _, mask, logit = self.comparator(pred.contiguous(), real.contiguous())
            logits.append(-logit.to(torch.float32).reshape(-1, n))
            masks.append(mask.to(torch.float32).reshape(-1, n, *mask.shape[-2:]))
        mh, mw = masks[0].shape[-2:]
        logits.append(torch.zeros_like(logits[0][:, :1]))
        masks.append(torch.ones_like(masks[0][:, :1]))
        verdict = torch.cat(logits, 1)[:, self.table].amin(-1)  # (B, P): min over the directions reaching a patch
        verdict = torch.where(self.reached, verdict, torch.zeros_like(verdict))
        field = torch.cat(masks, 1)[:, self.table].amin(2)  # (B, P, mh, mw)
        patch = torch.sigmoid(verdict / self.temperature)  # (B, P)
        canvas = (field * patch[:, :, None, None]).reshape(-1, rows, cols, mh, mw).permute(0, 1, 3, 2, 4)
        canvas = canvas.reshape(-1, 1, rows * mh, cols * mw)
        amap = torch.nn.functional.interpolate(canvas, size=(h, w), mode="bilinear", align_corners=False)
        amap = amap[:, 0].clamp(0.0, 1.0)
        return patch.amax(1), patch.reshape(-1, rows, cols), amap, field


def fit_pattern(
    base: PatternScorer,
    train: Sequence[np.ndarray],
    image_size: tuple[int, int],
    grid: tuple[int, int],
    *,
    generator_steps: int,
    comparator_steps: int,
    batch_size: int,
    seed: int,
    progress: bool,
    device: str | torch.device | None,
) -> tuple[PatternScorer, dict[str, Any]]:
    """Fine-tune copies of ``base``'s generator (MSE, stage 1) and comparator (stage 2) on ``train``
    (RGB uint8 images) at ``grid``; 0 steps keeps that network as it is. Returns the scorer and a record."""
    from patchloupe.train.stage1 import train_generator
    from patchloupe.train.stage2 import train_comparator

    generator = copy.deepcopy(base.generator).to("cpu")
    comparator = copy.deepcopy(base.comparator).to("cpu")
    dirs = tuple(base.config.directions)
    g = c = None
    if generator_steps > 0:
        g = train_generator(
            generator.train(), train, image_size=image_size, grid=grid, steps=generator_steps,
            batch_size=batch_size, seed=seed, progress=progress, device=device, directions=dirs,
        )  # fmt: skip
    generator.eval()
    if comparator_steps > 0:
        c = train_comparator(
            comparator.train(), generator, train, image_size=image_size, grid=grid, steps=comparator_steps,
            batch_size=batch_size, seed=seed + 1, progress=progress, device=device, directions=dirs,
            precompute=min(512, 16 * comparator_steps),
        )  # fmt: skip
    comparator.eval()
    config = PatternConfig(directions=dirs, score_temperature=base.config.score_temperature)
    scorer = PatternScorer(generator, comparator, image_size, grid, config)
    record = {
        "generator_steps": generator_steps,
        "generator_final_loss": _final_loss(g),
        "comparator_steps": comparator_steps,
        "comparator_final_loss": _final_loss(c),
    }
    return scorer, record


def prediction_error_ratio(
    generator: torch.nn.Module, images: Sequence[np.ndarray], image_size: tuple[int, int], grid: tuple[int, int]
) -> float:
    """Held-out MSE of the generator over MSE of "copy the nearest input patch", row triplets both ways.

    Lower is better; it is comparable across grids because both errors are measured on the same patches.
    """
    from patchloupe.train.stage1 import evaluate_prediction

    with torch.inference_mode():
        r = evaluate_prediction(generator, images, image_size=image_size, grid=grid, directions=("ltr", "rtl"))
    return r["mse"] / max(r["mse_copy"], 1e-12)


def _final_loss(result: Any) -> float | None:
    loss = getattr(result, "final_loss", None)
    return None if loss is None else float(loss)
