"""Fused Swin window attention (forward + backward) in Triton: launchers and the autograd wrapper.

Public API (re-exported by ``patchloupe.kernels``):

* :func:`window_attention` -- ``(BW, heads, N, D)`` q/k/v, a pre-gathered ``(heads, N, N)`` relative-position
  bias, an optional ``(nW, N, N)`` additive window mask; with autograd.
* :func:`is_available`, :func:`supports` -- for the model's dispatch (it falls back to SDPA otherwise).

Layout (as Liger-Kernel's ops): the ``_kernel`` functions live in :mod:`patchloupe.kernels._attention_kernel`,
:func:`window_attention_forward` / :func:`window_attention_backward` launch them, and
:class:`WindowAttentionFunction` ties the two into autograd. The kernel module (and with it triton) is imported
on the first launch, so this module imports without triton. Kernels run on CUDA tensors, or on CPU tensors under
the Triton interpreter (``TRITON_INTERPRET=1`` set before the first launch).

Numerics: logits, softmax and all matmuls accumulate in fp32 (fp32 inputs use IEEE fp32 dots unless
``torch.backends.cuda.matmul.allow_tf32`` is set, then TF32); outputs and q/k/v gradients are cast to the input
dtype, the bias gradient to the bias dtype. The bias gradient is reduced over windows deterministically
(per-program partial sums, then a torch sum), so repeated backwards give bit-identical results on a given device.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from types import ModuleType
from typing import TypeVar

import torch

__all__ = [
    "MAX_HEAD_DIM",
    "MAX_TOKENS",
    "MIN_HEAD_DIM",
    "WindowAttentionFunction",
    "is_available",
    "supports",
    "window_attention",
    "window_attention_backward",
    "window_attention_forward",
]

logger = logging.getLogger(__name__)

MAX_TOKENS = 64  # tokens per window (a whole window lives in one program)
MIN_HEAD_DIM = 8
MAX_HEAD_DIM = 64
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Backward: a program handles several windows of one head when the bias needs a gradient, so the
# fp32 per-program partial sums stay small; aim for about this many programs in total.
_BWD_TARGET_PROGRAMS = 2048

_T = TypeVar("_T")


class _Reject(Exception):
    """Internal: an unsupported input; ``kind`` is the exception type :func:`window_attention` raises."""

    def __init__(self, kind: type[Exception], message: str) -> None:
        super().__init__(message)
        self.kind = kind


# --------------------------------------------------------------------------------------------
# availability
# --------------------------------------------------------------------------------------------
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


@functools.cache
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401 - only whether it imports
    except Exception as exc:  # ImportError, or a broken install raising something else
        return f"{type(exc).__name__}: {exc}"
    return None


def is_available() -> bool:
    """True when triton imports and kernels can run (a CUDA device, or ``TRITON_INTERPRET=1``)."""
    if _triton_import_error() is not None:
        return False
    return torch.cuda.is_available() or _interpreting()


def _kernels() -> ModuleType:
    """The ``_kernel`` module (imports triton; RuntimeError when it cannot)."""
    err = _triton_import_error()
    if err is not None:
        raise RuntimeError(f"patchloupe.kernels needs triton (pip install 'patchloupe[triton]'); import failed: {err}")
    from . import _attention_kernel

    return _attention_kernel


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _pad(n: int) -> int:
    """Block size for ``n`` tokens / head dims: next power of two, at least 16 (``tl.dot`` minimum)."""
    return max(16, 1 << (n - 1).bit_length())


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise _Reject(TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise _Reject(TypeError, f"{name} dtype {t.dtype} unsupported (float32, float16, bfloat16)")


def _check_device(tensors: list[torch.Tensor]) -> None:
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise _Reject(ValueError, f"all inputs must be on one device, got {dev} and {t.device}")
    if dev.type == "cuda":
        return
    if dev.type == "cpu":
        if not _interpreting():
            raise _Reject(ValueError, "CPU tensors need the Triton interpreter (set TRITON_INTERPRET=1)")
        return
    raise _Reject(ValueError, f"unsupported device {dev} (CUDA, or CPU under TRITON_INTERPRET=1)")


def _check_tokens(n: int) -> None:
    if not 1 <= n <= MAX_TOKENS:
        raise _Reject(ValueError, f"window of {n} tokens unsupported (1..{MAX_TOKENS})")


def _check_head_dim(d: int) -> None:
    if not MIN_HEAD_DIM <= d <= MAX_HEAD_DIM:
        raise _Reject(ValueError, f"head dim {d} unsupported ({MIN_HEAD_DIM}..{MAX_HEAD_DIM})")


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int]:
    """Check q / k / v (dtype, shape, sizes, unit last stride); return ``(BW, heads, N, D)``."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_float(name, t)
    if q.dim() != 4:
        raise _Reject(ValueError, f"q must be (B*nW, heads, N, D), got shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise _Reject(ValueError, f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise _Reject(TypeError, f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    bw, heads, n, d = q.shape
    if bw == 0 or heads == 0:
        raise _Reject(ValueError, f"empty input {tuple(q.shape)}")
    _check_tokens(n)
    _check_head_dim(d)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise _Reject(ValueError, f"{name} must be contiguous in its last (head) dim, got strides {t.stride()}")
    return bw, heads, n, d


def _check_dense_bias(bias: torch.Tensor, heads: int, n: int) -> None:
    _check_float("bias", bias)
    if tuple(bias.shape) != (heads, n, n):
        raise _Reject(ValueError, f"bias must be (heads, N, N) = ({heads}, {n}, {n}), got {tuple(bias.shape)}")


def _check_mask(mask: torch.Tensor, bw: int, n: int) -> None:
    _check_float("mask", mask)
    if mask.dim() != 3 or mask.shape[1:] != (n, n) or mask.shape[0] == 0:
        raise _Reject(ValueError, f"mask must be (nW, N, N) with N={n}, got {tuple(mask.shape)}")
    if bw % mask.shape[0] != 0:
        raise _Reject(ValueError, f"B*nW = {bw} is not a multiple of the mask's nW = {mask.shape[0]}")


def _validate(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | None
) -> None:
    """Raise :class:`_Reject` for inputs :func:`window_attention` cannot run."""
    bw, heads, n, _ = _check_qkv(q, k, v)
    if bias is not None:
        _check_dense_bias(bias, heads, n)
    if mask is not None:
        _check_mask(mask, bw, n)
    _check_device([t for t in (q, k, v, bias, mask) if t is not None])


def _supports(validate: Callable[..., object], *args: object) -> tuple[bool, str]:
    """``(True, "")`` when the kernels can run and ``validate(*args)`` passes, else ``(False, reason)``."""
    if _triton_import_error() is not None:
        return False, f"triton not importable ({_triton_import_error()})"
    if not is_available():
        return False, "no CUDA device and TRITON_INTERPRET is not set"
    try:
        validate(*args)
    except _Reject as rej:
        return False, str(rej)
    return True, ""


def _validated(name: str, validate: Callable[..., _T], *args: object) -> _T:
    """``validate(*args)`` for the public entry point ``name``: RuntimeError without triton (before any
    validation message); a rejection raises its ``TypeError`` / ``ValueError`` prefixed with ``name``."""
    _kernels()
    try:
        return validate(*args)
    except _Reject as rej:
        raise rej.kind(f"{name}: {rej}") from None


def supports(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | None = None
) -> tuple[bool, str]:
    """Whether :func:`window_attention` can run these inputs; ``(False, reason)`` when not."""
    return _supports(_validate, q, k, v, bias, mask)


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------
def _dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: exact fp32 unless torch allows TF32 matmuls (ignored for fp16 / bf16)."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _num_warps(n_pad: int, backward: bool) -> int:
    """Warps per program (a heuristic, not autotuned): the backward holds ~5 (N_PAD, N_PAD) fp32 tiles."""
    if n_pad >= 64:
        return 8 if backward else 4
    return 4 if backward else 2


def _strides3(t: torch.Tensor | None) -> tuple[int, int, int]:
    """The first three strides of ``t`` (q/k/v/o: window, head, token; bias / mask: their three dims); zeros for
    an absent tensor."""
    return (0, 0, 0) if t is None else (t.stride(0), t.stride(1), t.stride(2))


def _launch_meta(n: int, d: int, dtype: torch.dtype, backward: bool) -> dict[str, object]:
    """Block sizes, dot precision and warps of a launch for ``n`` tokens of head dim ``d``."""
    n_pad = _pad(n)
    return {
        "N_PAD": n_pad,
        "D_PAD": _pad(d),
        "DOT_PREC": _dot_precision(dtype),
        "num_warps": _num_warps(n_pad, backward=backward),
    }


def _meta(
    n: int, d: int, dtype: torch.dtype, bias: torch.Tensor | None, mask: torch.Tensor | None, backward: bool
) -> dict[str, object]:
    """The constexprs and launch options both kernels share."""
    return {**_launch_meta(n, d, dtype, backward), "HAS_BIAS": bias is not None, "HAS_MASK": mask is not None}


def window_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel: ``(o (BW, heads, N, D) contiguous in q's dtype, fp32 lse (BW, heads, N_PAD))``."""
    bw, heads, n, d = q.shape
    o = torch.empty((bw, heads, n, d), device=q.device, dtype=q.dtype)
    lse = torch.empty((bw, heads, _pad(n)), device=q.device, dtype=torch.float32)
    n_mask = 1 if mask is None else mask.shape[0]
    _kernels()._window_attention_fwd_kernel[(bw, heads)](
        q, k, v, o, lse, q if bias is None else bias, q if mask is None else mask,  # q stands in, never read
        *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(o), *_strides3(bias), *_strides3(mask),
        n, d, n_mask, float(scale),
        **_meta(n, d, q.dtype, bias, mask, backward=False),
    )  # fmt: skip
    return o, lse


def _bias_grad_partials(
    bw: int, heads: int, n: int, bias_grad: bool, device: torch.device
) -> tuple[int, int, torch.Tensor]:
    """Backward grid: ``(windows per program, groups, fp32 (groups, heads, N_PAD, N_PAD) partial bias sums)``
    (a program reduces several windows of one head when the bias needs a gradient; one window otherwise)."""
    n_pad = _pad(n)
    per_prog = max(1, math.ceil(bw * heads / _BWD_TARGET_PROGRAMS)) if bias_grad else 1
    groups = math.ceil(bw / per_prog)
    part = torch.empty((groups, heads, n_pad, n_pad) if bias_grad else (1,), device=device, dtype=torch.float32)
    return per_prog, groups, part


def _launch_backward(grid: tuple[int, int], *args: object, **meta: object) -> None:
    """Launch the backward kernel on ``grid`` (the seam where a kernel too large for the device fails)."""
    _kernels()._window_attention_bwd_kernel[grid](*args, **meta)


def _is_out_of_resources(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfResources"  # triton.runtime.errors.OutOfResources (shared memory, ...)


def _with_torch_fallback(launch: Callable[[], _T], fallback: Callable[[], _T]) -> _T:
    """``launch()``; if the kernel does not fit the device (triton's ``OutOfResources``), log and ``fallback()``."""
    try:
        return launch()
    except Exception as exc:
        if not _is_out_of_resources(exc):
            raise
        logger.warning("window attention backward: %s; using the torch fallback for this call", exc)
        return fallback()


def _torch_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    scale: float,
    bias_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(dq, dk, dv, fp32 (heads, N, N) bias gradient summed over windows or None)`` recomputed in fp32 torch
    (the fallback of the backward kernel, O(BW*heads*N^2) memory)."""
    heads, n = q.shape[1], q.shape[2]
    with torch.enable_grad():
        qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
        attn = (qf * scale) @ kf.transpose(-2, -1)
        dense = None
        if bias is not None:
            dense = bias.detach().float().requires_grad_()
            attn = attn + dense
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(-1, nw, heads, n, n) + mask.float()[None, :, None]).view(attn.shape)
        out = torch.softmax(attn, dim=-1) @ vf
        grads = torch.autograd.grad(out, [qf, kf, vf] + ([dense] if bias_grad else []), do.float())
    dq, dk, dv = (g.to(q.dtype) for g in grads[:3])
    return dq, dk, dv, (grads[3] if bias_grad else None)


def window_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    do: torch.Tensor,
    lse: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    scale: float,
    bias_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(dq, dk, dv, d bias in the bias dtype or None)`` of :func:`window_attention_forward`'s output.

    Launches the backward kernel; if it does not fit the device (e.g. fp32 with D = 64 needs ~200 KB of shared
    memory), falls back to an fp32 torch recompute instead of failing in the middle of a training step.
    """
    do = do if do.is_contiguous() else do.contiguous()
    bw, heads, n, d = q.shape

    def launch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        per_prog, groups, part = _bias_grad_partials(bw, heads, n, bias_grad, q.device)
        dq, dk, dv = (torch.empty_like(o) for _ in range(3))
        n_mask = 1 if mask is None else mask.shape[0]
        _launch_backward(
            (groups, heads),
            q, k, v, o, do, lse, dq, dk, dv, part, q if bias is None else bias, q if mask is None else mask,
            *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(o), *_strides3(dq), *_strides3(bias),
            *_strides3(mask),
            n, d, bw, per_prog, n_mask, float(scale),
            BIAS_GRAD=bias_grad, **_meta(n, d, q.dtype, bias, mask, backward=True),
        )  # fmt: skip
        return dq, dk, dv, (part.sum(0)[:, :n, :n] if bias_grad else None)

    dq, dk, dv, dbias = _with_torch_fallback(launch, lambda: _torch_backward(q, k, v, do, bias, mask, scale, bias_grad))
    return dq, dk, dv, (dbias.to(bias.dtype) if bias_grad else None)


# --------------------------------------------------------------------------------------------
# autograd wrapper and public entry point
# --------------------------------------------------------------------------------------------
class WindowAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: inputs ``(q, k, v, bias, mask, scale)``; the mask gets no gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor | None,
        mask: torch.Tensor | None,
        scale: float,
    ) -> torch.Tensor:
        o, lse = window_attention_forward(q, k, v, bias, mask, scale)
        ctx.save_for_backward(q, k, v, o, lse, bias, mask)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, do: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, o, lse, bias, mask = ctx.saved_tensors
        bias_grad = bias is not None and ctx.needs_input_grad[3]
        dq, dk, dv, dbias = window_attention_backward(q, k, v, o, do, lse, bias, mask, ctx.scale, bias_grad)
        return dq, dk, dv, dbias, None, None


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Swin window attention ``softmax(scale * q @ k^T + bias + mask) @ v``, fused, with autograd.

    Args:
        q, k, v: ``(B*nW, heads, N, D)``, one dtype of float32/float16/bfloat16, same device (CUDA, or CPU
            under ``TRITON_INTERPRET=1``), unit stride in the last dim (other strides are free, e.g. the
            permuted views of Swin's packed qkv). ``1 <= N <= 64``, ``8 <= D <= 64``.
        bias: the pre-gathered relative-position bias ``(heads, N, N)`` (any float dtype), or ``None`` for no
            bias. Gets a gradient (summed over windows).
        mask: ``(nW, N, N)`` additive mask (0 / -100 or -inf); row ``w`` of q uses ``mask[w % nW]``. No gradient.
        scale: logit scale, default ``D ** -0.5``.

    Returns:
        ``(B*nW, heads, N, D)`` in q's dtype (contiguous).

    Raises:
        TypeError / ValueError: unsupported dtype / shape / device / layout (see :func:`supports`), the message
            starting with ``window_attention``.
        RuntimeError: triton is not installed.
    """
    _validated("window_attention", _validate, q, k, v, bias, mask)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return WindowAttentionFunction.apply(q, k, v, bias, mask, float(scale))
