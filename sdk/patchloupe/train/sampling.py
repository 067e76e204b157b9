"""Triplet sampling for training: (first, second) neighbouring patches -> the target patch next to them.

Geometry (method.md §2, §4): patches are cut from images resized to the model's ``image_size``
(H, W) on a ``rows x cols`` grid, patch size ``(ph, pw) = (H / rows, W / cols)``. A triplet is
three adjacent patches along a line; "first" is always the patch *farther* from the target:

======== =============================== =========================
direction  first, second -> target         axis
======== =============================== =========================
``ltr``    i, i+1 -> i+2 (left to right)   along a row
``rtl``    i+2, i+1 -> i (right to left)   along a row
``ttb``    j, j+1 -> j+2 (top to bottom)   along a column
``btt``    j+2, j+1 -> j (bottom to top)   along a column
======== =============================== =========================

:class:`TripletSampler` draws random triplets, either exactly on the inference grid ("aligned") or
at a random pixel offset ("jittered": the strip of three patches starts anywhere in the image, so
the generator sees patch phases beyond the fixed grid). Optional flips are the ones that keep the
triplet geometry valid: mirroring *across* the triplet's axis (a vertical flip for a row triplet,
a horizontal flip for a column triplet); mirroring *along* the axis would just turn ``ltr`` into
``rtl``, which the direction choice already covers.

Column triplets (``ttb``/``btt``) are returned *transposed* by default (``transpose_columns``): a
column of the image is presented as a row of the transposed image, which is how
:class:`patchloupe.detector.Detector` runs its column-wise pass (one generator for all four
directions, always predicting along its input's width). This needs square patches.

For stage 2 and evaluation, :meth:`TripletSampler.sample_aligned` gives prediction-ready triplets
(exactly what inference feeds the generator, with their grid indices), and :func:`grid_triplets` /
:func:`image_triplets` enumerate every triplet of whole images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from patchloupe.grid import COL_DIRECTIONS, DIRECTIONS, ROW_DIRECTIONS, neighbor_triplets
from patchloupe.preprocess import check_geometry, image_to_patches, resize_for_model

__all__ = ["DIRECTIONS", "TripletBatch", "TripletSampler", "grid_triplets", "image_triplets"]

# the second direction of each axis (rtl, btt) runs against reading order: its target comes first
_REVERSED = (ROW_DIRECTIONS[1], COL_DIRECTIONS[1])


def grid_triplets(rows: int, cols: int, direction: str) -> torch.Tensor:
    """All ``(first, second, target)`` patch-index triplets of a ``rows x cols`` grid -> int64 ``(T, 3)``.

    :func:`patchloupe.grid.neighbor_triplets` as a tensor: indices in reading order (``p = r * cols + c``),
    rows (or columns) enumerated in order, then positions along them. ``T`` is ``rows * (cols - 2)`` for
    ``ltr``/``rtl`` and ``(rows - 2) * cols`` for ``ttb``/``btt`` (0 when the line is shorter than 3 patches).
    """
    return torch.from_numpy(neighbor_triplets(rows, cols, direction))


def image_triplets(
    images: torch.Tensor, grid: Sequence[int], direction: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every grid triplet of whole images, as inference sees them.

    ``images``: float ``(B, 3, H, W)`` (H, W divisible by the grid). Returns ``first``, ``second``,
    ``target`` of shape ``(B, T, 3, ph, pw)`` and the int64 ``(T, 3)`` patch-index triplets from
    :func:`grid_triplets`.
    """
    rows, cols = (int(v) for v in grid)
    patches = image_to_patches(images, (rows, cols))  # (B, P, 3, ph, pw)
    trip = grid_triplets(rows, cols, direction).to(patches.device)
    return patches[:, trip[:, 0]], patches[:, trip[:, 1]], patches[:, trip[:, 2]], trip


@dataclass
class TripletBatch:
    """A batch of triplets with provenance.

    ``first``, ``second``, ``target``: float32 ``(B, 3, ph, pw)`` in [0, 1].
    ``image_index``: int64 ``(B,)`` index into the sampler's images.
    ``origin``: int64 ``(B, 3, 2)`` top-left pixel ``(y, x)`` of first/second/target in the
    resized image (before any flip or transpose).
    ``direction``: ``B`` direction names. ``aligned``: bool ``(B,)`` (on the inference grid).
    ``flipped``: bool ``(B,)`` (mirrored across the triplet axis).
    ``patch_index``: int64 ``(B, 3)`` grid indices of first/second/target for aligned samples,
    ``-1`` for jittered ones.
    """

    first: torch.Tensor
    second: torch.Tensor
    target: torch.Tensor
    image_index: torch.Tensor
    origin: torch.Tensor
    direction: list[str]
    aligned: torch.Tensor
    flipped: torch.Tensor
    patch_index: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(first, second, target)``."""
        return self.first, self.second, self.target


def _as_rgb_uint8(image: np.ndarray, i: int) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image {i} is a {type(image).__name__}, expected a numpy uint8 array")
    if image.dtype != np.uint8:
        raise ValueError(f"image {i} has dtype {image.dtype}, expected uint8 (H, W, 3)")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {i} has shape {image.shape}, expected (H, W, 3) or (H, W)")
    return image


class TripletSampler:
    """Random neighbouring-patch triplets from a fixed set of images.

    Parameters
    ----------
    images:
        uint8 ``(H, W, 3)`` RGB arrays (``(H, W)`` gray is replicated), any sizes. Each is resized once
        with :func:`patchloupe.preprocess.resize_for_model` and kept as one uint8 tensor
        ``(N, 3, H, W)`` (on ``device``; ~``N * H * W * 3`` bytes).
    image_size, grid:
        model geometry ``(H, W)`` and ``(rows, cols)``; patches are ``(H / rows, W / cols)``.
    directions:
        any of ``ltr``, ``rtl``, ``ttb``, ``btt``; drawn uniformly per sample.
    column_wise:
        also train column triplets (adds ``ttb`` and ``btt``).
    seed:
        seeds the sampler's own ``numpy.random.Generator``; every draw comes from it (or from the
        ``rng`` passed to :meth:`sample`), so results are deterministic for a seed.
    offset_jitter:
        ``False``: triplets always sit on the inference grid. ``True``: half of the samples (the
        other half stays aligned) start at a uniformly random pixel offset anywhere in the image. A
        float in [0, 1] sets that fraction explicitly.
    flips:
        mirror a sample across its triplet axis with probability 0.5 (geometry-preserving; good for
        generic pre-training, off by default because a user's texture may not be mirror-symmetric).
    device:
        where the image tensor lives and batches are produced (default CPU).
    transpose_columns:
        return column triplets transposed (rows of the transposed image, the detector's convention;
        requires ``ph == pw``). ``False`` keeps them in image orientation.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        image_size: Sequence[int] = (256, 256),
        grid: Sequence[int] = (4, 4),
        directions: Sequence[str] = ROW_DIRECTIONS,
        column_wise: bool = False,
        seed: int = 0,
        offset_jitter: bool | float = True,
        flips: bool = False,
        device: str | torch.device | None = None,
        transpose_columns: bool = True,
    ) -> None:
        (self.ph, self.pw), (self.height, self.width) = check_geometry(image_size, grid)
        self.rows, self.cols = (int(v) for v in grid)
        dirs = list(dict.fromkeys(directions))
        if column_wise:
            dirs += [d for d in COL_DIRECTIONS if d not in dirs]
        for d in dirs:
            if d not in DIRECTIONS:
                raise ValueError(f"direction must be one of {DIRECTIONS}, got {d!r}")
            if d in ROW_DIRECTIONS and self.cols < 3:
                raise ValueError(f"direction {d!r} needs at least 3 grid columns, grid is {self.rows}x{self.cols}")
            if d in COL_DIRECTIONS and self.rows < 3:
                raise ValueError(f"direction {d!r} needs at least 3 grid rows, grid is {self.rows}x{self.cols}")
        if not dirs:
            raise ValueError("at least one direction is required")
        self.directions: tuple[str, ...] = tuple(dirs)
        # aligned samples take their patch indices from the grid's triplet table of their direction
        self._triplets = {d: grid_triplets(self.rows, self.cols, d) for d in dirs}
        self.transpose_columns = bool(transpose_columns)
        has_cols = any(d in COL_DIRECTIONS for d in dirs)
        if has_cols and self.transpose_columns and self.ph != self.pw:
            raise ValueError(
                f"transposed column triplets need square patches, got {self.ph}x{self.pw}; "
                "use transpose_columns=False or row directions only"
            )
        if isinstance(offset_jitter, bool):
            self.jitter_prob = 0.5 if offset_jitter else 0.0
        else:
            self.jitter_prob = float(offset_jitter)
            if not 0.0 <= self.jitter_prob <= 1.0:
                raise ValueError("offset_jitter must be a bool or a fraction in [0, 1]")
        self.flips = bool(flips)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        if len(images) == 0:
            raise ValueError("TripletSampler needs at least one image")
        size = (self.height, self.width)
        stack = np.stack([resize_for_model(_as_rgb_uint8(im, i), size) for i, im in enumerate(images)])
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.images = torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous().to(self.device)  # (N,3,H,W) u8

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.ph, self.pw

    # -- state (the sampler's own RNG), for checkpoints ------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able RNG state (see :func:`patchloupe.train.common.encode_state`)."""
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]

    # -- sampling ---------------------------------------------------------------------------------
    def sample(self, batch: int, rng: np.random.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """``(first, second, target)``, float32 ``(batch, 3, ph, pw)`` in [0, 1]; see :meth:`sample_batch`."""
        return self.sample_batch(batch, rng=rng).tensors()

    def sample_aligned(self, batch: int, rng: np.random.Generator | None = None) -> TripletBatch:
        """Prediction-ready triplets: on the inference grid, never flipped, with ``patch_index`` set.

        This is what the generator sees at inference time (for stage 2 matching pairs: run the frozen
        generator on ``first, second`` and compare with ``target``).
        """
        return self.sample_batch(batch, rng=rng, jitter_prob=0.0, flips=False)

    def sample_batch(
        self,
        batch: int,
        rng: np.random.Generator | None = None,
        *,
        jitter_prob: float | None = None,
        flips: bool | None = None,
    ) -> TripletBatch:
        """Draw ``batch`` triplets (random image, direction, line and position) -> :class:`TripletBatch`.

        ``rng`` overrides the sampler's own generator (e.g. a per-step ``default_rng(derive_seed(...))``
        for stateless, resumable sampling). ``jitter_prob`` / ``flips`` override the constructor's.
        """
        if batch < 1:
            raise ValueError("batch must be >= 1")
        g = self.rng if rng is None else rng
        jp = self.jitter_prob if jitter_prob is None else float(jitter_prob)
        do_flips = self.flips if flips is None else bool(flips)
        ph, pw, rows, cols, h, w = self.ph, self.pw, self.rows, self.cols, self.height, self.width
        # draw everything vectorised, in a fixed order, so a seed fixes the whole batch
        img = g.integers(0, len(self), size=batch)
        dirs = g.integers(0, len(self.directions), size=batch)
        jitter = g.random(batch) < jp
        u = g.random((batch, 2))
        flip = (g.random(batch) < 0.5) & do_flips

        first_l, second_l, target_l = [], [], []
        origin = torch.empty((batch, 3, 2), dtype=torch.int64)
        patch_index = torch.full((batch, 3), -1, dtype=torch.int64)
        names = []
        for b in range(batch):
            d = self.directions[int(dirs[b])]
            names.append(d)
            horizontal = d in ROW_DIRECTIONS
            # strip of ph x 3pw (row) or 3ph x pw (column); dy, dx step from one patch to the next
            sh, sw, dy, dx = (ph, 3 * pw, 0, pw) if horizontal else (3 * ph, pw, ph, 0)
            if jitter[b]:
                y, x = int(u[b, 0] * (h - sh + 1)), int(u[b, 1] * (w - sw + 1))
            else:  # a line (row / column) and a position along it: row t of the direction's triplet table
                if horizontal:
                    r, c = int(u[b, 0] * rows), int(u[b, 1] * (cols - 2))
                    t = r * (cols - 2) + c
                else:
                    r, c = int(u[b, 0] * (rows - 2)), int(u[b, 1] * cols)
                    t = c * (rows - 2) + r
                y, x = r * ph, c * pw
                patch_index[b] = self._triplets[d][t]  # already (first, second, target)
            strip = self.images[int(img[b]), :, y : y + sh, x : x + sw]
            parts = [strip[:, k * dy : k * dy + ph, k * dx : k * dx + pw] for k in range(3)]
            pos = [(y + k * dy, x + k * dx) for k in range(3)]
            if d in _REVERSED:
                parts, pos = parts[::-1], pos[::-1]
            if flip[b]:  # mirror across the triplet axis
                axis = -2 if horizontal else -1
                parts = [p.flip(axis) for p in parts]
            if not horizontal and self.transpose_columns:
                parts = [p.transpose(-1, -2) for p in parts]
            first_l.append(parts[0])
            second_l.append(parts[1])
            target_l.append(parts[2])
            origin[b] = torch.tensor(pos)

        def to_float(items: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(items).to(torch.float32).div_(255.0)

        return TripletBatch(
            first=to_float(first_l),
            second=to_float(second_l),
            target=to_float(target_l),
            image_index=torch.from_numpy(img.astype(np.int64)),
            origin=origin,
            direction=names,
            aligned=torch.from_numpy(~jitter),
            flipped=torch.from_numpy(flip),
            patch_index=patch_index,
        )
