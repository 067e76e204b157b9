"""The training loop shared by every trainer: resume, LR schedule, AMP, checkpoints, progress, loss history.

A trainer builds its model, optimizer and data, then hands :class:`TrainingLoop` a step function
``step_fn(step) -> loss`` (or :class:`StepOutput`) that draws the batch of 0-based optimizer step
``step`` and returns the scalar loss with its graph. The loop owns everything else:

- **schedule**: linear warm-up then cosine decay (:func:`~patchloupe.train.schedule.warmup_cosine`),
  set on every parameter group before each step;
- **optimizer step**: ``zero_grad``, backward (through a ``GradScaler`` under fp16 autocast),
  optional gradient-norm clipping, ``optimizer.step()``; :meth:`TrainingLoop.autocast` gives the step
  function the autocast context of the run's ``amp`` setting;
- **logging**: metrics averaged over each ``log_every`` window (and over ranks), one history entry
  ``{"step", <metrics>..., "lr", "wall_s"}`` per window, a :class:`~patchloupe.train.progress.Progress`
  bar, ``FloatingPointError`` when the mean loss is not finite;
- **checkpoints** (``ckpt_dir``): every ``ckpt_every`` steps and at the end, by rank 0, atomically
  (:class:`~patchloupe.train.checkpoint.CheckpointManager`: model, optimizer, grad scaler, and the run
  settings, history and wall time); ``resume=True`` continues from the latest one.

Per-step randomness is the step function's business: trainers seed it from
``derive_seed(seed, ..., step)``, so a resumed run repeats an uninterrupted one bit-for-bit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch
from torch import nn

from patchloupe.train.checkpoint import CheckpointManager
from patchloupe.train.devices import autocast, resolve_amp
from patchloupe.train.distributed import DistInfo, all_reduce_mean, barrier
from patchloupe.train.progress import Progress
from patchloupe.train.schedule import warmup_cosine

logger = logging.getLogger(__name__)

__all__ = ["LoopConfig", "StepOutput", "TrainResult", "TrainingLoop"]

C = TypeVar("C", bound="LoopConfig")


@dataclass(kw_only=True)
class LoopConfig:
    """Settings the training loop reads; each trainer's config extends it with its own.

    ``steps``: optimizer steps in total (including those before a resume). ``lr``: peak learning rate;
    ``min_lr``: reached at the last step (default ``lr / 100``); ``warmup``: linear warm-up steps
    (default 5 % of ``steps``, at least 1, at most the class's ``warmup_cap``). ``ckpt_dir``: where to
    checkpoint (``None`` = never), every ``ckpt_every`` steps (default ``steps // 10``) and at the end,
    keeping the ``keep_checkpoints`` newest; ``resume``: continue from the latest checkpoint there.
    ``progress``: tqdm bar on a TTY (rank 0); log lines every ``log_every`` steps otherwise (default
    ``steps // 20``, between 1 and 100). ``callback(step, loss)`` runs on every rank after each
    optimizer step (1-based step count; costs a device sync).
    """

    steps: int
    lr: float = 1e-3
    min_lr: float | None = None
    warmup: int | None = None
    ckpt_dir: str | os.PathLike[str] | None = None
    ckpt_every: int | None = None
    keep_checkpoints: int = 2
    resume: bool = False
    progress: bool = True
    log_every: int | None = None
    callback: Callable[[int, float], None] | None = None

    warmup_cap: ClassVar[int] = 2000

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.ckpt_every is not None and self.ckpt_every < 1:
            raise ValueError(f"ckpt_every must be >= 1, got {self.ckpt_every}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")

    @classmethod
    def build(cls: type[C], config: C | None = None, **settings: Any) -> C:
        """``config`` (or the defaults) with ``settings`` overriding its fields; validated again."""
        if config is None:
            return cls(**settings)
        if not isinstance(config, cls):
            raise TypeError(f"config must be a {cls.__name__}, got {type(config).__name__}")
        return dataclasses.replace(config, **settings) if settings else config

    @property
    def final_lr(self) -> float:
        """``min_lr``, or ``lr / 100`` when not set."""
        return float(self.lr) / 100.0 if self.min_lr is None else float(self.min_lr)

    @property
    def warmup_steps(self) -> int:
        """``warmup``, or 5 % of ``steps`` clipped to ``[1, warmup_cap]`` when not set."""
        return min(self.warmup_cap, max(1, round(0.05 * self.steps))) if self.warmup is None else int(self.warmup)

    @property
    def ckpt_interval(self) -> int:
        """``ckpt_every``, or ``steps // 10`` (at least 1) when not set."""
        return max(1, self.steps // 10) if self.ckpt_every is None else int(self.ckpt_every)

    @property
    def log_interval(self) -> int:
        """``log_every`` (at least 1), or ``steps // 20`` clipped to ``[1, 100]`` when not set."""
        return max(1, min(100, self.steps // 20)) if self.log_every is None else max(1, int(self.log_every))


@dataclass
class TrainResult:
    """Outcome of a training run (:func:`~patchloupe.train.stage1.train_generator`,
    :func:`~patchloupe.train.stage2.train_comparator`).

    ``steps``: optimizer steps completed in total (including those before a resume).
    ``final_loss``: mean training loss over the last logging window (averaged over ranks).
    ``wall_s``: wall time of this call; ``total_wall_s``: summed over the original run and its
    resumes (as recorded in the checkpoints). ``history``: one ``{"step", "loss", ..., "lr", "wall_s"}``
    per logging window. ``start_step``: the step this call started from (> 0 after a resume).
    ``checkpoint``: path of the last checkpoint written (``None`` without ``ckpt_dir``).
    """

    steps: int
    final_loss: float
    wall_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    start_step: int = 0
    checkpoint: Path | None = None
    total_wall_s: float = 0.0


class StepOutput(NamedTuple):
    """What a step function returns when it logs more than the loss.

    ``loss``: scalar tensor with its graph (back-propagated by the loop). ``metrics``: the values to
    average per logging window, ``"loss"`` first; 0-d tensors are summed on their device (no sync per
    step), Python floats are averaged with NumPy.
    """

    loss: torch.Tensor
    metrics: Mapping[str, torch.Tensor | float]


StepFn = Callable[[int], "torch.Tensor | StepOutput"]


class _Window:
    """Means of the metrics of the steps since the last flush."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._values: dict[str, list[float]] = {}
        self._order: list[str] = []
        self.n = 0

    def add(self, metrics: Mapping[str, torch.Tensor | float]) -> None:
        for key, value in metrics.items():
            if key not in self._order:
                self._order.append(key)
            if isinstance(value, torch.Tensor):
                if key not in self._sums:
                    self._sums[key] = torch.zeros((), dtype=torch.float64, device=value.device)
                self._sums[key] += value.detach().to(torch.float64)
            else:
                self._values.setdefault(key, []).append(float(value))
        self.n += 1

    def flush(self, dist: DistInfo, device: torch.device) -> dict[str, float]:
        """Window means (averaged over ranks in a distributed run); starts a new window."""
        means: dict[str, float] = {}
        for key in self._order:
            local: torch.Tensor | float
            local = self._sums[key] / self.n if key in self._sums else float(np.mean(self._values[key]))
            means[key] = all_reduce_mean(local, device=device) if dist.distributed else float(local)
        self._sums, self._values, self._order, self.n = {}, {}, [], 0
        return means


class TrainingLoop:
    """Runs ``config.steps`` optimizer steps of a trainer's step function (see the module docstring).

    ``model``: the module being trained (unwrapped; checkpointed, resumed, clipped). ``run``: the
    trainer's settings stored in each checkpoint (a resume with different ones logs a warning).
    ``dist``: the process group (default: single process); in a distributed run ``model`` is wrapped in
    ``DistributedDataParallel`` after a resume, and the step function must call :attr:`wrapped`.
    ``amp``: ``"auto"`` / ``"bf16"`` / ``"fp16"`` / ``"off"`` (:func:`~patchloupe.train.devices.resolve_amp`),
    used through :meth:`autocast`. ``grad_clip``: max global gradient norm (``None`` / 0 = off).
    ``name`` prefixes log lines (``"stage 1"``), ``desc`` labels the progress bar, ``log`` is the
    trainer's logger, ``divergence_hint`` ends the ``FloatingPointError`` message and ``t_start``
    (``time.perf_counter()``, default now) is where this call's wall time starts.
    """

    def __init__(
        self,
        config: LoopConfig,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        run: Mapping[str, Any],
        dist: DistInfo | None = None,
        amp: str | bool | None = None,
        grad_clip: float | None = None,
        name: str = "train",
        desc: str | None = None,
        log: logging.Logger | None = None,
        divergence_hint: str = "lower lr",
        t_start: float | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.wrapped: nn.Module = model
        self.optimizer = optimizer
        self.device = device
        self.run_settings = dict(run)
        self.dist = dist or DistInfo()
        self.amp_dtype = resolve_amp(amp, device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.grad_clip = grad_clip
        self.name = name
        self.desc = desc or name
        self.log = log or logger
        self.divergence_hint = divergence_hint
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.manager = (
            CheckpointManager(config.ckpt_dir, keep=config.keep_checkpoints) if config.ckpt_dir is not None else None
        )

    def autocast(self) -> Any:
        """Autocast context for the step function's forward pass (a no-op when AMP is off)."""
        return autocast(self.device, self.amp_dtype)

    # ------------------------------------------------------------------------------------------ run
    def run(self, step_fn: StepFn) -> TrainResult:
        """Resume (if asked), then run the remaining steps; returns the :class:`TrainResult`."""
        cfg, main = self.config, self.dist.is_main
        steps, log_every, ckpt_every = int(cfg.steps), cfg.log_interval, cfg.ckpt_interval
        start, history, wall_before = self._resume()
        if self.dist.distributed:
            dev = self.device
            ids = [dev.index if dev.index is not None else 0] if dev.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

        last_ckpt: Path | None = None
        window = _Window()
        final_loss = history[-1]["loss"] if history else math.nan
        bar = Progress(
            steps, initial=start, desc=self.desc, enabled=cfg.progress and main, log_every=log_every, log=main,
            log_to=self.log,
        )  # fmt: skip
        try:
            for step in range(start, steps):
                lr_now = warmup_cosine(step, steps, cfg.warmup_steps, float(cfg.lr), cfg.final_lr)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr_now
                out = step_fn(step)
                loss, metrics = (out, None) if isinstance(out, torch.Tensor) else out
                self._optimizer_step(loss)
                done = step + 1
                metrics = {"loss": loss.detach()} if metrics is None else metrics
                window.add(metrics)
                if cfg.callback is not None:
                    cfg.callback(done, float(metrics["loss"]))
                if done % log_every == 0 or done == steps:
                    means = window.flush(self.dist, self.device)
                    if not math.isfinite(means["loss"]):
                        raise FloatingPointError(
                            f"{self.name} loss became {means['loss']} at step {done}: {self.divergence_hint}"
                        )
                    final_loss = means["loss"]
                    elapsed = wall_before + time.perf_counter() - self.t_start
                    history.append({"step": done, **means, "lr": lr_now, "wall_s": round(elapsed, 3)})
                    bar.update(1, **means, lr=lr_now)
                else:
                    bar.update(1)
                if self.manager is not None and (done % ckpt_every == 0 or done == steps):
                    if main:
                        last_ckpt = self._save(done, history, wall_before)
                    if self.dist.distributed:
                        barrier()
        finally:
            bar.close()
        if self.manager is not None and last_ckpt is None and main and start >= steps:
            last_ckpt = self.manager.directory / f"{self.manager.name_for(start)}.json"
        wall = time.perf_counter() - self.t_start
        if main:
            self.log.info("%s done: %d steps, final loss %.6g, %.1f s", self.name, max(start, steps), final_loss, wall)
        return TrainResult(
            steps=max(start, steps),
            final_loss=float(final_loss),
            wall_s=wall,
            history=history,
            start_step=start,
            checkpoint=last_ckpt,
            total_wall_s=wall_before + wall,
        )

    def _optimizer_step(self, loss: torch.Tensor) -> None:
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)
            if self.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            if self.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            opt.step()

    # ------------------------------------------------------------------------------------------ checkpoints
    def _resume(self) -> tuple[int, list[dict[str, float]], float]:
        """``(start step, history, wall time before)`` from the latest checkpoint, or a fresh start."""
        cfg, main = self.config, self.dist.is_main
        if not cfg.resume:
            return 0, [], 0.0
        if self.manager is None:
            if main:
                self.log.warning("%s: resume=True has no effect without ckpt_dir", self.name)
            return 0, [], 0.0
        if self.manager.latest_step() is None:
            if main:
                self.log.info("%s: resume requested but %s has no checkpoint: starting from step 0", self.name,
                              cfg.ckpt_dir)  # fmt: skip
            return 0, [], 0.0
        ckpt = self.manager.load(model=self.model, optimizer=self.optimizer, scaler=self.scaler, restore_rng=False)
        saved = ckpt.extra.get("run", {})
        changed = {k: (saved.get(k), v) for k, v in self.run_settings.items() if k in saved and saved.get(k) != v}
        if main:
            if changed:
                self.log.warning(
                    "%s: resuming with changed settings %s: the run will differ from an uninterrupted one",
                    self.name, changed,
                )  # fmt: skip
            self.log.info("%s: resumed from %s at step %d/%d", self.name, ckpt.path, ckpt.step, cfg.steps)
        return ckpt.step, list(ckpt.extra.get("history", [])), float(ckpt.extra.get("wall_s", 0.0))

    def _save(self, done: int, history: list[dict[str, float]], wall_before: float) -> Path:
        assert self.manager is not None
        extra = {
            "run": self.run_settings,
            "history": history,
            "wall_s": wall_before + time.perf_counter() - self.t_start,
        }
        return self.manager.save(
            done, model=self.model, optimizer=self.optimizer, scaler=self.scaler, extra=extra, rng=False
        )
