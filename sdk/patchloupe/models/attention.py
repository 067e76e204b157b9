"""Window attention with a backend chosen when the model is built: Triton kernel, PyTorch SDPA, or a reference.

``window_attention(q, k, v, bias, mask=None, scale=None, backend="auto")`` computes, per window,
``softmax(q @ k^T * scale + bias + mask) @ v`` with

- ``q, k, v``: ``(B * nW, heads, N, D)``, windows batch-major (window ``j`` is window ``j % nW`` of image ``j // nW``);
- ``bias``: ``(heads, N, N)`` additive (relative position bias), shared by all windows;
- ``mask``: ``(nW, N, N)`` additive (0 / large negative) or ``None``; window ``j`` uses ``mask[j % nW]``;
- ``scale``: defaults to ``D ** -0.5``.

Backends
--------
``"triton"``
    :func:`patchloupe.kernels.window_attention` (same signature). If ``kernels.supports(q, k, v, bias, mask)``
    says no (triton missing, no CUDA device and no interpreter, an unsupported shape), or the kernel raises, or
    returns no autograd graph while one is needed, the call falls back to ``"sdpa"`` with a debug log message.
    It never fails because of the kernel.
``"sdpa"``
    ``torch.nn.functional.scaled_dot_product_attention`` with bias and mask folded into one additive
    ``attn_mask``.
``"reference"``
    explicit matmul + softmax (slow, obviously correct; used by tests).
``"auto"`` (default)
    ``"triton"`` for CUDA tensors when the kernel supports the inputs, else ``"sdpa"``.

Choosing the backend (timm's ``fused_attn`` pattern): :class:`WindowAttention` stores its backend when it is
built, from the environment variable ``PATCHLOUPE_ATTENTION`` (one of ``auto``, ``triton``, ``sdpa``,
``reference``; see :func:`default_attention_backend`), so the env var forces the backend of every model built
after it is set. :func:`set_attention_backend` (``model``, ``name``) changes it on a built model and the context
manager :func:`attention_backend` does so temporarily.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from patchloupe import kernels
from patchloupe.models.layers import relative_position_index

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "WindowAttention",
    "attention_backend",
    "default_attention_backend",
    "resolve_backend",
    "set_attention_backend",
    "window_attention",
    "window_attention_reference",
    "window_attention_sdpa",
]

logger = logging.getLogger(__name__)

#: Valid backend names.
BACKENDS: tuple[str, ...] = ("auto", "triton", "sdpa", "reference")
#: Environment variable read when an attention module is built.
ENV_VAR = "PATCHLOUPE_ATTENTION"

_bad_env_values: set[str] = set()


# --------------------------------------------------------------------------------------------- selection


def _check_name(name: str) -> str:
    key = str(name).strip().lower()
    if key not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    return key


def default_attention_backend() -> str:
    """The backend a newly built :class:`WindowAttention` gets: ``PATCHLOUPE_ATTENTION`` if valid, else ``"auto"``."""
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if not env:
        return "auto"
    if env not in BACKENDS:
        if env not in _bad_env_values:  # warn once per bad value, not at every model build
            _bad_env_values.add(env)
            logger.warning("ignoring %s=%r (valid: %s); using auto", ENV_VAR, env, ", ".join(BACKENDS))
        return "auto"
    return env


def _kernel_unusable(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None) -> str:
    """Why the Triton kernel cannot run these inputs ("" when it can)."""
    try:
        ok, reason = kernels.supports(q, k, v, bias, mask)
    except Exception as exc:  # noqa: BLE001 - a broken probe must not break inference
        return f"kernel probe raised {type(exc).__name__}: {exc}"
    return "" if ok else f"kernel does not support these inputs: {reason}"


def resolve_backend(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None = None, backend: str = "auto"
) -> str:
    """The backend a call with these inputs would run: ``"triton"``, ``"sdpa"`` or ``"reference"``."""
    name = _check_name(backend)
    if name in ("reference", "sdpa"):
        return name
    if name == "auto" and not q.is_cuda:
        return "sdpa"
    reason = _kernel_unusable(q, k, v, bias, mask)
    if reason:
        logger.debug("attention backend %s: triton unusable (%s); using sdpa", name, reason)
        return "sdpa"
    return "triton"


# --------------------------------------------------------------------------------------------- implementations


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None) -> int:
    """Validate shapes; return nW (1 without a mask)."""
    if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3] or v.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"q, k, v must be (B*nW, heads, N, D) alike, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    _, heads, n, _ = q.shape
    if bias.shape != (heads, n, n):
        raise ValueError(f"bias must be (heads, N, N) = {(heads, n, n)}, got {tuple(bias.shape)}")
    if mask is None:
        return 1
    if mask.ndim != 3 or mask.shape[1:] != (n, n):
        raise ValueError(f"mask must be (nW, N, N) with N={n}, got {tuple(mask.shape)}")
    nw = mask.shape[0]
    if q.shape[0] % nw:
        raise ValueError(f"batch of windows {q.shape[0]} is not a multiple of nW={nw}")
    return nw


def window_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """Explicit matmul + softmax. ``(B*nW, heads, N, D)`` -> ``(B*nW, heads, N, D)``."""
    nw = _check_shapes(q, k, v, bias, mask)
    bw, heads, n, d = q.shape
    scale = d**-0.5 if scale is None else scale
    attn = (q * scale) @ k.transpose(-2, -1) + bias.to(q.dtype)  # (B*nW, heads, N, N)
    if mask is not None:
        attn = attn.view(bw // nw, nw, heads, n, n) + mask.to(q.dtype)[None, :, None]
        attn = attn.view(bw, heads, n, n)
    return attn.softmax(dim=-1) @ v


def window_attention_sdpa(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """``F.scaled_dot_product_attention`` with ``bias (+ mask)`` folded into one additive ``attn_mask``.

    Shapes as :func:`window_attention_reference`.
    """
    nw = _check_shapes(q, k, v, bias, mask)
    bias = bias.to(q.dtype)
    if mask is None:  # a stride-0 4-D view: SDPA's fused CPU kernel takes it, a 3-D broadcast mask is unfused
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(q.shape[0], -1, -1, -1), scale=scale)
    bw, heads = q.shape[:2]
    n = q.shape[2]
    attn_mask = bias[None] + mask.to(q.dtype)[:, None]  # (nW, heads, N, N)
    if bw != nw:
        # window j uses mask[j % nW]. Materialising (B*nW, heads, N, N) is faster on CPU than viewing q, k, v
        # as 5-D (B, nW, ...) and broadcasting (5-D inputs take SDPA's unfused math path); it costs one
        # attention-matrix-sized buffer, which the unfused paths allocate anyway.
        attn_mask = attn_mask.expand(bw // nw, nw, heads, n, n).reshape(bw, heads, n, n)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _window_attention_triton(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None, scale: float | None, requested: str
) -> Tensor:
    """The Triton kernel, or SDPA (with a debug log message) whenever the kernel cannot give the answer."""
    reason = _kernel_unusable(q, k, v, bias, mask)
    if not reason:
        try:
            out = kernels.window_attention(q, k, v, bias, mask, scale)
        except Exception as exc:  # noqa: BLE001 - the kernel must never take inference down
            reason = f"kernel raised {type(exc).__name__}: {exc}"
        else:
            if out.shape == q.shape[:3] + v.shape[-1:] and (out.requires_grad or not _needs_grad(q, k, v, bias, mask)):
                return out
            reason = f"kernel returned shape {tuple(out.shape)} / no autograd graph"
    logger.debug("attention backend %s: triton unusable (%s); falling back to sdpa", requested, reason)
    return window_attention_sdpa(q, k, v, bias, mask, scale)


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor,
    mask: Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """Windowed attention through ``backend`` (see module doc). ``(B*nW, heads, N, D)`` -> same shape."""
    if backend == "reference":
        return window_attention_reference(q, k, v, bias, mask, scale)
    if backend == "sdpa" or (backend == "auto" and not q.is_cuda):
        return window_attention_sdpa(q, k, v, bias, mask, scale)
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    return _window_attention_triton(q, k, v, bias, mask, scale, backend)


# --------------------------------------------------------------------------------------------- module


class WindowAttention(nn.Module):
    """Window MSA with a learned relative-position-bias table ``((2M-1)^2, heads)``.

    ``(B*nW, N, C) -> (B*nW, N, C)``; the attention itself runs through :func:`window_attention` with the
    backend stored in ``attn_backend`` (``backend`` argument, default :func:`default_attention_backend`).
    """

    def __init__(
        self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True, backend: str | None = None
    ) -> None:
        super().__init__()
        self.dim, self.num_heads, self.window_size = dim, num_heads, window_size
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_backend = default_attention_backend() if backend is None else _check_name(backend)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_bias(self, index: Tensor | None = None) -> Tensor:
        """``(heads, N, N)`` bias for the window whose ``(N, N)`` table index is given (default: the full window)."""
        index = self.relative_position_index if index is None else index
        n = index.shape[0]
        return self.relative_position_bias_table[index.reshape(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()

    def forward(self, x: Tensor, index: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """``x (B*nW, N, C)``, ``index (N, N)`` into the bias table, ``mask (nW, N, N)`` -> ``(B*nW, N, C)``."""
        bw, n, c = x.shape
        if index is None or index.shape == self.relative_position_index.shape:
            index = self.relative_position_index
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B*nW, heads, N, D)
        mask = None if mask is None else mask.to(x.dtype)
        bias = self.relative_bias(index).to(x.dtype)
        out = window_attention(q, k, v, bias, mask, self.scale, self.attn_backend)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))

    def flops(self, num_windows: int, n: int) -> int:
        """FLOPs for ``num_windows`` windows of ``n`` tokens (qkv, q@k^T, attn@v, proj)."""
        tokens = num_windows * n
        return 2 * (tokens * self.dim * 3 * self.dim + 2 * num_windows * n * n * self.dim + tokens * self.dim**2)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, backend={self.attn_backend}"
        )


def set_attention_backend(model: nn.Module, name: str | None) -> nn.Module:
    """Set the backend of every :class:`WindowAttention` in ``model`` (``None``: :func:`default_attention_backend`).

    Returns ``model``.
    """
    backend = default_attention_backend() if name is None else _check_name(name)
    for m in model.modules():
        if isinstance(m, WindowAttention):
            m.attn_backend = backend
    return model


@contextlib.contextmanager
def attention_backend(model: nn.Module, name: str) -> Iterator[nn.Module]:
    """Run ``model``'s window attention through ``name`` inside the block: ``with attention_backend(gen, "sdpa")``.

    Every :class:`WindowAttention`'s own backend is restored on exit.
    """
    backend = _check_name(name)
    saved = [(m, m.attn_backend) for m in model.modules() if isinstance(m, WindowAttention)]
    for m, _ in saved:
        m.attn_backend = backend
    try:
        yield model
    finally:
        for m, old in saved:
            m.attn_backend = old
