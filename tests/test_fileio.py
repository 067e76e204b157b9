"""Atomic writes and checksums."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from patchloupe.fileio import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    p = atomic_write_bytes(tmp_path / "sub" / "a.bin", b"one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two" and os.listdir(p.parent) == ["a.bin"]
    atomic_write_json(tmp_path / "b.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [1, 2]}


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    p = atomic_write_bytes(tmp_path / "a.bin", b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(p, "not bytes")  # type: ignore[arg-type]
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


def test_checksums(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == sha256_bytes(data) == hashlib.sha256(data).hexdigest()
