"""Thresholds from defect-free images only (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = ["threshold_from_scores"]


def threshold_from_scores(scores: Sequence[float], false_alarm_rate: float) -> tuple[float, dict[str, Any]]:
    """The threshold that flags about ``false_alarm_rate`` of defect-free images, and a record of how.

    The ``1 - far`` quantile of a normal distribution fitted to the scores' logits (mean and standard
    deviation). With fewer than ``1 / far`` images, which cannot show a ``far`` tail, the threshold is at
    least their maximum (the empirical quantile at that level), so the calibration images themselves pass.
    With ``1 / far`` or more it is the fitted quantile alone: the empirical tail is then set by the few
    highest held-out images, which were scored before they joined the model (a memory scores them against
    fewer images than it holds at inspection) and sit above what good images score later (measured on
    magnetic tile: docs/benchmarks.md, "Operating point"). The threshold is then raised by 1 % of the
    remaining headroom. Scores must be finite and in [0, 1] (ValueError otherwise).
    """
    far = float(false_alarm_rate)
    if not 0.0 < far < 1.0:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate!r}")
    try:
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"scores must be numbers, got {scores!r:.80}") from exc
    if len(s) == 0:
        raise ValueError("calibration needs at least one defect-free image")
    if not np.isfinite(s).all() or (s < 0).any() or (s > 1).any():
        raise ValueError("calibration scores must be finite and in [0, 1] (a NaN or out-of-range score was given)")
    empirical = float(np.quantile(s, 1.0 - far, method="higher"))
    c = np.clip(s, 1e-7, 1 - 1e-7)
    logits = np.log(c) - np.log1p(-c)
    z = NormalDist().inv_cdf(1.0 - far)
    gaussian = float(1.0 / (1.0 + np.exp(-(logits.mean() + z * logits.std(ddof=1 if len(s) > 1 else 0)))))
    floored = len(s) * far < 1.0
    base = max(empirical, gaussian) if floored else gaussian
    thr = min(1.0, base + 0.01 * (1.0 - base) + 1e-6)
    record = {
        "n_images": int(len(s)),
        "false_alarm_rate": far,
        "score_mean": float(s.mean()),
        "score_max": float(s.max()),
        "empirical_quantile": empirical,
        "gaussian_logit_quantile": gaussian,
        "rule": "max(empirical, gaussian)" if floored else "gaussian",
        "threshold": thr,
    }
    return thr, record
