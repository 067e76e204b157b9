"""patchloupe.artefact: finding an exported graph and checking its JSON."""

from __future__ import annotations

import json
import shutil

import pytest
from patchloupe import Detector
from patchloupe.artefact import is_artefact, read_meta
from patchloupe.model_folder import ModelError
from patchloupe.persistence import default_model_dir


def test_is_artefact_by_file_and_by_folder(exported_graphs, tmp_path) -> None:
    assert is_artefact(exported_graphs["pattern"])
    assert is_artefact(exported_graphs["memory"].parent)  # the folder holding model.onnx + model.json
    assert not is_artefact(default_model_dir()) and not is_artefact(None) and not is_artefact(tmp_path)


def test_modified_graph_is_refused(exported_graphs, tmp_path) -> None:
    src = exported_graphs["memory"].parent
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    with open(dst / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="checksum"):
        Detector.load(dst)


def test_graph_without_json_or_with_another_version_is_refused(exported_graphs, tmp_path) -> None:
    bare = tmp_path / "bare.onnx"
    shutil.copy(exported_graphs["pattern"], bare)
    with pytest.raises(ModelError, match="no bare.json"):
        read_meta(bare)
    meta = json.loads(exported_graphs["pattern"].with_suffix(".json").read_text())
    meta["artefact_version"] = 99
    (tmp_path / "bare.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="version 99"):
        read_meta(bare)


def test_runtime_options_are_refused_for_a_torch_model_folder() -> None:
    with pytest.raises(ValueError, match="exported graphs only"):
        Detector.load(default_model_dir(), providers=["CPUExecutionProvider"])
