"""Tests of the experimental attention variants (``benchmarks/fused_window_attention.py``) against an fp64 reference.

Only the modes the shipped kernel lacks (its own modes are tested in ``tests/kernels/test_kernels_attention.py``):
the in-kernel ``(table, index)`` bias gather and the fused shift / partition / reverse with the region mask
rebuilt in-kernel, which ``gpu_attention.py`` compares with the shipped kernel. The reference and the checks are
``tests/window_attention_checks.py`` (``benchmarks/conftest.py`` puts ``tests/`` on ``sys.path``). Without CUDA
the kernels run under the Triton interpreter (``benchmarks/conftest.py`` sets ``TRITON_INTERPRET=1``), on small
shapes. The default grid is a pairwise-covering sub-grid of N x D x heads x mask x windows x dtype (every value of
every axis, every pair of values of the binary axes, every N with every binary value); ``@pytest.mark.slow`` runs
the full cartesian product.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

import fused_window_attention as K  # noqa: E402
from patchloupe.kernels import attention as KA  # noqa: E402 - the shared launch helpers (monkeypatched below)
from window_attention_checks import (  # noqa: E402
    DEVICE,
    assert_close,
    assert_grid_covers_every_value_and_pair,
    case_id,
    check_against_reference,
    check_backward_deterministic,
    check_case,
    check_inf_mask,
    check_rejects,
    check_strided_qkv_views_and_frozen_bias,
    check_torch_fallback,
    full_grid,
    index_for,
    leaf,
    pairwise_grid,
    partition,
    raise_out_of_resources,
    reference,
    relative_position_index,
    reverse,
    run_without_triton,
    shift_mask,
    valid_inputs,
)

pytestmark = pytest.mark.skipif(not K.is_available(), reason="needs CUDA or TRITON_INTERPRET=1")

BIAS_VALUES = ("table",)
GRID = pairwise_grid(BIAS_VALUES)
FULL_GRID = full_grid(BIAS_VALUES)


# ---------------------------------------------------------------------------------------------
# in-kernel (table, index) bias gather
# ---------------------------------------------------------------------------------------------
def test_kernel_grid_covers_every_value_and_pair() -> None:
    assert_grid_covers_every_value_and_pair(GRID, BIAS_VALUES)


@pytest.mark.parametrize("case", GRID, ids=case_id)
def test_kernel_window_attention_matches_reference(case) -> None:
    check_case(K.window_attention, case)


@pytest.mark.slow
@pytest.mark.parametrize("case", FULL_GRID, ids=case_id)
def test_kernel_window_attention_matches_reference_exhaustive(case) -> None:
    check_case(K.window_attention, case)


def test_kernel_head_dim_8_paper_preset() -> None:
    """D = 8 (Swin 'paper' preset, C=24 / 3 heads) is padded to 16 inside; 7x7 windows."""
    check_against_reference(K.window_attention, 49, 8, 3, True, 6, 3, torch.float32, "table")


def test_kernel_inf_mask() -> None:
    check_inf_mask(K.window_attention, "table")


def test_kernel_strided_qkv_views_and_frozen_table() -> None:
    """Swin's permuted views of the packed qkv are read through their strides; table without grad."""
    check_strided_qkv_views_and_frozen_bias(K.window_attention, "table")


def test_kernel_backward_deterministic_with_multi_window_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated backwards are bit-identical, also when a program reduces several windows (ragged)."""
    monkeypatch.setattr(KA, "_BWD_TARGET_PROGRAMS", 4)  # 6 windows x 3 heads -> 5 + 1 windows/program
    check_backward_deterministic(K.window_attention, "table", ("table",))


def test_kernel_backward_falls_back_to_torch_when_out_of_resources(monkeypatch, caplog) -> None:
    monkeypatch.setattr(K, "_launch_backward", raise_out_of_resources)
    check_torch_fallback(K.window_attention, caplog, ("table", "table"))


def test_kernel_dense_bias_runs_the_shipped_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pre-gathered bias (or none) is the shipped kernel's mode: handed over, same numbers."""
    calls = []
    monkeypatch.setattr(K, "_window_attention_dense", lambda *args: calls.append(args) or KA.window_attention(*args))
    check_against_reference(K.window_attention, 16, 32, 1, False, 3, 3, torch.float16, "dense")
    assert len(calls) == 1


@pytest.mark.gpu
def test_kernel_bf16_gpu() -> None:
    check_against_reference(K.window_attention, 49, 32, 3, True, 6, 3, torch.bfloat16, "table")


# ---------------------------------------------------------------------------------------------
# fused shift / partition / reverse variant
# ---------------------------------------------------------------------------------------------
def fused_reference(qkv: torch.Tensor, bias: torch.Tensor, heads: int, m: int, s: int, scale: float) -> torch.Tensor:
    """roll(-s) -> partition -> attention (+ Swin mask) -> reverse -> roll(+s), on (B, H, W, 3C)."""
    b, h, w, c3 = qkv.shape
    c = c3 // 3
    x = torch.roll(qkv, shifts=(-s, -s), dims=(1, 2)) if s else qkv
    win = partition(x, m)  # (BW, N, 3C)
    q, k, v = win.reshape(win.shape[0], m * m, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    mask = shift_mask(h, w, m, s).to(qkv) if s else None
    o = reference(q, k, v, bias, mask, scale)  # (BW, heads, N, D)
    o = reverse(o.transpose(1, 2).reshape(-1, m * m, c), m, h, w)
    return torch.roll(o, shifts=(s, s), dims=(1, 2)) if s else o


@pytest.mark.parametrize(
    ("b", "h", "w", "m", "s", "heads", "d", "dtype", "bias_form"),
    [
        (2, 8, 12, 4, 2, 2, 16, torch.float32, "table"),
        (1, 14, 14, 7, 3, 3, 8, torch.float32, "dense"),
        (2, 8, 8, 4, 0, 1, 32, torch.float16, "table"),
        (1, 7, 14, 7, 3, 2, 16, torch.float16, "dense"),
    ],
    ids=["8x12-w4-s2-fp32-table", "14x14-w7-s3-D8-fp32-dense", "8x8-w4-noshift-fp16-table", "7x14-w7-s3-fp16-dense"],
)
def test_kernel_fused_shift_matches_roll_partition_reference(b, h, w, m, s, heads, d, dtype, bias_form) -> None:
    g = torch.Generator().manual_seed(h * w + s)
    c = heads * d
    qkv = torch.randn(b, h, w, 3 * c, generator=g).to(DEVICE, dtype)
    table = (0.5 * torch.randn((2 * m - 1) ** 2, heads, generator=g)).to(DEVICE, dtype)
    index = relative_position_index(m).to(DEVICE)
    go = torch.randn(b, h, w, c, generator=g).to(DEVICE, dtype)

    x, tk = leaf(qkv), leaf(table)
    if bias_form == "table":
        out = K.window_attention_fused_shift(x, (tk, index), heads, m, s)
    else:
        dense = leaf(table[index].permute(2, 0, 1).contiguous())
        out = K.window_attention_fused_shift(x, dense, heads, m, s)
    assert out.shape == (b, h, w, c) and out.dtype == dtype
    out.backward(go)

    x64, t64 = leaf(qkv.double()), leaf(table.double())
    b64 = t64[index].permute(2, 0, 1)
    if bias_form != "table":
        b64 = leaf(b64.detach())
    ref = fused_reference(x64, b64, heads, m, s, d**-0.5)
    ref.backward(go.double())
    assert_close(out, ref, dtype, "output")
    assert_close(x.grad, x64.grad, dtype, "grad qkv")
    assert_close(
        tk.grad if bias_form == "table" else dense.grad, (t64 if bias_form == "table" else b64).grad, dtype, "grad bias"
    )


def test_kernel_fused_shift_equals_plain_kernel() -> None:
    """Same numbers as the plain kernel fed with torch.roll + partition copies (fp32)."""
    b, h, w, m, s, heads, d = 1, 8, 8, 4, 2, 2, 16
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(b, h, w, 3 * heads * d, generator=g).to(DEVICE)
    table = torch.randn(49, heads, generator=g).to(DEVICE)
    index = relative_position_index(m).to(DEVICE)
    fused = K.window_attention_fused_shift(qkv, (table, index), heads, m, s)
    win = partition(torch.roll(qkv, (-s, -s), (1, 2)), m)
    q, k, v = win.reshape(-1, m * m, 3, heads, d).permute(2, 0, 3, 1, 4)
    o = K.window_attention(q, k, v, (table, index), shift_mask(h, w, m, s).to(DEVICE))
    plain = torch.roll(reverse(o.transpose(1, 2).reshape(-1, m * m, heads * d), m, h, w), (s, s), (1, 2))
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("bias_form", ("dense", "table"))
def test_kernel_fused_shift_backward_torch_fallback(monkeypatch, bias_form: str) -> None:
    """The torch fallback of the backward reproduces the kernel's shifted addressing and region mask."""
    monkeypatch.setattr(K, "_launch_backward", raise_out_of_resources)
    test_kernel_fused_shift_matches_roll_partition_reference(2, 8, 12, 4, 2, 2, 16, torch.float32, bias_form)


# ---------------------------------------------------------------------------------------------
# launcher validation (of the extra modes), availability, import without triton
# ---------------------------------------------------------------------------------------------
def _table(heads: int = 2) -> torch.Tensor:
    return torch.zeros(49, heads, device=DEVICE)


REJECTIONS = {
    "bias-3-tuple": (lambda q, k, v, b, m: (q, k, v, (b, b, b), m), ValueError),
    "table-heads": (lambda q, k, v, b, m: (q, k, v, (_table(5), index_for()), m), ValueError),
    "index-float": (lambda q, k, v, b, m: (q, k, v, (_table(), index_for().float()), m), TypeError),
    "index-shape": (lambda q, k, v, b, m: (q, k, v, (_table(), index_for()[:4]), m), ValueError),
    "table-mask-shape": (lambda q, k, v, b, m: (q, k, v, (_table(), index_for()), m[:, :8]), ValueError),
    "table-float64": (
        lambda q, k, v, b, m: (q.double(), k.double(), v.double(), (_table(), index_for()), m),
        TypeError,
    ),
}


@pytest.mark.parametrize("name", list(REJECTIONS))
def test_kernel_launcher_rejects(name: str) -> None:
    make, exc = REJECTIONS[name]
    check_rejects(K.supports, K.window_attention, make(*valid_inputs()), exc)


def test_kernel_supports_valid_inputs_and_runs_without_bias() -> None:
    q, k, v, bias, mask = valid_inputs()
    assert K.supports(q, k, v, bias, mask) == (True, "")
    assert K.supports(q, k, v, (_table(), index_for()), None) == (True, "")
    out = K.window_attention(q, k, v, None)
    torch.testing.assert_close(out, reference(q, k, v, None, None, 16**-0.5), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("shape", "heads", "m", "s", "match"),
    [
        ((1, 10, 8, 96), 2, 4, 0, "multiples"),
        ((1, 8, 8, 96), 2, 4, 4, "shift_size"),
        ((1, 8, 8, 90), 4, 4, 0, "3 *"),
        ((1, 9, 9, 96), 2, 9, 0, "tokens"),
    ],
)
def test_kernel_fused_shift_rejects(shape, heads: int, m: int, s: int, match: str) -> None:
    qkv = torch.randn(*shape, device=DEVICE)
    bias = torch.zeros(heads, m * m, m * m, device=DEVICE)
    assert not K.supports_fused_shift(qkv, bias, heads, m, s)[0]
    with pytest.raises(ValueError, match=match):
        K.window_attention_fused_shift(qkv, bias, heads, m, s)


def test_kernel_package_imports_without_triton() -> None:
    """With triton unimportable: the module imports, is_available() is False, calls raise RuntimeError."""
    run_without_triton(
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import torch, fused_window_attention as K\n"
        "assert not K.is_available()\n"
        "q = torch.zeros(1, 1, 16, 16)\n"
        "ok, reason = K.supports(q, q, q, None); assert not ok and 'triton' in reason, reason\n"
        "try:\n    K.window_attention(q, q, q, (torch.zeros(49, 1), torch.zeros(16, 16, dtype=torch.long)))\n"
        "except RuntimeError as e:\n    assert 'triton' in str(e)\n"
        "else:\n    raise SystemExit('no RuntimeError')\n"
        "try:\n    K.window_attention(q, q, q, None)\nexcept RuntimeError as e:\n    assert 'triton' in str(e)\n"
        "else:\n    raise SystemExit('no RuntimeError')\n"
    )
