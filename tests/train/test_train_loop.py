"""The shared training loop (``patchloupe.train.loop``): cadence, windows, resume, AMP, configs.

A tiny linear regression stands in for the trainers: the loop does not depend on the model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from patchloupe.train.checkpoint import CheckpointManager
from patchloupe.train.loop import LoopConfig, StepOutput, TrainingLoop
from patchloupe.train.schedule import warmup_cosine
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 1)


def _loop(model: nn.Module, cfg: LoopConfig, **kw: Any) -> TrainingLoop:
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    kw.setdefault("run", {"what": "regression"})
    return TrainingLoop(cfg, model=model, optimizer=opt, device=torch.device("cpu"), name="toy", **kw)


def _regression_step(model: nn.Module) -> Callable[[int], torch.Tensor]:
    """Step ``s`` draws its batch from a generator seeded with ``s`` (as the trainers do), so resuming
    at any step repeats the same data."""
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0]])

    def step_fn(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(8, 4, generator=g)
        return (model(x) - x @ w.T).square().mean()

    return step_fn


def test_checkpoint_cadence_history_and_schedule(tmp_path: Path) -> None:
    model = _model()
    cfg = LoopConfig(steps=7, lr=0.05, warmup=2, ckpt_dir=tmp_path / "ck", ckpt_every=3, keep_checkpoints=5,
                     log_every=2, progress=False)  # fmt: skip
    seen: list[tuple[int, float]] = []
    cfg.callback = lambda step, loss: seen.append((step, loss))
    loop = _loop(model, cfg)
    lrs: list[float] = []
    step_fn = _regression_step(model)

    def recording(step: int) -> torch.Tensor:
        lrs.append(loop.optimizer.param_groups[0]["lr"])
        return step_fn(step)

    res = loop.run(recording)
    # every ckpt_every steps and at the end; keep_checkpoints=5 keeps them all
    assert CheckpointManager(tmp_path / "ck").steps() == [3, 6, 7]
    assert res.checkpoint is not None and res.checkpoint.name == "ckpt-00000007.json"
    assert [h["step"] for h in res.history] == [2, 4, 6, 7]  # every log_every steps and at the end
    assert lrs == [warmup_cosine(s, 7, 2, 0.05, 0.05 / 100) for s in range(7)]
    assert [h["lr"] for h in res.history] == [lrs[1], lrs[3], lrs[5], lrs[6]]
    assert [s for s, _ in seen] == list(range(1, 8))
    # window means: the mean of the per-step losses the callback saw
    assert res.history[0]["loss"] == pytest.approx((seen[0][1] + seen[1][1]) / 2, rel=1e-12)
    assert res.history[-1]["loss"] == pytest.approx(seen[6][1], rel=1e-12) == res.final_loss
    assert res.steps == 7 and res.start_step == 0 and res.total_wall_s >= res.wall_s > 0
    ck = CheckpointManager(tmp_path / "ck").load(restore_rng=False)
    assert ck.extra["run"] == {"what": "regression"} and ck.extra["history"] == res.history

    # keep_checkpoints prunes older ones
    _loop(_model(), LoopConfig(steps=6, ckpt_dir=tmp_path / "k2", ckpt_every=1, progress=False)).run(
        _regression_step(_model())
    )
    assert CheckpointManager(tmp_path / "k2").steps() == [5, 6]


def test_default_ckpt_cadence_is_a_tenth(tmp_path: Path) -> None:
    model = _model()
    _loop(model, LoopConfig(steps=20, ckpt_dir=tmp_path, keep_checkpoints=20, progress=False)).run(
        _regression_step(model)
    )
    assert CheckpointManager(tmp_path).steps() == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]


class _Crash(RuntimeError):
    pass


def test_resume_after_crash_equals_uninterrupted_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kw: dict[str, Any] = dict(steps=9, lr=0.05, ckpt_dir=tmp_path / "ck", ckpt_every=2, log_every=1, progress=False)
    ref_model = _model()
    ref = _loop(ref_model, LoopConfig(**{**kw, "ckpt_dir": tmp_path / "ref"})).run(_regression_step(ref_model))

    def crash(step: int, loss: float) -> None:
        if step == 5:
            raise _Crash

    victim = _model()
    with pytest.raises(_Crash):
        _loop(victim, LoopConfig(**kw, callback=crash)).run(_regression_step(victim))
    assert CheckpointManager(tmp_path / "ck").latest_step() == 4

    resumed = _model()  # fresh weights and optimizer: everything comes from the checkpoint
    with caplog.at_level(logging.INFO):
        res = _loop(resumed, LoopConfig(**kw, resume=True)).run(_regression_step(resumed))
    assert "toy: resumed from" in caplog.text
    assert res.start_step == 4 and res.steps == 9
    assert [h["step"] for h in res.history] == list(range(1, 10))
    assert [(h["loss"], h["lr"]) for h in res.history] == [(h["loss"], h["lr"]) for h in ref.history]
    for a, b in zip(ref_model.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    # resuming a finished run does no step and reports the recorded state
    again = _loop(_model(), LoopConfig(**kw, resume=True)).run(_regression_step(_model()))
    assert again.start_step == again.steps == 9 and again.final_loss == res.final_loss
    assert again.checkpoint is not None and again.checkpoint.name == "ckpt-00000009.json"


def test_resume_edge_cases_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _model()
    with caplog.at_level(logging.INFO, logger="patchloupe.train.loop"):
        r = _loop(model, LoopConfig(steps=2, resume=True, progress=False)).run(_regression_step(model))
        assert r.start_step == 0 and "no effect without ckpt_dir" in caplog.text
        r = _loop(model, LoopConfig(steps=2, resume=True, ckpt_dir=tmp_path, progress=False)).run(
            _regression_step(model)
        )
        assert r.start_step == 0 and "has no checkpoint: starting from step 0" in caplog.text
        cfg = LoopConfig(steps=4, resume=True, ckpt_dir=tmp_path, progress=False)
        _loop(model, cfg, run={"what": "other"}).run(_regression_step(model))
    assert "changed settings {'what': ('regression', 'other')}" in caplog.text


def test_step_output_windows_average_tensor_and_float_metrics() -> None:
    model = _model()
    step_fn = _regression_step(model)

    def with_metrics(step: int) -> StepOutput:
        loss = step_fn(step)
        return StepOutput(loss, {"loss": torch.tensor(float(step)), "aux": 2.0 * step})

    res = _loop(model, LoopConfig(steps=5, log_every=2, progress=False)).run(with_metrics)
    assert [(h["step"], h["loss"], h["aux"]) for h in res.history] == [(2, 0.5, 1.0), (4, 2.5, 5.0), (5, 4.0, 8.0)]
    assert list(res.history[0]) == ["step", "loss", "aux", "lr", "wall_s"]


def test_non_finite_loss_raises_with_hint() -> None:
    model = _model()
    step_fn = _regression_step(model)
    loop = _loop(model, LoopConfig(steps=3, log_every=1, progress=False), divergence_hint="lower lr (0.1)")
    with pytest.raises(FloatingPointError, match=r"toy loss became nan at step 1: lower lr \(0\.1\)"):
        loop.run(lambda step: step_fn(step) * math.nan)


def test_grad_clip_bounds_the_update() -> None:
    """With SGD (lr 1) the first update equals the (clipped) gradient, so its norm is the clip."""
    big = nn.Linear(4, 1)
    with torch.no_grad():
        big.weight.fill_(100.0)
    before = big.weight.detach().clone()
    cfg = LoopConfig(steps=1, lr=1.0, warmup=0, progress=False)
    opt = torch.optim.SGD(big.parameters(), lr=1.0)
    loop = TrainingLoop(cfg, model=big, optimizer=opt, device=torch.device("cpu"), run={}, grad_clip=0.5)
    loop.run(_regression_step(big))
    delta = torch.cat([(big.weight.detach() - before).flatten(), big.bias.grad.flatten() * 0 + 0])
    total = torch.cat([p.grad.flatten() for p in big.parameters()]).norm()
    assert float(total) == pytest.approx(0.5, rel=1e-5)
    assert float(delta.norm()) <= 0.5 + 1e-6


def test_amp_autocast_on_cpu() -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    loop = TrainingLoop(LoopConfig(steps=1), model=model, optimizer=opt, device=torch.device("cpu"), run={},
                        amp="bf16")  # fmt: skip
    assert loop.amp_dtype == torch.bfloat16 and loop.scaler is None
    with loop.autocast():
        assert model(torch.randn(2, 4)).dtype == torch.bfloat16
    off = TrainingLoop(LoopConfig(steps=1), model=model, optimizer=opt, device=torch.device("cpu"), run={}, amp="auto")
    assert off.amp_dtype is None  # "auto" is off on CPU
    with off.autocast():
        assert model(torch.randn(2, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="fp16"):
        TrainingLoop(LoopConfig(steps=1), model=model, optimizer=opt, device=torch.device("cpu"), run={}, amp="fp16")


# ---------------------------------------------------------------------------------------------- configs


def test_loop_config_validation_and_defaults() -> None:
    for bad in (dict(steps=0), dict(steps=5, ckpt_every=0), dict(steps=5, keep_checkpoints=0)):
        with pytest.raises(ValueError, match="must be >= 1"):
            LoopConfig(**bad)
    with pytest.raises(TypeError):
        LoopConfig(5)  # keyword-only
    cfg = LoopConfig(steps=1000, lr=0.02)
    assert cfg.final_lr == pytest.approx(2e-4) and cfg.warmup_steps == 50
    assert cfg.ckpt_interval == 100 and cfg.log_interval == 50
    assert LoopConfig(steps=10).warmup_steps == 1 and LoopConfig(steps=10).ckpt_interval == 1
    assert LoopConfig(steps=10**6).warmup_steps == 2000 and LoopConfig(steps=10**6).log_interval == 100
    assert LoopConfig(steps=10, log_every=0).log_interval == 1
    explicit = LoopConfig(steps=10, min_lr=0.0, warmup=0, ckpt_every=3, log_every=7)
    assert (explicit.final_lr, explicit.warmup_steps, explicit.ckpt_interval, explicit.log_interval) == (0.0, 0, 3, 7)


def test_config_build_overrides_and_revalidates() -> None:
    base = LoopConfig(steps=10, lr=0.5)
    assert LoopConfig.build(base) is base
    over = LoopConfig.build(base, steps=20)
    assert (over.steps, over.lr, base.steps) == (20, 0.5, 10)
    assert LoopConfig.build(steps=3).steps == 3
    with pytest.raises(ValueError, match="steps"):
        LoopConfig.build(base, steps=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        LoopConfig.build(base, stepz=3)
    with pytest.raises(TypeError, match="config must be a"):
        LoopConfig.build({"steps": 3})  # type: ignore[arg-type]


def test_trainer_configs_validate_their_settings() -> None:
    from patchloupe.train.pretrain import PretrainConfig
    from patchloupe.train.stage1 import GeneratorTrainConfig
    from patchloupe.train.stage2 import ComparatorTrainConfig

    for bad, match in ((dict(batch_size=0), "batch_size"), (dict(loss="l1"), "loss"),
                       (dict(distributed="yes"), "distributed"), (dict(steps=0), "steps")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            GeneratorTrainConfig(**{"steps": 1, **bad})
    for bad, match in ((dict(batch_size=1), "batch_size"), (dict(defect_prob=1.5), "defect_prob"),
                       (dict(defect_kinds=["nope"]), "unknown defect kinds")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            ComparatorTrainConfig(steps=1, **bad)
    with pytest.raises(ValueError, match="unknown generator preset"):
        PretrainConfig(preset="huge")
    with pytest.raises(TypeError):
        GeneratorTrainConfig()  # steps is required

    # trainer defaults (as the keyword signatures had them)
    g, c = GeneratorTrainConfig(steps=10**5), ComparatorTrainConfig(steps=10**5)
    assert (g.lr, g.batch_size, g.weight_decay, g.grad_clip, g.amp, g.warmup_steps) == (
        1e-3,
        16,
        0.05,
        1.0,
        "auto",
        2000,
    )
    assert (c.lr, c.batch_size, c.weight_decay, c.offset_jitter, c.warmup_steps) == (3e-3, 32, 1e-4, 0.5, 100)
    assert c.kinds == ComparatorTrainConfig(steps=1, defect_kinds=None).kinds and len(c.kinds) > 1
    assert ComparatorTrainConfig(steps=1, defect_kinds=["scratch"]).kinds == ("scratch",)
    p = PretrainConfig(preset="tiny", steps=40, ckpt_every=None)
    assert p.geometry == ((128, 128), (4, 4))
    t = p.generator_training("/tmp/out")
    assert isinstance(t, GeneratorTrainConfig) and t.ckpt_every == 2 and t.ckpt_dir == Path("/tmp/out/checkpoints")
