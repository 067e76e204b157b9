"""Training progress (``patchloupe.train.progress``): log lines without a TTY."""

from __future__ import annotations

import logging

import pytest
from patchloupe.train.progress import Progress


def test_progress_logs_without_tty(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="patchloupe.train.progress"):
        with Progress(4, log_every=2, enabled=True) as bar:  # stderr is not a TTY under pytest
            for i in range(4):
                bar.update(1, loss=1.0 / (i + 1))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "step 4/4" in lines[-1] and "loss 0.25" in lines[-1] and "ETA" in lines[-1]
