from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from patchloupe.data import MVTecCategory, read_image
from patchloupe.data.synth import (
    DATASET_DEFECTS,
    FAMILIES,
    STYLES,
    _rng,
    generate_dataset,
    generate_texture_shift,
    make_defect,
    render_texture,
)

ALL_STYLES = [(f, s) for f in FAMILIES for s in range(len(STYLES[f]))]


def test_families_and_styles() -> None:
    assert len(FAMILIES) >= 6 and set(STYLES) == set(FAMILIES)
    assert all(len(STYLES[f]) >= 2 for f in FAMILIES)
    assert len(DATASET_DEFECTS) >= 5


@pytest.mark.parametrize(("family", "style"), ALL_STYLES)
def test_render_shape_dtype_determinism(family: str, style: int) -> None:
    a = render_texture(family, (48, 70), np.random.default_rng(1), style=style)
    assert a.dtype == np.uint8 and a.shape == (48, 70, 3) and a.flags.c_contiguous
    b = render_texture(family, (48, 70), np.random.default_rng(1), style=style)
    assert a.tobytes() == b.tobytes()
    c = render_texture(family, (48, 70), np.random.default_rng(2), style=style)
    assert np.abs(a.astype(int) - c).mean() > 5  # per-image variation: a pixel template does not transfer
    assert a.std() > 3  # not flat
    assert render_texture(family, 5, 0, style=style).shape == (5, 5, 3)


def _hist(img: np.ndarray) -> np.ndarray:
    return np.concatenate([np.histogram(img[..., c], bins=16, range=(0, 256))[0] / img[..., c].size for c in range(3)])


@pytest.mark.parametrize("family", FAMILIES)
def test_styles_differ(family: str) -> None:
    # phase-invariant signature (colour histograms): styles are further apart than images of one style
    sig = {
        s: [_hist(render_texture(family, 96, np.random.default_rng(10 * s + i), s)) for i in range(3)]
        for s in range(len(STYLES[family]))
    }
    within = max(np.abs(a - b).sum() for v in sig.values() for a in v for b in v)
    across = min(np.abs(a - b).sum() for s in sig for t in sig if s < t for a in sig[s] for b in sig[t])
    assert across > within


def _autocorr_peak(img: np.ndarray) -> float:
    g = img.astype(np.float64).mean(2)
    g -= g.mean()
    ac = np.real(np.fft.ifft2(np.abs(np.fft.fft2(g)) ** 2))
    ac = np.fft.fftshift(ac / ac[0, 0])
    h, w = ac.shape
    y, x = np.indices(ac.shape)
    r = np.hypot(y - h // 2, x - w // 2)
    return float(ac[(r >= 4) & (r <= 80)].max())


@pytest.mark.parametrize(("family", "style"), [fs for fs in ALL_STYLES if fs[0] in ("cloth", "mesh", "motif")])
def test_periodic_families_are_periodic(family: str, style: int) -> None:
    assert _autocorr_peak(render_texture(family, 192, np.random.default_rng(5), style)) > 0.5


def test_render_errors() -> None:
    with pytest.raises(ValueError, match="unknown texture family"):
        render_texture("velvet", 32, 0)
    with pytest.raises(ValueError, match="styles 0"):
        render_texture("cloth", 32, 0, style=len(STYLES["cloth"]))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", list(DATASET_DEFECTS))
def test_make_defect_exact(family: str, kind: str) -> None:
    rng = np.random.default_rng(len(family) * 31 + len(kind))
    img = render_texture(family, 96, rng)
    out, mask = make_defect(img, kind, rng)
    assert out.dtype == np.uint8 and out.shape == img.shape and mask.dtype == bool and mask.shape == (96, 96)
    assert mask.any() and mask.mean() < 0.3
    np.testing.assert_array_equal((out != img).any(axis=2), mask)
    assert (np.abs(out.astype(int) - img).max(axis=2)[mask] >= 9).all()  # clearly changed, not rounding noise
    out2, mask2 = make_defect(img, kind, np.random.default_rng(len(family) * 31 + len(kind) + 1))
    again = make_defect(img, kind, np.random.default_rng(len(family) * 31 + len(kind) + 1))
    assert out2.tobytes() == again[0].tobytes() and mask2.tobytes() == again[1].tobytes()


def test_make_defect_errors() -> None:
    with pytest.raises(ValueError, match="uint8"):
        make_defect(np.zeros((8, 8, 3), np.float32), "hole", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown defect kind"):
        make_defect(np.zeros((8, 8, 3), np.uint8), "smudge", np.random.default_rng(0))


SMALL = {"n_train": 3, "n_test_good": 2, "n_test_defect_per_kind": 1, "size": (48, 64), "seed": 3}


def test_generate_dataset_layout_and_masks(tmp_path: Path) -> None:
    roots = generate_dataset(tmp_path, families=("cloth", "motif"), **SMALL)
    assert roots == [tmp_path / "cloth", tmp_path / "motif"]
    for root in roots:
        cat = MVTecCategory(root)
        assert len(cat.train_good()) == 3
        assert cat.defect_kinds == tuple(sorted(DATASET_DEFECTS))
        items = cat.test_items()
        assert sum(it.label == 0 for it in items) == 2 and sum(it.label for it in items) == len(DATASET_DEFECTS)
        for it in items:
            img = read_image(it.path)
            assert img.shape == (48, 64, 3)
            mask = cat.load_mask(it, img.shape)
            if it.label == 0:
                continue
            # re-render the clean image from the same seed: the defect changed exactly the masked pixels
            clean = render_texture(root.name, (48, 64), _rng(3, root.name, 0, f"test/{it.defect}", 0), style=0)
            assert mask.any()
            np.testing.assert_array_equal((img != clean).any(axis=2), mask)
        clean_train = render_texture(root.name, (48, 64), _rng(3, root.name, 0, "train", 1), style=0)
        np.testing.assert_array_equal(read_image(cat.train_good()[1]), clean_train)


def test_generate_dataset_idempotent_and_seeded(tmp_path: Path) -> None:
    (root,) = generate_dataset(tmp_path / "a", families=("metal",), **SMALL)
    files = sorted(p for p in root.rglob("*.png"))
    stamps = [p.stat().st_mtime_ns for p in files]
    os.utime(files[0], ns=(1, 1))
    assert generate_dataset(tmp_path / "a", families=("metal",), **SMALL) == [root]
    assert files[0].stat().st_mtime_ns == 1 and [p.stat().st_mtime_ns for p in files[1:]] == stamps[1:]
    assert json.loads((root / ".patchloupe_synth.json").read_text())["family"] == "metal"
    with pytest.raises(ValueError, match="other parameters"):
        generate_dataset(tmp_path / "a", families=("metal",), **{**SMALL, "seed": 4})
    # the same family generated alongside another gives identical bytes
    (root_b, _) = generate_dataset(tmp_path / "b", families=("metal", "wood"), **SMALL)
    for p in files:
        assert p.read_bytes() == (root_b / p.relative_to(root)).read_bytes()


def test_generate_styles_and_texture_shift(tmp_path: Path) -> None:
    kw = {**SMALL, "kinds": ("hole", "misweave")}
    (s0,) = generate_dataset(tmp_path, families=("cloth",), **kw)
    (s1,) = generate_dataset(tmp_path, families=("cloth",), style=1, **kw)
    assert s1 == tmp_path / "cloth_style1"
    assert MVTecCategory(s1).defect_kinds == ("hole", "misweave")
    shift = generate_texture_shift(tmp_path, "cloth", 0, 1, **kw)
    assert shift == tmp_path / "cloth_s0_to_s1"
    cat = MVTecCategory(shift)
    assert (shift / "train/good/000.png").read_bytes() == (s0 / "train/good/000.png").read_bytes()
    assert (shift / "test/good/001.png").read_bytes() == (s1 / "test/good/001.png").read_bytes()
    assert (shift / "test/hole/000.png").read_bytes() == (s1 / "test/hole/000.png").read_bytes()
    assert len(cat.test_items()) == 4


def test_generate_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown texture family"):
        generate_dataset(tmp_path, families=("velvet",), **SMALL)
    with pytest.raises(ValueError, match="unknown dataset defect kind"):
        generate_dataset(tmp_path, families=("cloth",), kinds=("smudge",), **{k: v for k, v in SMALL.items()})
    (tmp_path / "cloth/train/good").mkdir(parents=True)
    (tmp_path / "cloth/train/good/999.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="would not write"):
        generate_dataset(tmp_path, families=("cloth",), **SMALL)
