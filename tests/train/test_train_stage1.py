"""Stage-1 training (``patchloupe.train.stage1``): learning, reproducibility, argument errors, resume after kill.

Everything runs the ``tiny`` generator on 64 x 64 images (4 x 4 grid of 16 px patches).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from patchloupe.train.checkpoint import CheckpointManager
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models run fastest on one thread


def stripes(n: int = 4, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Small periodic RGB textures (uint8 ``(size, size, 3)``), different phase/period per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for _ in range(n):
        period, phase, angle = rng.uniform(5, 9), rng.uniform(0, 6.28), rng.uniform(0, 0.6)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period + phase)
        rgb = 127 + 100 * wave[..., None] * np.array([1.0, 0.7, 0.4], dtype=np.float32)
        out.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return out


def _tiny_generator(seed: int = 0) -> nn.Module:
    from patchloupe.models.generator import build_generator

    torch.manual_seed(seed)
    return build_generator("tiny")


def test_train_generator_learns_and_is_reproducible(tmp_path: Path) -> None:
    from patchloupe.train.stage1 import evaluate_prediction, train_generator

    imgs = stripes(4)
    kw = dict(image_size=(64, 64), grid=(4, 4), steps=24, batch_size=8, lr=3e-3, seed=1, progress=False, log_every=4)
    g1 = _tiny_generator()
    r1 = train_generator(g1, imgs, ckpt_dir=tmp_path / "ck", ckpt_every=10, **kw)
    assert r1.steps == 24 and r1.start_step == 0 and len(r1.history) == 6
    assert r1.history[-1]["loss"] < 0.6 * r1.history[0]["loss"], r1.history
    assert r1.final_loss == r1.history[-1]["loss"] and r1.wall_s > 0
    assert CheckpointManager(tmp_path / "ck").steps() == [20, 24]
    assert r1.checkpoint is not None and r1.checkpoint.name == "ckpt-00000024.json"
    assert g1.training  # mode restored

    g2 = _tiny_generator()
    train_generator(g2, imgs, **kw)
    for (k, a), b in zip(g1.state_dict().items(), g2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k

    # resuming a finished run is a no-op that reports the recorded state
    r3 = train_generator(_tiny_generator(5), imgs, ckpt_dir=tmp_path / "ck", resume=True, **kw)
    assert r3.steps == 24 and r3.start_step == 24 and r3.final_loss == r1.final_loss

    ev = evaluate_prediction(g1, stripes(2, seed=7), image_size=(64, 64), grid=(4, 4), directions=("ltr", "btt"))
    assert ev["n"] == 2 * (8 + 8) and np.isfinite(ev["psnr"]) and np.isfinite(ev["psnr_copy"])


def test_train_generator_argument_errors() -> None:
    from patchloupe.train.stage1 import train_generator

    for loss in ("l1", "mse+ssim"):
        with pytest.raises(ValueError, match="loss"):
            train_generator(_tiny_generator(), stripes(1), image_size=(64, 64), grid=(4, 4), steps=1, loss=loss)
    with pytest.raises(ValueError, match="steps"):
        train_generator(_tiny_generator(), stripes(1), image_size=(64, 64), grid=(4, 4), steps=0)
    with pytest.raises(ValueError, match="fp16"):
        train_generator(
            _tiny_generator(), stripes(1), image_size=(64, 64), grid=(4, 4), steps=1, amp="fp16", device="cpu"
        )


RESUME_KW = dict(image_size=(64, 64), grid=(4, 4), steps=12, batch_size=4, lr=2e-3, seed=11, progress=False)


_RESUME_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_train_stage1 import RESUME_KW, resume_generator, stripes
    from patchloupe.train.stage1 import train_generator

    ckpt, mode = sys.argv[1], sys.argv[2]
    slow = (lambda step, loss: time.sleep(0.5) if step >= 4 else None) if mode == "slow" else None
    g = resume_generator()
    r = train_generator(g, stripes(3), ckpt_dir=ckpt, ckpt_every=2, resume=mode == "resume", callback=slow,
                        **RESUME_KW)
    print("RESULT", r.start_step, r.steps, flush=True)
    """
)


def resume_generator() -> nn.Module:
    """The tiny generator with DropPath on, so in-model randomness must resume exactly too."""
    from patchloupe.models.generator import build_generator

    torch.manual_seed(0)
    return build_generator("tiny", drop_path_rate=0.1)


def test_resume_after_kill_matches_uninterrupted_run(train_process: Callable[[str], Any]) -> None:
    """Kill a checkpointing run mid-way (SIGKILL) in a subprocess, resume it in another, and compare
    the final weights with an uninterrupted run (in this process, same seed, one thread)."""
    from patchloupe.train.stage1 import train_generator

    run = train_process(_RESUME_SCRIPT.format(tests=str(Path(__file__).parent)))
    killed_at = run.kill_after_checkpoint(run.launch("slow"), 4)
    assert 4 <= killed_at < 12

    resumed = run.launch("resume")
    reference = resume_generator()
    ref = train_generator(reference, stripes(3), **RESUME_KW)  # meanwhile: the uninterrupted run
    start, steps = run.result(resumed)
    assert start == killed_at and steps == 12 == ref.steps
    mgr = CheckpointManager(run.ckpt)
    assert mgr.latest_step() == 12

    resumed_model = resume_generator()
    mgr.load(model=resumed_model)
    # bit-for-bit: same data, same per-step seeds, same AdamW moments and step counts, same thread count
    for (k, a), b in zip(reference.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_train_generator_config_object_equals_keywords() -> None:
    from patchloupe.train.stage1 import GeneratorTrainConfig, train_generator

    imgs = stripes(2)
    kw = dict(image_size=(64, 64), grid=(4, 4), steps=3, batch_size=2, seed=4, progress=False, log_every=1)
    g1, g2, g3 = _tiny_generator(), _tiny_generator(), _tiny_generator()
    r1 = train_generator(g1, imgs, **kw)
    r2 = train_generator(g2, imgs, GeneratorTrainConfig(**kw))
    r3 = train_generator(g3, imgs, config=GeneratorTrainConfig(**{**kw, "steps": 1}), steps=3)  # keywords win
    assert [h["loss"] for h in r1.history] == [h["loss"] for h in r2.history] == [h["loss"] for h in r3.history]
    for a, b, c in zip(g1.state_dict().values(), g2.state_dict().values(), g3.state_dict().values(), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(TypeError, match="unexpected keyword"):
        train_generator(_tiny_generator(), imgs, stepz=3)
