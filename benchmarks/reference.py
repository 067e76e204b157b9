"""The reference workload the latency guard divides by, and the helper that times it interleaved with a benchmark.

A shared CI machine's speed changes from run to run and within a run (other jobs, turbo, cache). Dividing
a benchmark's median by the median of a fixed workload of the same kind (float32 matmuls and a 3x3
convolution, ~40 ms on one core of the development VM), timed in the same rounds at the same thread
count, cancels most of that: ``docs/benchmarks.md`` ("Latency guard") gives the method and the figures.
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

#: rounds of each guarded benchmark (the gate's noise figures in docs/benchmarks.md used the default)
ROUNDS = int(os.environ.get("PATCHLOUPE_BENCH_ROUNDS", "40"))
WARMUP = 3

_g = torch.Generator().manual_seed(0)
_A = torch.randn(512, 512, generator=_g)
_X = torch.randn(1, 32, 128, 128, generator=_g)
_W = torch.randn(64, 32, 3, 3, generator=_g) * 0.05


def reference_workload() -> float:
    """Fixed work: 4 chained 512x512 matmuls and a 32 -> 64 channel 3x3 convolution at 128 x 128."""
    y = _A
    for _ in range(4):
        y = torch.tanh(y @ _A * 0.04)
    z = F.conv2d(_X, _W, padding=1)
    return float(y[0, 0]) + float(z[0, 0, 0, 0])


def interleaved(benchmark: Any, target: Callable[[], Any], rounds: int = ROUNDS, warmup: int = WARMUP) -> Any:
    """``benchmark.pedantic(target)`` with the reference workload timed before every round (untimed by
    pytest-benchmark); its median goes to ``extra_info["reference_median_s"]`` and the benchmark's median
    over it to ``extra_info["ratio"]``, which ``bench_compare.py`` compares with the baseline."""
    ref: list[float] = []

    def setup() -> None:
        t = time.perf_counter()
        reference_workload()
        ref.append(time.perf_counter() - t)

    result = benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=warmup)
    timed = sorted(ref[warmup:]) or sorted(ref)
    if timed and getattr(benchmark, "stats", None) is not None:
        med = timed[len(timed) // 2] if len(timed) % 2 else 0.5 * (timed[len(timed) // 2 - 1] + timed[len(timed) // 2])
        benchmark.extra_info["reference_median_s"] = med
        benchmark.extra_info["ratio"] = benchmark.stats.stats.median / med
    benchmark.extra_info["threads"] = torch.get_num_threads()
    return result


def _cpuinfo(key: str) -> str | None:
    """The first ``key`` line of /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.split(":", 1)[0].strip() == key), None)
    except OSError:
        return None


def cpu_vendor() -> str:
    """``intel``, ``amd``, or the lowercased vendor string (``unknown`` where the OS does not say)."""
    raw = _cpuinfo("vendor_id") or platform.processor() or "unknown"
    return {"genuineintel": "intel", "authenticamd": "amd"}.get(raw.lower(), re.sub(r"[^a-z0-9]+", "", raw.lower()))


def cpu_capability() -> str:
    """The vector ISA torch dispatches its CPU kernels to (``avx512``, ``avx2``, ``default``, ...)."""
    return str(torch.backends.cpu.get_cpu_capability()).lower()


def machine_class() -> str:
    """The baseline file's name for this machine: OS, architecture, CPU count, CPU vendor and the ISA torch
    uses (``linux-x86_64-2cpu-intel-avx512``). Ratios to the reference do not carry across these: the
    reference is float32 GEMM-bound, an inspect is not, and AVX-512 speeds up the first twice as much."""
    base = f"{platform.system().lower()}-{platform.machine()}-{os.cpu_count()}cpu"
    return f"{base}-{cpu_vendor()}-{cpu_capability()}"


def machine_info() -> dict[str, Any]:
    """What a baseline records about the machine and the versions it was measured with."""
    import numpy as np

    cpu = _cpuinfo("model name") or platform.processor()
    try:
        from importlib.metadata import version

        pl = version("patchloupe")
    except Exception:  # noqa: BLE001 - running from a source tree
        pl = "source"
    return {
        "machine_class": machine_class(),
        "cpu": cpu,
        "vendor": cpu_vendor(),
        "cpu_capability": cpu_capability(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "patchloupe": pl,
    }
