"""Pre-training and generator weights (``patchloupe.train.pretrain``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from patchloupe.train.weights import WeightsError, save_weights

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_pretrain_tiny_writes_loadable_generator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from patchloupe.train.pretrain import add_pretrain_arguments, load_generator, pretrain, run_pretrain

    fams = ["cloth", "mesh"]
    r = pretrain(tmp_path, "tiny", steps=3, batch_size=2, n_images_per_family_style=1, families=fams,
                 progress=False, eval_images_per_family_style=1)  # fmt: skip
    assert r.steps == 3
    g, cfg = load_generator(tmp_path)
    assert cfg["preset"] == "tiny" and cfg["image_size"] == [128, 128] and cfg["grid"] == [4, 4]
    assert cfg["stored_dtype"] == "float16" and not g.training
    t = cfg["training"]
    assert t["steps"] == 3 and t["data"]["families"] == fams and t["data"]["images"] == 5  # cloth 3 + mesh 2 styles
    assert t["final_loss"] == r.final_loss and t["wall_s"] >= 0
    assert set(t["heldout"]) == {"cloth", "mesh", "mean"} and np.isfinite(t["heldout"]["mean"]["psnr"])
    assert next(g.parameters()).dtype == torch.float32

    # resuming a finished run keeps the weights; the CLI handler prints a JSON summary
    parser = add_pretrain_arguments(argparse.ArgumentParser())
    argv = ["--out", str(tmp_path), "--preset", "tiny", "--steps", "3", "--batch-size", "2", "--images", "1"]
    argv += ["--families", *fams, "--resume", "--no-progress", "--eval-images", "0"]
    args = parser.parse_args(argv)
    assert run_pretrain(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["weights"].endswith("generator.safetensors")


def test_load_generator_rejects_foreign_weights(tmp_path: Path) -> None:
    from patchloupe.train.pretrain import load_generator

    save_weights({"x": torch.zeros(2)}, {"format": "something-else"}, tmp_path, "generator")
    with pytest.raises(WeightsError, match="not a generator config"):
        load_generator(tmp_path)


def test_default_generator_is_packaged() -> None:
    from patchloupe.train.pretrain import default_generator_path, load_default_generator

    path = default_generator_path()
    assert path.name == "generator.safetensors" and path.parent.parts[-2:] == ("weights", "pattern")
    if not path.is_file():
        pytest.skip("no packaged default generator in this checkout")
    g, cfg = load_default_generator()
    assert cfg["preset"] == "edge" and cfg["image_size"] == [256, 256] and cfg["grid"] == [4, 4]
    assert cfg["training"]["steps"] > 0
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        y = g(x, x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
