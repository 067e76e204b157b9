"""Side-by-side latency: PatchCore-MobileNetV2 (``patchcore.py``) vs patchloupe's default scorer (``selfref``, the
default of ``Detector.fit``), its memory scorer and the built-in models (``Detector.load()``, zero-shot self-reference,
and the pattern model).

All three are fitted on (or, for the default model, shipped for) the same magnetic-tile training images and
timed in one process, interleaved round by round (the order rotates each round), batch 1, at 256 x 256, at
each thread count; the table gives medians and the ratio to PatchCore. Then, each in a fresh subprocess:
cold ``import patchloupe``, ``Detector.load()`` and the first ``inspect``; and the cost of ``inspect`` against
the input's pixel count (each input is resized to the model size and the map back: the large-image policy),
timed round-robin over the sizes in one process per model, with the peak resident memory while inspecting
(VmHWM reset after loading; one fresh process per model and size) and how much that peak is above the
resident memory before the first inspection.

    python benchmarks/latency.py --out runs/latency.json        # prints the markdown tables

Needs ``../shared/data/magnetic_tile`` (``--data``); without it, it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "magnetic_tile"
SIZES = ((256, 256), (512, 512), (1024, 1024), (2048, 2448), (256, 4096))  # (H, W)

log = logging.getLogger("latency")


# ------------------------------------------------------------------------------------------------ helpers
def _tiles(data: Path, n_train: int, n_test: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The first ``n_train`` training tiles (as read) and ``n_test`` test tiles spread over the test set, resized
    to 256 x 256 (INTER_AREA, the size every model here inspects them at)."""
    from patchloupe.data import MVTecCategory, read_image

    cat = MVTecCategory(data)
    train = [read_image(p) for p in cat.train_good()[:n_train]]
    items = cat.test_items()
    step = max(1, len(items) // n_test)
    test = [read_image(it.path) for it in items[::step][:n_test]]
    return train, [np.ascontiguousarray(cv2.resize(im, (256, 256), interpolation=cv2.INTER_AREA)) for im in test]


def _fit_all(train: list[np.ndarray], workdir: Path) -> dict[str, Any]:
    """Fit PatchCore, the default scorer and the memory scorer on ``train``; save them (for the subprocesses) and
    time the fits."""
    import torch
    from patchcore import PatchCore
    from patchloupe import Detector

    out: dict[str, Any] = {}
    t = time.perf_counter()
    pc = PatchCore().fit(train, image_size=(256, 256))
    out["patchcore_fit_s"] = time.perf_counter() - t
    torch.save({"bank": pc.bank, "image_size": pc.image_size}, workdir / "patchcore.pt")
    t = time.perf_counter()
    mem = Detector.fit(train, scorer="memory", image_size=(256, 256), progress=False)
    out["memory_fit_s"] = time.perf_counter() - t
    mem.save(workdir / "memory_model")
    t = time.perf_counter()
    sr = Detector.fit(train, image_size=(256, 256), progress=False)
    out["selfref_fit_s"] = time.perf_counter() - t
    out["selfref_scorer"] = sr.config.scorer
    sr.save(workdir / "selfref_model")
    assert pc.bank is not None
    memory = getattr(getattr(mem, "scorer", mem), "memory", None)  # the scorer's feature memory
    bank = getattr(memory, "bank", None)
    out["patchcore_bank"] = int(pc.bank.shape[0])
    out["memory_bank"] = int(bank.shape[0]) if bank is not None else -1
    ctx = getattr(memory, "context_bank", None)
    out["memory_context_bank"] = int(ctx.shape[0]) if ctx is not None else 0
    from patchloupe.persistence import default_model_dir

    builtin, pattern = Detector.load(), Detector.load(default_model_dir("pattern"))
    out["models"] = {"patchcore": pc, "selfref": sr, "memory": mem, "builtin": builtin, "pattern": pattern}
    return out


def _runner(name: str, model: Any):  # noqa: ANN202 - a callable on one image
    if name == "patchcore":
        return lambda img: model.predict([img])
    return model.inspect


def interleaved(models: dict[str, Any], images: list[np.ndarray], threads: int, rounds: int) -> dict[str, Any]:
    """Median ms per image of each model, timed round-robin (order rotating each round) at ``threads``."""
    import torch

    torch.set_num_threads(threads)
    names = list(models)
    run = {n: _runner(n, models[n]) for n in names}
    for n in names:  # warm-up
        for img in images[:3]:
            run[n](img)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        img = images[r % len(images)]
        for k in range(len(names)):
            n = names[(r + k) % len(names)]
            t = time.perf_counter()
            run[n](img)
            times[n].append(1000 * (time.perf_counter() - t))
    med = {n: statistics.median(v) for n, v in times.items()}
    q = {n: np.percentile(v, [25, 75]).tolist() for n, v in times.items()}
    return {"threads": threads, "rounds": rounds, "median_ms": med, "iqr_ms": q, "load": os.getloadavg()[0]}


# ------------------------------------------------------------------------------------------- subprocesses
_COLD = r"""
import json, sys, time
t0 = time.perf_counter()
import patchloupe
from patchloupe import Detector
t1 = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[2]))
t2 = time.perf_counter()
det = Detector.load(sys.argv[1] or None)
t3 = time.perf_counter()
import numpy as np
img = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
det.inspect(img)
t4 = time.perf_counter()
det.inspect(img)
t5 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "torch_import_s": t2 - t1, "load_s": t3 - t2, "first_inspect_s": t4 - t3,
                  "second_inspect_s": t5 - t4}))
"""

_PIXELS = r"""
import json, sys, time
import numpy as np, torch, cv2
name, model, sizes, threads, rounds, tile, here, mode = sys.argv[1:9]
sizes = json.loads(sizes); threads, rounds = int(threads), int(rounds)
torch.set_num_threads(threads)
sys.path.insert(0, here)
if name == "patchcore":
    from patchcore import PatchCore
    state = torch.load(model, weights_only=True)
    pc = PatchCore(); pc.image_size = tuple(state["image_size"]); pc.bank = state["bank"]
    pc._bank_sq = pc.bank.square().sum(1)
    run = lambda im: pc.predict([im])
else:
    from patchloupe import Detector
    det = Detector.load(model or None)
    run = det.inspect
from patchloupe.data import read_image
src = read_image(tile)
imgs = [np.ascontiguousarray(cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR)) for h, w in sizes]
def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(key)) / 1024
if mode == "memory":  # one size: the peak resident memory while inspecting it
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM): imports and loading peak higher
        f.write("5")
    before = status_mb("VmRSS:")
    run(imgs[0]); run(imgs[0])
    print(json.dumps({"rss_before_mb": before, "peak_rss_mb": status_mb("VmHWM:")}))
else:  # all sizes, round-robin, so that load changes hit every size alike
    for im in imgs:
        run(im)
    times = [[] for _ in imgs]
    for _ in range(rounds):
        for i, im in enumerate(imgs):
            t = time.perf_counter(); run(im); times[i].append(1000 * (time.perf_counter() - t))
    print(json.dumps({"median_ms": [float(np.median(t)) for t in times]}))
"""


def _python(code: str, *args: str) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(res.stdout.strip().splitlines()[-1])


def cold_start(workdir: Path, threads: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median over ``repeats`` fresh interpreters of import / load / first-inspect seconds, per model (the fitted
    ones saved in ``workdir`` by :func:`_fit_all`)."""
    out = {}
    for name, path in (
        ("builtin", ""),
        ("selfref", str(workdir / "selfref_model")),
        ("memory", str(workdir / "memory_model")),
    ):
        runs = [_python(_COLD, path, str(threads)) for _ in range(repeats)]
        out[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return out


def pixel_cost(workdir: Path, tile: Path, threads: int, rounds: int) -> list[dict[str, Any]]:
    """Median ``inspect`` ms at each input size in ``SIZES`` (one process per model, sizes round-robin) and the
    peak resident memory while inspecting (one fresh process per model and size)."""
    rows = []
    models = {
        "patchcore": str(workdir / "patchcore.pt"),
        "selfref": str(workdir / "selfref_model"),
        "memory": str(workdir / "memory_model"),
        "builtin": "",
    }
    common = (str(threads), str(rounds), str(tile), str(HERE))
    for name, path in models.items():
        med = _python(_PIXELS, name, path, json.dumps(SIZES), *common, "time")["median_ms"]
        for (h, w), ms in zip(SIZES, med):
            mem = _python(_PIXELS, name, path, json.dumps([(h, w)]), *common, "memory")
            rows.append({"model": name, "h": h, "w": w, "megapixels": h * w / 1e6, "median_ms": ms, **mem})
    return rows


def slopes(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Least-squares slope of median ms against megapixels, per model."""
    out = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        x = np.array([r["megapixels"] for r in rows if r["model"] == name])
        y = np.array([r["median_ms"] for r in rows if r["model"] == name])
        out[name] = float(np.polyfit(x, y, 1)[0])
    return out


# ------------------------------------------------------------------------------------------------ report
def markdown(res: dict[str, Any]) -> str:
    """The tables of the sections ``res`` holds (a run of some ``--sections`` with no earlier ``--out`` has only
    those)."""
    lines = []
    f = res.get("fit")
    if f:
        lines += [
            f"Training: {res['n_train']} magnetic tiles; PatchCore bank {f['patchcore_bank']} vectors (fit "
            f"{f['patchcore_fit_s']:.1f} s); memory scorer {f['memory_bank']} + {f['memory_context_bank']} context "
            f"vectors (fit {f['memory_fit_s']:.1f} s); default scorer {f.get('selfref_scorer', '-')} (fit "
            f"{f.get('selfref_fit_s', float('nan')):.1f} s).",
        ]
    if res.get("interleaved"):
        lines += [
            "",
            "| threads | load | PatchCore ms | default scorer ms (x PatchCore) | memory ms (x PatchCore) "
            "| built-in model ms (x PatchCore) | built-in pattern model ms (x PatchCore) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for it in res["interleaved"]:
            m = it["median_ms"]
            pc = m["patchcore"]
            names = ("selfref", "memory", "builtin", "pattern")
            cells = [f"{m[n]:.1f} ({m[n] / pc:.2f})" if n in m else "-" for n in names]
            lines.append(f"| {it['threads']} | {it['load']:.1f} | {pc:.1f} | " + " | ".join(cells) + " |")
    if res.get("cold"):
        lines += ["", "| cold, fresh process | import patchloupe s (with torch) | Detector.load s | first inspect s |"]
        lines += ["|---|---:|---:|---:|"]
        for name, c in res["cold"].items():
            cells = (c["import_s"], c["load_s"], c["first_inspect_s"])
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    if res.get("pixels"):
        head = "| input (W x H) | MP | PatchCore ms / peak MB (+ over loaded) | default scorer | memory | built-in |"
        lines += ["", head, "|---|---:|---:|---:|---:|---:|"]
        by: dict[tuple[int, int], dict[str, Any]] = {}
        for r in res["pixels"]:
            by.setdefault((r["h"], r["w"]), {})[r["model"]] = r
        for (h, w), d in by.items():
            cells = [f"{r['median_ms']:.1f} / {r['peak_rss_mb']:.0f} (+{r['peak_rss_mb'] - r['rss_before_mb']:.0f})"
                     for r in d.values()]  # fmt: skip
            lines.append(f"| {w} x {h} | {h * w / 1e6:.2f} | " + " | ".join(cells) + " |")
        s = res["slopes_ms_per_mp"]
        lines.append("| slope, ms per MP | | " + " | ".join(f"{s[n]:.2f}" for n in s) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--n-train", type=int, default=60)
    p.add_argument("--n-test", type=int, default=10)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--pixel-threads", type=int, default=1)
    p.add_argument("--pixel-rounds", type=int, default=5)
    p.add_argument("--cold-repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "runs" / "latency.json"))
    p.add_argument("--sections", default="interleaved,cold,pixels", help="the others are kept from --out")
    a = p.parse_args(argv)
    sections = set(a.sections.split(","))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = Path(a.data)
    if not (data / "train" / "good").is_dir():
        log.warning("no magnetic tile data at %s: nothing measured", data)
        return 0
    sys.path.insert(0, str(HERE))
    import torch

    torch.set_num_threads(1)
    train, test256 = _tiles(data, a.n_train, a.n_test)
    out = Path(a.out)
    res: dict[str, Any] = (
        json.loads(out.read_text()) if out.is_file() and sections != {"interleaved", "cold", "pixels"} else {}
    )
    res.update({"n_train": len(train), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    res["load_at_start"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fit = _fit_all(train, work)
        models = fit.pop("models")
        res["fit"] = fit
        log.info("fit: %s", fit)
        if "interleaved" in sections:
            res["interleaved"] = [interleaved(models, test256, int(t), a.rounds) for t in a.threads.split(",")]
            log.info("interleaved: %s", res["interleaved"])
        del models
        if "cold" in sections:
            res["cold"] = cold_start(work, a.pixel_threads, a.cold_repeats)
            log.info("cold: %s", res["cold"])
        if "pixels" in sections:
            tile = sorted((data / "test" / "good").glob("*"))[0]
            res["pixels"] = pixel_cost(work, tile, a.pixel_threads, a.pixel_rounds)
            res["slopes_ms_per_mp"] = slopes(res["pixels"])
            res["load_after_pixels"] = os.getloadavg()[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    sys.stdout.write(markdown(res) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
