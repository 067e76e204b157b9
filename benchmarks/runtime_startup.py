"""Cold start of the runtime-only path vs the torch path: ``import patchloupe`` + ``Detector.load`` + the
first ``inspect``, each in a fresh interpreter (median of ``--runs``), for docs/benchmarks.md.

    python benchmarks/runtime_startup.py --torch-model MODEL_DIR --graph MODEL.onnx --runs 3

The ONNX run blocks ``import torch`` (the import blocker of tests/runtimes/test_runtimes_torch_free.py;
``patchloupe.preprocess``'s module-level import gets an empty stand-in until it is made lazy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CODE = r"""
import importlib.abc, importlib.machinery, sys, time, types
t0 = time.perf_counter()
if sys.argv[3] == "block":
    class _Stub(importlib.abc.Loader):
        def create_module(self, spec): return types.ModuleType(spec.name)
        def exec_module(self, module): pass
    class _Block(importlib.abc.MetaPathFinder):
        allow = True
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                if self.allow: return importlib.machinery.ModuleSpec(name, _Stub())
                raise ImportError("torch import attempted")
    b = _Block(); sys.meta_path.insert(0, b)
    import patchloupe.preprocess
    del sys.modules["torch"]; b.allow = False
import numpy as np
from patchloupe import Detector
t1 = time.perf_counter()
det = Detector.load(sys.argv[1])
t2 = time.perf_counter()
det.inspect(np.load(sys.argv[2]))
t3 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {t3 - t2:.3f} {t3 - t0:.3f}")
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--torch-model", default=None, help="model folder (default: the built-in model)")
    ap.add_argument("--graph", required=True)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    img = Path(tempfile.mkdtemp()) / "img.npy"
    np.save(img, np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    from patchloupe.persistence import default_model_dir

    out = {}
    for name, model, mode in (("torch", args.torch_model or str(default_model_dir()), "torch"),
                              ("onnxruntime, torch blocked", args.graph, "block")):  # fmt: skip
        runs = []
        for _ in range(args.runs):
            res = subprocess.run([sys.executable, "-c", CODE, model, str(img), mode], capture_output=True, text=True)
            if res.returncode:
                raise SystemExit(res.stderr[-2000:])
            runs.append([float(v) for v in res.stdout.split()])
        med = [statistics.median(col) for col in zip(*runs)]
        out[name] = dict(zip(("import_s", "load_s", "first_inspect_s", "total_s"), med))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
