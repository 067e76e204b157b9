"""Shared checks of the Triton window attention kernels against an fp64 reference (not a test module).

Used by ``tests/kernels/test_kernels_attention.py`` (the shipped kernel), ``benchmarks/test_fused_window_attention.py``
(the experimental variants; ``benchmarks/conftest.py`` puts ``tests/`` on ``sys.path``) and
``tests/models/test_models_attention.py``. Every check takes the attention entry point it exercises, so one
reference serves every kernel. Bias forms: ``dense``, a leaf ``(heads, N, N)`` bias; ``gather``, a leaf
``(T, heads)`` table gathered by torch (``table[index]``) before the kernel, its gradient flowing back through the
gather; ``table``, the ``(table, index)`` pair handed to a kernel that gathers in-kernel.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from collections.abc import Callable, Sequence

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (4e-2, 4e-2)}
MASK_VALUE = -100.0

Attention = Callable[..., torch.Tensor]


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


def reverse(windows: torch.Tensor, m: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, m*m, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // m, w // m, m, m, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


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


def bias_argument(bias_form: str, table: torch.Tensor, index: torch.Tensor) -> tuple[object, torch.Tensor]:
    """(the kernel's bias argument, the leaf whose gradient is checked) for a leaf ``table``."""
    if bias_form == "table":
        return (table, index), table
    if bias_form == "gather":
        return table[index].permute(2, 0, 1), table
    dense = leaf(table[index].permute(2, 0, 1).contiguous())
    return dense, dense


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def check_against_reference(
    attention: Attention,
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
    """Run forward + backward through ``attention`` and the fp64 reference; compare outputs and grads."""
    q, k, v, table, index, go = make_inputs(bw, heads, n, d, dtype, seed=n * 100 + d + heads + bw)
    table = table.to(bias_dtype or dtype)
    if mask is None and masked:
        mask = window_mask(n, nw).to(DEVICE)
    scale = d**-0.5

    qk, kk, vk, tk = leaf(q), leaf(k), leaf(v), leaf(table)
    bias_arg, bias_leaf = bias_argument(bias_form, tk, index)
    out = attention(qk, kk, vk, bias_arg, mask)
    out.backward(go)
    assert out.shape == q.shape and out.dtype == dtype

    q64, k64, v64, t64 = (leaf(x.double()) for x in (q, k, v, table))
    b64 = t64[index].permute(2, 0, 1)
    if bias_form == "dense":
        b64 = leaf(b64.detach())
    ref = reference(q64, k64, v64, b64, None if mask is None else mask.double(), scale)
    ref.backward(go.double())

    assert_close(out, ref, dtype, "output")
    assert_close(qk.grad, q64.grad, dtype, "grad q")
    assert_close(kk.grad, k64.grad, dtype, "grad k")
    assert_close(vk.grad, v64.grad, dtype, "grad v")
    assert bias_leaf.grad.dtype == table.dtype
    if bias_form == "dense":
        assert_close(bias_leaf.grad, b64.grad, dtype, "grad dense bias")
    else:
        assert_close(bias_leaf.grad, t64.grad, dtype, "grad table")


def check_case(attention: Attention, case: tuple) -> None:
    """:func:`check_against_reference` for a row of :func:`pairwise_grid` / :func:`full_grid`."""
    n, d, heads, masked, (bw, nw), dtype, bias_form = case
    check_against_reference(attention, n, d, heads, masked, bw, nw, dtype, bias_form)


def check_strided_qkv_views_and_frozen_bias(attention: Attention, bias_form: str) -> None:
    """Swin's permuted views of the packed qkv are read through their strides; bias without grad."""
    bw, heads, n, d = 3, 3, 49, 16
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(bw, n, 3 * heads * d, generator=g).to(DEVICE)
    if bias_form == "table":
        table = 0.3 * torch.randn(13 * 13, heads, generator=g).to(DEVICE)
        index = relative_position_index(7).to(DEVICE)
        bias_arg, bias = (table, index), table[index].permute(2, 0, 1)
    else:
        bias_arg = bias = 0.3 * torch.randn(heads, n, n, generator=g).to(DEVICE)
    mask = window_mask(n, 3).to(DEVICE)
    x = leaf(qkv)
    q, k, v = x.reshape(bw, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    assert not q.is_contiguous()
    out = attention(q, k, v, bias_arg, mask, scale=0.2)
    out.sum().backward()

    x64 = leaf(qkv.double())
    q64, k64, v64 = x64.reshape(bw, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    ref = reference(q64, k64, v64, bias.double(), mask.double(), 0.2)
    ref.sum().backward()
    assert_close(out, ref, torch.float32, "output")
    assert_close(x.grad, x64.grad, torch.float32, "grad qkv")


def check_inf_mask(attention: Attention, bias_form: str) -> None:
    """-inf style masks (instead of -100) give the same softmax as the reference."""
    n, nw = 16, 3
    mask = window_mask(n, nw)
    mask = torch.where(mask < 0, float("-inf"), 0.0).to(DEVICE)
    check_against_reference(attention, n, 16, 3, True, 6, nw, torch.float32, bias_form, mask=mask)


def check_backward_deterministic(attention: Attention, bias_form: str, reference_forms: Sequence[str]) -> None:
    """Two backwards through ``attention`` give bit-identical q / k / v / bias gradients (6 windows x 3 heads,
    so a program reduces several windows once the test lowers ``_BWD_TARGET_PROGRAMS``); the same shape still
    matches the reference for each of ``reference_forms``."""
    n, d, heads, bw, nw = 49, 16, 3, 6, 3
    q, k, v, table, index, go = make_inputs(bw, heads, n, d, torch.float32, seed=7)
    mask = window_mask(n, nw).to(DEVICE)
    if bias_form == "dense":
        table = table[index].permute(2, 0, 1).contiguous()
    grads = []
    for _ in range(2):
        qk, kk, vk, bk = leaf(q), leaf(k), leaf(v), leaf(table)
        attention(qk, kk, vk, (bk, index) if bias_form == "table" else bk, mask).backward(go)
        grads.append([t.grad.clone() for t in (qk, kk, vk, bk)])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)
    for form in reference_forms:  # and still correct
        check_against_reference(attention, n, d, heads, True, bw, nw, torch.float32, form)


def check_torch_fallback(attention: Attention, caplog, bias_forms: tuple[str, str]) -> None:
    """With the backward launch patched to fail for lack of resources, the torch fallback gives the reference's
    gradients (an fp32 masked and an fp16 unmasked case, one per bias form) and says so in the log."""
    with caplog.at_level("WARNING", logger="patchloupe.kernels.attention"):
        check_against_reference(attention, 49, 16, 3, True, 6, 3, torch.float32, bias_forms[0])
        check_against_reference(attention, 16, 32, 1, False, 3, 3, torch.float16, bias_forms[1])
    assert "torch fallback" in caplog.text


class OutOfResources(Exception):  # noqa: N818 - same name as triton.runtime.errors.OutOfResources
    """Stand-in for triton's error when a compiled kernel needs more shared memory than the device has."""


def raise_out_of_resources(*args, **kwargs):
    raise OutOfResources("out of resource: shared memory, Required: 213504, Hardware limit: 101376")


def check_rejects(
    supports: Callable[..., tuple[bool, str]], attention: Attention, args: tuple, exc: type[Exception]
) -> None:
    """``supports(*args)`` says no with a reason and ``attention(*args)`` raises ``exc`` naming the entry point."""
    import pytest

    ok, reason = supports(*args)
    assert not ok and reason
    with pytest.raises(exc, match="window_attention"):
        attention(*args)


def valid_inputs(bw: int = 3, heads: int = 2, n: int = 16, d: int = 16, dtype: torch.dtype = torch.float32):
    """(q, k, v, zero dense bias, zero (3, N, N) mask) that every kernel accepts."""
    q, k, v = (torch.randn(bw, heads, n, d, device=DEVICE, dtype=dtype) for _ in range(3))
    bias = torch.zeros(heads, n, n, device=DEVICE, dtype=dtype)
    mask = torch.zeros(3, n, n, device=DEVICE)
    return q, k, v, bias, mask


def index_for(n: int = 16) -> torch.Tensor:
    return relative_position_index(math.isqrt(n)).to(DEVICE)


def run_without_triton(code: str) -> None:
    """Run ``code`` in a fresh interpreter where ``import triton`` fails; it must exit 0."""
    code = "import sys; sys.modules['triton'] = None\n" + code
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------------------------------------
# correctness grid: pairwise-covering rows (N, D, heads, masked, (B*nW, nW), dtype, bias form)
# ---------------------------------------------------------------------------------------------
N_VALUES = (16, 49, 64)
D_VALUES = (16, 32)
HEAD_VALUES = (1, 3)
MASK_VALUES = (False, True)
WINDOW_VALUES = ((3, 3), (6, 3))  # (B*nW, nW)
DTYPE_VALUES = (torch.float32, torch.float16)

# Each N appears with a 0/1 pattern of the six binary axes and its complement, and the patterns make
# every pair of binary axes take all four value combinations (a one-value axis takes its value).
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


def grid_axes(bias_values: Sequence[str]) -> tuple[tuple, ...]:
    """The axes after N: D, heads, masked, windows, dtype, bias form."""
    return (D_VALUES, HEAD_VALUES, MASK_VALUES, WINDOW_VALUES, DTYPE_VALUES, tuple(bias_values))


def pairwise_grid(bias_values: Sequence[str]) -> list[tuple]:
    axes = grid_axes(bias_values)
    return [(n, *(axis[b % len(axis)] for axis, b in zip(axes, bits, strict=True))) for n, bits in _BITS]


def full_grid(bias_values: Sequence[str]) -> list[tuple]:
    return list(itertools.product(N_VALUES, *grid_axes(bias_values)))


def assert_grid_covers_every_value_and_pair(grid: list[tuple], bias_values: Sequence[str]) -> None:
    axes = (N_VALUES, *grid_axes(bias_values))
    for i, values in enumerate(axes):
        assert {row[i] for row in grid} == set(values)
    for i, j in itertools.combinations(range(1, 7), 2):
        assert len({(row[i], row[j]) for row in grid}) == len(axes[i]) * len(axes[j])
    for j in range(1, 7):
        assert len({(row[0], row[j]) for row in grid}) == len(N_VALUES) * len(axes[j])


def case_id(case) -> str:
    n, d, heads, masked, (bw, nw), dtype, bias = case
    return f"N{n}-D{d}-h{heads}-{'shift' if masked else 'nomask'}-bw{bw}nw{nw}-{str(dtype)[6:]}-{bias}"
