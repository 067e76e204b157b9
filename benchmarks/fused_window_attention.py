"""Experimental fused Swin window attention variants in Triton (benchmarks only; no model uses them).

The shipped kernel, :mod:`patchloupe.kernels.attention`, takes a pre-gathered bias and a mask tensor. This
module adds the modes that ``benchmarks/gpu_attention.py`` compares it with: the bias gathered in-kernel from
the ``(table, index)`` pair, and the fused shift / partition / reverse with the region mask rebuilt in-kernel
(kernels in ``_fused_window_attention_triton.py``). Validation, availability, launch options, the backward
grid and the torch fallback come from the shipped module. Tested by ``benchmarks/test_fused_window_attention.py``
(Triton interpreter on CPU).

API:

* :func:`window_attention` -- ``(BW, heads, N, D)`` q/k/v, relative-position bias as ``(table, index)``
  (gathered in-kernel; a pre-gathered ``(heads, N, N)`` bias or ``None`` runs the shipped kernel), optional
  ``(nW, N, N)`` additive window mask.
* :func:`window_attention_fused_shift` -- reads the ``(B, H, W, 3*C)`` qkv feature map directly; the
  cyclic shift, window partition, window reverse and shifted-window mask are index arithmetic in the
  kernel, so no rolled / partitioned copies are made. Output ``(B, H, W, C)``.
* :func:`is_available`, :func:`supports`, :func:`supports_fused_shift` -- whether a call can run.

Numerics as the shipped kernel's; the table gradient is scattered from the dense bias gradient through a
one-hot matmul, so repeated backwards give bit-identical results on a given device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import ModuleType

import torch
from patchloupe.kernels.attention import (
    MAX_HEAD_DIM,
    MAX_TOKENS,
    MIN_HEAD_DIM,
    _bias_grad_partials,
    _check_dense_bias,
    _check_device,
    _check_float,
    _check_head_dim,
    _check_mask,
    _check_qkv,
    _check_tokens,
    _kernels,
    _launch_meta,
    _pad,
    _Reject,
    _strides3,
    _supports,
    _validated,
    _with_torch_fallback,
    is_available,
)
from patchloupe.kernels.attention import _torch_backward as _torch_backward_windows
from patchloupe.kernels.attention import window_attention as _window_attention_dense

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

_INDEX_DTYPES = (torch.int32, torch.int64)

BiasArg = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None


def _impl() -> ModuleType:
    _kernels()  # RuntimeError without triton
    import _fused_window_attention_triton  # next to this file (benchmarks/ is on sys.path)

    return _fused_window_attention_triton


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
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
    _check_dense_bias(bias, heads, n)
    return 1, bias, None


def _validate(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: BiasArg, mask: torch.Tensor | None
) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
    bw, heads, n, _ = _check_qkv(q, k, v)
    mode, b, index = _unpack_bias(bias, heads, n)
    if mask is not None:
        _check_mask(mask, bw, n)
    _check_device([t for t in (q, k, v, b, index, mask) if t is not None])
    return mode, b, index


def supports(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: BiasArg, mask: torch.Tensor | None = None
) -> tuple[bool, str]:
    """Whether :func:`window_attention` can run these inputs; ``(False, reason)`` when not."""
    return _supports(_validate, q, k, v, bias, mask)


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
        if self.bias_mode == 2:  # table (T, heads): strides (entry, head, -); index (N, N)
            sb, si = (self.bias.stride(0), self.bias.stride(1), 0), (self.index.stride(0), self.index.stride(1))
        else:
            sb, si = _strides3(self.bias), (0, 0)
        n_mask = 1 if self.mask is None else self.mask.shape[0]
        tensors = [dummy if t is None else t for t in (self.bias, self.index, self.mask)]
        return tensors, [*sb, *si, *_strides3(self.mask)], n_mask

    def meta(self, dtype: torch.dtype, backward: bool) -> dict[str, object]:
        """The constexprs and launch options both kernels share."""
        geom = self.geom
        modes = {"SHIFTED": geom.shifted, "BIAS_MODE": self.bias_mode, "MASK_MODE": self.mask_mode}
        return {**_launch_meta(geom.n, geom.d, dtype, backward), **modes}


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


def _launch_backward(spec: _Spec, bias_grad: bool, *tensors: torch.Tensor) -> torch.Tensor | None:
    """Fill dq/dk/dv of ``tensors = (q, k, v, o, do, lse, dq, dk, dv)`` (same strides for the three; ``do``
    has ``o``'s strides). Returns the fp32 bias gradient ``(heads, N, N)`` summed over windows when ``bias_grad``.
    """
    q, dq = tensors[0], tensors[6]
    geom = spec.geom
    per_prog, groups, part = _bias_grad_partials(geom.windows, geom.heads, geom.n, bias_grad, q.device)
    bias_tensors, strides, n_mask = spec.kernel_tensors(q)
    _impl()._window_attn_bwd_kernel[(groups, geom.heads)](
        *tensors, part, *bias_tensors,
        *(s for t in tensors[:4] for s in geom.strides(t)), *geom.strides(dq), *strides,
        geom.n, geom.d, geom.windows, per_prog, n_mask, float(spec.scale), *geom.shift_args(),
        BIAS_GRAD=bias_grad, **spec.meta(q.dtype, backward=True),
    )  # fmt: skip
    return part.sum(0)[:, : geom.n, : geom.n] if bias_grad else None


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


def _torch_backward(spec: _Spec, bias_grad: bool, *tensors: torch.Tensor) -> torch.Tensor | None:
    """Same contract as :func:`_launch_backward`, recomputed in fp32 torch (fallback, O(BW*heads*N^2) memory):
    the shipped kernel's fallback on the windows gathered from the map, the bias gathered from the table and the
    region mask rebuilt in torch."""
    q, k, v, _, do, _, dq, dk, dv = tensors
    geom = spec.geom
    heads, d = geom.heads, geom.d
    tok = _shifted_tokens(geom, q.shape[0], q.device) if geom.shifted else None

    def windows(t: torch.Tensor) -> torch.Tensor:  # -> (BW, heads, N, D)
        return t if tok is None else t.reshape(-1, heads, d)[tok].permute(0, 2, 1, 3)

    def unwindows(g: torch.Tensor, out: torch.Tensor) -> None:
        if tok is None:
            out.copy_(g)
            return
        flat = torch.empty((out.shape[0] * out.shape[1] * out.shape[2], heads, d), device=g.device, dtype=g.dtype)
        flat[tok] = g.permute(0, 2, 1, 3)  # the windows tile the map: every token exactly once
        out.copy_(flat.view(out.shape))

    bias = spec.bias if spec.bias_mode != 2 else spec.bias[spec.index].permute(2, 0, 1)
    mask = _shifted_mask(geom, q.device) if spec.mask_mode == 2 else spec.mask
    *grads, dbias = _torch_backward_windows(
        windows(q), windows(k), windows(v), windows(do), bias, mask, spec.scale, bias_grad
    )
    for g, dst in zip(grads, (dq, dk, dv), strict=True):
        unwindows(g, dst)
    return dbias


def _backward(spec: _Spec, bias_grad: bool, *tensors: torch.Tensor) -> torch.Tensor | None:
    """Fill dq/dk/dv of ``tensors = (q, k, v, o, do, lse, dq, dk, dv)``; return the gradient of the bias argument
    (dense bias or table) when ``bias_grad``. Triton backward, or the torch fallback where it does not fit."""
    q, k, v, o, do, *rest = tensors
    tensors = (q, k, v, o, do if do.is_contiguous() else do.contiguous(), *rest)
    dbias = _with_torch_fallback(
        lambda: _launch_backward(spec, bias_grad, *tensors), lambda: _torch_backward(spec, bias_grad, *tensors)
    )
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
        dbias = _backward(spec, bias_grad, q, k, v, o, do, lse, dq, dk, dv)
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
        q, k, v: as :func:`patchloupe.kernels.window_attention`.
        bias: the pair ``(table, index)`` with table ``((2M-1)^2, heads)`` and index ``(N, N)`` int32/int64
            (values in ``[0, T)``, not checked), gathered in-kernel as ``table[index[i, j], h]``; the table gets
            a gradient (scattered from the windows' sum). A pre-gathered ``(heads, N, N)`` bias or ``None``
            runs the shipped kernel, :func:`patchloupe.kernels.window_attention`.
        mask: ``(nW, N, N)`` additive mask (0 / -100 or -inf); row ``w`` of q uses ``mask[w % nW]``.
            No gradient.
        scale: logit scale, default ``D ** -0.5``.

    Returns:
        ``(B*nW, heads, N, D)`` in q's dtype (contiguous).

    Raises:
        TypeError / ValueError: unsupported dtype / shape / device / layout (see :func:`supports`).
        RuntimeError: triton is not installed.
    """
    if not isinstance(bias, (tuple, list)):
        return _window_attention_dense(q, k, v, bias, mask, scale)
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
    return _supports(_validate_fused, qkv, bias, num_heads, window_size, shift_size)


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
        dbias = _backward(spec, bias_grad, q, k, v, out, dout, lse, dq, dk, dv)
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
