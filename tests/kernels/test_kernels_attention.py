"""Tests of the shipped Triton window attention kernel (``patchloupe.kernels``) against an fp64 reference.

Without CUDA the kernel runs under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``),
on small shapes. The default grid is a pairwise-covering sub-grid of N x D x heads x mask x windows x dtype x
bias-form (every value of every axis, every pair of values of the binary axes, every N with every binary value);
``@pytest.mark.slow`` runs the full cartesian product. Bias forms: ``dense``, a leaf ``(heads, N, N)`` bias, and
``gather``, the model's path: a leaf ``(T, heads)`` table gathered by torch (``table[index]``) before the kernel,
its gradient flowing back through the gather. Select with ``pytest -k kernel``.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

import patchloupe.kernels as K  # noqa: E402
from patchloupe.kernels import attention as KA  # noqa: E402 - the launcher module (monkeypatched below)

pytestmark = pytest.mark.skipif(not K.is_available(), reason="needs CUDA or TRITON_INTERPRET=1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (4e-2, 4e-2)}
MASK_VALUE = -100.0


# ---------------------------------------------------------------------------------------------
# fp64 reference (explicit matmul-softmax) and Swin helpers
# ---------------------------------------------------------------------------------------------
def relative_position_index(m: int) -> torch.Tensor:
    """Swin's (N, N) relative position index for an m x m window (values in [0, (2m-1)^2))."""
    coords = torch.stack(torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (m - 1)
    return rel[..., 0] * (2 * m - 1) + rel[..., 1]


def partition(x: torch.Tensor, m: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, m*m, C), windows in reading order."""
    b, h, w, c = x.shape
    x = x.view(b, h // m, m, w // m, m, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, m * m, c)


def shift_mask(h: int, w: int, m: int, s: int) -> torch.Tensor:
    """Swin's shifted-window mask (nW, N, N): 0 within a region, -100 across regions."""
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -m), slice(-m, -s), slice(-s, None)):
        for ws in (slice(0, -m), slice(-m, -s), slice(-s, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    ids = partition(img, m).squeeze(-1)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.where(diff != 0, MASK_VALUE, 0.0)


def reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | None, scale
) -> torch.Tensor:
    """softmax(scale q k^T + bias + mask[w % nW]) v on (BW, heads, N, D); computes in the inputs' dtype."""
    attn = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        attn = attn + bias[None]
    if mask is not None:
        nw = mask.shape[0]
        bw = q.shape[0]
        attn = (attn.view(bw // nw, nw, *attn.shape[1:]) + mask[None, :, None]).view(attn.shape)
    return torch.softmax(attn, dim=-1) @ v


def leaf(x: torch.Tensor, grad: bool = True) -> torch.Tensor:
    return x.detach().clone().requires_grad_(grad)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=atol, rtol=rtol, msg=what)


def make_inputs(bw: int, heads: int, n: int, d: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(bw, heads, n, d, generator=g).to(DEVICE, dtype) for _ in range(3))
    m = math.isqrt(n)
    t = (2 * m - 1) ** 2
    table = (0.5 * torch.randn(t, heads, generator=g)).to(DEVICE, dtype)
    index = relative_position_index(m).to(DEVICE)
    go = torch.randn(bw, heads, n, d, generator=g).to(DEVICE, dtype)
    return q, k, v, table, index, go


def window_mask(n: int, nw: int) -> torch.Tensor:
    """A real Swin shifted-window mask for a 1 x nW strip of m x m windows (shift m // 2)."""
    m = math.isqrt(n)
    return shift_mask(m, nw * m, m, m // 2)


def check_against_reference(
    n: int,
    d: int,
    heads: int,
    masked: bool,
    bw: int,
    nw: int,
    dtype: torch.dtype,
    bias_form: str,
    bias_dtype: torch.dtype | None = None,
    mask: torch.Tensor | None = None,
) -> None:
    """Run forward + backward through the kernel and the fp64 reference; compare outputs and grads."""
    q, k, v, table, index, go = make_inputs(bw, heads, n, d, dtype, seed=n * 100 + d + heads + bw)
    table = table.to(bias_dtype or dtype)
    if mask is None and masked:
        mask = window_mask(n, nw).to(DEVICE)
    scale = d**-0.5

    qk, kk, vk, tk = leaf(q), leaf(k), leaf(v), leaf(table)
    if bias_form == "gather":
        out = K.window_attention(qk, kk, vk, tk[index].permute(2, 0, 1), mask)
    else:
        dense = leaf(table[index].permute(2, 0, 1).contiguous())
        out = K.window_attention(qk, kk, vk, dense, mask)
    out.backward(go)
    assert out.shape == q.shape and out.dtype == dtype

    q64, k64, v64, t64 = (leaf(x.double()) for x in (q, k, v, table))
    b64 = t64[index].permute(2, 0, 1)
    if bias_form != "gather":
        b64 = leaf(b64.detach())
    ref = reference(q64, k64, v64, b64, None if mask is None else mask.double(), scale)
    ref.backward(go.double())

    assert_close(out, ref, dtype, "output")
    assert_close(qk.grad, q64.grad, dtype, "grad q")
    assert_close(kk.grad, k64.grad, dtype, "grad k")
    assert_close(vk.grad, v64.grad, dtype, "grad v")
    if bias_form == "gather":
        assert tk.grad.dtype == table.dtype
        assert_close(tk.grad, t64.grad, dtype, "grad table")
    else:
        assert dense.grad.dtype == table.dtype
        assert_close(dense.grad, b64.grad, dtype, "grad dense bias")


# ---------------------------------------------------------------------------------------------
# correctness grid
# ---------------------------------------------------------------------------------------------
N_VALUES = (16, 49, 64)
D_VALUES = (16, 32)
HEAD_VALUES = (1, 3)
MASK_VALUES = (False, True)
WINDOW_VALUES = ((3, 3), (6, 3))  # (B*nW, nW)
DTYPE_VALUES = (torch.float32, torch.float16)
BIAS_VALUES = ("dense", "gather")

# Pairwise-covering rows: (N, D, heads, masked, (B*nW, nW), dtype, bias form).
# Each N appears with a 0/1 pattern of the six binary axes and its complement, and the patterns make
# every pair of binary axes take all four value combinations.
_BITS = [
    (16, (0, 0, 0, 0, 0, 0)),
    (16, (1, 1, 1, 1, 1, 1)),
    (49, (0, 0, 0, 1, 1, 1)),
    (49, (1, 1, 1, 0, 0, 0)),
    (64, (0, 1, 1, 0, 0, 1)),
    (64, (1, 0, 0, 1, 1, 0)),
    (49, (1, 0, 1, 0, 1, 0)),
    (49, (0, 1, 0, 1, 0, 1)),
]
_AXES = (D_VALUES, HEAD_VALUES, MASK_VALUES, WINDOW_VALUES, DTYPE_VALUES, BIAS_VALUES)
GRID = [(n, *(axis[b] for axis, b in zip(_AXES, bits, strict=True))) for n, bits in _BITS]
FULL_GRID = list(itertools.product(N_VALUES, *_AXES))


def _case_id(case) -> str:
    n, d, heads, masked, (bw, nw), dtype, bias = case
    return f"N{n}-D{d}-h{heads}-{'shift' if masked else 'nomask'}-bw{bw}nw{nw}-{str(dtype)[6:]}-{bias}"


def test_kernel_grid_covers_every_value_and_pair() -> None:
    for i, values in enumerate((N_VALUES, *_AXES)):
        assert {row[i] for row in GRID} == set(values)
    for i, j in itertools.combinations(range(1, 7), 2):
        assert len({(row[i], row[j]) for row in GRID}) == 4
    for j in range(1, 7):
        assert len({(row[0], row[j]) for row in GRID}) == 6


@pytest.mark.parametrize("case", GRID, ids=_case_id)
def test_kernel_window_attention_matches_reference(case) -> None:
    n, d, heads, masked, (bw, nw), dtype, bias_form = case
    check_against_reference(n, d, heads, masked, bw, nw, dtype, bias_form)


@pytest.mark.slow
@pytest.mark.parametrize("case", FULL_GRID, ids=_case_id)
def test_kernel_window_attention_matches_reference_exhaustive(case) -> None:
    n, d, heads, masked, (bw, nw), dtype, bias_form = case
    check_against_reference(n, d, heads, masked, bw, nw, dtype, bias_form)


@pytest.mark.parametrize(
    ("dtype", "bias_form", "bias_dtype"),
    [(torch.float32, "gather", None), (torch.float16, "dense", torch.float32)],
    ids=["fp32-gather", "fp16-dense-fp32bias"],
)
def test_kernel_head_dim_8_paper_preset(dtype, bias_form, bias_dtype) -> None:
    """D = 8 (Swin 'paper' preset, C=24 / 3 heads) is padded to 16 inside; 7x7 windows."""
    check_against_reference(49, 8, 3, True, 6, 3, dtype, bias_form, bias_dtype=bias_dtype)


def test_kernel_inf_mask() -> None:
    """-inf style masks (instead of -100) give the same softmax as the reference."""
    n, nw = 16, 3
    mask = window_mask(n, nw)
    mask = torch.where(mask < 0, float("-inf"), 0.0).to(DEVICE)
    check_against_reference(n, 16, 3, True, 6, nw, torch.float32, "gather", mask=mask)


def test_kernel_strided_qkv_views_and_frozen_bias() -> None:
    """Swin's permuted views of the packed qkv are read through their strides; bias without grad."""
    bw, heads, n, d = 3, 3, 49, 16
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(bw, n, 3 * heads * d, generator=g).to(DEVICE)
    bias = 0.3 * torch.randn(heads, n, n, generator=g).to(DEVICE)
    mask = window_mask(n, 3).to(DEVICE)
    x = leaf(qkv)
    q, k, v = x.reshape(bw, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    assert not q.is_contiguous()
    out = K.window_attention(q, k, v, bias, mask, scale=0.2)
    out.sum().backward()

    x64 = leaf(qkv.double())
    q64, k64, v64 = x64.reshape(bw, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    ref = reference(q64, k64, v64, bias.double(), mask.double(), 0.2)
    ref.sum().backward()
    assert_close(out, ref, torch.float32, "output")
    assert_close(x.grad, x64.grad, torch.float32, "grad qkv")


def test_kernel_backward_deterministic_with_multi_window_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated backwards are bit-identical, also when a program reduces several windows (ragged)."""
    monkeypatch.setattr(KA, "_BWD_TARGET_PROGRAMS", 4)  # 6 windows x 3 heads -> 5 + 1 windows/program
    n, d, heads, bw, nw = 49, 16, 3, 6, 3
    q, k, v, table, index, go = make_inputs(bw, heads, n, d, torch.float32, seed=7)
    mask = window_mask(n, nw).to(DEVICE)
    dense = table[index].permute(2, 0, 1).contiguous()
    grads = []
    for _ in range(2):
        qk, kk, vk, bk = leaf(q), leaf(k), leaf(v), leaf(dense)
        K.window_attention(qk, kk, vk, bk, mask).backward(go)
        grads.append([t.grad.clone() for t in (qk, kk, vk, bk)])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)
    # and still correct
    check_against_reference(n, d, heads, True, bw, nw, torch.float32, "gather")
    check_against_reference(n, d, heads, True, bw, nw, torch.float32, "dense")


class OutOfResources(Exception):  # noqa: N818 - same name as triton.runtime.errors.OutOfResources
    """Stand-in for triton's error when a compiled kernel needs more shared memory than the device has."""


def _raise_out_of_resources(*args, **kwargs):
    raise OutOfResources("out of resource: shared memory, Required: 213504, Hardware limit: 101376")


def test_kernel_backward_falls_back_to_torch_when_out_of_resources(monkeypatch, caplog) -> None:
    monkeypatch.setattr(KA, "_launch_backward", _raise_out_of_resources)
    with caplog.at_level("WARNING", logger=KA.__name__):
        check_against_reference(49, 16, 3, True, 6, 3, torch.float32, "gather")
        check_against_reference(16, 32, 1, False, 3, 3, torch.float16, "dense")
    assert "torch fallback" in caplog.text


@pytest.mark.gpu
@pytest.mark.parametrize("bias_form", BIAS_VALUES)
def test_kernel_bf16_gpu(bias_form: str) -> None:
    check_against_reference(49, 32, 3, True, 6, 3, torch.bfloat16, bias_form)


# ---------------------------------------------------------------------------------------------
# launcher validation, availability, import without triton
# ---------------------------------------------------------------------------------------------
def _valid(bw: int = 3, heads: int = 2, n: int = 16, d: int = 16, dtype: torch.dtype = torch.float32):
    q, k, v = (torch.randn(bw, heads, n, d, device=DEVICE, dtype=dtype) for _ in range(3))
    bias = torch.zeros(heads, n, n, device=DEVICE, dtype=dtype)
    mask = torch.zeros(3, n, n, device=DEVICE)
    return q, k, v, bias, mask


def _index(n: int = 16) -> torch.Tensor:
    return relative_position_index(math.isqrt(n)).to(DEVICE)


REJECTIONS = {
    "float64": (lambda q, k, v, b, m: (q.double(), k.double(), v.double(), b, m), TypeError),
    "int": (lambda q, k, v, b, m: (q.int(), k.int(), v.int(), b, m), TypeError),
    "mixed-dtype": (lambda q, k, v, b, m: (q, k.half(), v, b, m), TypeError),
    "3d": (lambda q, k, v, b, m: (q[0], k[0], v[0], b, m), ValueError),
    "shape-mismatch": (lambda q, k, v, b, m: (q, k[:, :, :8], v, b, m), ValueError),
    "non-contiguous-last-dim": (lambda q, k, v, b, m: (q.transpose(-1, -2), k, v, b, m), ValueError),
    "bias-shape": (lambda q, k, v, b, m: (q, k, v, b[:1], m), ValueError),
    "bias-pair": (lambda q, k, v, b, m: (q, k, v, (torch.zeros(49, 2, device=DEVICE), _index()), m), TypeError),
    "mask-shape": (lambda q, k, v, b, m: (q, k, v, b, m[:, :8]), ValueError),
    "mask-windows": (lambda q, k, v, b, m: (q, k, v, b, torch.zeros(2, 16, 16, device=DEVICE)), ValueError),
    "mask-int": (lambda q, k, v, b, m: (q, k, v, b, m.long()), TypeError),
}


@pytest.mark.parametrize("name", list(REJECTIONS))
def test_kernel_launcher_rejects(name: str) -> None:
    make, exc = REJECTIONS[name]
    args = make(*_valid())
    ok, reason = K.supports(*args)
    assert not ok and reason
    with pytest.raises(exc, match="window_attention"):
        K.window_attention(*args)


@pytest.mark.parametrize(("n", "d"), [(65, 16), (16, 4), (16, 80)])
def test_kernel_launcher_rejects_sizes(n: int, d: int) -> None:
    q = torch.randn(3, 2, n, d, device=DEVICE)
    ok, reason = K.supports(q, q, q, None)
    assert not ok and ("tokens" in reason or "head dim" in reason)
    with pytest.raises(ValueError):
        K.window_attention(q, q, q, None)


def test_kernel_launcher_rejects_cpu_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    args = _valid()
    args = tuple(t.cpu() for t in args)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        K.window_attention(*args)
    assert not K.supports(*args)[0]


def test_kernel_supports_valid_inputs_and_runs_without_bias() -> None:
    q, k, v, bias, mask = _valid()
    assert K.supports(q, k, v, bias, mask) == (True, "")
    assert K.supports(q, k, v, bias, None) == (True, "")
    out = K.window_attention(q, k, v, None)
    torch.testing.assert_close(out, reference(q, k, v, None, None, 16**-0.5), atol=1e-5, rtol=1e-5)


def test_kernel_package_imports_without_triton() -> None:
    """With triton unimportable: the package imports, is_available() is False, calls raise RuntimeError."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, patchloupe.kernels as K\n"
        "assert not K.is_available()\n"
        "q = torch.zeros(1, 1, 16, 16)\n"
        "ok, reason = K.supports(q, q, q, None); assert not ok and 'triton' in reason, reason\n"
        "try:\n    K.window_attention(q, q, q, None)\nexcept RuntimeError as e:\n    assert 'triton' in str(e)\n"
        "else:\n    raise SystemExit('no RuntimeError')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
