"""Window-attention dispatch: sdpa == reference (values and gradients), backend chosen at build, triton fallback."""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator

import patchloupe.kernels as K
import pytest
import torch
from patchloupe.models import attention as A
from patchloupe.models.generator import build_generator
from patchloupe.models.layers import MASK_VALUE
from window_attention_checks import run_without_triton


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(A.ENV_VAR, raising=False)
    yield


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


def _tokens(n: int = 4, dim: int = 8, nw: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``(nW, N, dim)`` and a 0 / -100 mask ``(nW, N, N)`` for a 2-head WindowAttention with window 2."""
    g = torch.Generator().manual_seed(seed)
    keep = (torch.rand(nw, n, n, generator=g) > 0.4) | torch.eye(n, dtype=torch.bool)
    return torch.randn(nw, n, dim, generator=g), torch.where(keep, 0.0, MASK_VALUE)


def test_env_var_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spies(monkeypatch)
    q, k, v, bias, mask = _inputs(1, 2, 1, 4, 4, masked=True)
    x, xmask = _tokens()
    A.window_attention(q, k, v, bias, mask)
    assert calls[-1] == "sdpa" and A.default_attention_backend() == "auto"  # auto on CPU
    assert A.WindowAttention(8, 2, 2).attn_backend == "auto"
    monkeypatch.setenv(A.ENV_VAR, "reference")  # read when a module is built
    attn = A.WindowAttention(8, 2, 2)
    attn(x, mask=xmask)
    assert calls[-1] == "reference" and A.resolve_backend(q, k, v, bias, mask, attn.attn_backend) == "reference"
    monkeypatch.setenv(A.ENV_VAR, " SDPA ")
    attn(x, mask=xmask)
    assert calls[-1] == "reference"  # the backend was chosen when the module was built
    attn2 = A.WindowAttention(8, 2, 2)
    attn2(x, mask=xmask)
    assert calls[-1] == "sdpa"
    A.set_attention_backend(attn2, "reference")  # beats the env var
    attn2(x, mask=xmask)
    assert calls[-1] == "reference"
    with A.attention_backend(attn2, "sdpa"):  # temporarily
        attn2(x, mask=xmask)
        assert calls[-1] == "sdpa"
    attn2(x, mask=xmask)
    assert calls[-1] == "reference"
    A.set_attention_backend(attn2, None)
    assert attn2.attn_backend == "sdpa" and A.default_attention_backend() == "sdpa"
    with pytest.raises(ValueError):
        A.set_attention_backend(attn, "cuda")
    with pytest.raises(ValueError), A.attention_backend(attn, "fast"):
        pass
    with pytest.raises(ValueError):
        A.WindowAttention(8, 2, 2, backend="fast")
    with pytest.raises(ValueError):
        A.window_attention(q, k, v, bias, mask, backend="fast")


def test_env_var_reaches_every_block_of_a_built_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(A.ENV_VAR, "reference")
    gen = build_generator("tiny")
    backends = {m.attn_backend for m in gen.modules() if isinstance(m, A.WindowAttention)}
    assert backends == {"reference"}
    with A.attention_backend(gen, "sdpa"):
        assert {m.attn_backend for m in gen.modules() if isinstance(m, A.WindowAttention)} == {"sdpa"}
    assert A.set_attention_backend(gen, "triton") is gen
    assert {m.attn_backend for m in gen.modules() if isinstance(m, A.WindowAttention)} == {"triton"}


def test_bad_env_value_logs_and_uses_auto(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(A.ENV_VAR, "bogus-backend")
    with caplog.at_level(logging.WARNING, logger=A.__name__):
        assert A.default_attention_backend() == "auto"
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


def _says(ok: bool, reason: str = ""):  # type: ignore[no-untyped-def]
    return lambda *a: (ok, reason)


@pytest.mark.parametrize(
    "fake,why",
    [
        (_fake_kernels(supports=_says(False, "triton not importable (ImportError: no triton)")), "not importable"),
        (_fake_kernels(supports=_says(True)), "no attribute 'window_attention'"),
        (
            _fake_kernels(window_attention=_kernel_ok, supports=_says(False, "no CUDA device and TRITON_INTERPRET")),
            "no CUDA device",
        ),
        (_fake_kernels(window_attention=_kernel_ok, supports=_says(False, "head dim 12 not supported")), "head dim"),
        (_fake_kernels(window_attention=_kernel_ok, supports=lambda *a: 1 / 0), "ZeroDivisionError"),
        (_fake_kernels(window_attention=_kernel_raises, supports=_says(True)), "boom"),
        (_fake_kernels(window_attention=_kernel_detached, supports=_says(True)), "autograd"),
    ],
)
def test_forced_triton_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fake: types.ModuleType, why: str
) -> None:
    monkeypatch.setattr(A, "kernels", fake)
    calls = _spies(monkeypatch)
    q, k, v, bias, mask = _inputs(2, 3, 2, 16, 8, masked=True)
    with caplog.at_level(logging.DEBUG, logger=A.__name__):
        out = A.window_attention(q, k, v, bias, mask, backend="triton")
    assert calls[-1] == "sdpa"
    assert why in caplog.text and "sdpa" in caplog.text
    torch.testing.assert_close(out, A.window_attention_reference(q, k, v, bias, mask), atol=1e-5, rtol=1e-5)


def test_forced_triton_uses_kernel_when_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    _kernel_ok.calls = 0  # type: ignore[attr-defined]
    monkeypatch.setattr(A, "kernels", _fake_kernels(window_attention=_kernel_ok, supports=_says(True)))
    q, k, v, bias, mask = _inputs(1, 2, 1, 4, 4, masked=True)
    assert A.resolve_backend(q, k, v, bias, mask, "triton") == "triton"
    A.window_attention(q, k, v, bias, mask, backend="triton")
    assert _kernel_ok.calls == 1  # type: ignore[attr-defined]
    # auto never picks triton for CPU tensors
    assert A.resolve_backend(q, k, v, bias, mask, "auto") == "sdpa"
    A.window_attention(q, k, v, bias, mask, backend="auto")
    assert _kernel_ok.calls == 1  # type: ignore[attr-defined]
    monkeypatch.setenv(A.ENV_VAR, "triton")  # the env var forces the kernel on a module built after it
    x, xmask = _tokens()
    A.WindowAttention(8, 2, 2)(x, mask=xmask)
    assert _kernel_ok.calls == 2  # type: ignore[attr-defined]


def test_forced_triton_with_the_real_package_never_fails() -> None:
    """Whatever state patchloupe.kernels is in, forcing triton on CPU returns the right numbers."""
    q, k, v, bias, mask = _inputs(2, 3, 2, 16, 8, masked=True)
    out = A.window_attention(q, k, v, bias, mask, backend="triton")
    torch.testing.assert_close(out, A.window_attention_reference(q, k, v, bias, mask), atol=1e-4, rtol=1e-4)


def test_forced_triton_without_triton_installed_uses_sdpa() -> None:
    """With triton unimportable the dispatch still imports the kernels package and falls back to SDPA."""
    run_without_triton(
        "import torch\n"
        "from patchloupe.models import attention as A\n"
        "g = torch.Generator().manual_seed(0)\n"
        "q, k, v = (torch.randn(4, 2, 16, 8, generator=g) for _ in range(3))\n"
        "b = torch.randn(2, 16, 16, generator=g)\n"
        "assert A.resolve_backend(q, k, v, b, None, 'triton') == 'sdpa'\n"
        "out = A.window_attention(q, k, v, b, None, None, 'triton')\n"
        "torch.testing.assert_close(out, A.window_attention_reference(q, k, v, b), atol=1e-5, rtol=1e-5)\n"
    )


@pytest.mark.skipif(not K.is_available(), reason="triton is not installed or cannot run here")
def test_kernel_generator_triton_matches_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator built on the Triton kernel (interpreter on CPU) predicts what it predicts with SDPA."""
    torch.manual_seed(0)
    gen = build_generator("tiny").eval()
    first, second = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    calls = {"n": 0}
    real = K.window_attention

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(K, "window_attention", counting)
    with torch.no_grad():
        with A.attention_backend(gen, "sdpa"):
            ref = gen(first, second)
        assert calls["n"] == 0
        with A.attention_backend(gen, "triton"):
            out = gen(first, second)
    assert calls["n"] > 0, "the Triton path was not taken"
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
