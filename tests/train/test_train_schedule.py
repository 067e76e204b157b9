"""The learning-rate schedule (``patchloupe.train.schedule``)."""

from __future__ import annotations

import pytest
from patchloupe.train.schedule import warmup_cosine


def test_warmup_cosine() -> None:
    lrs = [warmup_cosine(s, 10, 2, 1.0, 0.1) for s in range(10)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert warmup_cosine(0, 1, 0, 2.0) == 2.0
