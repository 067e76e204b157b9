"""pytest-benchmark timings of the Triton window attention on a CUDA GPU (skipped without one).

Two paper-preset shapes (stage 1 at batch 8: 512 windows x 3 heads; stage 3 at batch 64: 256 windows
x 12 heads; N = 49, D = 8, shifted-window mask), fp16, forward and forward + backward, for the
Triton kernel (in-kernel bias gather), the fused-shift variant, and SDPA as the baseline. Each test
first checks the implementation against the fp32 eager reference. The full sweep with TFLOP/s and
GB/s is ``benchmarks/gpu_attention.py``.
"""

from __future__ import annotations

import gpu_attention as ga
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.benchmark]

SHAPES = [(ga.PAPER_STAGES[0], 8), (ga.PAPER_STAGES[2], 64)]
IMPLS = ["triton-table", "triton-fused-shift", "sdpa"]


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"{s[0].name}-B{s[1]}")
def problem(request: pytest.FixtureRequest):
    stage, batch = request.param
    p = ga.make_problem(stage, batch, torch.float16, "cuda")
    ref = {False: ga.reference_outputs(p, False), True: ga.reference_outputs(p, True)}
    return p, ref


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", IMPLS)
def test_bench_gpu_window_attention_kernel(benchmark, problem, impl: str, mode: str) -> None:
    p, ref = problem
    ok, err_out, err_grad = ga.check(impl, p, torch.float16, ref)
    assert ok, f"{impl}: err_out {err_out:.2e}, err_grad {err_grad:.2e}"

    fn, inputs = ga.impl_fn(impl, p)
    leaves = [x.detach().requires_grad_() for x in inputs]
    gout = p.grad_map if impl in ga.MAP_IMPLS else p.grad_out

    def call() -> None:
        if mode == "fwd":
            with torch.no_grad():
                fn(*leaves)
        else:
            torch.autograd.grad(fn(*leaves), leaves, gout)
        torch.cuda.synchronize()

    call()  # compile / warm up outside the timed rounds
    benchmark.pedantic(call, rounds=50, iterations=5, warmup_rounds=5)
    benchmark.extra_info.update(
        stage=p.stage.name, batch=p.batch, windows=p.windows, heads=p.stage.heads, mode=mode, impl=impl,
        gflop=ga.flops(p, mode != "fwd") / 1e9,
    )  # fmt: skip
