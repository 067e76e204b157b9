"""Window-attention dispatch: sdpa == reference (values and gradients), backend selection, triton fallback."""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator

import pytest
import torch
from patchloupe.models import attention as A
from patchloupe.models.layers import MASK_VALUE


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(A.ENV_VAR, raising=False)
    A.set_attention_backend(None)
    yield
    A.set_attention_backend(None)


def _inputs(b: int, nw: int, heads: int, n: int, d: int, masked: bool, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b * nw, heads, n, d, generator=g, requires_grad=True) for _ in range(3))
    bias = (0.5 * torch.randn(heads, n, n, generator=g)).requires_grad_(True)
    mask = None
    if masked:  # random 0 / -100 pattern, keeping the diagonal so every row has a real key
        keep = (torch.rand(nw, n, n, generator=g) > 0.4) | torch.eye(n, dtype=torch.bool)
        mask = torch.where(keep, 0.0, MASK_VALUE)
    return q, k, v, bias, mask


def _run(fn, q, k, v, bias, mask, scale=None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    out = fn(q, k, v, bias, mask, scale)
    w = torch.linspace(-1, 1, out.numel()).view_as(out)  # a non-symmetric loss
    grads = torch.autograd.grad((out * w).sum(), (q, k, v, bias))
    return out.detach(), grads


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("b,nw,heads,n,d", [(1, 1, 1, 16, 8), (3, 5, 2, 16, 8), (2, 3, 3, 49, 12), (5, 1, 4, 4, 16)])
def test_sdpa_matches_reference(masked: bool, b: int, nw: int, heads: int, n: int, d: int) -> None:
    q, k, v, bias, mask = _inputs(b, nw, heads, n, d, masked)
    out_s, g_s = _run(A.window_attention_sdpa, q, k, v, bias, mask)
    out_r, g_r = _run(A.window_attention_reference, q, k, v, bias, mask)
    assert out_s.shape == (b * nw, heads, n, d)
    torch.testing.assert_close(out_s, out_r, atol=1e-5, rtol=1e-5)
    for name, gs, gr in zip("q k v bias".split(), g_s, g_r, strict=True):
        torch.testing.assert_close(gs, gr, atol=1e-5, rtol=1e-5, msg=name)


def test_custom_scale_and_mask_per_window() -> None:
    """Window j must use mask[j % nW]: masking everything but key 0 in window 1 of each image gives v[:, :, 0]."""
    b, nw, heads, n, d = 3, 3, 2, 9, 4
    q, k, v, bias, _ = _inputs(b, nw, heads, n, d, masked=False)
    mask = torch.zeros(nw, n, n)
    mask[1, :, 1:] = -1e4
    for fn in (A.window_attention_sdpa, A.window_attention_reference):
        out = fn(q, k, v, bias, mask, 0.3).detach()
        for img in range(b):
            j = img * nw + 1
            torch.testing.assert_close(out[j], v[j, :, :1].detach().expand(heads, n, d))
    torch.testing.assert_close(
        A.window_attention_sdpa(q, k, v, bias, None, 0.3),
        A.window_attention_reference(q, k, v, bias, None, 0.3),
        atol=1e-5,
        rtol=1e-5,
    )


def test_shape_validation() -> None:
    q, k, v, bias, mask = _inputs(2, 3, 2, 4, 4, masked=True)
    with pytest.raises(ValueError):
        A.window_attention(q, k, v, bias[:1], mask)
    with pytest.raises(ValueError):  # 6 windows are not a multiple of nW = 4
        A.window_attention(q, k, v, bias, torch.zeros(4, 4, 4))
    with pytest.raises(ValueError):  # wrong N
        A.window_attention(q, k, v, bias, torch.zeros(3, 5, 5))
    with pytest.raises(ValueError):
        A.window_attention(q, k[..., :2], v, bias, mask)


def _spies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    for name in ("window_attention_sdpa", "window_attention_reference"):
        real = getattr(A, name)

        def spy(*args, _real=real, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(_name.rsplit("_", 1)[1])
            return _real(*args, **kwargs)

        monkeypatch.setattr(A, name, spy)
    return calls


def test_env_var_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spies(monkeypatch)
    q, k, v, bias, mask = _inputs(1, 2, 1, 4, 4, masked=True)
    A.window_attention(q, k, v, bias, mask)
    assert calls[-1] == "sdpa" and A.get_attention_backend() == "auto"  # auto on CPU
    monkeypatch.setenv(A.ENV_VAR, "reference")  # read at call time
    A.window_attention(q, k, v, bias, mask)
    assert calls[-1] == "reference" and A.resolve_backend(q, k, v, bias, mask) == "reference"
    monkeypatch.setenv(A.ENV_VAR, " SDPA ")
    A.window_attention(q, k, v, bias, mask)
    assert calls[-1] == "sdpa"
    A.set_attention_backend("reference")  # beats the env var
    A.window_attention(q, k, v, bias, mask)
    assert calls[-1] == "reference"
    with A.attention_backend("sdpa"):  # beats set_attention_backend
        A.window_attention(q, k, v, bias, mask)
        assert calls[-1] == "sdpa"
    A.window_attention(q, k, v, bias, mask)
    assert calls[-1] == "reference"
    A.set_attention_backend(None)
    assert A.get_attention_backend() == "sdpa"
    with pytest.raises(ValueError):
        A.set_attention_backend("cuda")
    with pytest.raises(ValueError), A.attention_backend("fast"):
        pass


def test_bad_env_value_logs_and_uses_auto(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(A.ENV_VAR, "bogus-backend")
    with caplog.at_level(logging.WARNING, logger=A.__name__):
        assert A.get_attention_backend() == "auto"
    assert "bogus-backend" in caplog.text


def _fake_kernels(**attrs: object) -> types.ModuleType:
    mod = types.ModuleType("fake_kernels")
    for key, val in attrs.items():
        setattr(mod, key, val)
    return mod


def _kernel_ok(q, k, v, bias, mask=None, scale=None):  # type: ignore[no-untyped-def]
    _kernel_ok.calls += 1  # type: ignore[attr-defined]
    return A.window_attention_reference(q, k, v, bias, mask, scale)


def _kernel_raises(*args, **kwargs):  # type: ignore[no-untyped-def]
    raise RuntimeError("boom")


def _kernel_detached(q, k, v, bias, mask=None, scale=None):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return A.window_attention_reference(q, k, v, bias, mask, scale)


@pytest.mark.parametrize(
    "fake,why",
    [
        (None, "cannot be imported"),
        (_fake_kernels(), "no window_attention"),
        (_fake_kernels(window_attention=_kernel_ok, is_available=lambda: False), "is_available"),
        (
            _fake_kernels(window_attention=_kernel_ok, supports=lambda *a: (False, "head dim 12 not supported")),
            "head dim",
        ),
        (_fake_kernels(window_attention=_kernel_ok, supports=lambda *a: 1 / 0), "ZeroDivisionError"),
        (_fake_kernels(window_attention=_kernel_raises), "boom"),
        (_fake_kernels(window_attention=_kernel_detached), "autograd"),
    ],
)
def test_forced_triton_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fake: types.ModuleType | None, why: str
) -> None:
    monkeypatch.setattr(A, "_load_kernels", lambda: fake)
    calls = _spies(monkeypatch)
    q, k, v, bias, mask = _inputs(2, 3, 2, 16, 8, masked=True)
    with caplog.at_level(logging.DEBUG, logger=A.__name__), A.attention_backend("triton"):
        out = A.window_attention(q, k, v, bias, mask)
    assert calls[-1] == "sdpa"
    assert why in caplog.text and "sdpa" in caplog.text
    torch.testing.assert_close(out, A.window_attention_reference(q, k, v, bias, mask), atol=1e-5, rtol=1e-5)


def test_forced_triton_uses_kernel_when_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    _kernel_ok.calls = 0  # type: ignore[attr-defined]
    kernels = _fake_kernels(window_attention=_kernel_ok, is_available=lambda: True, supports=lambda *a: (True, ""))
    monkeypatch.setattr(A, "_load_kernels", lambda: kernels)
    q, k, v, bias, mask = _inputs(1, 2, 1, 4, 4, masked=True)
    monkeypatch.setenv(A.ENV_VAR, "triton")
    assert A.resolve_backend(q, k, v, bias, mask) == "triton"
    A.window_attention(q, k, v, bias, mask)
    assert _kernel_ok.calls == 1  # type: ignore[attr-defined]
    monkeypatch.setenv(A.ENV_VAR, "auto")  # auto never picks triton for CPU tensors
    assert A.resolve_backend(q, k, v, bias, mask) == "sdpa"
    A.window_attention(q, k, v, bias, mask)
    assert _kernel_ok.calls == 1  # type: ignore[attr-defined]


def test_forced_triton_with_the_real_package_never_fails() -> None:
    """Whatever state patchloupe.kernels is in, forcing triton on CPU returns the right numbers."""
    q, k, v, bias, mask = _inputs(2, 3, 2, 16, 8, masked=True)
    with A.attention_backend("triton"):
        out = A.window_attention(q, k, v, bias, mask)
    torch.testing.assert_close(out, A.window_attention_reference(q, k, v, bias, mask), atol=1e-4, rtol=1e-4)
