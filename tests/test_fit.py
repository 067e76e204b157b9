"""Fitting: grid and scorer choice, calibration, zero-step fits (tiny untrained networks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import random_image
from patchloupe import Detector


def test_fit_tiny_chooses_grid_and_calibrates(model_dir: Path, textures: Path) -> None:
    det = Detector.fit(
        textures / "train" / "good",
        base=model_dir,
        scorer="pattern",
        grid="auto",
        grid_candidates=((3, 3), (4, 4)),
        generator_steps=2,
        comparator_steps=2,
        batch_size=4,
        progress=False,
    )
    assert det.config.grid in ((3, 3), (4, 4))
    assert set(det.config.training["grid_error_ratio"]) == {"3x3", "4x4"}
    assert det.config.calibration["n_images"] >= 1
    assert 0.0 < det.threshold <= 1.0
    with pytest.raises(ValueError, match="at least 5"):
        Detector.fit([random_image(0)] * 3, base=model_dir)


def test_fit_with_zero_steps_keeps_the_base_networks(model_dir: Path, textures: Path) -> None:
    base = Detector.load(model_dir)
    det = Detector.fit(
        textures / "train" / "good",
        base=base,
        scorer="pattern",
        grid=(3, 3),
        generator_steps=0,
        comparator_steps=0,
        progress=False,
    )
    pairs = ((det.scorer.generator, base.scorer.generator), (det.scorer.comparator, base.scorer.comparator))
    for a, b in pairs:
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    assert det.config.calibration["n_images"] >= 1
    with pytest.raises(ValueError, match=">= 0"):
        Detector.fit(textures / "train" / "good", base=base, generator_steps=-1)


@pytest.mark.parametrize(
    ("ratio", "available", "want"), [(0.3, True, "pattern"), (1.0, True, "memory"), (1.0, False, "pattern")]
)
def test_auto_scorer_follows_the_prediction_error_ratio(
    model_dir: Path, textures: Path, monkeypatch: pytest.MonkeyPatch, ratio: float, available: bool, want: str
) -> None:
    import patchloupe.scorers.memory as memory_mod
    import patchloupe.scorers.pattern as pattern_mod

    monkeypatch.setattr(pattern_mod, "prediction_error_ratio", lambda *a, **k: ratio)
    monkeypatch.setattr(memory_mod, "memory_available", lambda: available)
    det = Detector.fit(
        textures / "train" / "good",
        base=model_dir,
        scorer="auto",
        grid_candidates=((3, 3),),
        generator_steps=1,
        comparator_steps=1,
        batch_size=2,
        progress=False,
    )
    choice = det.config.training["scorer_choice"]
    assert det.config.scorer == want and choice["scorer"] == want and choice["requested"] == "auto"
    assert choice["ratio"] == ratio


def test_choose_scorer_explicit_and_small_fixed_grid(model_dir: Path) -> None:
    from patchloupe.fit import choose_scorer

    gen = Detector.load(model_dir).scorer.generator
    imgs = [random_image(i) for i in range(2)]
    assert choose_scorer(gen, imgs, (96, 96), (3, 3), scorer="memory")[:2] == ("memory", {})
    # 8x8 on 96 px gives 12 px patches, too small to measure: auto keeps the pattern scorer
    scorer, ratios, choice = choose_scorer(gen, imgs, (96, 96), (8, 8), scorer="auto")
    assert scorer == "pattern" and ratios == {} and "too small" in choice["rule"]
    with pytest.raises(ValueError, match="no grid candidate"):
        choose_scorer(gen, imgs, (96, 96), "auto", grid_candidates=((8, 8),), scorer="pattern")


def test_default_scorer_is_selfref_and_falls_back_without_trunk_weights(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inspect

    import patchloupe.scorers.memory as memory_mod
    from patchloupe.fit import choose_scorer, fit_detector

    assert inspect.signature(fit_detector).parameters["scorer"].default == "selfref"
    gen = Detector.load(model_dir).scorer.generator
    imgs = [random_image(i) for i in range(2)]
    monkeypatch.setattr(memory_mod, "memory_available", lambda: True)
    assert choose_scorer(gen, imgs, (96, 96), (3, 3), scorer="selfref")[0] == "selfref"
    monkeypatch.setattr(memory_mod, "memory_available", lambda: False)
    scorer, _, choice = choose_scorer(gen, imgs, (96, 96), (3, 3), scorer="selfref")
    assert scorer == "pattern" and choice["requested"] == "selfref" and "not installed" in choice["rule"]
    # the default grid "auto": the fallback pattern scorer gets its grid candidates measured
    scorer, ratios, _ = choose_scorer(gen, imgs, (96, 96), "auto", grid_candidates=((3, 3),), scorer="selfref")
    assert scorer == "pattern" and list(ratios) == ["3x3"]
