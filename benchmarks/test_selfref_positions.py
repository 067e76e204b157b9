"""benchmarks/selfref_positions.py: the zero-shot position-normalisation table on a tiny generated set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from patchloupe.data import write_image
from selfref_positions import main, normalised


def test_every_normalisation_is_scored_per_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "medium" / "stripes"
    for sub in ("train/good", "test/good", "test/hole", "ground_truth/hole"):
        (root / sub).mkdir(parents=True)
    y, x = np.mgrid[0:96, 0:96]
    for i in range(3):
        base = (128 + 60 * np.sin(2 * np.pi * (x + 3 * i) / 12) + rng.normal(0, 4, (96, 96))).clip(0, 255)
        img = np.repeat(base[..., None], 3, axis=2).astype(np.uint8)
        write_image(root / f"test/good/{i}.png", img)
        write_image(root / f"train/good/{i}.png", img)
        img[40:56, 40:56] = (20, 200, 40)
        write_image(root / f"test/hole/{i}.png", img)
        write_image(root / f"ground_truth/hole/{i}_mask.png", np.pad(np.ones((16, 16), bool), 40))
    out = tmp_path / "positions.json"
    assert main(["--data", str(tmp_path / "medium"), "--depths", "3", "--out", str(out), "--threads", "1"]) == 0
    rec = json.loads(out.read_text())
    assert set(rec["rows"]["stripes"]) == {"none", "bands", "classes-3"}
    assert rec["rows"]["stripes"]["classes-3"]["image_auroc"] == 1.0  # a large green square on grey stripes
    assert set(rec["summary"]) == {"texture"}


def test_normalised_leaves_the_map_alone_only_for_none() -> None:
    import torch

    s = torch.full((1, 8, 8), 3.0)  # every border cell matches less of its image
    s[:, 1:-1, 1:-1] = 1.0
    assert torch.equal(normalised(s, "none"), s)
    assert torch.allclose(normalised(s, "bands")[:, 1:-1], torch.ones(1, 6, 8))  # a corner: both its bands' factors
    assert torch.allclose(normalised(s, "classes-2"), torch.ones(1, 8, 8))  # corners are a class of their own
