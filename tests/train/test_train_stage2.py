"""Stage 2: comparator loss properties, defect batches, score_pairs, a tiny training run, resume."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from patchloupe.models.comparator import ComparatorConfig, PatternComparator
from patchloupe.train.checkpoint import CheckpointManager
from patchloupe.train.stage2 import (
    comparator_loss,
    downsample_mask,
    hinge_loss,
    make_defect_batch,
    mask_loss,
    score_pairs,
    train_comparator,
)

SMALL = ComparatorConfig(channels=(8, 16, 16), hidden=16, mask_channels=8)
IMAGE_SIZE, GRID = (96, 96), (3, 3)  # 32 x 32 patches, masks 8 x 8
STEPS, BATCH, POOL, LR = 100, 32, 128, 5e-3  # the tiny training run


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------------------------------ helpers
def textures(n: int, seed: int, size: int = 96, period: int = 16) -> list[np.ndarray]:
    """Small periodic textures (gratings x checkers, random colours), uint8 (size, size, 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for _ in range(n):
        fx, fy = rng.integers(0, 3, size=2)
        a = np.sin(2 * np.pi * (fx * xx + fy * yy) / period + rng.random() * 6)
        b = np.sign(np.sin(2 * np.pi * (xx + 0.5) / period)) * np.sign(np.sin(2 * np.pi * (yy + 0.5) / period))
        t = (0.5 + 0.25 * a + 0.15 * b)[..., None]
        c0, c1 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
        im = c0 * t + c1 * (1 - t) + rng.normal(0, 0.015, (size, size, 3))
        out.append((np.clip(im, 0, 1) * 255).astype(np.uint8))
    return out


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUROC with average ranks for ties."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n1, n0 = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# ------------------------------------------------------------------------------------------ losses
def test_hinge_zero_beyond_margin_linear_inside() -> None:
    s = torch.tensor([2.0, 1.0, 0.5, -0.5, -1.0, -3.0, 0.0])
    y = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 1.0])
    per = [max(0.0, 1.0 - float(yi * si)) for si, yi in zip(s, y, strict=True)]
    assert per[:2] == [0.0, 0.0] and per[4:6] == [0.0, 0.0]
    assert hinge_loss(s, y).item() == pytest.approx(sum(per) / len(per))
    assert hinge_loss(torch.tensor([1.0, -1.5]), torch.tensor([1.0, -1.0])).item() == 0.0
    # wrong side: loss grows linearly, gradient constant (no saturation like 2P - 1 would have)
    s = torch.tensor([-4.0], requires_grad=True)
    hinge_loss(s, torch.tensor([1.0])).backward()
    assert s.grad is not None and s.grad.item() == pytest.approx(-1.0)


def test_mask_term_rises_with_mask_error() -> None:
    rng = np.random.default_rng(0)
    target = torch.from_numpy((rng.random((4, 1, 8, 8)) < 0.3).astype(np.float32))
    flip_order = torch.from_numpy(rng.permutation(target.numel()))
    losses, totals = [], []
    for frac in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0):
        wrong = target.flatten().clone()
        k = int(round(frac * wrong.numel()))
        wrong[flip_order[:k]] = 1 - wrong[flip_order[:k]]
        pred = wrong.view_as(target)
        logits = (pred * 2 - 1) * 4.0  # confident predictions with a growing share of wrong pixels
        losses.append(mask_loss(logits, target).item())
        y = torch.ones(4)
        totals.append(comparator_loss(torch.full((4,), 3.0), logits, y, target)[0].item())
    assert all(b > a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert all(b > a for a, b in zip(totals, totals[1:], strict=False)), totals
    assert losses[0] < 0.1
    # the paper's printed term 1 / (1 + exp(L1)) FALLS as the L1 error grows: unusable, hence BCE (+ Dice)
    printed = [1 / (1 + math.exp(err)) for err in (0.0, 1.0, 5.0)]
    assert printed[0] > printed[1] > printed[2]


def test_comparator_loss_parts() -> None:
    logit = torch.tensor([2.0, -2.0])
    y = torch.tensor([1.0, -1.0])
    target = torch.zeros(2, 1, 4, 4)
    target[1, 0, :2, :2] = 1
    m = torch.where(target > 0, 6.0, -6.0)
    total, parts = comparator_loss(logit, m, y, target, mask_weight=0.5, dice_weight=0.0)
    assert parts["hinge"] == 0.0
    assert total.item() == pytest.approx(0.5 * parts["mask"])


# ------------------------------------------------------------------------------------------ data
def test_make_defect_batch_half_defected_with_exact_masks() -> None:
    real = torch.from_numpy(np.stack(textures(8, seed=3, size=32))).permute(0, 3, 1, 2).float() / 255
    out, y, mask = make_defect_batch(real, np.random.default_rng(0), defect_prob=0.5)
    assert out.shape == real.shape and mask.shape == (8, 1, 32, 32)
    assert int((y < 0).sum()) == 4  # a random half (every draw here changes pixels)
    clean = y > 0
    assert torch.equal(out[clean], real[clean]) and mask[clean].sum() == 0
    assert torch.all(mask[~clean].flatten(1).amax(1) > 0)
    assert out.min() >= 0 and out.max() <= 1
    # changes stay inside the mask (defects are local)
    changed = (out - real).abs().amax(1, keepdim=True) > 1e-6
    assert not torch.any(changed & (mask == 0) & (~clean).view(-1, 1, 1, 1))
    small = downsample_mask(mask)
    assert small.shape == (8, 1, 8, 8) and small.min() >= 0 and small.max() <= 1
    out0, y0, m0 = make_defect_batch(real, np.random.default_rng(0), defect_prob=0.0)
    assert torch.equal(out0, real) and torch.all(y0 == 1) and m0.sum() == 0


def test_score_pairs_batched_eval_no_grad() -> None:
    torch.manual_seed(0)
    comp = PatternComparator(SMALL)
    comp.train()
    g, r = torch.rand(10, 3, 16, 24), torch.rand(10, 3, 16, 24)
    p, mask = score_pairs(comp, g, r, batch_size=3)
    assert comp.training  # mode restored
    assert p.shape == (10,) and mask.shape == (10, 1, 4, 6) and not p.requires_grad
    comp.eval()
    with torch.no_grad():
        p_ref, m_ref, _ = comp(g, r)
    torch.testing.assert_close(p, p_ref)
    torch.testing.assert_close(mask, m_ref)
    p0, m0 = score_pairs(comp, g[:0], r[:0])
    assert p0.shape == (0,) and m0.shape == (0, 1, 4, 6)


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def tiny_generator() -> torch.nn.Module:
    from patchloupe.models.generator import build_generator

    torch.manual_seed(0)
    return build_generator("tiny").eval()


def _heldout_set(
    gen: torch.nn.Module, images: list[np.ndarray], n: int = 64, seed: int = 1234
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """New samples (not drawn in training): prediction, real (half defected), y, full-size mask."""
    from patchloupe.train.sampling import TripletSampler

    sampler = TripletSampler(images, IMAGE_SIZE, GRID, seed=seed, offset_jitter=False)
    first, second, target = sampler.sample(n)
    with torch.no_grad():
        pred = gen(first, second).clamp(0, 1)
    real, y, mask = make_defect_batch(target, np.random.default_rng(seed), 0.5)
    return pred, real, y, mask


def _scores(comp: PatternComparator, held: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    """(AUROC of 1 - P, defected vs clean; IoU of mask > 0.5 vs area-averaged truth > 0.5)."""
    pred, real, y, mask = held
    p, mask_pred = score_pairs(comp, pred, real)
    au = auroc((1 - p).numpy(), (y < 0).numpy())
    truth, guess = downsample_mask(mask) > 0.5, mask_pred > 0.5
    return au, (truth & guess).sum().item() / max(1, (truth | guess).sum().item())


def test_tiny_training_separates_defects(tiny_generator: torch.nn.Module) -> None:
    images = textures(4, seed=0)
    held = _heldout_set(tiny_generator, images)
    torch.manual_seed(0)
    comp = PatternComparator(SMALL)
    au0, iou0 = _scores(comp, held)
    res = train_comparator(
        comp,
        tiny_generator,
        images,
        image_size=IMAGE_SIZE,
        grid=GRID,
        steps=STEPS,
        batch_size=BATCH,
        lr=LR,
        seed=0,
        precompute=POOL,
        progress=False,
        log_every=STEPS // 4,
    )
    assert res.steps == STEPS and res.start_step == 0 and len(res.history) == 4
    assert not comp.training and not tiny_generator.training
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    au, iou = _scores(comp, held)
    assert au > 0.8, (au0, au)
    assert iou > iou0 + 0.15, (iou0, iou)


class _Copy(torch.nn.Module):
    """Stand-in generator for the resume test (resume logic does not depend on the generator)."""

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return second


class _Crash(RuntimeError):
    pass


def _crash_after(n: int) -> Callable[[int, float], None]:
    def callback(step: int, loss: float) -> None:
        if step == n:
            raise _Crash(f"simulated crash after step {step}")

    return callback


def test_resume_continues_exactly(tmp_path: Path) -> None:
    tiny_generator = _Copy()
    images = textures(2, seed=5)
    kw: dict[str, Any] = dict(
        image_size=IMAGE_SIZE, grid=GRID, steps=6, batch_size=6, seed=3, progress=False, log_every=1, ckpt_every=2
    )

    def fresh() -> PatternComparator:
        torch.manual_seed(7)
        return PatternComparator(SMALL)

    full = fresh()
    ref = train_comparator(full, tiny_generator, images, **kw)

    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Crash):  # dies after step 3; the last checkpoint is step 2
        train_comparator(fresh(), tiny_generator, images, ckpt_dir=ckpt, callback=_crash_after(3), **kw)
    assert CheckpointManager(ckpt).latest_step() == 2
    resumed = fresh()  # as in a new process: fresh weights, everything else from the checkpoint
    res = train_comparator(resumed, tiny_generator, images, ckpt_dir=ckpt, resume=True, **kw)
    assert res.start_step == 2 and res.steps == 6
    assert [h["step"] for h in res.history] == [1, 2, 3, 4, 5, 6]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    assert res.final_loss == pytest.approx(ref.final_loss, rel=1e-4)
    # the checkpoint carries the AdamW state (moments and step) of step 6
    loaded = CheckpointManager(ckpt).load(restore_rng=False)
    assert loaded.step == 6 and loaded.extra["run"]["steps"] == 6
    opt_state = loaded.state["optimizer"]["state"]
    assert len(opt_state) == len(list(resumed.parameters()))
    assert all(float(st["step"]) == 6 and st["exp_avg_sq"].abs().sum() > 0 for st in opt_state.values())
    # resuming a finished run does nothing
    again = train_comparator(resumed, tiny_generator, images, ckpt_dir=ckpt, resume=True, **kw)
    assert again.start_step == 6 and again.steps == 6


RESUME_KW: dict[str, Any] = dict(image_size=IMAGE_SIZE, grid=GRID, steps=10, batch_size=6, seed=3, progress=False)

_RESUME_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_train_stage2 import RESUME_KW, _Copy, resume_comparator, textures
    from patchloupe.train.stage2 import train_comparator

    ckpt, mode = sys.argv[1], sys.argv[2]
    slow = (lambda step, loss: time.sleep(0.5) if step >= 4 else None) if mode == "slow" else None
    r = train_comparator(resume_comparator(), _Copy(), textures(2, seed=5), ckpt_dir=ckpt, ckpt_every=2,
                         resume=mode == "resume", callback=slow, **RESUME_KW)
    print("RESULT", r.start_step, r.steps, flush=True)
    """
)


def resume_comparator() -> PatternComparator:
    torch.manual_seed(7)
    return PatternComparator(SMALL)


@pytest.mark.slow  # two subprocesses; test_resume_continues_exactly covers the same logic in-process
def test_resume_after_kill_matches_uninterrupted_run(train_process: Callable[[str], Any]) -> None:
    """As stage 1's: SIGKILL a checkpointing run, resume it in a new process, compare bit-for-bit."""
    run = train_process(_RESUME_SCRIPT.format(tests=str(Path(__file__).parent)))
    killed_at = run.kill_after_checkpoint(run.launch("slow"), 4)
    assert 4 <= killed_at < 10

    resumed = run.launch("resume")
    reference = resume_comparator()
    ref = train_comparator(reference, _Copy(), textures(2, seed=5), **RESUME_KW)  # meanwhile: uninterrupted
    start, steps = run.result(resumed)
    assert start == killed_at and steps == 10 == ref.steps
    loaded = CheckpointManager(run.ckpt).load(model=(resumed_model := resume_comparator()), restore_rng=False)
    assert loaded.step == 10 and loaded.extra["history"][-1]["loss"] == ref.final_loss
    for (k, a), b in zip(reference.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
