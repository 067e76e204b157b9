"""Fixtures of the training tests: run a training script in a subprocess and SIGKILL it mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest


class TrainProcess:
    """A training script (``script ckpt_dir mode``) run in subprocesses that share one checkpoint folder."""

    def __init__(self, script: Path, ckpt: Path) -> None:
        self.script, self.ckpt = script, ckpt
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error"}

    def launch(self, mode: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, str(self.script), str(self.ckpt), mode]
        return subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def kill_after_checkpoint(self, victim: subprocess.Popen[bytes], min_step: int, timeout_s: float = 120) -> int:
        """SIGKILL ``victim`` once a checkpoint of step >= ``min_step`` exists; returns the latest step then."""
        from patchloupe.train.checkpoint import CheckpointManager

        mgr = CheckpointManager(self.ckpt)
        deadline = time.monotonic() + timeout_s
        while (mgr.latest_step() or 0) < min_step:
            if victim.poll() is not None:
                out = victim.stdout.read().decode() if victim.stdout else ""
                pytest.fail(f"run ended before a checkpoint appeared:\n{out}")
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        if victim.stdout is not None:
            victim.stdout.close()
        assert victim.returncode == -signal.SIGKILL
        killed_at = mgr.latest_step()
        assert killed_at is not None
        return killed_at

    @staticmethod
    def result(proc: subprocess.Popen[bytes], timeout_s: float = 180) -> tuple[int, int]:
        """Wait for ``proc``; it must succeed and print ``RESULT <start_step> <steps>``."""
        out, _ = proc.communicate(timeout=timeout_s)
        assert proc.returncode == 0, out.decode()
        start, steps = (int(v) for v in out.decode().split("RESULT")[1].split())
        return start, steps


@pytest.fixture
def train_process(tmp_path: Path) -> Callable[[str], TrainProcess]:
    """``train_process(script_text)`` -> :class:`TrainProcess` for that script, checkpoints in ``tmp_path/ckpt``."""

    def make(text: str) -> TrainProcess:
        script = tmp_path / "run.py"
        script.write_text(text)
        return TrainProcess(script, tmp_path / "ckpt")

    return make
