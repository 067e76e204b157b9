"""Dataset writing (``patchloupe.data.dataset``): layout, exact masks, idempotence, seeding, styles, errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from patchloupe.data import MVTecCategory, read_image
from patchloupe.data.dataset import MARKER, _rng, generate_dataset, generate_texture_shift
from patchloupe.data.defects import DATASET_DEFECTS
from patchloupe.data.textures import render_texture

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
    assert MARKER == ".patchloupe_synth.json"  # the name existing datasets carry
    assert json.loads((root / MARKER).read_text())["family"] == "metal"
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


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# sha256 over (relative path, bytes) of every file the call below writes, recorded with the generator as it
# stood before the data package was split into textures / defects / dataset (numpy 2, opencv 4, x86-64).
# A change here means every dataset generated from a seed, and the pre-training data, changed too.
GOLDEN_DIGEST = "71a4495d235944b2f97ae17704ed827944a6bb25171bc1bbfc29cf69c14ade8a"


def test_generated_datasets_are_bit_identical_to_the_recorded_ones(tmp_path: Path) -> None:
    kw = {"n_train": 1, "n_test_good": 1, "n_test_defect_per_kind": 1, "size": (40, 56), "seed": 7}
    generate_dataset(tmp_path, **kw)
    generate_texture_shift(tmp_path, "cloth", 2, 1, **kw)
    assert _tree_digest(tmp_path) == GOLDEN_DIGEST
