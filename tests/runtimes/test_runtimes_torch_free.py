"""Running an exported graph never imports torch (checked in a subprocess with an import blocker)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import striped_surface

SCRIPT = r"""
import importlib.abc, json, sys, time, traceback
mode, graph, image = sys.argv[1], sys.argv[2], sys.argv[3]
attempts = []

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torch" and not name.startswith("torch."):
            return None
        frames = [f.filename for f in traceback.extract_stack()[:-1]]
        importer = next((f for f in reversed(frames) if "patchloupe" in f), "?")
        attempts.append(importer)
        raise ImportError(f"torch import attempted from {importer}")

sys.meta_path.insert(0, Blocker())
t0 = time.perf_counter()
import numpy as np
from patchloupe import Detector
det = Detector.load(graph)
r = det.inspect(np.load(image))
print(json.dumps({"score": r.score, "attempts": sorted(set(attempts)), "seconds": time.perf_counter() - t0,
                  "torch": type(sys.modules.get("torch")).__name__ if "torch" in sys.modules else None}))
"""


def _run(mode: str, graph: Path, tmp_path: Path) -> dict:
    img = tmp_path / "img.npy"
    np.save(img, striped_surface(1, (70, 70), hole=True))
    env = {"PYTHONPATH": ":".join(p for p in sys.path if p), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(graph), str(img)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["memory", "selfref"])
def test_load_and_inspect_an_exported_graph_without_torch(exported_graphs, tmp_path, kind: str) -> None:
    out = _run("strict", exported_graphs[kind], tmp_path)
    assert out["attempts"] == [] and out["torch"] is None
