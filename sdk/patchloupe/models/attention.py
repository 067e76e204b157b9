"""Window attention with a switchable backend: Triton kernel, PyTorch SDPA, or an explicit reference.

``window_attention(q, k, v, bias, mask=None, scale=None)`` computes, per window,
``softmax(q @ k^T * scale + bias + mask) @ v`` with

- ``q, k, v``: ``(B * nW, heads, N, D)``, windows batch-major (window ``j`` is window ``j % nW`` of image ``j // nW``);
- ``bias``: ``(heads, N, N)`` additive (relative position bias), shared by all windows;
- ``mask``: ``(nW, N, N)`` additive (0 / large negative) or ``None``; window ``j`` uses ``mask[j % nW]``;
- ``scale``: defaults to ``D ** -0.5``.

Backends
--------
``"triton"``
    ``patchloupe.kernels.window_attention`` (same signature), imported lazily. If the module, the
    function, ``kernels.is_available()`` or ``kernels.supports(q, k, v, bias, mask) -> (ok, reason)``
    says no (or the kernel raises, or returns no autograd graph while one is needed), the call falls
    back to ``"sdpa"`` with a debug log message. It never fails because of the kernel.
``"sdpa"``
    ``torch.nn.functional.scaled_dot_product_attention`` with bias and mask folded into one additive
    ``attn_mask``.
``"reference"``
    explicit matmul + softmax (slow, obviously correct; used by tests).
``"auto"`` (default)
    ``"triton"`` when ``q.is_cuda`` and the kernel is available and supports the inputs, else ``"sdpa"``.

Choosing the backend: the environment variable ``PATCHLOUPE_ATTENTION`` (one of ``auto``, ``triton``,
``sdpa``, ``reference``) is read at every call. ``set_attention_backend(name)`` (process-wide) and the
context manager ``attention_backend(name)`` (current thread/context) override it;
``set_attention_backend(None)`` returns to the environment variable. Precedence: context manager >
``set_attention_backend`` > ``PATCHLOUPE_ATTENTION`` > ``"auto"``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "attention_backend",
    "get_attention_backend",
    "resolve_backend",
    "set_attention_backend",
    "window_attention",
    "window_attention_reference",
    "window_attention_sdpa",
]

logger = logging.getLogger(__name__)

#: Valid backend names.
BACKENDS: tuple[str, ...] = ("auto", "triton", "sdpa", "reference")
#: Environment variable read at call time.
ENV_VAR = "PATCHLOUPE_ATTENTION"

_global_backend: str | None = None
_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("patchloupe_attention", default=None)
_bad_env_values: set[str] = set()


# --------------------------------------------------------------------------------------------- selection


def _check_name(name: str) -> str:
    key = str(name).strip().lower()
    if key not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    return key


def set_attention_backend(name: str | None) -> None:
    """Force a backend process-wide (``auto``, ``triton``, ``sdpa``, ``reference``); ``None`` = use the env var."""
    global _global_backend
    _global_backend = None if name is None else _check_name(name)


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Force a backend for the current thread/context: ``with attention_backend("reference"): ...``."""
    token = _context_backend.set(_check_name(name))
    try:
        yield
    finally:
        _context_backend.reset(token)


def get_attention_backend() -> str:
    """The requested backend name (may be ``"auto"``): context manager > set_attention_backend > env var > auto."""
    ctx = _context_backend.get()
    if ctx is not None:
        return ctx
    if _global_backend is not None:
        return _global_backend
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if not env:
        return "auto"
    if env not in BACKENDS:
        if env not in _bad_env_values:  # warn once per bad value, not at every call
            _bad_env_values.add(env)
            logger.warning("ignoring %s=%r (valid: %s); using auto", ENV_VAR, env, ", ".join(BACKENDS))
        return "auto"
    return env


@functools.lru_cache(maxsize=1)
def _load_kernels() -> ModuleType | None:
    """Import ``patchloupe.kernels`` once; ``None`` when it cannot be imported."""
    try:
        return importlib.import_module("patchloupe.kernels")
    except Exception as exc:  # noqa: BLE001 - any import problem means "no kernel"
        logger.debug("patchloupe.kernels unavailable: %s", exc)
        return None


def _triton_fn(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None) -> tuple[Callable | None, str]:
    """The kernel function if it exists, is available and supports these inputs; else ``(None, reason)``."""
    mod = _load_kernels()
    if mod is None:
        return None, "patchloupe.kernels cannot be imported"
    fn = getattr(mod, "window_attention", None)
    if isinstance(fn, ModuleType):  # a submodule of the same name
        fn = getattr(fn, "window_attention", None)
    if not callable(fn):
        return None, "patchloupe.kernels has no window_attention"
    try:
        is_available = getattr(mod, "is_available", None)
        if callable(is_available) and not is_available():
            return None, "patchloupe.kernels.is_available() is False"
        supports = getattr(mod, "supports", None)
        if callable(supports):
            res = supports(q, k, v, bias, mask)
            ok, reason = res if isinstance(res, tuple) else (bool(res), "")
            if not ok:
                return None, f"kernel does not support these inputs: {reason}"
    except Exception as exc:  # noqa: BLE001 - a broken probe must not break inference
        return None, f"kernel probe raised {type(exc).__name__}: {exc}"
    return fn, ""


def resolve_backend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None = None) -> str:
    """The backend a call with these inputs would run: ``"triton"``, ``"sdpa"`` or ``"reference"``."""
    name = get_attention_backend()
    if name == "reference" or name == "sdpa":
        return name
    if name == "auto" and not q.is_cuda:
        return "sdpa"
    fn, reason = _triton_fn(q, k, v, bias, mask)
    if fn is None:
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


def window_attention(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """Windowed attention through the selected backend (see module doc). ``(B*nW, heads, N, D)`` -> same shape."""
    name = get_attention_backend()
    if name == "reference":
        return window_attention_reference(q, k, v, bias, mask, scale)
    if name == "sdpa" or (name == "auto" and not q.is_cuda):
        return window_attention_sdpa(q, k, v, bias, mask, scale)
    fn, reason = _triton_fn(q, k, v, bias, mask)
    if fn is not None:
        try:
            out = fn(q, k, v, bias, mask, scale)
        except Exception as exc:  # noqa: BLE001 - the kernel must never take inference down
            reason = f"kernel raised {type(exc).__name__}: {exc}"
        else:
            if out.shape == q.shape[:3] + v.shape[-1:] and (out.requires_grad or not _needs_grad(q, k, v, bias, mask)):
                return out
            reason = f"kernel returned shape {tuple(out.shape)} / no autograd graph"
    logger.debug("attention backend %s: triton unusable (%s); falling back to sdpa", name, reason)
    return window_attention_sdpa(q, k, v, bias, mask, scale)
