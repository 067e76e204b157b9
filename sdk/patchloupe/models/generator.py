"""Pattern generation network (method §2): two Swin encoders, a Swin decoder and a SegFormer-style head.

Given two neighbouring patches ``(B, 3, h, w)`` in ``[0, 1]``, the generator paints the patch that
should follow, ``(B, 3, h, w)`` in ``[0, 1]``.

Layout (timm style): helpers (config, window plans), blocks (window attention, Swin block, stages,
encoder, decoder, fusion head), the model, presets.

Choices where the method leaves room (see ``shared/docs/method.md`` §2):

- Decoder stages 1-3 run *patch expanding first, then Swin blocks*: expanding the stage input
  (h/32, 8C) gives (h/16, 4C), which is the stated size of decoder output 1 and the size of Enc[3]
  that stage 2 adds to it; likewise for stages 2 and 3. Stage 4 runs Linear(3C -> C), then blocks.
- Decoder depths are a config field (``decoder_depths``, default 2 per stage); the paper gives none.
- The fusion head predicts the FULL-resolution patch: the fused (h/4, w/4, C) map goes through a
  Swin-Unet x4 final patch expanding to (h, w, C) and a linear layer to 3 channels, then a sigmoid.
  The paper writes the prediction as (h/4, w/4, 3); we compare at full resolution instead.
- Any patch size: inputs are padded (reflect, or replicate for tiny patches) to a multiple of 32
  and the output is cropped back. Inside a stage the token grid is padded to a multiple of the window
  and padded keys are masked out, so padding never leaks into real tokens' attention. Along an axis
  whose grid is no larger than the window, the window shrinks to the grid and that axis is not
  shifted (Swin's rule, applied per axis); the smaller window reads the same learned (2M-1)^2 bias
  table through its own relative-position index.
- Inputs are normalised inside as ``(x - 0.5) / 0.25`` (no ImageNet statistics: nothing is
  ImageNet-pretrained here).
- FLOPs (``flops()`` everywhere) are analytic multiply-accumulates x 2 of linear layers, convs and
  attention matmuls; norms, activations, softmax, interpolation and additions are not counted.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from patchloupe.models.attention import WindowAttention
from patchloupe.models.layers import (
    DropPath,
    FinalPatchExpandX4,
    Mlp,
    PatchEmbed,
    PatchExpand,
    PatchMerging,
    num_params,
    padding_key_mask,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

__all__ = [
    "GeneratorConfig",
    "PRESETS",
    "PatternGenerator",
    "SwinBlock",
    "SwinDecoder",
    "SwinEncoder",
    "SwinStage",
    "FusionHead",
    "WindowAttention",
    "WindowPlan",
    "build_generator",
    "window_geometry",
    "window_plan",
]

PATCH_STRIDE = 4  # pixels per token side (patch embedding)
NUM_STAGES = 4
PAD_MULTIPLE = PATCH_STRIDE * 2 ** (NUM_STAGES - 1)  # 32: every stage's grid is an integer
INPUT_MEAN, INPUT_STD = 0.5, 0.25


# ============================================================================================ helpers


@dataclass
class GeneratorConfig:
    """Hyper-parameters of :class:`PatternGenerator` (JSON-safe through ``to_dict`` / ``from_dict``).

    ``patch_size`` (h, w) is the nominal patch size (used by ``flops()`` and as ``decode``'s default
    crop); the network runs on any size. Decoder stage ``i`` uses ``num_heads[2], [1], [0], [0]``.
    """

    patch_size: tuple[int, int] = (224, 224)
    in_chans: int = 3
    embed_dim: int = 24
    depths: tuple[int, ...] = (2, 2, 6, 2)
    decoder_depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (2, 4, 8, 16)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.1

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(v) for v in self.patch_size)  # type: ignore[assignment]
        self.depths = tuple(int(v) for v in self.depths)
        self.decoder_depths = tuple(int(v) for v in self.decoder_depths)
        self.num_heads = tuple(int(v) for v in self.num_heads)
        self.in_chans, self.embed_dim, self.window_size = int(self.in_chans), int(self.embed_dim), int(self.window_size)
        self.mlp_ratio, self.drop_path_rate = float(self.mlp_ratio), float(self.drop_path_rate)
        self.qkv_bias = bool(self.qkv_bias)
        if len(self.patch_size) != 2 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be two positive ints, got {self.patch_size}")
        for name in ("depths", "decoder_depths", "num_heads"):
            val = getattr(self, name)
            if len(val) != NUM_STAGES or min(val) < 1:
                raise ValueError(f"{name} must be {NUM_STAGES} positive ints, got {val}")
        if self.in_chans < 1 or self.embed_dim < 2 or self.embed_dim % 2 or self.window_size < 1:
            raise ValueError("in_chans >= 1, an even embed_dim >= 2 and window_size >= 1 are required")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(f"stage {i + 1}: dim {self.embed_dim * 2**i} is not divisible by {heads} heads")
        if not 0.0 <= self.drop_path_rate < 1.0 or self.mlp_ratio <= 0:
            raise ValueError("drop_path_rate must lie in [0, 1) and mlp_ratio be positive")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown GeneratorConfig keys: {sorted(unknown)}")
        return cls(**dict(data))

    def to_json(self) -> str:
        """``to_dict`` as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)


class WindowPlan(NamedTuple):
    """How one Swin block windows an ``h x w`` grid (cached per size; treat the tensors as read-only)."""

    window: tuple[int, int]  # effective window (wh, ww)
    shift: tuple[int, int]  # cyclic shift (sh, sw)
    pad: tuple[int, int]  # bottom / right padding of the token grid
    index: Tensor  # (N, N) long rows of the (2M-1)^2 bias table
    mask: Tensor | None  # (nW, N, N) float additive (shift regions + padded keys), or None


def window_geometry(
    h: int, w: int, window: int, shifted: bool
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """``(window, shift, pad)`` per axis for an ``h x w`` grid and a configured window ``M``.

    An axis no larger than ``M`` gets a single window of its own size and no shift; a larger axis
    gets windows of ``M``, is padded to a multiple of ``M`` and shifted by ``M // 2`` in shifted blocks.
    """
    win, shift, pad = [], [], []
    for size in (h, w):
        if size <= window:
            win.append(size)
            shift.append(0)
            pad.append(0)
        else:
            win.append(window)
            shift.append(window // 2 if shifted else 0)
            pad.append(-size % window)
    return (win[0], win[1]), (shift[0], shift[1]), (pad[0], pad[1])


@functools.lru_cache(maxsize=256)
def window_plan(h: int, w: int, window: int, shifted: bool, device: torch.device) -> WindowPlan:
    """Cached :class:`WindowPlan` for an ``h x w`` grid (built once per size, window, shift and device)."""
    win, shift, pad = window_geometry(h, w, window, shifted)
    hp, wp = h + pad[0], w + pad[1]
    with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable later under autograd
        mask = None
        if shift != (0, 0):
            mask = shifted_window_mask(hp, wp, win, shift)
        if pad != (0, 0):
            pad_mask = padding_key_mask(h, w, hp, wp, win, shift)
            mask = pad_mask if mask is None else mask + pad_mask
        index = relative_position_index(win, window).to(device)
        mask = None if mask is None else mask.to(device)
    return WindowPlan(win, shift, pad, index, mask)


def _drop_rates(rate: float, depths: Sequence[int], descending: bool = False) -> list[list[float]]:
    """Linear stochastic-depth schedule 0 -> ``rate`` (or ``rate`` -> 0) over all blocks, split per stage."""
    total = sum(depths)
    rates = [rate * i / max(total - 1, 1) for i in range(total)]
    if descending:
        rates = rates[::-1]
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out


def _pad_input(x: Tensor, multiple: int = PAD_MULTIPLE) -> Tensor:
    """``(B, C, h, w) -> (B, C, hp, wp)`` with hp, wp multiples of ``multiple`` (reflect, replicate if too small)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _padded(size: Sequence[int]) -> tuple[int, int]:
    h, w = (int(v) for v in size)
    return h + (-h % PAD_MULTIPLE), w + (-w % PAD_MULTIPLE)


# ============================================================================================ blocks


class SwinBlock(nn.Module):
    """Pre-norm Swin block: (shifted) window MSA + MLP, residuals with stochastic depth.

    ``(B, H, W, C) -> (B, H, W, C)``; any H, W (see :func:`window_geometry`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shifted: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim, self.window_size, self.shifted = dim, window_size, shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``."""
        b, h, w, c = x.shape
        # int(): while tracing (ONNX export) the sizes are traced values; the plan must be the cached constant
        plan = window_plan(int(h), int(w), self.window_size, self.shifted, x.device)
        (ph, pw), (sh, sw) = plan.pad, plan.shift
        hp, wp = h + ph, w + pw
        y = self.norm1(x)
        if ph or pw:
            y = F.pad(y, (0, 0, 0, pw, 0, ph))
        if sh or sw:
            y = torch.roll(y, shifts=(-sh, -sw), dims=(1, 2))
        win = window_partition(y, plan.window).flatten(1, 2)  # (B*nW, N, C)
        win = self.attn(win, plan.index, plan.mask)
        y = window_reverse(win, plan.window, hp, wp)
        if sh or sw:
            y = torch.roll(y, shifts=(sh, sw), dims=(1, 2))
        if ph or pw:
            y = y[:, :h, :w]
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def flops(self, h: int, w: int) -> int:
        """FLOPs for one ``h x w`` grid (attention on the padded grid, MLP on the real tokens)."""
        (wh, ww), _, (ph, pw) = window_geometry(h, w, self.window_size, self.shifted)
        nw = ((h + ph) // wh) * ((w + pw) // ww)
        return self.attn.flops(nw, wh * ww) + self.mlp.flops(h * w)


class SwinStage(nn.Module):
    """Optional resampling layer (merge / expand / linear) followed by ``depth`` Swin blocks (odd ones shifted).

    ``(B, H, W, Cin) -> (B, H', W', dim)``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: Sequence[float] = (),
        pre: nn.Module | None = None,
    ) -> None:
        super().__init__()
        rates = list(drop_path) or [0.0] * depth
        self.pre = pre if pre is not None else nn.Identity()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, bool(i % 2), mlp_ratio, qkv_bias, rates[i]) for i in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, Cin) -> (B, H', W', dim)``."""
        x = self.pre(x)
        for blk in self.blocks:
            x = blk(x)
        return x

    def out_grid(self, h: int, w: int) -> tuple[int, int]:
        """Grid size after the resampling layer."""
        if isinstance(self.pre, PatchMerging):
            return math.ceil(h / 2), math.ceil(w / 2)
        if isinstance(self.pre, PatchExpand):
            return 2 * h, 2 * w
        return h, w

    def flops(self, h: int, w: int) -> int:
        """FLOPs for one ``h x w`` input grid."""
        total = 0
        if isinstance(self.pre, (PatchMerging, PatchExpand)):
            total += self.pre.flops(h, w)
        elif isinstance(self.pre, nn.Linear):
            total += 2 * h * w * self.pre.in_features * self.pre.out_features
        h, w = self.out_grid(h, w)
        return total + sum(blk.flops(h, w) for blk in self.blocks)


class SwinEncoder(nn.Module):
    """Patch embedding (4x4 conv) + 4 Swin stages with patch merging between them.

    ``(B, in_chans, h, w)`` (h, w multiples of 32, normalised) -> 4 maps ``(B, h/4, w/4, C)``,
    ``(B, h/8, w/8, 2C)``, ``(B, h/16, w/16, 4C)``, ``(B, h/32, w/32, 8C)`` (each LayerNorm-ed).
    """

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        c = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.in_chans, c, PATCH_STRIDE)
        rates = _drop_rates(cfg.drop_path_rate, cfg.depths)
        self.stages = nn.ModuleList(
            SwinStage(
                c * 2**i,
                cfg.depths[i],
                cfg.num_heads[i],
                cfg.window_size,
                cfg.mlp_ratio,
                cfg.qkv_bias,
                rates[i],
                pre=PatchMerging(c * 2 ** (i - 1)) if i else None,
            )
            for i in range(NUM_STAGES)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(c * 2**i) for i in range(NUM_STAGES))

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, Cin, h, w)`` -> list of 4 channels-last feature maps (see class doc)."""
        x = self.patch_embed(x)
        feats = []
        for stage, norm in zip(self.stages, self.norms, strict=True):
            x = stage(x)
            feats.append(norm(x))
        return feats

    def flops(self, h: int, w: int) -> int:
        """FLOPs for one padded ``h x w`` input."""
        total = self.patch_embed.flops(h, w)
        gh, gw = h // PATCH_STRIDE, w // PATCH_STRIDE
        for stage in self.stages:
            total += stage.flops(gh, gw)
            gh, gw = stage.out_grid(gh, gw)
        return total


class SwinDecoder(nn.Module):
    """Four decoder stages combining both encoders (method §2).

    stage 1: expand(E1[4] + E2[4])                      -> (h/16, 4C) -> blocks -> D1
    stage 2: expand(E1[3] + E2[3] + D1)                 -> (h/8, 2C)  -> blocks -> D2
    stage 3: expand(E1[2] + E2[2] + D2)                 -> (h/4, C)   -> blocks -> D3
    stage 4: linear(concat(E1[1], E2[1], D3), 3C -> C)  -> (h/4, C)   -> blocks -> D4
    Expanding comes first so each stage's output has the size of the next skip it is added to.
    """

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        c, nh, dd = cfg.embed_dim, cfg.num_heads, cfg.decoder_depths
        rates = _drop_rates(cfg.drop_path_rate, dd, descending=True)  # the deepest (first) stage drops most
        specs = [  # (out dim, heads, pre-layer)
            (4 * c, nh[2], PatchExpand(8 * c)),
            (2 * c, nh[1], PatchExpand(4 * c)),
            (c, nh[0], PatchExpand(2 * c)),
            (c, nh[0], nn.Linear(3 * c, c)),
        ]
        self.stages = nn.ModuleList(
            SwinStage(dim, dd[i], heads, cfg.window_size, cfg.mlp_ratio, cfg.qkv_bias, rates[i], pre=pre)
            for i, (dim, heads, pre) in enumerate(specs)
        )

    def forward(self, first: Sequence[Tensor], second: Sequence[Tensor]) -> list[Tensor]:
        """Encoder-1 and encoder-2 feature lists (4 maps each) -> decoder outputs D1..D4 (channels-last)."""
        d1 = self.stages[0](first[3] + second[3])
        d2 = self.stages[1](first[2] + second[2] + d1)
        d3 = self.stages[2](first[1] + second[1] + d2)
        d4 = self.stages[3](torch.cat([first[0], second[0], d3], dim=-1))
        return [d1, d2, d3, d4]

    def flops(self, h: int, w: int) -> int:
        """FLOPs for one padded ``h x w`` patch."""
        gh, gw = h // PAD_MULTIPLE, w // PAD_MULTIPLE
        total = 0
        for stage in self.stages:
            total += stage.flops(gh, gw)
            gh, gw = stage.out_grid(gh, gw)
        return total


class FusionHead(nn.Module):
    """SegFormer all-MLP fusion + full-resolution prediction.

    D1..D4 ``(B, h/16, 4C), (B, h/8, 2C), (B, h/4, C), (B, h/4, C)`` (channels-last) are normalised,
    projected to C each, upsampled (bilinear) to h/4, concatenated (4C), fused by Linear(4C, C) + LN +
    GELU, expanded x4 to ``(B, h, w, C)`` (Swin-Unet final patch expanding) and mapped to the output
    channels: ``-> (B, out_chans, h, w)`` logits.
    """

    def __init__(self, embed_dim: int, out_chans: int = 3) -> None:
        super().__init__()
        c = embed_dim
        dims = (4 * c, 2 * c, c, c)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.projs = nn.ModuleList(nn.Linear(d, c) for d in dims)
        self.fuse = nn.Sequential(nn.Linear(4 * c, c), nn.LayerNorm(c), nn.GELU())
        self.up = FinalPatchExpandX4(c, PATCH_STRIDE)
        self.out = nn.Linear(c, out_chans)

    def forward(self, decs: Sequence[Tensor]) -> Tensor:
        """Decoder outputs D1..D4 -> ``(B, out_chans, h, w)`` logits (h = 4 x the D4 grid)."""
        size = decs[-1].shape[1:3]
        ups = []
        for x, norm, proj in zip(decs, self.norms, self.projs, strict=True):
            y = proj(norm(x)).permute(0, 3, 1, 2)  # (B, C, H_i, W_i)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            ups.append(y)
        x = self.fuse(torch.cat(ups, dim=1).permute(0, 2, 3, 1))  # (B, h/4, w/4, C)
        return self.out(self.up(x)).permute(0, 3, 1, 2)

    def flops(self, h: int, w: int) -> int:
        """FLOPs for one padded ``h x w`` patch."""
        c = self.out.in_features
        g4 = (h // 4) * (w // 4)
        grids = ((h // 16) * (w // 16), (h // 8) * (w // 8), g4, g4)
        total = sum(2 * g * p.in_features * c for g, p in zip(grids, self.projs, strict=True))
        total += 2 * g4 * 4 * c * c + self.up.flops(h // 4, w // 4) + 2 * h * w * c * self.out.out_features
        return total


# ============================================================================================ model


class PatternGenerator(nn.Module):
    """Two Swin encoders (separate weights) + Swin decoder + fusion head (method §2).

    ``forward(first, second)``: two ``(B, C, h, w)`` patches in ``[0, 1]`` -> the predicted next patch
    ``(B, C, h, w)`` in ``[0, 1]``. ``first`` goes to encoder 1, ``second`` to encoder 2. For a row
    ``(i, i+1) -> i+2`` left-to-right, first = i; right-to-left ``(i+2, i+1) -> i``, first = i+2.
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else GeneratorConfig()
        cfg = self.config
        self.encoder1 = SwinEncoder(cfg)
        self.encoder2 = SwinEncoder(cfg)
        self.decoder = SwinDecoder(cfg)
        self.head = FusionHead(cfg.embed_dim, cfg.in_chans)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # -------------------------------------------------------------------------------- pieces

    def encode(self, patches: Tensor, which: int) -> list[Tensor]:
        """``(B, C, h, w)`` in [0, 1] -> 4 channels-last maps of encoder ``which`` (0: first input, 1: second).

        Shapes ``(B, hp/4, wp/4, C)`` ... ``(B, hp/32, wp/32, 8C)`` with ``hp, wp`` = h, w rounded up to 32.
        """
        if which not in (0, 1):
            raise ValueError(f"which must be 0 (encoder 1, first input) or 1 (encoder 2, second input), got {which}")
        if patches.ndim != 4 or patches.shape[1] != self.config.in_chans:
            raise ValueError(f"expected (B, {self.config.in_chans}, h, w) patches, got {tuple(patches.shape)}")
        x = _pad_input((patches - INPUT_MEAN) / INPUT_STD)
        return (self.encoder1 if which == 0 else self.encoder2)(x)

    def decode(
        self, feats_first: Sequence[Tensor], feats_second: Sequence[Tensor], size: Sequence[int] | None = None
    ) -> Tensor:
        """Encoder-1 and encoder-2 feature lists (batch B each) -> predicted patch ``(B, C, h, w)`` in [0, 1].

        ``size`` (h, w) crops the padded prediction; by default it is ``config.patch_size`` when that
        pads to the features' size, else the padded size (4x the first feature map).
        """
        decs = self.decoder(feats_first, feats_second)
        out = torch.sigmoid(self.head(decs))
        hp, wp = out.shape[-2:]
        if size is None:
            size = self.config.patch_size if _padded(self.config.patch_size) == (hp, wp) else (hp, wp)
        h, w = (int(v) for v in size)
        if _padded((h, w)) != (hp, wp):
            raise ValueError(f"size {h}x{w} does not match features of a {hp}x{wp} (padded) patch")
        return out[..., :h, :w]

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        """``first, second (B, C, h, w)`` in [0, 1] -> predicted third patch ``(B, C, h, w)`` in [0, 1]."""
        if first.shape != second.shape:
            raise ValueError(f"first and second must have one shape, got {tuple(first.shape)}, {tuple(second.shape)}")
        return self.decode(self.encode(first, 0), self.encode(second, 1), first.shape[-2:])

    def predict_targets(self, patches: Tensor, triplets: Tensor) -> Tensor:
        """Predict many targets of one patch set with shared encodings.

        ``patches (P, C, h, w)`` in [0, 1], ``triplets`` long ``(T, 3)`` of (first, second, target)
        indices into ``patches`` -> ``(T, C, h, w)``, row t predicting patch ``triplets[t, 2]``.
        Each encoder runs once, in one batch, on the distinct patches it needs (encoder 1 on the
        ``first`` column, encoder 2 on the ``second`` column); features are gathered per triplet and
        the decoder runs once on all T. Equal to ``forward(patches[first], patches[second])``.
        """
        if triplets.ndim != 2 or triplets.shape[1] != 3:
            raise ValueError(f"triplets must be (T, 3), got {tuple(triplets.shape)}")
        if triplets.dtype.is_floating_point or triplets.dtype == torch.bool:
            raise TypeError(f"triplets must be an integer tensor, got {triplets.dtype}")
        p = patches.shape[0]
        triplets = triplets.to(device=patches.device, dtype=torch.long)
        if triplets.numel() and (int(triplets.min()) < 0 or int(triplets.max()) >= p):
            raise IndexError(f"triplet indices must lie in [0, {p})")
        h, w = patches.shape[-2:]
        if triplets.shape[0] == 0:
            return patches.new_empty((0, patches.shape[1], h, w))
        idx1, inv1 = torch.unique(triplets[:, 0], return_inverse=True)
        idx2, inv2 = torch.unique(triplets[:, 1], return_inverse=True)
        f1 = [f[inv1] for f in self.encode(patches[idx1], 0)]
        f2 = [f[inv2] for f in self.encode(patches[idx2], 1)]
        return self.decode(f1, f2, (h, w))

    # -------------------------------------------------------------------------------- accounting

    def num_params(self, trainable_only: bool = False) -> int:
        """Parameter count."""
        return num_params(self, trainable_only)

    def encoder_flops(self, size: Sequence[int] | None = None) -> int:
        """FLOPs of one encoder on one patch of ``size`` (default ``config.patch_size``)."""
        hp, wp = _padded(size if size is not None else self.config.patch_size)
        return self.encoder1.flops(hp, wp)

    def decoder_flops(self, size: Sequence[int] | None = None) -> int:
        """FLOPs of decoder + head for one target patch of ``size``."""
        hp, wp = _padded(size if size is not None else self.config.patch_size)
        return self.decoder.flops(hp, wp) + self.head.flops(hp, wp)

    def flops(self, size: Sequence[int] | None = None) -> int:
        """FLOPs of one ``forward`` on a single pair of patches of ``size`` (both encoders + decoder)."""
        return 2 * self.encoder_flops(size) + self.decoder_flops(size)

    def prediction_flops(self, triplets: Tensor, size: Sequence[int] | None = None) -> int:
        """FLOPs of ``predict_targets`` for these triplets (distinct encodings + one decode per triplet)."""
        n1 = int(torch.unique(triplets[:, 0]).numel())
        n2 = int(torch.unique(triplets[:, 1]).numel())
        return (n1 + n2) * self.encoder_flops(size) + int(triplets.shape[0]) * self.decoder_flops(size)


# ============================================================================================ presets


PRESETS: dict[str, GeneratorConfig] = {
    # method §2: C = 24, depths 2-2-6-2, window 7, 224 x 224 patches (grids 56/28/14/7); head dim 12.
    "paper": GeneratorConfig(
        patch_size=(224, 224),
        embed_dim=24,
        depths=(2, 2, 6, 2),
        decoder_depths=(2, 2, 2, 2),
        num_heads=(2, 4, 8, 16),
        window_size=7,
        drop_path_rate=0.1,
    ),
    # CPU / edge: 64 x 64 patches (a 256 x 256 image on a 4 x 4 grid), grids 16/8/4/2, window 4; head dim 16.
    "edge": GeneratorConfig(
        patch_size=(64, 64),
        embed_dim=32,
        depths=(2, 2, 2, 2),
        decoder_depths=(2, 2, 2, 2),
        num_heads=(2, 4, 8, 16),
        window_size=4,
        drop_path_rate=0.05,
    ),
    # tests: 32 x 32 patches, one block per stage; head dim 8.
    "tiny": GeneratorConfig(
        patch_size=(32, 32),
        embed_dim=16,
        depths=(1, 1, 1, 1),
        decoder_depths=(1, 1, 1, 1),
        num_heads=(2, 4, 8, 16),
        window_size=4,
        drop_path_rate=0.0,
    ),
}


def build_generator(
    name_or_config: str | GeneratorConfig | Mapping[str, Any] = "paper", **overrides: Any
) -> PatternGenerator:
    """A :class:`PatternGenerator` from a preset name, a config or a config dict; ``overrides`` replace fields."""
    if isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise KeyError(f"unknown generator preset {name_or_config!r}; choose one of {sorted(PRESETS)}")
        cfg = PRESETS[name_or_config]
    elif isinstance(name_or_config, GeneratorConfig):
        cfg = name_or_config
    else:
        cfg = GeneratorConfig.from_dict(name_or_config)
    if overrides:
        cfg = GeneratorConfig.from_dict({**cfg.to_dict(), **overrides})
    else:
        cfg = dataclasses.replace(cfg)  # a private copy: presets stay untouched
    return PatternGenerator(cfg)
