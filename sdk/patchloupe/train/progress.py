"""Training progress: a tqdm bar (loss, lr, ETA) on a TTY, periodic log lines otherwise."""

from __future__ import annotations

import logging
import math
import sys
import time

logger = logging.getLogger(__name__)

__all__ = ["Progress"]


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """Training progress: a tqdm bar on a TTY, periodic log lines otherwise.

    ``enabled=False`` (or a non-TTY stderr, or a non-main rank via ``enabled=is_main_process()``)
    turns the bar off; log lines (``logging.INFO``, every ``log_every`` updates and at the end, with
    rate and ETA) are still emitted unless ``log=False``. Use as a context manager or call
    :meth:`close`.
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "train",
        enabled: bool = True,
        log_every: int = 50,
        log: bool = True,
        log_to: logging.Logger | None = None,
    ) -> None:
        self.total = int(total)
        self.n = int(initial)
        self.desc = desc
        self.log_every = max(1, int(log_every))
        self.log = log
        self.logger = log_to or logger
        self._t0 = time.perf_counter()
        self._n0 = self.n
        self._metrics: dict[str, float] = {}
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.n, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, n: int = 1, **metrics: float) -> None:
        """Advance by ``n`` steps; ``metrics`` (e.g. ``loss=..., lr=...``) are shown / logged."""
        self.n += n
        if metrics:
            self._metrics.update(metrics)
        if self._bar is not None:
            if metrics:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in self._metrics.items()}, refresh=False)
            self._bar.update(n)
        elif self.log and (self.n % self.log_every == 0 or self.n >= self.total):
            self.logger.info("%s", self.line())

    def eta_seconds(self) -> float:
        """Estimated seconds to ``total`` from the rate since construction (``inf`` before any step)."""
        done = self.n - self._n0
        elapsed = time.perf_counter() - self._t0
        if done <= 0:
            return math.inf
        return (self.total - self.n) * elapsed / done

    def line(self) -> str:
        """One status line: ``desc step n/total metrics (rate, elapsed, ETA)``."""
        elapsed = time.perf_counter() - self._t0
        done = self.n - self._n0
        rate = done / elapsed if elapsed > 0 else 0.0
        mets = " ".join(f"{k} {v:.4g}" for k, v in self._metrics.items())
        return (
            f"{self.desc} step {self.n}/{self.total} {mets} ({rate:.2f} step/s, elapsed "
            f"{_fmt_duration(elapsed)}, ETA {_fmt_duration(self.eta_seconds())})"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
