"""Tests of the shipped Triton window attention kernel (``patchloupe.kernels``) against an fp64 reference.

Without CUDA the kernel runs under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``),
on small shapes. The default grid is a pairwise-covering sub-grid of N x D x heads x mask x windows x dtype x
bias-form (every value of every axis, every pair of values of the binary axes, every N with every binary value);
``@pytest.mark.slow`` runs the full cartesian product. Bias forms: ``dense``, a leaf ``(heads, N, N)`` bias, and
``gather``, the model's path: a leaf ``(T, heads)`` table gathered by torch (``table[index]``) before the kernel,
its gradient flowing back through the gather. The reference and the checks live in ``tests/window_attention_checks.py``
(shared with the benchmark variants' tests). Select with ``pytest -k kernel``.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

import patchloupe.kernels as K  # noqa: E402
from patchloupe.kernels import attention as KA  # noqa: E402 - the launcher module (monkeypatched below)
from window_attention_checks import (  # noqa: E402
    DEVICE,
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
    pairwise_grid,
    raise_out_of_resources,
    reference,
    run_without_triton,
    valid_inputs,
)

pytestmark = pytest.mark.skipif(not K.is_available(), reason="needs CUDA or TRITON_INTERPRET=1")

BIAS_VALUES = ("dense", "gather")
GRID = pairwise_grid(BIAS_VALUES)
FULL_GRID = full_grid(BIAS_VALUES)


# ---------------------------------------------------------------------------------------------
# correctness grid
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


@pytest.mark.parametrize(
    ("dtype", "bias_form", "bias_dtype"),
    [(torch.float32, "gather", None), (torch.float16, "dense", torch.float32)],
    ids=["fp32-gather", "fp16-dense-fp32bias"],
)
def test_kernel_head_dim_8_paper_preset(dtype, bias_form, bias_dtype) -> None:
    """D = 8 (Swin 'paper' preset, C=24 / 3 heads) is padded to 16 inside; 7x7 windows."""
    check_against_reference(K.window_attention, 49, 8, 3, True, 6, 3, dtype, bias_form, bias_dtype=bias_dtype)


def test_kernel_inf_mask() -> None:
    check_inf_mask(K.window_attention, "gather")


def test_kernel_strided_qkv_views_and_frozen_bias() -> None:
    """Swin's permuted views of the packed qkv are read through their strides; bias without grad."""
    check_strided_qkv_views_and_frozen_bias(K.window_attention, "dense")


def test_kernel_backward_deterministic_with_multi_window_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated backwards are bit-identical, also when a program reduces several windows (ragged)."""
    monkeypatch.setattr(KA, "_BWD_TARGET_PROGRAMS", 4)  # 6 windows x 3 heads -> 5 + 1 windows/program
    check_backward_deterministic(K.window_attention, "dense", ("gather", "dense"))


def test_kernel_backward_falls_back_to_torch_when_out_of_resources(monkeypatch, caplog) -> None:
    monkeypatch.setattr(KA, "_launch_backward", raise_out_of_resources)
    check_torch_fallback(K.window_attention, caplog, ("gather", "dense"))


@pytest.mark.gpu
@pytest.mark.parametrize("bias_form", BIAS_VALUES)
def test_kernel_bf16_gpu(bias_form: str) -> None:
    check_against_reference(K.window_attention, 49, 32, 3, True, 6, 3, torch.bfloat16, bias_form)


# ---------------------------------------------------------------------------------------------
# launcher validation, availability, import without triton
# ---------------------------------------------------------------------------------------------
REJECTIONS = {
    "float64": (lambda q, k, v, b, m: (q.double(), k.double(), v.double(), b, m), TypeError),
    "int": (lambda q, k, v, b, m: (q.int(), k.int(), v.int(), b, m), TypeError),
    "mixed-dtype": (lambda q, k, v, b, m: (q, k.half(), v, b, m), TypeError),
    "3d": (lambda q, k, v, b, m: (q[0], k[0], v[0], b, m), ValueError),
    "shape-mismatch": (lambda q, k, v, b, m: (q, k[:, :, :8], v, b, m), ValueError),
    "non-contiguous-last-dim": (lambda q, k, v, b, m: (q.transpose(-1, -2), k, v, b, m), ValueError),
    "bias-shape": (lambda q, k, v, b, m: (q, k, v, b[:1], m), ValueError),
    "bias-pair": (lambda q, k, v, b, m: (q, k, v, (torch.zeros(49, 2, device=DEVICE), index_for()), m), TypeError),
    "mask-shape": (lambda q, k, v, b, m: (q, k, v, b, m[:, :8]), ValueError),
    "mask-windows": (lambda q, k, v, b, m: (q, k, v, b, torch.zeros(2, 16, 16, device=DEVICE)), ValueError),
    "mask-int": (lambda q, k, v, b, m: (q, k, v, b, m.long()), TypeError),
}


@pytest.mark.parametrize("name", list(REJECTIONS))
def test_kernel_launcher_rejects(name: str) -> None:
    make, exc = REJECTIONS[name]
    check_rejects(K.supports, K.window_attention, make(*valid_inputs()), exc)


@pytest.mark.parametrize(("n", "d"), [(65, 16), (16, 4), (16, 80)])
def test_kernel_launcher_rejects_sizes(n: int, d: int) -> None:
    q = torch.randn(3, 2, n, d, device=DEVICE)
    ok, reason = K.supports(q, q, q, None)
    assert not ok and ("tokens" in reason or "head dim" in reason)
    with pytest.raises(ValueError):
        K.window_attention(q, q, q, None)


def test_kernel_launcher_rejects_cpu_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    args = tuple(t.cpu() for t in valid_inputs())
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        K.window_attention(*args)
    assert not K.supports(*args)[0]


def test_kernel_supports_valid_inputs_and_runs_without_bias() -> None:
    q, k, v, bias, mask = valid_inputs()
    assert K.supports(q, k, v, bias, mask) == (True, "")
    assert K.supports(q, k, v, bias, None) == (True, "")
    out = K.window_attention(q, k, v, None)
    torch.testing.assert_close(out, reference(q, k, v, None, None, 16**-0.5), atol=1e-5, rtol=1e-5)


def test_kernel_package_imports_without_triton() -> None:
    """With triton unimportable: the package imports, is_available() is False, calls raise RuntimeError."""
    run_without_triton(
        "import torch, patchloupe.kernels as K\n"
        "assert not K.is_available()\n"
        "q = torch.zeros(1, 1, 16, 16)\n"
        "ok, reason = K.supports(q, q, q, None); assert not ok and 'triton' in reason, reason\n"
        "try:\n    K.window_attention(q, q, q, None)\nexcept RuntimeError as e:\n    assert 'triton' in str(e)\n"
        "else:\n    raise SystemExit('no RuntimeError')\n"
    )
