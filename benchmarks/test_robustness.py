"""benchmarks/robustness.py helpers: lighting-changed copies of a test set and the per-target summary."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import robustness
from patchloupe.data import MVTecCategory, read_image, write_image
from robustness import PooledInspector, fit_model, lighting_copy, markdown, summarise


def _category(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("train/good", "test/good", "test/hole", "ground_truth/hole"):
        (root / sub).mkdir(parents=True)
    img = lambda: rng.integers(60, 200, (32, 32, 3), dtype=np.uint8)  # noqa: E731
    write_image(root / "train/good/0.png", img())
    write_image(root / "test/good/0.png", img())
    write_image(root / "test/hole/1.png", img())
    write_image(root / "ground_truth/hole/1_mask.png", np.pad(np.ones((4, 4), bool), 14))
    return root


def test_lighting_copy_changes_images_and_keeps_masks(tmp_path: Path) -> None:
    src = _category(tmp_path / "src")
    for kind in ("gain", "gamma", "gradient"):
        dst = lighting_copy(src, tmp_path / kind, kind, seed=0)
        cat = MVTecCategory(dst)
        items = cat.test_items()
        assert len(items) == 2 and cat.load_mask(items[-1]).sum() == 16
        a, b = read_image(src / "test/good/0.png"), read_image(dst / "test/good/0.png")
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() > 1
        assert lighting_copy(src, dst, kind, seed=1) == dst  # idempotent: not rewritten


def test_summarise_reports_worst_drops_and_patchcore_margin() -> None:
    def row(data, sc, fit_on, eval_on, change, img, pix):  # noqa: ANN001, ANN202
        return {"data": data, "scorer": sc, "fit_on": fit_on, "eval_on": eval_on, "change": change,
                "image_auroc": img, "pixel_auroc": pix}  # fmt: skip

    rows = [
        row("cloth", "a", "style0", "style0", "none", 1.0, 0.99),
        row("cloth", "a", "style0", "style0", "gain", 0.95, 0.98),
        row("cloth", "a", "style1", "style1", "none", 0.98, 0.97),
        row("cloth", "a", "style0", "style1", "none", 0.90, 0.96),
        row("cloth", "a", "style1", "style0", "none", 0.99, 0.99),
        row("magnetic_tile", "a", "train", "test", "none", 0.97, 0.88),
        row("magnetic_tile", "patchcore", "train", "test", "none", 0.96, 0.86),
    ]
    s = summarise(rows)["a"]
    assert s["t1_worst_image_drop_pts"] == 8.0 and s["t1_worst_pixel_drop_pts"] == 1.0
    assert s["t2_worst_image_drop_pts"] == 5.0
    assert s["t3_vs_patchcore_image_pts"] == 1.0 and s["t3_vs_patchcore_pixel_pts"] == 2.0
    assert s["t4_min_image"] == 1.0 and s["t4_min_pixel"] == 0.99
    rows += [
        row("cloth", "a", "all-style0", "style1", "heldout", 0.91, 0.95),
        row("mesh", "a", "all-style0", "style1", "heldout", 0.85, 0.95),
    ]
    rows[5].update(realised_false_alarm_rate=0.02, recall_at_threshold=0.4, best_recall_at_that_false_alarm_rate=0.7)
    s = summarise(rows)["a"]
    assert s["t5_min_image"] == 0.85 and s["t2_worst_image_drop_pts"] == 5.0  # held-out rows are not lighting rows
    assert s["t6_worst_far"] == 0.02 and s["t6_worst_recall_gap_pts"] == 30.0
    table = markdown(rows)
    assert "| cloth | style0 | style1 | none | 0.900 / 0.960 | - |" in table


def test_pool_variants_share_the_selfref_fit_and_start_a_fresh_pool_per_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fits, pools = [], []

    class Pooled:
        def __init__(self, options: dict) -> None:
            self.options, self.scorer = options, SimpleNamespace(stats=lambda: {"pooled": 3, "seen": 4})

        def evaluate(self, folder: Path) -> dict:
            return {"image_auroc": 0.5, "folder": folder}

    class Det:
        def pooled(self, **options: float) -> Pooled:
            pools.append(Pooled(options))
            return pools[-1]

    monkeypatch.setattr(robustness, "_fit_selfref", lambda images, overrides, seed: fits.append(1) or Det())
    monkeypatch.setattr(robustness, "_FITTED", {})
    train = _category(tmp_path / "c") / "train" / "good"
    args = SimpleNamespace(max_train=0, seed=0)
    fit_model("selfref", train, args)
    model = fit_model("selfref-pool-c50", train, args)
    assert isinstance(model, PooledInspector) and len(fits) == 1  # the selfref fit of the same run, reused
    a, b = model.evaluate(tmp_path / "x"), model.evaluate(tmp_path / "y")
    assert len(pools) == 2 and pools[0] is not pools[1] and pools[0].options == {"closest": 0.5}
    assert a["pooled_share"] == b["pooled_share"] == 0.75 and b["folder"] == tmp_path / "y"


def test_calibrated_pool_fills_the_pool_then_calibrates_on_the_evaluated_style(tmp_path: Path) -> None:
    calls = []

    class Pooled:
        scorer = SimpleNamespace(stats=lambda: {"pooled": 1, "seen": 2})

        def inspect_many(self, images: list, keep_image: bool = True) -> list:
            calls.append(("prime", len(images)))
            return [None] * len(images)

        def calibrate(self, images: list) -> None:
            calls.append(("calibrate", len(images), images[0].shape))

        def evaluate(self, folder: Path) -> dict:
            calls.append(("evaluate", folder.name))
            return {"image_auroc": 0.5}

    det = SimpleNamespace(pooled=lambda **options: Pooled())
    res = robustness.CalibratedPool(det, {}, n=3, prime=2).evaluate(tmp_path / "motif_style1")
    assert calls == [("prime", 2), ("calibrate", 3, (256, 256, 3)), ("evaluate", "motif_style1")]
    assert res["pooled_share"] == 0.5
