"""Triton kernels of the attention variants (imported lazily by ``fused_window_attention.py``).

Importing this module imports ``triton``; the public module only does so on first use, so that
``fused_window_attention`` imports without triton. ``TRITON_INTERPRET=1`` must be set before this module
is first imported for the kernels to run on CPU under the interpreter.

One program owns one (window, head) pair: a whole window (``N <= 64`` tokens, padded to ``N_PAD``, a
power of two >= 16) and a whole head (``D <= 64``, padded to ``D_PAD >= 16`` so that ``tl.dot`` gets
blocks of at least 16). Padded keys get a ``-inf`` logit, padded query rows and head dims are loaded
as zeros and never stored.

Two address layouts share the kernels (constexpr ``SHIFTED``):

* plain: q/k/v/o are ``(BW, heads, N, D)`` tensors; per-tensor strides ``(s0, s1, s2, s3)`` are
  ``(window, head, token, unused)``;
* shifted: q/k/v are channel slices of a ``(B, H, W, 3*C)`` map and o of a ``(B, H, W, C)`` map; the
  strides are ``(batch, head (= D), row, col)``. Window ``w`` of image ``b`` covers the rows/cols of
  the cyclically shifted map, so token ``i`` of the window lives at ``((y + shift) % H, (x + shift) % W)``
  of the unshifted map: Swin's ``roll(-shift)`` + partition (and reverse + ``roll(+shift)`` on the
  store) become address arithmetic. The shifted-window mask is rebuilt from region ids.

Logits are ``s = scale * q @ k^T + bias + mask`` accumulated in fp32; the softmax / matmul tail of the forward
and the gradients of the backward are the shipped kernel's (``patchloupe.kernels._attention_kernel``): the
forward stores the log-sum-exp of every (padded) row, the backward recomputes ``P = exp(s - lse)``.
"""

from __future__ import annotations

import triton
import triton.language as tl
from patchloupe.kernels._attention_kernel import (
    _attend,
    _attend_backward,
    _io_block,
    _store_bias_partial,
    _store_grads,
)

# Bias modes (constexpr BIAS_MODE).
BIAS_NONE = 0
BIAS_DENSE = 1  # pre-gathered (heads, N, N)
BIAS_TABLE = 2  # (T, heads) table gathered through an (N, N) index
# Mask modes (constexpr MASK_MODE).
MASK_NONE = 0
MASK_TENSOR = 1  # (nW, N, N) additive mask, window w uses mask[w % nW]
MASK_REGIONS = 2  # Swin shifted-window mask rebuilt from region ids (shifted layout only)

SHIFT_MASK_VALUE = -100.0  # the value Swin puts between tokens of different regions
_SHIFT_MASK_VALUE = tl.constexpr(SHIFT_MASK_VALUE)


@triton.jit
def _token_offsets(w, offs_n, s0, s2, s3, WS, H, W, NWW, NWIN, SHIFT, SHIFTED: tl.constexpr):
    """Element offsets (without head / channel terms) of the tokens ``offs_n`` of window ``w``."""
    if SHIFTED:
        b = w // NWIN
        wi = w % NWIN
        y = (wi // NWW) * WS + offs_n // WS
        x = (wi % NWW) * WS + offs_n % WS
        ys = (y + SHIFT) % H
        xs = (x + SHIFT) % W
        offs = b * s0 + ys * s2 + xs * s3
    else:
        offs = w * s0 + offs_n * s2
    return offs


@triton.jit
def _tile_offsets(w, h, offs_n, offs_d, s0, s1, s2, s3, WS, H, W, NWW, NWIN, SHIFT, SHIFTED: tl.constexpr):
    """Element offsets ``(N_PAD, D_PAD)`` of head h, dims ``offs_d`` of the tokens ``offs_n`` of window ``w``."""
    t = _token_offsets(w, offs_n, s0, s2, s3, WS, H, W, NWW, NWIN, SHIFT, SHIFTED)
    return h * s1 + t[:, None] + offs_d[None, :]


@triton.jit
def _region_ids(w, offs_n, WS, H, W, NWW, NWIN, SHIFT):
    """Swin region id (0..8) of tokens ``offs_n`` of window ``w`` in the shifted frame."""
    wi = w % NWIN
    y = (wi // NWW) * WS + offs_n // WS
    x = (wi % NWW) * WS + offs_n % WS
    ry = (y >= H - WS).to(tl.int32) + (y >= H - SHIFT).to(tl.int32)
    rx = (x >= W - WS).to(tl.int32) + (x >= W - SHIFT).to(tl.int32)
    return ry * 3 + rx


@triton.jit
def _bias_tile(h, offs_n, N, BIAS, sb0, sb1, sb2, INDEX, si0, si1, BIAS_MODE: tl.constexpr, N_PAD: tl.constexpr):
    """fp32 ``(N_PAD, N_PAD)`` additive tile of head h shared by all windows: bias, and -inf on padded keys."""
    valid = (offs_n[:, None] < N) & (offs_n[None, :] < N)
    if BIAS_MODE == 1:
        b = tl.load(BIAS + h * sb0 + offs_n[:, None] * sb1 + offs_n[None, :] * sb2, mask=valid, other=0.0)
        b = b.to(tl.float32)
    elif BIAS_MODE == 2:
        idx = tl.load(INDEX + offs_n[:, None] * si0 + offs_n[None, :] * si1, mask=valid, other=0)
        b = tl.load(BIAS + idx.to(tl.int64) * sb0 + h * sb1, mask=valid, other=0.0).to(tl.float32)
    else:
        b = tl.zeros((N_PAD, N_PAD), dtype=tl.float32)
    return tl.where(offs_n[None, :] < N, b, float("-inf"))


@triton.jit
def _logits(
    q, k, add, w, offs_n, N, scale, MASK, sm0, sm1, sm2, n_mask, WS, H, W, NWW, NWIN, SHIFT,
    MASK_MODE: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """fp32 logits ``(N_PAD, N_PAD)`` of window w: scale * q k^T + add (bias tile) + window mask."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale + add
    if MASK_MODE == 1:
        valid = (offs_n[:, None] < N) & (offs_n[None, :] < N)
        mw = w % n_mask
        m = tl.load(MASK + mw * sm0 + offs_n[:, None] * sm1 + offs_n[None, :] * sm2, mask=valid, other=0.0)
        s += m.to(tl.float32)
    elif MASK_MODE == 2:
        ri = _region_ids(w, offs_n, WS, H, W, NWW, NWIN, SHIFT)
        s += tl.where(ri[:, None] != ri[None, :], _SHIFT_MASK_VALUE, 0.0)
    return s


@triton.jit
def _load_tile(PTR, w, h, offs_n, offs_d, io_mask, s0, s1, s2, s3, WS, H, W, NWW, NWIN, SHIFT, SHIFTED: tl.constexpr):
    """The ``(N_PAD, D_PAD)`` tile of head h of window w (zeros on padding) and its element offsets."""
    offs = _tile_offsets(w, h, offs_n, offs_d, s0, s1, s2, s3, WS, H, W, NWW, NWIN, SHIFT, SHIFTED)
    return tl.load(PTR + offs, mask=io_mask, other=0.0), offs


@triton.jit
def _window_attn_fwd_kernel(
    Q, K, V, O, LSE, BIAS, INDEX, MASK,
    sq0, sq1, sq2, sq3, sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3, so0, so1, so2, so3,
    sb0, sb1, sb2, si0, si1, sm0, sm1, sm2,
    N, D, n_mask, scale, WS, H, W, NWW, NWIN, SHIFT,
    N_PAD: tl.constexpr, D_PAD: tl.constexpr, SHIFTED: tl.constexpr, BIAS_MODE: tl.constexpr,
    MASK_MODE: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """Grid ``(BW, heads)``: O[w, h] = softmax(scale q k^T + bias + mask) v; LSE[w, h, :] (fp32, N_PAD)."""
    w = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    heads = tl.num_programs(1)
    offs_n, offs_d, io_mask = _io_block(N, D, N_PAD, D_PAD)

    q, _ = _load_tile(Q, w, h, offs_n, offs_d, io_mask, sq0, sq1, sq2, sq3, WS, H, W, NWW, NWIN, SHIFT, SHIFTED)
    k, _ = _load_tile(K, w, h, offs_n, offs_d, io_mask, sk0, sk1, sk2, sk3, WS, H, W, NWW, NWIN, SHIFT, SHIFTED)
    v, _ = _load_tile(V, w, h, offs_n, offs_d, io_mask, sv0, sv1, sv2, sv3, WS, H, W, NWW, NWIN, SHIFT, SHIFTED)

    add = _bias_tile(h, offs_n, N, BIAS, sb0, sb1, sb2, INDEX, si0, si1, BIAS_MODE, N_PAD)
    s = _logits(
        q, k, add, w, offs_n, N, scale, MASK, sm0, sm1, sm2, n_mask, WS, H, W, NWW, NWIN, SHIFT, MASK_MODE, DOT_PREC
    )
    out, lse = _attend(s, v, DOT_PREC)

    off_o = _tile_offsets(w, h, offs_n, offs_d, so0, so1, so2, so3, WS, H, W, NWW, NWIN, SHIFT, SHIFTED)
    tl.store(O + off_o, out.to(O.dtype.element_ty), mask=io_mask)
    tl.store(LSE + (w * heads + h) * N_PAD + offs_n, lse)


@triton.jit
def _window_attn_bwd_kernel(
    Q, K, V, O, DO, LSE, DQ, DK, DV, DBIAS, BIAS, INDEX, MASK,
    sq0, sq1, sq2, sq3, sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3, so0, so1, so2, so3, sd0, sd1, sd2, sd3,
    sb0, sb1, sb2, si0, si1, sm0, sm1, sm2,
    N, D, BW, windows_per_program, n_mask, scale, WS, H, W, NWW, NWIN, SHIFT,
    N_PAD: tl.constexpr, D_PAD: tl.constexpr, SHIFTED: tl.constexpr, BIAS_MODE: tl.constexpr,
    MASK_MODE: tl.constexpr, BIAS_GRAD: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """The shipped ``_window_attention_bwd_kernel`` (grid ``(groups, heads)``, partial bias sums in ``DBIAS``)
    with the variant's layouts (``SHIFTED``), bias modes and mask modes."""
    g = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    heads = tl.num_programs(1)
    offs_n, offs_d, io_mask = _io_block(N, D, N_PAD, D_PAD)

    add = _bias_tile(h, offs_n, N, BIAS, sb0, sb1, sb2, INDEX, si0, si1, BIAS_MODE, N_PAD)  # hoisted: per head
    dbias = tl.zeros((N_PAD, N_PAD), dtype=tl.float32)
    w_start = g * windows_per_program
    w_end = tl.minimum(w_start + windows_per_program, BW)
    for w in range(w_start, w_end):
        q, _ = _load_tile(Q, w, h, offs_n, offs_d, io_mask, sq0, sq1, sq2, sq3, WS, H, W, NWW, NWIN, SHIFT, SHIFTED)
        k, _ = _load_tile(K, w, h, offs_n, offs_d, io_mask, sk0, sk1, sk2, sk3, WS, H, W, NWW, NWIN, SHIFT, SHIFTED)
        v, _ = _load_tile(V, w, h, offs_n, offs_d, io_mask, sv0, sv1, sv2, sv3, WS, H, W, NWW, NWIN, SHIFT, SHIFTED)
        o, off_o = _load_tile(O, w, h, offs_n, offs_d, io_mask, so0, so1, so2, so3, WS, H, W, NWW, NWIN, SHIFT, SHIFTED)
        do = tl.load(DO + off_o, mask=io_mask, other=0.0)
        lse = tl.load(LSE + (w * heads + h) * N_PAD + offs_n)

        s = _logits(
            q, k, add, w, offs_n, N, scale, MASK, sm0, sm1, sm2, n_mask, WS, H, W, NWW, NWIN, SHIFT, MASK_MODE, DOT_PREC
        )
        dq, dk, dv, ds = _attend_backward(q, k, v, o, do, lse, s, scale, DOT_PREC)

        off_dqkv = _tile_offsets(w, h, offs_n, offs_d, sd0, sd1, sd2, sd3, WS, H, W, NWW, NWIN, SHIFT, SHIFTED)
        _store_grads(DQ, DK, DV, off_dqkv, dq, dk, dv, io_mask)
        if BIAS_GRAD:
            dbias += ds

    if BIAS_GRAD:
        _store_bias_partial(DBIAS, g, h, heads, offs_n, dbias, N_PAD)
