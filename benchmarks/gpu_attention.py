"""GPU benchmark of the fused Triton window attention vs SDPA vs eager matmul-softmax.

    python benchmarks/gpu_attention.py [--json out.json] [--dtype fp16|bf16|fp32] [--batches 1 8 64]

Shapes: the Swin "paper" preset of the generator (224 x 224 input, 4 x 4 patches, C = 24, heads
(3, 6, 12, 24), window 7 -> N = 49 tokens, head dim D = 8), i.e. four stages with token grids
56 / 28 / 14 / 7 and nW = 64 / 16 / 4 / 1 windows per image, at batch 1, 8 and 64. Stages 1-3 use
the shifted-window block (shift 3, Swin's -100 region mask); stage 4 has a single window, so no
shift (as in Swin). Forward ("fwd") and forward + backward ("fwd+bwd", grads of q, k, v and of the
relative-position bias table) are timed with CUDA events after warm-up, one event pair per call,
with the L2 cache flushed before each call (``--no-flush`` to keep it warm); the median is reported.

Implementations (every one starts from the learned (table, index) bias, so the bias gather is timed).
``triton-gather`` and ``triton-dense`` run the shipped kernel (``patchloupe.kernels.window_attention``, what the
model calls); ``triton-table``, ``triton-roll+part`` and ``triton-fused-shift`` run the experimental variants of
``benchmarks/fused_window_attention.py``:

* ``triton-table``: ``window_attention(q, k, v, (table, index), mask)``, bias gathered in-kernel;
* ``triton-gather``: torch gathers ``table[index]`` (heads, N, N), then the kernel (the model's path);
* ``triton-dense``: the kernel with a bias gathered once outside the timed region (kernel-only view of
  the pre-gathered form; its fwd+bwd yields the dense (heads, N, N) bias grad, not the table grad);
* ``sdpa``: ``F.scaled_dot_product_attention`` with bias + mask folded into one ``attn_mask``;
* ``eager``: explicit matmul-softmax;
* ``triton-roll+part``: from the (B, H, W, 3C) qkv map: torch.roll + window partition copies, the
  plain kernel, window reverse + roll back (what a Swin block does around attention);
* ``triton-fused-shift``: ``window_attention_fused_shift`` on the same map (roll/partition/reverse
  and the mask as index arithmetic in the kernel).

The first five take (B*nW, heads, N, D) q/k/v; the last two compare the whole block-level pipeline.

Reported per row: median ms, achieved TFLOP/s (useful FLOPs: 4*BW*heads*N^2*D forward, 3x that for
forward + backward, without padding or recomputation) against a measured dense matmul rate in the
same dtype, and achieved GB/s of a minimal traffic model (q, k, v read + o written forward; plus
q, k, v, o, dO read + dq, dk, dv written backward; plus mask and bias) against the measured
device-to-device copy bandwidth. Each implementation's output (and gradients) are checked against
an fp32 eager reference in the same run; the exit status is 1 if any check fails.

``--smoke`` runs a tiny subset on CPU under the Triton interpreter (timings meaningless) to test
this script without a GPU. Without a GPU and without ``--smoke`` it prints a message and exits 0.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from patchloupe.models.layers import relative_position_index, shifted_window_mask, window_partition, window_reverse

WINDOW = 7
SHIFT = 3
HEAD_DIM = 8
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# bound on max|x - ref| / max(1, max|ref|) of outputs and gradients vs the fp32 eager reference
TOLERANCES = {torch.float16: 2e-2, torch.bfloat16: 6e-2, torch.float32: 2e-3}
IMPLS = (
    "triton-table",
    "triton-gather",
    "triton-dense",
    "sdpa",
    "eager",
    "triton-roll+part",
    "triton-fused-shift",
)
MAP_IMPLS = ("triton-roll+part", "triton-fused-shift")


@dataclass(frozen=True)
class Stage:
    """One stage of the paper preset: token grid side, heads (D = 8), windows per image."""

    name: str
    grid: int
    heads: int

    @property
    def nw(self) -> int:
        return (self.grid // WINDOW) ** 2

    @property
    def shift(self) -> int:
        return SHIFT if self.grid > WINDOW else 0


PAPER_STAGES = (Stage("stage1", 56, 3), Stage("stage2", 28, 6), Stage("stage3", 14, 12), Stage("stage4", 7, 24))


# ------------------------------------------------------------------------------------------------
# Swin helpers (the package's own, patchloupe.models.layers)
# ------------------------------------------------------------------------------------------------
def partition(x: torch.Tensor, m: int) -> torch.Tensor:
    """(B, H, W, C) -> (B*nW, m*m, C): ``window_partition`` with each window's tokens flattened."""
    return window_partition(x, m).flatten(1, 2)


def split_qkv(x: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(BW, N, 3C) -> q, k, v (BW, heads, N, D) views."""
    bw, n, c3 = x.shape
    q, k, v = x.reshape(bw, n, 3, heads, c3 // (3 * heads)).permute(2, 0, 3, 1, 4)
    return q, k, v


# ------------------------------------------------------------------------------------------------
# problem and implementations
# ------------------------------------------------------------------------------------------------
@dataclass
class Problem:
    """Inputs of one (stage, batch): the qkv map and its partitioned q/k/v, the bias table, mask."""

    stage: Stage
    batch: int
    qkv_map: torch.Tensor  # (B, H, W, 3C)
    q: torch.Tensor  # (BW, heads, N, D) contiguous, windows of the rolled map
    k: torch.Tensor
    v: torch.Tensor
    table: torch.Tensor  # (169, heads)
    index: torch.Tensor  # (49, 49)
    mask: torch.Tensor | None  # (nW, 49, 49) fp32 or None
    dense: torch.Tensor  # (heads, 49, 49) pre-gathered bias
    grad_out: torch.Tensor  # (BW, heads, N, D)
    grad_map: torch.Tensor  # (B, H, W, C)

    @property
    def windows(self) -> int:
        return self.q.shape[0]

    @property
    def scale(self) -> float:
        return HEAD_DIM**-0.5


def make_problem(stage: Stage, batch: int, dtype: torch.dtype, device: str, seed: int = 0) -> Problem:
    g = torch.Generator().manual_seed(seed)
    c = stage.heads * HEAD_DIM
    m, n = WINDOW, WINDOW * WINDOW
    qkv_map = torch.randn(batch, stage.grid, stage.grid, 3 * c, generator=g).to(device, dtype)
    rolled = torch.roll(qkv_map, (-stage.shift, -stage.shift), (1, 2)) if stage.shift else qkv_map
    q, k, v = (t.contiguous() for t in split_qkv(partition(rolled, m), stage.heads))
    table = (0.02 * torch.randn((2 * m - 1) ** 2, stage.heads, generator=g)).to(device, dtype)
    index = relative_position_index(m).to(device)
    mask = shifted_window_mask(stage.grid, stage.grid, m, stage.shift).to(device) if stage.shift else None
    dense = table[index].permute(2, 0, 1).contiguous()
    grad_out = torch.randn(q.shape, generator=g).to(device, dtype)
    grad_map = torch.randn(batch, stage.grid, stage.grid, c, generator=g).to(device, dtype)
    assert n == q.shape[2]
    return Problem(stage, batch, qkv_map, q, k, v, table, index, mask, dense, grad_out, grad_map)


def folded_mask(bias: torch.Tensor, mask: torch.Tensor | None, windows: int) -> torch.Tensor:
    """bias (heads, N, N) + mask (nW, N, N) -> additive attn_mask (BW, heads, N, N) (a broadcast view)."""
    heads, n, _ = bias.shape
    if mask is None:
        return bias[None].expand(windows, heads, n, n)
    nw = mask.shape[0]
    full = bias[None] + mask[:, None].to(bias.dtype)  # (nW, heads, N, N)
    return full[None].expand(windows // nw, nw, heads, n, n).reshape(windows, heads, n, n)


def eager_attention(q, k, v, bias, mask, scale) -> torch.Tensor:
    """softmax(scale q k^T + bias + mask[w % nW]) v, explicit."""
    attn = (q * scale) @ k.transpose(-2, -1) + folded_mask(bias, mask, q.shape[0])
    return torch.softmax(attn, dim=-1) @ v


def impl_fn(name: str, p: Problem) -> tuple[Callable[..., torch.Tensor], list[torch.Tensor]]:
    """(fn, leaf inputs): ``fn(*inputs)`` returns the output; grads are taken w.r.t. ``inputs``."""
    import fused_window_attention as variants  # next to this script
    from patchloupe.kernels import window_attention

    s, mask, index, heads = p.scale, p.mask, p.index, p.stage.heads
    if name == "triton-table":
        return (lambda q, k, v, t: variants.window_attention(q, k, v, (t, index), mask, s)), [p.q, p.k, p.v, p.table]
    if name == "triton-gather":
        return (
            lambda q, k, v, t: window_attention(q, k, v, t[index].permute(2, 0, 1), mask, s),
            [p.q, p.k, p.v, p.table],
        )
    if name == "triton-dense":
        return (lambda q, k, v, b: window_attention(q, k, v, b, mask, s)), [p.q, p.k, p.v, p.dense]
    if name == "sdpa":
        return (
            lambda q, k, v, t: F.scaled_dot_product_attention(
                q, k, v, attn_mask=folded_mask(t[index].permute(2, 0, 1), mask, q.shape[0]), scale=s
            ),
            [p.q, p.k, p.v, p.table],
        )
    if name == "eager":
        return (lambda q, k, v, t: eager_attention(q, k, v, t[index].permute(2, 0, 1), mask, s)), [
            p.q,
            p.k,
            p.v,
            p.table,
        ]
    grid, sh = p.stage.grid, p.stage.shift
    if name == "triton-roll+part":

        def pipeline(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            rolled = torch.roll(x, (-sh, -sh), (1, 2)) if sh else x
            q, k, v = split_qkv(partition(rolled, WINDOW), heads)
            o = variants.window_attention(q, k, v, (t, index), mask, s)
            o = window_reverse(o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1), WINDOW, grid, grid)
            return torch.roll(o, (sh, sh), (1, 2)) if sh else o

        return pipeline, [p.qkv_map, p.table]
    if name == "triton-fused-shift":
        return (
            lambda x, t: variants.window_attention_fused_shift(x, (t, index), heads, WINDOW, sh, s),
            [p.qkv_map, p.table],
        )
    raise ValueError(f"unknown implementation {name}")


def reference_outputs(p: Problem, map_level: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """fp32 eager output and grads (same input list layout as :func:`impl_fn`)."""
    t = p.table.float().requires_grad_()
    if map_level:
        x = p.qkv_map.float().requires_grad_()
        sh, grid = p.stage.shift, p.stage.grid
        rolled = torch.roll(x, (-sh, -sh), (1, 2)) if sh else x
        q, k, v = split_qkv(partition(rolled, WINDOW), p.stage.heads)
        o = eager_attention(q, k, v, t[p.index].permute(2, 0, 1), p.mask, p.scale)
        o = window_reverse(o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1), WINDOW, grid, grid)
        o = torch.roll(o, (sh, sh), (1, 2)) if sh else o
        grads = torch.autograd.grad(o, [x, t], p.grad_map.float())
        return o.detach(), list(grads)
    q, k, v = (x.float().requires_grad_() for x in (p.q, p.k, p.v))
    o = eager_attention(q, k, v, t[p.index].permute(2, 0, 1), p.mask, p.scale)
    grads = torch.autograd.grad(o, [q, k, v, t], p.grad_out.float())
    return o.detach(), list(grads)


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max(1, max |ref|): absolute for O(1) tensors, relative for large sums (table grads)."""
    return (x.float() - ref).abs().max().item() / max(1.0, ref.abs().max().item())


def check(name: str, p: Problem, dtype: torch.dtype, ref: dict[bool, tuple[torch.Tensor, list[torch.Tensor]]]):
    """Errors of output and grads vs the fp32 reference (see :func:`_rel_err`): (ok, err_out, err_grad)."""
    fn, inputs = impl_fn(name, p)
    leaves = [x.detach().requires_grad_() for x in inputs]
    out = fn(*leaves)
    map_level = name in MAP_IMPLS
    ref_out, ref_grads = ref[map_level]
    grads = torch.autograd.grad(out, leaves, p.grad_map if map_level else p.grad_out)
    if name == "triton-dense":  # grad w.r.t. the dense bias: compare its gather-transpose to the table grad
        dense_grad = grads[3].float()
        table_grad = torch.zeros_like(ref_grads[3]).index_add_(
            0, p.index.reshape(-1), dense_grad.reshape(p.stage.heads, -1).t()
        )
        grads = (*grads[:3], table_grad)
    tol = TOLERANCES[dtype]
    err_out = _rel_err(out, ref_out)
    err_grad = max(_rel_err(g, r) for g, r in zip(grads, ref_grads, strict=True))
    ok = err_out <= tol and err_grad <= tol
    return bool(ok), err_out, err_grad


# ------------------------------------------------------------------------------------------------
# timing and roofline references
# ------------------------------------------------------------------------------------------------
class Timer:
    """Median per-call time in ms: CUDA events around each call (L2 flushed before it), or perf_counter on CPU."""

    def __init__(self, device: str, warmup: int, reps: int, flush: bool) -> None:
        self.device, self.warmup, self.reps = device, warmup, reps
        self.cache = torch.empty(256 * 2**20, dtype=torch.int8, device=device) if flush and device == "cuda" else None

    def __call__(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        if self.device != "cuda":
            times = []
            for _ in range(self.reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(times)
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        for i in range(self.reps):
            if self.cache is not None:
                self.cache.zero_()
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))


def measure_copy_gbps(device: str, timer: Timer) -> float:
    nbytes = (1 << 30) if device == "cuda" else (1 << 24)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def measure_matmul_tflops(device: str, dtype: torch.dtype, timer: Timer) -> float:
    n = 8192 if device == "cuda" else 256
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = timer(lambda: a @ b)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def flops(p: Problem, backward: bool) -> float:
    n, d = WINDOW * WINDOW, HEAD_DIM
    fwd = 4.0 * p.windows * p.stage.heads * n * n * d
    return 3 * fwd if backward else fwd


def min_bytes(p: Problem, backward: bool) -> float:
    n = WINDOW * WINDOW
    e = p.q.numel() * p.q.element_size()  # one of q / k / v / o
    extra = (
        p.mask.numel() * p.mask.element_size() if p.mask is not None else 0
    ) + p.dense.numel() * p.dense.element_size()
    traffic = 4 * e + extra
    if backward:
        traffic += 8 * e + extra
    assert n * n * p.stage.heads == p.dense.numel()
    return float(traffic)


@dataclass
class Row:
    stage: str
    batch: int
    windows: int
    heads: int
    mode: str
    impl: str
    ms: float
    tflops: float
    pct_matmul: float
    gbps: float
    pct_copy: float
    max_err_out: float
    max_err_grad: float
    ok: bool


def run(args: argparse.Namespace) -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = DTYPES[args.dtype]
    from patchloupe.kernels import is_available

    if not is_available():
        print("patchloupe.kernels is not available (triton missing?); nothing to benchmark")
        return 0
    timer = Timer(device, args.warmup, args.reps, flush=not args.no_flush)
    copy_gbps = measure_copy_gbps(device, timer)
    mm_tflops = measure_matmul_tflops(device, dtype, timer)
    info = {
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu (triton interpreter) {platform.processor()}",
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if device == "cuda" else None,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dtype": args.dtype,
        "l2_flushed": timer.cache is not None,
        "copy_GBps": copy_gbps,
        "matmul_TFLOPs": mm_tflops,
        "smoke": bool(args.smoke),
    }
    print(f"# {info['device']}  torch {info['torch']}  triton {info['triton']}  cuda {info['cuda']}  {info['date']}")
    print(f"# dtype {args.dtype}; measured copy {copy_gbps:.0f} GB/s, {args.dtype} matmul {mm_tflops:.1f} TFLOP/s")
    stages = [s for s in PAPER_STAGES if s.name in args.stages]
    rows: list[Row] = []
    header = (
        f"{'stage':7} {'B':>3} {'BW':>5} {'h':>3} {'mode':8} {'impl':19} {'ms':>9} {'TFLOP/s':>8} {'%mm':>5} "
        f"{'GB/s':>7} {'%copy':>6} {'err_out':>8} {'err_grad':>8} ok"
    )
    print(header)
    for stage in stages:
        for batch in args.batches:
            p = make_problem(stage, batch, dtype, device)
            ref = {False: reference_outputs(p, False), True: reference_outputs(p, True)}
            for impl in args.impls:
                ok, err_out, err_grad = check(impl, p, dtype, ref)
                fn, inputs = impl_fn(impl, p)
                leaves = [x.detach().requires_grad_() for x in inputs]
                gout = p.grad_map if impl in MAP_IMPLS else p.grad_out
                for mode in ("fwd", "fwd+bwd"):
                    if mode == "fwd":
                        with torch.no_grad():
                            ms = timer(lambda fn=fn, leaves=leaves: fn(*leaves))
                    else:
                        ms = timer(
                            lambda fn=fn, leaves=leaves, gout=gout: torch.autograd.grad(fn(*leaves), leaves, gout)
                        )
                    bwd = mode != "fwd"
                    tf = flops(p, bwd) / (ms * 1e-3) / 1e12
                    gb = min_bytes(p, bwd) / (ms * 1e-3) / 1e9
                    row = Row(
                        stage.name, batch, p.windows, stage.heads, mode, impl, ms, tf, 100 * tf / mm_tflops, gb,
                        100 * gb / copy_gbps, err_out, err_grad, ok,
                    )  # fmt: skip
                    rows.append(row)
                    print(
                        f"{row.stage:7} {batch:>3} {row.windows:>5} {row.heads:>3} {mode:8} {impl:19} {ms:>9.4f} "
                        f"{tf:>8.3f} {row.pct_matmul:>5.1f} {gb:>7.1f} {row.pct_copy:>6.1f} {err_out:>8.1e} "
                        f"{err_grad:>8.1e} {'OK' if ok else 'FAIL'}",
                        flush=True,
                    )
            del p, ref
            if device == "cuda":
                torch.cuda.empty_cache()
    failed = [r for r in rows if not r.ok]
    _summary(rows)
    if args.json:
        out = {"info": info, "rows": [asdict(r) for r in rows]}
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"# wrote {args.json}")
    if failed:
        print(f"# {len(failed)} rows FAILED the correctness check", file=sys.stderr)
        return 1
    return 0


def _summary(rows: list[Row]) -> None:
    """Speed-ups of the Triton variants over SDPA / eager, and fused-shift over roll+partition."""
    by_key = {(r.stage, r.batch, r.mode, r.impl): r.ms for r in rows}
    print("# speed-ups (x, >1 = faster):")
    for stage, batch, mode in sorted({(r.stage, r.batch, r.mode) for r in rows}):

        def ratio(a: str, b: str, stage=stage, batch=batch, mode=mode) -> str:
            ta, tb = by_key.get((stage, batch, mode, a)), by_key.get((stage, batch, mode, b))
            return f"{tb / ta:6.2f}" if ta and tb else "   n/a"

        print(
            f"#  {stage} B={batch:<3} {mode:8} table/sdpa {ratio('triton-table', 'sdpa')}  "
            f"table/eager {ratio('triton-table', 'eager')}  table/gather {ratio('triton-table', 'triton-gather')}  "
            f"table/dense {ratio('triton-table', 'triton-dense')}  "
            f"fused/roll+part {ratio('triton-fused-shift', 'triton-roll+part')}"
        )


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except Exception:  # noqa: BLE001
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", help="write device info and all rows to this JSON file")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--stages", nargs="+", default=[s.name for s in PAPER_STAGES])
    ap.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--no-flush", action="store_true", help="do not flush the L2 cache before each call")
    ap.add_argument("--smoke", action="store_true", help="no GPU: tiny run under the Triton interpreter on CPU")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        if not args.smoke:
            print("gpu_attention: no CUDA GPU found; nothing to benchmark (use --smoke to test the script on CPU)")
            return 0
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before patchloupe.kernels defines its kernels
        torch.set_num_threads(min(2, torch.get_num_threads()))
        args.stages = [s for s in args.stages if s in ("stage3", "stage4")]
        args.batches = [1]
        args.warmup, args.reps = 0, 1
    return run(args)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["PAPER_STAGES", "Problem", "Stage", "check", "impl_fn", "make_problem", "reference_outputs", "main"]
