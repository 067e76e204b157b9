"""Experimental fused Swin window attention variants in Triton (benchmarks only; no model uses them).

The shipped kernel, :mod:`patchloupe.kernels.attention`, takes a pre-gathered bias and a mask tensor. This
module keeps the variants that ``benchmarks/gpu_attention.py`` compares it with: the bias gathered in-kernel from
the ``(table, index)`` pair, and the fused shift / partition / reverse with the region mask rebuilt in-kernel.
Tested by ``benchmarks/test_fused_window_attention.py`` (Triton interpreter on CPU).

API:

* :func:`window_attention` -- ``(BW, heads, N, D)`` q/k/v, relative-position bias (pre-gathered or
  ``(table, index)``), optional ``(nW, N, N)`` additive window mask.
* :func:`window_attention_fused_shift` -- reads the ``(B, H, W, 3*C)`` qkv feature map directly; the
  cyclic shift, window partition, window reverse and shifted-window mask are index arithmetic in the
  kernel, so no rolled / partitioned copies are made. Output ``(B, H, W, C)``.
* :func:`is_available`, :func:`supports` -- for the model's dispatch (fall back to SDPA otherwise).

Triton is imported lazily (on the first launch), so this module imports without triton. Kernels
run on CUDA tensors, or on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set
before the first launch).

Numerics: logits, softmax and all matmuls accumulate in fp32 (fp32 inputs use IEEE fp32 dots unless
``torch.backends.cuda.matmul.allow_tf32`` is set, then TF32); outputs and q/k/v gradients are cast
to the input dtype, the bias gradient to the bias dtype. The bias gradient is reduced over windows
deterministically (per-program partial sums, then a torch sum; the table form scatters through a
one-hot matmul), so repeated backwards give bit-identical results on a given device.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TypeVar

import torch

__all__ = [
    "MAX_HEAD_DIM",
    "MAX_TOKENS",
    "MIN_HEAD_DIM",
    "is_available",
    "supports",
    "supports_fused_shift",
    "window_attention",
    "window_attention_fused_shift",
]

logger = logging.getLogger(__name__)

MAX_TOKENS = 64  # tokens per window (a whole window lives in one program)
MIN_HEAD_DIM = 8
MAX_HEAD_DIM = 64
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INDEX_DTYPES = (torch.int32, torch.int64)
# Backward: a program handles several windows of one head when the bias needs a gradient, so the
# fp32 per-program partial sums stay small; aim for about this many programs in total.
_BWD_TARGET_PROGRAMS = 2048

BiasArg = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None
_T = TypeVar("_T")


class _Reject(Exception):
    """Internal: an unsupported input; ``kind`` is the exception type the launcher raises."""

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
        importlib.import_module("triton")
    except Exception as exc:  # ImportError, or a broken install raising something else
        return f"{type(exc).__name__}: {exc}"
    return None


def is_available() -> bool:
    """True when triton imports and kernels can run (a CUDA device, or ``TRITON_INTERPRET=1``)."""
    if _triton_import_error() is not None:
        return False
    return torch.cuda.is_available() or _interpreting()


def _require_triton() -> None:
    err = _triton_import_error()
    if err is not None:
        raise RuntimeError(f"the fused attention variants need triton (pip install triton); import failed: {err}")


def _impl() -> ModuleType:
    _require_triton()
    import _fused_window_attention_triton  # next to this file (benchmarks/ is on sys.path)

    return _fused_window_attention_triton


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _pad(n: int) -> int:
    """Block size for ``n`` tokens / head dims: next power of two, at least 16 (``tl.dot`` minimum)."""
    return max(16, 1 << (n - 1).bit_length())


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


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise _Reject(TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise _Reject(TypeError, f"{name} dtype {t.dtype} unsupported (float32, float16, bfloat16)")


def _unpack_bias(bias: BiasArg, heads: int, n: int) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
    """Return (mode, bias or table, index) after checking shapes; mode as in the triton module."""
    if bias is None:
        return 0, None, None
    if isinstance(bias, (tuple, list)):
        if len(bias) != 2:
            raise _Reject(ValueError, "bias as a sequence must be the pair (table, index)")
        table, index = bias
        _check_float("bias table", table)
        if not isinstance(index, torch.Tensor) or index.dtype not in _INDEX_DTYPES:
            raise _Reject(TypeError, "bias index must be an int32/int64 tensor")
        if table.dim() != 2 or table.shape[1] != heads:
            raise _Reject(ValueError, f"bias table must be (T, heads={heads}), got {tuple(table.shape)}")
        if tuple(index.shape) != (n, n):
            raise _Reject(ValueError, f"bias index must be (N, N) = ({n}, {n}), got {tuple(index.shape)}")
        return 2, table, index
    _check_float("bias", bias)
    if tuple(bias.shape) != (heads, n, n):
        raise _Reject(ValueError, f"bias must be (heads, N, N) = ({heads}, {n}, {n}), got {tuple(bias.shape)}")
    return 1, bias, None


def _check_head_dim(d: int) -> None:
    if not MIN_HEAD_DIM <= d <= MAX_HEAD_DIM:
        raise _Reject(ValueError, f"head dim {d} unsupported ({MIN_HEAD_DIM}..{MAX_HEAD_DIM})")


def _check_tokens(n: int) -> None:
    if not 1 <= n <= MAX_TOKENS:
        raise _Reject(ValueError, f"window of {n} tokens unsupported (1..{MAX_TOKENS})")


def _validate(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: BiasArg, mask: torch.Tensor | None
) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
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
    mode, b, index = _unpack_bias(bias, heads, n)
    tensors = [q, k, v] + [t for t in (b, index) if t is not None]
    if mask is not None:
        _check_float("mask", mask)
        if mask.dim() != 3 or mask.shape[1:] != (n, n) or mask.shape[0] == 0:
            raise _Reject(ValueError, f"mask must be (nW, N, N) with N={n}, got {tuple(mask.shape)}")
        if bw % mask.shape[0] != 0:
            raise _Reject(ValueError, f"B*nW = {bw} is not a multiple of the mask's nW = {mask.shape[0]}")
        tensors.append(mask)
    _check_device(tensors)
    return mode, b, index


def _accepts(validate: Callable[..., object], *args: object) -> tuple[bool, str]:
    """``(True, "")`` when ``validate(*args)`` passes, else ``(False, reason)``: the tail of ``supports*``."""
    try:
        validate(*args)
    except _Reject as rej:
        return False, str(rej)
    return True, ""


def _validated(name: str, validate: Callable[..., _T], *args: object) -> _T:
    """``validate(*args)`` for the public entry point ``name``: needs triton; a rejection raises its
    ``TypeError`` / ``ValueError`` prefixed with ``name``."""
    _require_triton()
    try:
        return validate(*args)
    except _Reject as rej:
        raise rej.kind(f"{name}: {rej}") from None


def supports(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: BiasArg, mask: torch.Tensor | None = None
) -> tuple[bool, str]:
    """Whether :func:`window_attention` can run these inputs; ``(False, reason)`` when not."""
    if _triton_import_error() is not None:
        return False, f"triton not importable ({_triton_import_error()})"
    if not is_available():
        return False, "no CUDA device and TRITON_INTERPRET is not set"
    return _accepts(_validate, q, k, v, bias, mask)


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Geometry:
    """Where windows live. ``shifted=False``: (BW, heads, N, D) tensors; else a (B, H, W, ...) map."""

    windows: int  # BW = B * nW
    heads: int
    n: int
    d: int
    shifted: bool = False
    window: int = 1  # window side (shifted layout)
    height: int = 1
    width: int = 1
    shift: int = 0

    @property
    def windows_per_row(self) -> int:
        return self.width // self.window

    @property
    def windows_per_image(self) -> int:
        return (self.height // self.window) * (self.width // self.window)

    def strides(self, t: torch.Tensor) -> tuple[int, int, int, int]:
        """Kernel strides (s0, s1, s2, s3): plain (window, head, token, 0); shifted (batch, head, row, col)."""
        if self.shifted:
            return t.stride(0), self.d * t.stride(3), t.stride(1), t.stride(2)
        return t.stride(0), t.stride(1), t.stride(2), 0

    def shift_args(self) -> tuple[int, int, int, int, int, int]:
        return self.window, self.height, self.width, self.windows_per_row, self.windows_per_image, self.shift


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


@dataclass(frozen=True, eq=False)
class _Spec:
    """One attention call apart from its q/k/v/o tensors: window geometry, bias, mask and scale."""

    geom: _Geometry
    bias_mode: int  # 0 none, 1 dense (heads, N, N), 2 (table, index)
    bias: torch.Tensor | None  # the dense bias or the table
    index: torch.Tensor | None  # bias_mode 2
    mask_mode: int  # 0 none, 1 the (nW, N, N) tensor ``mask``, 2 Swin regions rebuilt in-kernel (shifted layout)
    mask: torch.Tensor | None
    scale: float

    def kernel_tensors(self, dummy: torch.Tensor) -> tuple[list[torch.Tensor], list[int], int]:
        """Kernel arguments for bias / mask: the tensors (BIAS, INDEX, MASK), their strides (sb0..2, si0..1,
        sm0..2) and n_mask; ``dummy`` stands in for an absent tensor (never read)."""
        b_t, i_t, sb, si = _bias_args(self.bias_mode, self.bias, self.index, dummy)
        m_t, sm, n_mask = _mask_args(self.mask, dummy)
        return [b_t, i_t, m_t], [*sb, *si, *sm], n_mask

    def meta(self, dtype: torch.dtype, backward: bool) -> dict[str, object]:
        """The constexprs and launch options both kernels share."""
        n_pad = _pad(self.geom.n)
        return {
            "N_PAD": n_pad,
            "D_PAD": _pad(self.geom.d),
            "SHIFTED": self.geom.shifted,
            "BIAS_MODE": self.bias_mode,
            "MASK_MODE": self.mask_mode,
            "DOT_PREC": _dot_precision(dtype),
            "num_warps": _num_warps(n_pad, backward=backward),
        }


def _bias_args(
    mode: int, bias: torch.Tensor | None, index: torch.Tensor | None, dummy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int], tuple[int, int]]:
    if mode == 1:
        return bias, dummy, (bias.stride(0), bias.stride(1), bias.stride(2)), (0, 0)
    if mode == 2:
        return bias, index, (bias.stride(0), bias.stride(1), 0), (index.stride(0), index.stride(1))
    return dummy, dummy, (0, 0, 0), (0, 0)


def _mask_args(mask: torch.Tensor | None, dummy: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int], int]:
    if mask is None:
        return dummy, (0, 0, 0), 1
    return mask, (mask.stride(0), mask.stride(1), mask.stride(2)), mask.shape[0]


def _launch_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, spec: _Spec) -> torch.Tensor:
    """Fill ``o``; return the fp32 log-sum-exp ``(BW, heads, N_PAD)``."""
    impl = _impl()
    geom = spec.geom
    lse = torch.empty((geom.windows, geom.heads, _pad(geom.n)), device=q.device, dtype=torch.float32)
    tensors, strides, n_mask = spec.kernel_tensors(q)
    impl._window_attn_fwd_kernel[(geom.windows, geom.heads)](
        q, k, v, o, lse, *tensors,
        *geom.strides(q), *geom.strides(k), *geom.strides(v), *geom.strides(o), *strides,
        geom.n, geom.d, n_mask, float(spec.scale), *geom.shift_args(),
        **spec.meta(q.dtype, backward=False),
    )  # fmt: skip
    return lse


def _launch_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    do: torch.Tensor,
    lse: torch.Tensor,
    dq: torch.Tensor,
    dk: torch.Tensor,
    dv: torch.Tensor,
    spec: _Spec,
    bias_grad: bool,
) -> torch.Tensor | None:
    """Fill dq/dk/dv (same strides for the three; ``do`` has ``o``'s strides).

    Returns the fp32 bias gradient ``(heads, N, N)`` summed over windows when ``bias_grad``.
    """
    impl = _impl()
    geom = spec.geom
    n_pad = _pad(geom.n)
    if bias_grad:
        per_prog = max(1, math.ceil(geom.windows * geom.heads / _BWD_TARGET_PROGRAMS))
    else:
        per_prog = 1
    groups = math.ceil(geom.windows / per_prog)
    part = torch.empty((groups, geom.heads, n_pad, n_pad) if bias_grad else (1,), device=q.device, dtype=torch.float32)
    tensors, strides, n_mask = spec.kernel_tensors(q)
    impl._window_attn_bwd_kernel[(groups, geom.heads)](
        q, k, v, o, do, lse, dq, dk, dv, part, *tensors,
        *geom.strides(q), *geom.strides(k), *geom.strides(v), *geom.strides(o), *geom.strides(dq), *strides,
        geom.n, geom.d, geom.windows, per_prog, n_mask, float(spec.scale), *geom.shift_args(),
        BIAS_GRAD=bias_grad, **spec.meta(q.dtype, backward=True),
    )  # fmt: skip
    if not bias_grad:
        return None
    return part.sum(0)[:, : geom.n, : geom.n]


def _bias_grad(dbias: torch.Tensor, spec: _Spec) -> torch.Tensor:
    """fp32 (heads, N, N) logits gradient -> gradient of the dense bias, or of the (T, heads) table."""
    bias = spec.bias
    if spec.bias_mode == 1:
        return dbias.to(bias.dtype)
    heads = dbias.shape[0]
    flat_index = spec.index.reshape(-1).long()
    # Deterministic scatter-add: one-hot (T, N*N) @ (N*N, heads); index_add_ would use atomics on CUDA.
    one_hot = (flat_index[None, :] == torch.arange(bias.shape[0], device=dbias.device)[:, None]).to(torch.float32)
    return (one_hot @ dbias.reshape(heads, -1).t()).to(bias.dtype)


def _is_out_of_resources(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfResources"  # triton.runtime.errors.OutOfResources (shared memory, ...)


def _window_yx(geom: _Geometry, wi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) in the shifted frame of token i of window ``wi`` (window number within its image, shape
    (K, 1)), shape (K, N): the torch twin of the coordinate arithmetic in ``_token_offsets`` / ``_region_ids``."""
    m, nww = geom.window, geom.windows_per_row
    i = torch.arange(geom.n, device=wi.device)[None, :]
    return (wi // nww) * m + i // m, (wi % nww) * m + i % m


def _shifted_tokens(geom: _Geometry, batch: int, device: torch.device) -> torch.Tensor:
    """(BW, N) flat indices into the (B*H*W) map of each window's tokens: torch twin of ``_token_offsets``."""
    w = torch.arange(geom.windows, device=device)[:, None]
    b, wi = w // geom.windows_per_image, w % geom.windows_per_image
    y, x = _window_yx(geom, wi)
    return (b * geom.height + (y + geom.shift) % geom.height) * geom.width + (x + geom.shift) % geom.width


def _shifted_mask(geom: _Geometry, device: torch.device) -> torch.Tensor:
    """(nW, N, N) Swin mask from region ids: torch twin of ``_region_ids``."""
    m, h, w_ = geom.window, geom.height, geom.width
    y, x = _window_yx(geom, torch.arange(geom.windows_per_image, device=device)[:, None])
    ids = (
        ((y >= h - m).long() + (y >= h - geom.shift).long()) * 3 + (x >= w_ - m).long() + (x >= w_ - geom.shift).long()
    )
    return torch.where(ids[:, :, None] != ids[:, None, :], -100.0, 0.0)


def _torch_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    dq: torch.Tensor,
    dk: torch.Tensor,
    dv: torch.Tensor,
    spec: _Spec,
    bias_grad: bool,
) -> torch.Tensor | None:
    """Same contract as :func:`_launch_backward`, recomputed in fp32 torch (fallback, O(BW*heads*N^2) memory)."""
    geom = spec.geom
    heads, n, d = geom.heads, geom.n, geom.d
    tok = _shifted_tokens(geom, q.shape[0], q.device) if geom.shifted else None

    def windows(t: torch.Tensor) -> torch.Tensor:  # -> (BW, heads, N, D) fp32
        if tok is None:
            return t.float()
        return t.reshape(-1, heads, d)[tok].float().permute(0, 2, 1, 3)

    def unwindows(g: torch.Tensor, out: torch.Tensor) -> None:
        if tok is None:
            out.copy_(g)
            return
        flat = torch.empty((out.shape[0] * out.shape[1] * out.shape[2], heads, d), device=g.device, dtype=g.dtype)
        flat[tok] = g.permute(0, 2, 1, 3)  # the windows tile the map: every token exactly once
        out.copy_(flat.view(out.shape))

    with torch.enable_grad():
        qf, kf, vf = (windows(t).detach().requires_grad_() for t in (q, k, v))
        attn = (qf * spec.scale) @ kf.transpose(-2, -1)
        dense = None
        if spec.bias_mode:
            bias = spec.bias if spec.bias_mode == 1 else spec.bias[spec.index].permute(2, 0, 1)
            dense = bias.detach().float().requires_grad_()
            attn = attn + dense
        if spec.mask_mode:
            mw = spec.mask.float() if spec.mask_mode == 1 else _shifted_mask(geom, q.device)
            nw = mw.shape[0]
            attn = (attn.view(-1, nw, heads, n, n) + mw[None, :, None]).view(attn.shape)
        out = torch.softmax(attn, dim=-1) @ vf
        inputs = [qf, kf, vf] + ([dense] if bias_grad else [])
        grads = torch.autograd.grad(out, inputs, windows(do))
    for g, dst in zip(grads[:3], (dq, dk, dv), strict=True):
        unwindows(g, dst)
    return grads[3] if bias_grad else None


def _backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    do: torch.Tensor,
    lse: torch.Tensor,
    dq: torch.Tensor,
    dk: torch.Tensor,
    dv: torch.Tensor,
    spec: _Spec,
    bias_grad: bool,
) -> torch.Tensor | None:
    """Fill dq/dk/dv; return the gradient of the bias argument (dense bias or table) when ``bias_grad``.

    Triton backward; if it does not fit the device (e.g. fp32 with D = 64 needs ~200 KB of shared
    memory), fall back to an fp32 torch recompute instead of failing in the middle of a training step."""
    do = do if do.is_contiguous() else do.contiguous()
    try:
        dbias = _launch_backward(q, k, v, o, do, lse, dq, dk, dv, spec, bias_grad)
    except Exception as exc:
        if not _is_out_of_resources(exc):
            raise
        logger.warning("window attention backward: %s; using the torch fallback for this call", exc)
        dbias = _torch_backward(q, k, v, do, dq, dk, dv, spec, bias_grad)
    return _bias_grad(dbias, spec) if bias_grad else None


def _save_for_backward(ctx: torch.autograd.function.FunctionCtx, spec: _Spec, *tensors: torch.Tensor) -> None:
    """Save ``tensors`` and the spec's bias / index / mask with ``ctx.save_for_backward``, the rest on ctx."""
    ctx.save_for_backward(*tensors, spec.bias, spec.index, spec.mask)
    ctx.spec = dataclasses.replace(spec, bias=None, index=None, mask=None)


def _saved(ctx: torch.autograd.function.FunctionCtx) -> tuple[list[torch.Tensor], _Spec]:
    """Inverse of :func:`_save_for_backward`: (the saved tensors, the spec)."""
    *tensors, bias, index, mask = ctx.saved_tensors
    return tensors, dataclasses.replace(ctx.spec, bias=bias, index=index, mask=mask)


class _WindowAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: inputs (q, k, v, bias_or_table, index, mask, bias_mode, scale)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor | None,
        index: torch.Tensor | None,
        mask: torch.Tensor | None,
        bias_mode: int,
        scale: float,
    ) -> torch.Tensor:
        bw, heads, n, d = q.shape
        geom = _Geometry(windows=bw, heads=heads, n=n, d=d)
        spec = _Spec(geom, bias_mode, bias, index, 0 if mask is None else 1, mask, scale)
        o = torch.empty((bw, heads, n, d), device=q.device, dtype=q.dtype)
        lse = _launch_forward(q, k, v, o, spec)
        _save_for_backward(ctx, spec, q, k, v, o, lse)
        return o

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, do: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (q, k, v, o, lse), spec = _saved(ctx)
        dq, dk, dv = (torch.empty_like(o) for _ in range(3))
        bias_grad = spec.bias is not None and ctx.needs_input_grad[3]
        dbias = _backward(q, k, v, o, do, lse, dq, dk, dv, spec, bias_grad)
        return dq, dk, dv, dbias, None, None, None, None


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: BiasArg,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Swin window attention ``softmax(scale * q @ k^T + bias + mask) @ v``, fused, with autograd.

    Args:
        q, k, v: ``(B*nW, heads, N, D)``, one dtype of float32/float16/bfloat16, same device (CUDA,
            or CPU under ``TRITON_INTERPRET=1``), unit stride in the last dim (other strides are
            free, e.g. the permuted views of Swin's packed qkv). ``1 <= N <= 64``, ``8 <= D <= 64``.
        bias: the relative-position bias, either pre-gathered ``(heads, N, N)`` or the pair
            ``(table, index)`` with table ``((2M-1)^2, heads)`` and index ``(N, N)`` int32/int64
            (values in ``[0, T)``, not checked), gathered in-kernel as ``table[index[i, j], h]``.
            ``None`` means no bias. Gets a gradient (summed over windows / scattered into the table).
        mask: ``(nW, N, N)`` additive mask (0 / -100 or -inf); row ``w`` of q uses ``mask[w % nW]``.
            No gradient.
        scale: logit scale, default ``D ** -0.5``.

    Returns:
        ``(B*nW, heads, N, D)`` in q's dtype (contiguous).

    Raises:
        TypeError / ValueError: unsupported dtype / shape / device / layout (see :func:`supports`).
        RuntimeError: triton is not installed.
    """
    bias_mode, b, index = _validated("window_attention", _validate, q, k, v, bias, mask)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return _WindowAttentionFunction.apply(q, k, v, b, index, mask, bias_mode, float(scale))


# --------------------------------------------------------------------------------------------
# fused shift / partition / reverse variant
# --------------------------------------------------------------------------------------------
def _validate_fused(
    qkv: torch.Tensor, bias: BiasArg, num_heads: int, window_size: int, shift_size: int
) -> tuple[_Geometry, int, torch.Tensor | None, torch.Tensor | None]:
    _check_float("qkv", qkv)
    if qkv.dim() != 4:
        raise _Reject(ValueError, f"qkv must be (B, H, W, 3*C), got shape {tuple(qkv.shape)}")
    bsz, height, width, c3 = qkv.shape
    if num_heads <= 0 or c3 % (3 * num_heads) != 0:
        raise _Reject(ValueError, f"qkv channels {c3} are not 3 * num_heads({num_heads}) * head_dim")
    d = c3 // (3 * num_heads)
    _check_head_dim(d)
    if window_size <= 0:
        raise _Reject(ValueError, f"window_size must be positive, got {window_size}")
    n = window_size * window_size
    _check_tokens(n)
    if height % window_size or width % window_size or bsz == 0 or height == 0 or width == 0:
        raise _Reject(ValueError, f"H x W = {height} x {width} must be non-empty multiples of window {window_size}")
    if not 0 <= shift_size < window_size:
        raise _Reject(ValueError, f"shift_size must be in [0, window_size), got {shift_size}")
    if qkv.stride(-1) != 1:
        raise _Reject(ValueError, f"qkv must be contiguous in its channel dim, got strides {qkv.stride()}")
    mode, b, index = _unpack_bias(bias, num_heads, n)
    _check_device([qkv] + [t for t in (b, index) if t is not None])
    windows = bsz * (height // window_size) * (width // window_size)
    geom = _Geometry(
        windows=windows, heads=num_heads, n=n, d=d, shifted=True, window=window_size, height=height, width=width,
        shift=shift_size,
    )  # fmt: skip
    return geom, mode, b, index


def supports_fused_shift(
    qkv: torch.Tensor, bias: BiasArg, num_heads: int, window_size: int, shift_size: int = 0
) -> tuple[bool, str]:
    """Whether :func:`window_attention_fused_shift` can run these inputs; ``(False, reason)`` when not."""
    if not is_available():
        return False, "triton not importable, or no CUDA device and TRITON_INTERPRET is not set"
    return _accepts(_validate_fused, qkv, bias, num_heads, window_size, shift_size)


def _qkv_channels(t: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The q, k, v channel slices (views) of a ``(B, H, W, 3*C)`` map."""
    return t[..., :c], t[..., c : 2 * c], t[..., 2 * c :]


class _FusedShiftFunction(torch.autograd.Function):
    """Autograd wrapper: inputs (qkv, bias_or_table, index, geom, bias_mode, scale)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        qkv: torch.Tensor,
        bias: torch.Tensor | None,
        index: torch.Tensor | None,
        geom: _Geometry,
        bias_mode: int,
        scale: float,
    ) -> torch.Tensor:
        c = geom.heads * geom.d
        spec = _Spec(geom, bias_mode, bias, index, 2 if geom.shift > 0 else 0, None, scale)
        out = torch.empty(qkv.shape[:3] + (c,), device=qkv.device, dtype=qkv.dtype)
        lse = _launch_forward(*_qkv_channels(qkv, c), out, spec)
        _save_for_backward(ctx, spec, qkv, out, lse)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (qkv, out, lse), spec = _saved(ctx)
        c = spec.geom.heads * spec.geom.d
        dqkv = torch.empty(qkv.shape, device=qkv.device, dtype=qkv.dtype)  # every element is written once
        q, k, v = _qkv_channels(qkv, c)
        dq, dk, dv = _qkv_channels(dqkv, c)
        bias_grad = spec.bias is not None and ctx.needs_input_grad[1]
        dbias = _backward(q, k, v, out, dout, lse, dq, dk, dv, spec, bias_grad)
        return dqkv, dbias, None, None, None, None


def window_attention_fused_shift(
    qkv: torch.Tensor,
    bias: BiasArg,
    num_heads: int,
    window_size: int,
    shift_size: int = 0,
    scale: float | None = None,
) -> torch.Tensor:
    """(Shifted-)window attention straight from the qkv feature map, with autograd.

    Equivalent to Swin's ``roll(-shift) -> window_partition -> attention (+ shifted-window mask)
    -> window_reverse -> roll(+shift)``, with the roll / partition / reverse done as address
    arithmetic (modulo H and W) in the kernels and the -100 region mask rebuilt in-kernel, so no
    rolled or partitioned copy of the map is made (forward or backward).

    Args:
        qkv: ``(B, H, W, 3*C)`` output of the block's qkv projection applied per token to the
            *unshifted* map; channels laid out ``(3, heads, D)`` as in Swin's
            ``qkv.reshape(B_, N, 3, heads, D)``; ``C = heads * D``, ``8 <= D <= 64``. H and W must be
            multiples of ``window_size`` (pad before the projection otherwise); unit channel stride.
        bias: pre-gathered ``(heads, N, N)`` or ``(table, index)``, ``N = window_size**2 <= 64``
            (see :func:`window_attention`); gets a gradient.
        num_heads: number of heads.
        window_size: window side M.
        shift_size: cyclic shift in ``[0, M)``; ``> 0`` applies Swin's shifted-window mask (-100).
            (As in Swin, callers set it to 0 when the map is no larger than one window.)
        scale: logit scale, default ``D ** -0.5``.

    Returns:
        ``(B, H, W, C)`` in qkv's dtype, channels ``(heads, D)``, tokens at their unshifted positions
        (ready for the output projection).
    """
    geom, bias_mode, b, index = _validated(
        "window_attention_fused_shift", _validate_fused, qkv, bias, num_heads, window_size, shift_size
    )
    if scale is None:
        scale = geom.d**-0.5
    return _FusedShiftFunction.apply(qkv, b, index, geom, bias_mode, float(scale))
