"""The generator built on the Triton kernel (interpreter on CPU) predicts what it predicts with SDPA."""

from __future__ import annotations

import patchloupe.kernels as K
import pytest
import torch
from patchloupe.models import attention as A
from patchloupe.models.generator import build_generator


@pytest.mark.skipif(not K.is_available(), reason="triton is not installed or cannot run here")
def test_kernel_generator_triton_matches_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    gen = build_generator("tiny").eval()
    first, second = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    calls = {"n": 0}
    real = K.window_attention

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(K, "window_attention", counting)
    with torch.no_grad():
        with A.attention_backend("sdpa"):
            ref = gen(first, second)
        assert calls["n"] == 0
        with A.attention_backend("triton"):
            out = gen(first, second)
    assert calls["n"] > 0, "the Triton path was not taken"
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
