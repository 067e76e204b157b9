"""Detector with real (tiny, untrained) networks: persistence, fit, evaluate, CLI fit and evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from patchloupe import Detector
from patchloupe.cli import main
from patchloupe.detector import DetectorConfig, ModelError
from patchloupe.models.comparator import ComparatorConfig, PatternComparator
from patchloupe.models.generator import build_generator
from patchloupe.scorers.pattern import PatternScorer


def _tiny(seed: int = 0) -> Detector:
    torch.manual_seed(seed)
    gen = build_generator("tiny")
    comp = PatternComparator(ComparatorConfig())
    cfg = DetectorConfig(image_size=(96, 96), grid=(3, 3), threshold=0.5)
    return Detector(PatternScorer(gen, comp, (96, 96), (3, 3)), cfg)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny().save(tmp_path_factory.mktemp("m") / "model")


@pytest.fixture(scope="module")
def textures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from patchloupe.data.dataset import generate_dataset

    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, families=["cloth"], n_train=6, n_test_good=3, n_test_defect_per_kind=1, size=96, seed=3)
    return root / "cloth"


def _img(seed: int = 0, shape: tuple[int, ...] = (96, 96, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def test_save_load_roundtrip_gives_identical_results(model_dir: Path) -> None:
    det = Detector.load(model_dir)
    ref = _tiny()
    img = _img(1, (80, 120, 3))
    a, b = det.inspect(img), ref.inspect(img)
    assert a.score == pytest.approx(b.score, rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-5)
    assert det.config.grid == (3, 3) and det.threshold == 0.5


def _weights(folder: Path, entry: str) -> Path:
    """The file that holds ``entry``'s weights (content-addressed names: see patchloupe.model_folder)."""
    return folder / json.loads((folder / "detector.json").read_text())["files"][entry]


def test_save_half_precision_and_overwrite(tmp_path: Path) -> None:
    det = _tiny()
    det.save(tmp_path / "m")
    full = _weights(tmp_path / "m", "generator").stat().st_size
    det.threshold = 0.25
    det.save(tmp_path / "m", weights_dtype=torch.float16)  # replaces the model atomically
    assert _weights(tmp_path / "m", "generator").stat().st_size < 0.6 * full
    assert len(list((tmp_path / "m").glob("generator*.safetensors"))) == 1  # the old weights are gone
    back = Detector.load(tmp_path / "m")
    assert back.threshold == 0.25
    assert abs(back.inspect(_img(2)).score - det.inspect(_img(2)).score) < 1e-2


def test_save_refuses_to_clobber_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="refusing"):
        _tiny().save(tmp_path / "docs")
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "precious"


def test_load_detects_missing_corrupt_and_mismatched_files(model_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    _weights(broken, "comparator").unlink()
    with pytest.raises(ModelError, match="comparator.safetensors"):
        Detector.load(broken)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(model_dir, corrupt)
    with open(_weights(corrupt, "generator"), "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00garbage\x00")
    with pytest.raises(ModelError, match="checksum"):
        Detector.load(corrupt)
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    meta = json.loads((old / "detector.json").read_text())
    meta["format_version"] = 0
    (old / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="version"):
        Detector.load(old)
    mismatch = tmp_path / "mismatch"
    shutil.copytree(model_dir, mismatch)
    meta = json.loads((mismatch / "detector.json").read_text())
    meta["scorer_config"]["generator"]["embed_dim"] = 8  # the weight checksums still match: the config does not
    (mismatch / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="do not fit"):
        Detector.load(mismatch)


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
        Detector.fit([_img(0)] * 3, base=model_dir)


def test_evaluate_returns_metrics(model_dir: Path, textures: Path) -> None:
    res = Detector.load(model_dir).evaluate(textures)
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= res[key] <= 1.0
    assert res["n_good"] == 3 and res["n_defect"] == 5 and not res["errors"]
    kinds = {k for k in res["per_kind"] if k != "good"}
    assert set(res["per_kind_image_auroc"]) == kinds and len(kinds) == 5
    assert all(0.0 <= v <= 1.0 for v in res["per_kind_image_auroc"].values())


def test_per_kind_auroc_separates_kinds() -> None:
    from patchloupe.evaluate import _per_kind_auroc

    labels = np.array([0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.15, 0.05])
    out = _per_kind_auroc(labels, scores, ["good", "good", "hole", "hole", "stain", "stain"])
    assert out == {"hole": 1.0, "stain": 0.25}


def test_cli_fit_and_evaluate(
    model_dir: Path, textures: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fitted"
    rc = main(
        [
            "fit",
            str(textures / "train" / "good"),
            "-o",
            str(out),
            "--base",
            str(model_dir),
            "--scorer",
            "pattern",
            "--grid",
            "3x3",
            "--generator-steps",
            "1",
            "--comparator-steps",
            "1",
            "--batch-size",
            "2",
            "-q",
        ]
    )
    assert rc == 0 and (out / "detector.json").is_file()
    rc = main(["evaluate", str(textures), "--model", str(out), "--json"])
    assert rc == 0
    assert "image_auroc" in json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert main(["evaluate", str(textures), "--model", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "image_auroc" in text and "image_auroc hole" in text  # the per-kind lines of the plain output


def test_cli_errors_are_messages_not_tracebacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path / "nothing"), "--model", str(tmp_path / "nomodel")]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "x", "-o", "y", "--grid", "banana"])


def test_console_script_installed() -> None:
    r = subprocess.run([sys.executable, "-m", "patchloupe.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "inspect" in r.stdout and "fit" in r.stdout


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


def test_prediction_error_ratio_is_one_for_the_copy_predictor() -> None:
    from patchloupe.scorers.pattern import prediction_error_ratio

    class Copy(torch.nn.Module):
        def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
            return second

    imgs = [_img(i, (96, 96, 3)) for i in range(2)]
    assert prediction_error_ratio(Copy(), imgs, (96, 96), (3, 3)) == pytest.approx(1.0)
    assert prediction_error_ratio(build_generator("tiny"), imgs, (96, 96), (3, 3)) > 0


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
    imgs = [_img(i) for i in range(2)]
    assert choose_scorer(gen, imgs, (96, 96), (3, 3), scorer="memory")[:2] == ("memory", {})
    # 8x8 on 96 px gives 12 px patches, too small to measure: auto keeps the pattern scorer
    scorer, ratios, choice = choose_scorer(gen, imgs, (96, 96), (8, 8), scorer="auto")
    assert scorer == "pattern" and ratios == {} and "too small" in choice["rule"]
    with pytest.raises(ValueError, match="no grid candidate"):
        choose_scorer(gen, imgs, (96, 96), "auto", grid_candidates=((8, 8),), scorer="pattern")
