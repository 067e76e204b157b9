"""Weights files (``patchloupe.train.weights``): safetensors + JSON pairs, atomic, checksummed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from patchloupe.train.weights import WeightsError, load_weights, save_weights
from torch import nn


def test_save_load_weights_roundtrip_and_atomicity(tmp_path: Path) -> None:
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2, dtype=torch.int64)}
    state["view"] = state["a"][0]  # shares storage with "a"
    save_weights(state, {"preset": "x", "grid": [4, 4]}, tmp_path, "w")
    loaded, cfg = load_weights(tmp_path, "w")
    assert cfg == {"preset": "x", "grid": [4, 4]}
    assert set(loaded) == set(state)
    for k in state:
        assert torch.equal(loaded[k], state[k])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json", "w.safetensors"]  # no temp files left
    doc = json.loads((tmp_path / "w.json").read_text())
    assert doc["__weights__"]["sha256"]
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight  # tied parameters share storage
    save_weights(tied, {}, tmp_path, "tied")
    sd, _ = load_weights(tmp_path, "tied")
    assert torch.equal(sd["0.weight"], tied[0].weight.detach()) and torch.equal(sd["1.weight"], sd["0.weight"])
    lin = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="reserved"):
        save_weights(lin, {"__weights__": 1}, tmp_path, "bad")


def test_load_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(tmp_path, "missing")
    save_weights({"x": torch.ones(8)}, {"k": 1}, tmp_path, "w")
    st = tmp_path / "w.safetensors"
    good = st.read_bytes()
    st.write_bytes(good[:-4])  # truncated
    with pytest.raises(WeightsError, match="truncated"):
        load_weights(tmp_path, "w")
    st.write_bytes(good[:-4] + b"\x00\x00\x80\x7f")  # same size, different content
    with pytest.raises(WeightsError, match="SHA-256"):
        load_weights(tmp_path, "w")
    st.write_bytes(b"garbage!" * 4)
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        load_weights(tmp_path, "w", verify=False)
    st.unlink()
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path, "w")
    (tmp_path / "j.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        load_weights(tmp_path, "j")
