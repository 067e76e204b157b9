"""``patchloupe.train`` imports nothing heavy eagerly; inference modules never load the trainer."""

from __future__ import annotations

import subprocess
import sys

import pytest

_TRAINER = ("patchloupe.train.loop", "patchloupe.train.stage1", "patchloupe.train.stage2", "patchloupe.train.pretrain")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return set(out.stdout.split())


def test_import_train_is_lazy() -> None:
    mods = _modules_after("import patchloupe.train")
    assert "torch" not in mods and "numpy" not in mods
    assert not {m for m in mods if m.startswith("patchloupe.train.")}


def test_lazy_attributes_resolve_to_their_modules() -> None:
    import patchloupe.train as train
    from patchloupe.train.checkpoint import CheckpointManager
    from patchloupe.train.loop import TrainResult
    from patchloupe.train.stage1 import train_generator

    assert train.CheckpointManager is CheckpointManager and train.TrainResult is TrainResult
    assert train.train_generator is train_generator
    assert set(train.__all__) <= set(dir(train))
    for name in train.__all__:
        assert getattr(train, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        train.nope  # noqa: B018


def test_results_and_detector_do_not_load_the_trainer() -> None:
    mods = _modules_after("import patchloupe.results\nimport patchloupe.detector")
    assert "patchloupe.detector" in mods
    assert not mods.intersection(_TRAINER), sorted(mods.intersection(_TRAINER))
