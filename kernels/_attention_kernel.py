"""Triton kernels of the fused Swin window attention (private; :mod:`patchloupe.kernels.attention` launches them).

Importing this module imports ``triton``; :mod:`patchloupe.kernels.attention` imports it on the first launch, so
that ``patchloupe.kernels`` imports without triton. ``TRITON_INTERPRET=1`` must be set before this module is
first imported for the kernels to run on CPU under the interpreter.

One program owns one (window, head) pair: a whole window (``N <= 64`` tokens, padded to ``N_PAD``, a power of
two >= 16) and a whole head (``D <= 64``, padded to ``D_PAD >= 16`` so that ``tl.dot`` gets blocks of at least
16). Padded keys get a ``-inf`` logit, padded query rows and head dims are loaded as zeros and never stored.
q / k / v / o are ``(BW, heads, N, D)`` tensors addressed through their (window, head, token) strides, with a
unit stride in the head dim.

Logits are ``s = scale * q @ k^T + bias + mask`` accumulated in fp32 (bias ``(heads, N, N)``, mask ``(nW, N, N)``,
window ``w`` using ``mask[w % nW]``); the forward stores the log-sum-exp of every (padded) row, the backward
recomputes ``P = exp(s - lse)``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _io_block(N, D, N_PAD: tl.constexpr, D_PAD: tl.constexpr):
    """Token and head-dim ranges ``(N_PAD,)``, ``(D_PAD,)`` and the ``(N_PAD, D_PAD)`` mask of real elements."""
    offs_n = tl.arange(0, N_PAD)
    offs_d = tl.arange(0, D_PAD)
    io_mask = (offs_n[:, None] < N) & (offs_d[None, :] < D)
    return offs_n, offs_d, io_mask


@triton.jit
def _tile_offsets(w, h, offs_n, offs_d, s0, s1, s2):
    """Element offsets ``(N_PAD, D_PAD)`` of head h, dims ``offs_d`` of the tokens ``offs_n`` of window ``w``."""
    return w * s0 + h * s1 + offs_n[:, None] * s2 + offs_d[None, :]


@triton.jit
def _bias_tile(h, offs_n, N, BIAS, sb0, sb1, sb2, HAS_BIAS: tl.constexpr, N_PAD: tl.constexpr):
    """fp32 ``(N_PAD, N_PAD)`` additive tile of head h shared by all windows: bias, and -inf on padded keys."""
    if HAS_BIAS:
        valid = (offs_n[:, None] < N) & (offs_n[None, :] < N)
        b = tl.load(BIAS + h * sb0 + offs_n[:, None] * sb1 + offs_n[None, :] * sb2, mask=valid, other=0.0)
        b = b.to(tl.float32)
    else:
        b = tl.zeros((N_PAD, N_PAD), dtype=tl.float32)
    return tl.where(offs_n[None, :] < N, b, float("-inf"))


@triton.jit
def _logits(
    q, k, add, w, offs_n, N, scale, MASK, sm0, sm1, sm2, n_mask, HAS_MASK: tl.constexpr, DOT_PREC: tl.constexpr
):
    """fp32 logits ``(N_PAD, N_PAD)`` of window w: scale * q k^T + add (bias tile) + window mask."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale + add
    if HAS_MASK:
        valid = (offs_n[:, None] < N) & (offs_n[None, :] < N)
        mw = w % n_mask
        m = tl.load(MASK + mw * sm0 + offs_n[:, None] * sm1 + offs_n[None, :] * sm2, mask=valid, other=0.0)
        s += m.to(tl.float32)
    return s


@triton.jit
def _attend(s, v, DOT_PREC: tl.constexpr):
    """Softmax of the fp32 logits ``s`` (N_PAD, N_PAD) times v: ``(fp32 out (N_PAD, D_PAD), row log-sum-exp)``."""
    m = tl.max(s, axis=1)
    m = tl.where(m == float("-inf"), 0.0, m)  # fully masked row: keep exp() finite (output is NaN, as in torch)
    p = tl.exp(s - m[:, None])
    lsum = tl.sum(p, axis=1)
    acc = tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc / lsum[:, None], m + tl.log(lsum)


@triton.jit
def _attend_backward(q, k, v, o, do, lse, s, scale, DOT_PREC: tl.constexpr):
    """Gradients of one window from the recomputed logits ``s`` and the forward's ``lse``: fp32
    ``(dq, dk, dv, ds)``, ds = d loss / d logits (the bias gradient of this window)."""
    p = tl.exp(s - lse[:, None])  # padded keys: exp(-inf) = 0
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)  # rowsum(dO * O), 0 on padded rows

    dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PREC)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
    ds = p * (dp - delta[:, None])  # d loss / d logits; 0 on padded rows and keys
    dq = tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC) * scale
    dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PREC) * scale
    return dq, dk, dv, ds


@triton.jit
def _store_grads(DQ, DK, DV, offs, dq, dk, dv, io_mask):
    """Store one window's dq / dk / dv tiles (same offsets for the three) in their tensors' dtypes."""
    tl.store(DQ + offs, dq.to(DQ.dtype.element_ty), mask=io_mask)
    tl.store(DK + offs, dk.to(DK.dtype.element_ty), mask=io_mask)
    tl.store(DV + offs, dv.to(DV.dtype.element_ty), mask=io_mask)


@triton.jit
def _store_bias_partial(DBIAS, g, h, heads, offs_n, dbias, N_PAD: tl.constexpr):
    """Store program (g, h)'s fp32 bias-gradient partial sum into ``DBIAS[g, h]`` ``(groups, heads, N_PAD, N_PAD)``."""
    base = (g * heads + h) * N_PAD * N_PAD
    tl.store(DBIAS + base + offs_n[:, None] * N_PAD + offs_n[None, :], dbias)


@triton.jit
def _window_attention_fwd_kernel(
    Q, K, V, O, LSE, BIAS, MASK,
    sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2, so0, so1, so2,
    sb0, sb1, sb2, sm0, sm1, sm2,
    N, D, n_mask, scale,
    N_PAD: tl.constexpr, D_PAD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """Grid ``(BW, heads)``: O[w, h] = softmax(scale q k^T + bias + mask) v; LSE[w, h, :] (fp32, N_PAD)."""
    w = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    heads = tl.num_programs(1)
    offs_n, offs_d, io_mask = _io_block(N, D, N_PAD, D_PAD)

    q = tl.load(Q + _tile_offsets(w, h, offs_n, offs_d, sq0, sq1, sq2), mask=io_mask, other=0.0)
    k = tl.load(K + _tile_offsets(w, h, offs_n, offs_d, sk0, sk1, sk2), mask=io_mask, other=0.0)
    v = tl.load(V + _tile_offsets(w, h, offs_n, offs_d, sv0, sv1, sv2), mask=io_mask, other=0.0)

    add = _bias_tile(h, offs_n, N, BIAS, sb0, sb1, sb2, HAS_BIAS, N_PAD)
    s = _logits(q, k, add, w, offs_n, N, scale, MASK, sm0, sm1, sm2, n_mask, HAS_MASK, DOT_PREC)
    out, lse = _attend(s, v, DOT_PREC)

    tl.store(O + _tile_offsets(w, h, offs_n, offs_d, so0, so1, so2), out.to(O.dtype.element_ty), mask=io_mask)
    tl.store(LSE + (w * heads + h) * N_PAD + offs_n, lse)


@triton.jit
def _window_attention_bwd_kernel(
    Q, K, V, O, DO, LSE, DQ, DK, DV, DBIAS, BIAS, MASK,
    sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2, so0, so1, so2, sd0, sd1, sd2,
    sb0, sb1, sb2, sm0, sm1, sm2,
    N, D, BW, windows_per_program, n_mask, scale,
    N_PAD: tl.constexpr, D_PAD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    BIAS_GRAD: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """Grid ``(groups, heads)``; program g handles windows ``[g*G, min((g+1)*G, BW))`` of head h.

    Writes dQ/dK/dV (layout ``sd*``, shared by the three) and, with ``BIAS_GRAD``, the sum over its
    windows of dS = d(loss)/d(logits) into ``DBIAS[g, h]`` (fp32 ``(groups, heads, N_PAD, N_PAD)``),
    which the launcher reduces over ``g`` with torch: a deterministic two-stage reduction, no atomics.
    O and dO share the layout ``so*``.
    """
    g = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    heads = tl.num_programs(1)
    offs_n, offs_d, io_mask = _io_block(N, D, N_PAD, D_PAD)

    add = _bias_tile(h, offs_n, N, BIAS, sb0, sb1, sb2, HAS_BIAS, N_PAD)  # hoisted: per head
    dbias = tl.zeros((N_PAD, N_PAD), dtype=tl.float32)
    w_start = g * windows_per_program
    w_end = tl.minimum(w_start + windows_per_program, BW)
    for w in range(w_start, w_end):
        off_o = _tile_offsets(w, h, offs_n, offs_d, so0, so1, so2)
        off_dqkv = _tile_offsets(w, h, offs_n, offs_d, sd0, sd1, sd2)
        q = tl.load(Q + _tile_offsets(w, h, offs_n, offs_d, sq0, sq1, sq2), mask=io_mask, other=0.0)
        k = tl.load(K + _tile_offsets(w, h, offs_n, offs_d, sk0, sk1, sk2), mask=io_mask, other=0.0)
        v = tl.load(V + _tile_offsets(w, h, offs_n, offs_d, sv0, sv1, sv2), mask=io_mask, other=0.0)
        o = tl.load(O + off_o, mask=io_mask, other=0.0)
        do = tl.load(DO + off_o, mask=io_mask, other=0.0)
        lse = tl.load(LSE + (w * heads + h) * N_PAD + offs_n)

        s = _logits(q, k, add, w, offs_n, N, scale, MASK, sm0, sm1, sm2, n_mask, HAS_MASK, DOT_PREC)
        dq, dk, dv, ds = _attend_backward(q, k, v, o, do, lse, s, scale, DOT_PREC)

        _store_grads(DQ, DK, DV, off_dqkv, dq, dk, dv, io_mask)
        if BIAS_GRAD:
            dbias += ds

    if BIAS_GRAD:
        _store_bias_partial(DBIAS, g, h, heads, offs_n, dbias, N_PAD)
