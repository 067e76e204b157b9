"""Shared Swin building blocks (timm style): window helpers, masks, MLP, DropPath, patch embed/merge/expand.

Conventions: token grids are channels-last ``(B, H, W, C)``; windows may be rectangular, given as
``int`` (square) or ``(wh, ww)``. Every module with weights reports ``flops(...)``: analytic
multiply-accumulates x 2 of its matmuls/convs for the given input size (norms, activations,
additions, softmax and reshapes are not counted, like ``torch.utils.flop_counter``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MASK_VALUE",
    "to_2tuple",
    "window_partition",
    "window_reverse",
    "relative_position_index",
    "shifted_window_mask",
    "padding_key_mask",
    "num_params",
    "Mlp",
    "DropPath",
    "drop_path",
    "PatchEmbed",
    "PatchMerging",
    "PatchExpand",
    "FinalPatchExpandX4",
]

#: Additive value for masked attention logits (Swin's choice; finite so fully masked rows stay NaN-free).
MASK_VALUE = -100.0


# --------------------------------------------------------------------------------------------- helpers


def to_2tuple(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``7 -> (7, 7)``; ``(4, 2) -> (4, 2)``."""
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"expected 2 values, got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)


def num_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def window_partition(x: Tensor, window: int | tuple[int, int]) -> Tensor:
    """``(B, H, W, C)`` -> ``(B * nW, wh, ww, C)``; H, W must be multiples of the window.

    Windows are ordered batch-major, then in reading order, so window ``j`` of the result belongs to
    image ``j // nW`` and is window ``j % nW`` of that image.
    """
    wh, ww = to_2tuple(window)
    b, h, w, c = x.shape
    if h % wh or w % ww:
        raise ValueError(f"grid {h}x{w} is not a multiple of the window {wh}x{ww}")
    x = x.view(b, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh, ww, c)


def window_reverse(windows: Tensor, window: int | tuple[int, int], h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, wh, ww, C)`` or ``(B * nW, wh * ww, C)`` -> ``(B, H, W, C)``."""
    wh, ww = to_2tuple(window)
    c = windows.shape[-1]
    x = windows.reshape(-1, h // wh, w // ww, wh, ww, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window: int | tuple[int, int], table_window: int | tuple[int, int] | None = None) -> Tensor:
    """Long ``(N, N)``, N = wh * ww: row of the relative-position-bias table for each (query, key) pair.

    The table has ``(2 * th - 1) * (2 * tw - 1)`` rows for ``table_window = (th, tw)`` (default: the
    window itself); offset ``(dy, dx) = query - key`` maps to row ``(dy + th - 1) * (2 * tw - 1) + dx + tw - 1``.
    A window smaller than the table's (a stage whose grid is smaller than the configured window) thus
    indexes the same learned table as the full window does.
    """
    wh, ww = to_2tuple(window)
    th, tw = to_2tuple(table_window if table_window is not None else window)
    if wh > th or ww > tw:
        raise ValueError(f"window {wh}x{ww} is larger than the table's window {th}x{tw}")
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
    return (rel[0] + th - 1) * (2 * tw - 1) + (rel[1] + tw - 1)


def _region_ids(hp: int, wp: int, window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """Long ``(hp, wp)``: id of the cyclic-shift region each token of the (shifted) padded grid comes from."""
    ids = torch.zeros(hp, wp, dtype=torch.long)
    cnt = 0
    h_slices = (
        (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)) if shift[0] else (slice(None),)
    )
    w_slices = (
        (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)) if shift[1] else (slice(None),)
    )
    for hs in h_slices:
        for ws in w_slices:
            ids[hs, ws] = cnt
            cnt += 1
    return ids


def shifted_window_mask(hp: int, wp: int, window: int | tuple[int, int], shift: int | tuple[int, int]) -> Tensor:
    """Float ``(nW, N, N)`` additive Swin mask for a cyclically shifted ``hp x wp`` grid: 0 or ``MASK_VALUE``.

    After ``torch.roll(x, (-sh, -sw))`` the last windows mix tokens from opposite borders; a token may
    only attend to tokens of the same original region. An axis with shift 0 has a single region.
    """
    win, sh = to_2tuple(window), to_2tuple(shift)
    if hp % win[0] or wp % win[1]:
        raise ValueError(f"grid {hp}x{wp} is not a multiple of the window {win}")
    if not (0 <= sh[0] < win[0] and 0 <= sh[1] < win[1]):
        raise ValueError(f"shift {sh} must lie in [0, window) for window {win}")
    ids = _region_ids(hp, wp, win, sh)
    ids = window_partition(ids[None, :, :, None], win).flatten(1)  # (nW, N)
    diff = ids[:, None, :] != ids[:, :, None]
    return torch.zeros(diff.shape).masked_fill_(diff, MASK_VALUE)


def padding_key_mask(
    h: int, w: int, hp: int, wp: int, window: int | tuple[int, int], shift: int | tuple[int, int] = 0
) -> Tensor:
    """Float ``(nW, N, N)`` additive mask hiding padded key tokens (real grid ``h x w`` padded to ``hp x wp``).

    The padded grid is rolled by ``-shift`` first, as the tokens are. Padded queries still see the
    real keys of their window; a window of padding only gets a uniform (finite) softmax.
    """
    win, sh = to_2tuple(window), to_2tuple(shift)
    valid = torch.zeros(hp, wp, dtype=torch.bool)
    valid[:h, :w] = True
    valid = torch.roll(valid, shifts=(-sh[0], -sh[1]), dims=(0, 1))
    valid = window_partition(valid[None, :, :, None], win).flatten(1)  # (nW, N)
    n = valid.shape[1]
    return torch.zeros(valid.shape[0], n, n).masked_fill_(~valid[:, None, :], MASK_VALUE)


# --------------------------------------------------------------------------------------------- blocks


def drop_path(x: Tensor, p: float = 0.0, training: bool = False) -> Tensor:
    """Stochastic depth: zero whole samples (dim 0) with probability ``p``, rescale the rest by ``1 / (1 - p)``."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or with ``p == 0``)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        """Any shape with the batch first -> same shape."""
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class Mlp(nn.Module):
    """Two-layer MLP with GELU on the last dim: ``(..., C) -> (..., out)``."""

    def __init__(self, dim: int, hidden: int | None = None, out: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        out = out or dim
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., C) -> (..., out)``."""
        return self.fc2(self.act(self.fc1(x)))

    def flops(self, num_tokens: int) -> int:
        """FLOPs for ``num_tokens`` tokens."""
        macs = self.fc1.in_features * self.fc1.out_features + self.fc2.in_features * self.fc2.out_features
        return 2 * num_tokens * macs


class PatchEmbed(nn.Module):
    """Strided-conv patch embedding: ``(B, in_chans, h, w) -> (B, h/p, w/p, dim)`` + LayerNorm (h, w multiples of p)."""

    def __init__(self, in_chans: int = 3, dim: int = 96, patch: int = 4) -> None:
        super().__init__()
        self.patch = int(patch)
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, Cin, h, w) -> (B, h/p, w/p, C)``."""
        if x.shape[-2] % self.patch or x.shape[-1] % self.patch:
            raise ValueError(f"input {tuple(x.shape[-2:])} is not a multiple of the patch size {self.patch}")
        return self.norm(self.proj(x).permute(0, 2, 3, 1))

    def flops(self, h: int, w: int) -> int:
        """FLOPs for one ``h x w`` input."""
        tokens = (h // self.patch) * (w // self.patch)
        return 2 * tokens * self.proj.in_channels * self.proj.out_channels * self.patch * self.patch


class PatchMerging(nn.Module):
    """2x2 neighbour concat -> LayerNorm(4C) -> Linear(4C, 2C): ``(B, H, W, C) -> (B, H/2, W/2, 2C)``.

    Odd H or W are zero-padded by one row/column first (as Swin does).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = int(dim)
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)``."""
        b, h, w, c = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            h, w = h + h % 2, w + w % 2
        # (B, H/2, 2, W/2, 2, C) -> (B, H/2, W/2, [dx, dy] ...) in Swin's x0, x1, x2, x3 order
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))

    def flops(self, h: int, w: int) -> int:
        """FLOPs for one ``h x w`` input grid."""
        return 2 * math.ceil(h / 2) * math.ceil(w / 2) * (4 * self.dim) * (2 * self.dim)


class PatchExpand(nn.Module):
    """Swin-Unet patch expanding: Linear(C, 2C) -> rearrange to 2x resolution with C/2 channels -> LayerNorm.

    ``(B, H, W, C) -> (B, 2H, 2W, C/2)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"PatchExpand needs an even channel count, got {dim}")
        self.dim = int(dim)
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C) -> (B, 2H, 2W, C/2)``."""
        b, h, w, _ = x.shape
        x = self.expand(x).view(b, h, w, 2, 2, self.dim // 2)  # (b, h, w, p1, p2, c)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, self.dim // 2)
        return self.norm(x)

    def flops(self, h: int, w: int) -> int:
        """FLOPs for one ``h x w`` input grid."""
        return 2 * h * w * self.dim * 2 * self.dim


class FinalPatchExpandX4(nn.Module):
    """Swin-Unet final x4 expanding: Linear(C, 16C) -> rearrange to 4x resolution with C channels -> LayerNorm.

    ``(B, H, W, C) -> (B, 4H, 4W, C)``.
    """

    def __init__(self, dim: int, scale: int = 4) -> None:
        super().__init__()
        self.dim = int(dim)
        self.scale = int(scale)
        self.expand = nn.Linear(dim, scale * scale * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C) -> (B, 4H, 4W, C)``."""
        b, h, w, _ = x.shape
        s = self.scale
        x = self.expand(x).view(b, h, w, s, s, self.dim)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, s * h, s * w, self.dim)
        return self.norm(x)

    def flops(self, h: int, w: int) -> int:
        """FLOPs for one ``h x w`` input grid."""
        return 2 * h * w * self.dim * self.scale * self.scale * self.dim
