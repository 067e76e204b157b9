"""A test-time pool as a third reference (MuSc-like mutual scoring), measured beside the default scorer; not in the SDK.

The default scorer (``selfref``) calls a position normal when it matches the training memory (``m``) or, for an
image the gate sees as another surface, its own image (``s``). After a texture change that the gate does not see
(every image stays with the memory alone), the memory is the wrong reference. Here the other test images of the
evaluated set are one more (after MuSc, ICLR 2024): for each position of image ``i`` its distance to the nearest
position of pool image ``j`` (the default's features), averaged over the ``--closest`` share of the pool images that
match it best, divided by the median of that over every image and position of the set -> ``M`` ``(h, w)``, ~1 on
normal texture. Rules (feature-grid maps, blurred like the memory map, the peak as the image score):

  default    the scorer as shipped (``Detector.fit`` defaults, the context memory sets memory-scored heights)
  M          the pool alone
  pool       memory-scored (near) images ``min(m, M)``, the others ``min(s, m, M)`` (clipped cells capped at 1)

Pools: ``all`` (every other image of the set), ``random-P`` (P other images drawn per image) and ``rolling-P`` (the
P images inspected just before, in a seeded random order of the set: what a detector holding its last P images would
have), ``stream-P`` (the same order, no wrap-around: the first images have short or no pools, and the normaliser is
a running median of what the stream has seen so far) and ``sorted-P`` (as ``stream-P`` in the set's file order,
where defects of one kind come in runs: a burst of defects). With ``--drifts T`` the pool rule applies only to
images whose stream has drifted: the ``q`` quantile, over the image and its pool, of each image's median ``m`` (the
memory's scaled distance), above ``T`` (rules ``drift q{q}>{T} {pool}``: [share of images gated, image AUROC, pixel
AUROC]). With ``--likes R`` as well the gate also asks that the recent images resemble each other more than the
memory (``pool_likeness``: median pool distance over median memory distance, the quantile over the image and its
pool, below ``R``; on the q = 0.25 median gate at the largest ``T``), which a burst of defects does not. With
``--sdk`` the SDK's build of that rule (``Detector.pooled(P)``, ``patchloupe.scorers.stream_pool``) is run over the
``stream-P`` / ``sorted-P`` orders too (rules ``sdk {pool}``: [share of images the pool rule scored, image AUROC,
pixel AUROC]); it measures likeness only for images past the drift level. Rows: every
family fitted on each style and evaluated on both (targets 1 and 4), and with ``--lighting`` the style-0 fit on the
gain / gamma / gradient copies of ``robustness.py`` (target 2), and with ``--tile`` magnetic tile (maps and masks at
256 x 256; a random pool: every pair of 640 images would take hours here).

    python benchmarks/pool_reference.py --out runs/pool_reference.json
    python benchmarks/pool_reference.py --families wood --pools all,rolling-16 --out runs/pool_wood.json
    python benchmarks/pool_reference.py --families none --tile --tile-pools random-32 --out runs/pool_tile.json
    python benchmarks/pool_reference.py --lighting --tile --pools rolling-16,sorted-16 \
        --tile-pools rolling-16,sorted-16 --drifts 1.15,1.2 --out runs/drift2.json
    python benchmarks/pool_reference.py --lighting --pools rolling-16,sorted-16 --drifts 1.2 --likes 0.5,0.7,0.9 \
        --out runs/like.json
    python benchmarks/pool_reference.py --summary runs/drift2.json   # worst drops per rule (targets 1, 2, 4, tile)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import robustness as rb  # noqa: E402

log = logging.getLogger("bench.pool_reference")
GEN = {"n_train": 40, "n_test_good": 20, "n_test_defect_per_kind": 4, "size": 256, "seed": 0}  # robustness --medium


def cross_nearest(f: torch.Tensor, i: int, others: list[int]) -> torch.Tensor:
    """Features ``(B, C, h, w)`` -> ``(len(others), h w)``: each position of image ``i``'s distance to the nearest
    position of each image in ``others`` (the SDK's ``stream_pool.cross_nearest``)."""
    from patchloupe.scorers.stream_pool import cross_nearest as nearest

    return nearest(f[i], f[others])


def pool_members(n: int, pool: str, seed: int) -> list[list[int]]:
    """For each of ``n`` images the indices of its pool (never itself): ``"all"``, ``"random-P"``, ``"rolling-P"``."""
    if pool == "all":
        return [[j for j in range(n) if j != i] for i in range(n)]
    kind, p = pool.rsplit("-", 1)
    p = min(int(p), n - 1)
    rng = np.random.default_rng(seed)
    if kind == "random":
        return [[int(j) for j in rng.choice([j for j in range(n) if j != i], p, replace=False)] for i in range(n)]
    if kind == "rolling":  # the p images before i in one random order (the first ones wrap to the end of the run)
        order = rng.permutation(n)
        at = {int(v): k for k, v in enumerate(order)}
        return [[int(order[(at[i] - t) % n]) for t in range(1, p + 1)] for i in range(n)]
    if kind in ("stream", "sorted"):  # a live stream: the (up to) p images before i, none before the first
        order = stream_order(n, pool, seed)
        at = {int(v): k for k, v in enumerate(order)}
        return [[int(order[at[i] - t]) for t in range(1, min(p, at[i]) + 1)] for i in range(n)]
    raise ValueError(f"unknown pool {pool!r}")


def stream_order(n: int, pool: str, seed: int) -> np.ndarray:
    """The order in which a ``stream-P`` (seeded random) or ``sorted-P`` (file order) pool sees ``n`` images."""
    return np.random.default_rng(seed).permutation(n) if pool.startswith("stream") else np.arange(n)


def sdk_maps(det: Any, imgs: list[np.ndarray], pool: str, seed: int, batch: int = 8) -> tuple[torch.Tensor, float]:
    """The SDK's stream pool (``det.pooled(P)``) over ``imgs`` (at the model size) in ``pool``'s order -> its maps
    ``(B, H, W)`` in [0, 1) in the set's order, and the share of images the pool rule scored."""
    pooled = det.pooled(int(pool.rsplit("-", 1)[1]))
    order = stream_order(len(imgs), pool, seed)
    out: list[torch.Tensor | None] = [None] * len(imgs)
    for k in range(0, len(order), batch):
        idx = [int(i) for i in order[k : k + batch]]
        _, amap = pooled.scorer.infer(np.stack([imgs[i] for i in idx]))
        for i, a in zip(idx, amap, strict=True):
            out[i] = torch.from_numpy(a)
    st = pooled.scorer.stats()
    return torch.stack(out), st["pooled"] / max(st["seen"], 1)  # type: ignore[arg-type]


def raw_pool_distance(f: torch.Tensor, members: list[list[int]], closest: float) -> torch.Tensor:
    """Features ``(B, C, h, w)`` and each image's pool -> ``(B, h w)``: at each position the mean distance to the
    ``closest`` share of pool images nearest there, in feature units (an image with no pool gets ``inf``; the SDK's
    ``stream_pool.pool_distance`` per image)."""
    from patchloupe.scorers.stream_pool import pool_distance as sdk_pool_distance

    out = torch.full((f.shape[0], f.shape[2] * f.shape[3]), math.inf)
    for i, others in enumerate(members):
        if not others:  # the first image of a stream: no pool yet
            continue
        out[i] = sdk_pool_distance(f[i], f[others], closest)
    return out


def _seen(values: torch.Tensor, members: list[list[int]]) -> list[list[int]]:
    """Per-image values ``(B,)`` and each image's pool -> for each image the indices of itself and its pool whose
    value is finite (an image with no pool has ``inf``: nothing to know from it yet)."""
    return [[j for j in (i, *others) if math.isfinite(float(values[j]))] for i, others in enumerate(members)]


def normalised(out: torch.Tensor, members: list[list[int]], stream: bool = False) -> torch.Tensor:
    """:func:`raw_pool_distance` ``(B, N)`` -> ``(B, N)`` divided by its median over the whole set (``stream``: by
    the median of the image's and its pool's medians, what a live stream knows); ``inf`` (no pool) stays."""
    if not stream:
        return out / out.median().clamp_min(1e-6)
    med = out.median(1).values
    norm = torch.stack([med[js or [i]].median() for i, js in enumerate(_seen(med, members))])
    scaled = out / norm.clamp_min(1e-6)[:, None]
    return torch.where(out.isinf(), out, scaled)  # inf / inf stays "no pool", not NaN


def pool_distance(f: torch.Tensor, members: list[list[int]], closest: float, stream: bool = False) -> torch.Tensor:
    """Features ``(B, C, h, w)`` and each image's pool -> ``M`` ``(B, h, w)``: :func:`raw_pool_distance`
    :func:`normalised` (``~1`` on normal texture)."""
    b, _, h, w = f.shape
    return normalised(raw_pool_distance(f, members, closest), members, stream).reshape(b, h, w)


def pool_likeness(raw: torch.Tensor, d: torch.Tensor, members: list[list[int]], q: float = 0.5) -> torch.Tensor:
    """Raw pool distances ``(B, N)`` and raw memory distances ``d`` ``(B, h, w)`` (same feature space) -> ``(B,)``:
    the ``q`` quantile over the image and its pool of each one's median pool distance over median memory distance.
    Low when the recent images resemble each other far more than the memory (a changed surface); ``inf`` with no
    pool."""
    ratio = raw.median(1).values / d.flatten(1).median(1).values.clamp_min(1e-6)
    return torch.stack([ratio[js].quantile(q) if others and js else torch.tensor(math.inf)
                        for js, others in zip(_seen(ratio, members), members, strict=True)])  # fmt: skip


def _load(folder: Path, size: tuple[int, int]) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """A category's test images at ``size`` (the model's resize), masks at ``size`` and labels."""
    from patchloupe.data import MVTecCategory
    from patchloupe.data import read_image as read
    from patchloupe.preprocess import resize_for_model

    cat = MVTecCategory(folder)
    imgs, masks, labels = [], [], []
    for item in cat.test_items():
        img = read(item.path)
        imgs.append(resize_for_model(img, size))
        m = cat.load_mask(item, img.shape)
        masks.append(cv2.resize(m.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0)
        labels.append(item.label)
    return imgs, masks, np.array(labels)


def drift_levels(m: torch.Tensor, members: list[list[int]], q: float = 0.5, spatial: float = 0.5) -> torch.Tensor:
    """Scaled memory distances ``m`` ``(B, h, w)`` and each image's pool -> ``(B,)``: the ``q`` quantile over the
    image and its pool of each one's ``spatial`` quantile of ``m`` (the median by default: ~1 on the fitted surface
    by construction of ``memory_scale``; a low ``q`` asks whether even the most ordinary recent images are far from
    the memory, a low ``spatial`` whether even their most ordinary positions are, which a local defect does not
    move)."""
    med = m.flatten(1).quantile(spatial, dim=1)
    return torch.stack([med[[i, *others]].quantile(q) for i, others in enumerate(members)])


def measure(
    det: Any,
    folder: Path,
    pools: list[str],
    closest: float,
    seed: int,
    drifts: tuple[float, ...] = (),
    spatials: tuple[float, ...] = (0.5,),
    likes: tuple[float, ...] = (),
    sdk: bool = False,
) -> dict[str, Any]:
    """Image / pixel AUROC of each rule on ``folder``'s test set for the fitted default scorer ``det``."""
    from patchloupe.metrics import image_auroc, pixel_auroc
    from patchloupe.scorers.memory import to_batch
    from patchloupe.scorers.selfref import cap_clipped

    sc = det.scorer
    size = sc.image_size
    imgs, masks, labels = _load(folder, size)
    feats, default, m, s, near, cells = [], [], [], [], [], []
    with torch.inference_mode():
        for i in range(0, len(imgs), 16):
            x = to_batch(np.stack(imgs[i : i + 16]))
            p = sc.parts(x, every=True)  # s of each image's own branch (near images: the fitted surface's)
            feats.append(sc.memory._tap_features(x)[0])  # the one extra trunk pass: parts keeps no features
            default.append(sc.blend(p.s, p.d, p.c, size, p.clipped, p.cells))  # raw_map from the same parts
            m.append(p.d / sc.config.memory_scale)
            s.append(p.s)
            near.append(sc.near(p.d, p.clipped))
            cells.append(sc._cells(x, None, p.d.shape[-2:]))
    f, default, m, s, near, cells = (torch.cat(t) for t in (feats, default, m, s, near, cells))

    def score(maps: torch.Tensor, grid: bool = True) -> list[float]:
        maps = sc.memory._blurred(maps, size) if grid else maps
        img = image_auroc(labels, maps.flatten(1).amax(1).numpy())
        return [round(float(img), 4), round(float(pixel_auroc(masks, list(maps.numpy()))), 4)]

    med = m.flatten(1).median(1).values
    good = torch.as_tensor(labels == 0)
    row: dict[str, Any] = {"n": len(imgs), "near_share": round(float(near.float().mean()), 3),
                           "median_m_good": round(float(med[good].median()), 3),
                           "median_m_all": round(float(med.median()), 3),
                           "default": score(default, grid=False)}  # fmt: skip
    for pool in pools:
        t0 = time.perf_counter()
        members = pool_members(len(imgs), pool, seed)
        raw = raw_pool_distance(f, members, closest)
        big_m = normalised(raw, members, stream=pool.startswith(("stream", "sorted"))).reshape(m.shape)
        far = cap_clipped(torch.minimum(torch.minimum(s, m), big_m), cells, sc.config.clip_cells)
        rule = torch.where(near[:, None, None], torch.minimum(m, big_m), far)
        row[f"M {pool}"] = score(torch.where(big_m.isinf(), m, big_m))  # no pool yet: the memory
        row[f"pool {pool}"] = score(rule)
        if drifts:
            has_pool = torch.tensor([bool(o) for o in members])
            blurred = sc.memory._blurred(rule, size)
            levels = {(q, sp): drift_levels(m, members, q, sp) for sp in spatials for q in (0.5, 0.25)}
            for sp in spatials:
                for q in (0.5, 0.25):
                    level = levels[q, sp]
                    for tau in drifts:
                        on = (level > tau) & has_pool
                        mixed = torch.where(on[:, None, None], blurred, default)
                        key = f"drift q{q}>{tau} {pool}" if sp == 0.5 else f"drift p{round(100 * sp)} q{q}>{tau} {pool}"
                        row[key] = [round(float(on.float().mean()), 3), *score(mixed, grid=False)]
            like = pool_likeness(raw, m * sc.config.memory_scale, members)
            fin = like.isfinite()
            row[f"likeness {pool}"] = [round(float(like[fin & good].median()), 3), round(float(like[fin].median()), 3)]
            drifted = (
                (levels[0.25, 0.5] if (0.25, 0.5) in levels else drift_levels(m, members, 0.25)) > max(drifts)
            ) & has_pool
            for rho in likes:
                on = drifted & (like < rho)
                mixed = torch.where(on[:, None, None], blurred, default)
                row[f"drift q0.25>{max(drifts)} like<{rho} {pool}"] = [round(float(on.float().mean()), 3),
                                                                       *score(mixed, grid=False)]  # fmt: skip
        if sdk and pool.startswith(("stream", "sorted")):
            maps, share = sdk_maps(det, imgs, pool, seed)
            row[f"sdk {pool}"] = [round(share, 3), *score(maps, grid=False)]
        row[f"pool {pool} s"] = round(time.perf_counter() - t0, 1)
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rows of a run -> per rule: the worst texture-change drop (target 1: ``fit == test`` minus ``fit != test`` on
    the same test style, image and pixel), the worst lighting drop (target 2: the style-0 fit on its unchanged test
    set minus each lighting copy, image), the fitted minimum (target 4) and the magnetic-tile row, in points."""
    rules = sorted({k for r in rows for k, v in r.items() if isinstance(v, list) and not k.startswith("likeness")})
    out: dict[str, dict[str, Any]] = {}

    def get(rule: str, d: str, fit: Any, test: Any, change: str = "none") -> list[float] | None:
        for r in rows:
            if (r["data"], r["fit"], r["test"], r["change"]) == (d, fit, test, change) and rule in r:
                return r[rule][-2:]
        return None

    for rule in rules:
        t1, t2, fitted = [0.0, 0.0], 0.0, [1.0, 1.0]
        for r in rows:
            if rule not in r or r["data"] == "magnetic_tile":
                continue
            own, here = get(rule, r["data"], r["test"], r["test"]), r[rule][-2:]
            if r["change"] == "none" and r["fit"] == r["test"]:
                fitted = [min(fitted[0], here[0]), min(fitted[1], here[1])]
            elif r["change"] == "none" and own is not None:
                t1 = [max(t1[0], 100 * (own[0] - here[0])), max(t1[1], 100 * (own[1] - here[1]))]
            elif r["change"] != "none" and (base := get(rule, r["data"], 0, 0)) is not None:
                t2 = max(t2, 100 * (base[0] - here[0]))
        tile = get(rule, "magnetic_tile", "train", "test")
        out[rule] = {"t1_img": round(t1[0], 2), "t1_pix": round(t1[1], 2), "t2_img": round(t2, 2),
                     "fitted_min": fitted, "tile": tile}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default="cloth,leather,mesh,metal,motif,wood", help="'none' for no families")
    p.add_argument("--pools", default="all,rolling-16,rolling-8")
    p.add_argument("--tile-pools", default="random-32", help="the pools on magnetic tile")
    p.add_argument("--closest", type=float, default=0.3, help="share of pool images averaged (MuSc: 0.3)")
    p.add_argument("--lighting", action="store_true", help="also the style-0 fits on the lighting copies")
    p.add_argument("--tile", action="store_true", help="also magnetic tile (full, fitted on its 700 good tiles)")
    p.add_argument("--drifts", default="", help="comma list of drift levels: the pool rule only on drifted streams")
    p.add_argument("--drift-spatial", default="0.5", help="comma list: the quantile of m within an image (0.5)")
    p.add_argument("--likes", default="", help="comma list: also gate on pool likeness below these (with --drifts)")
    p.add_argument("--sdk", action="store_true", help="also the SDK's Detector.pooled() on stream-P / sorted-P pools")
    p.add_argument("--summary", default="", help="print the per-rule target summary of this run's JSON and exit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=str(rb.ROOT / "runs" / "robust_data"))
    p.add_argument("--out", default=str(rb.ROOT / "runs" / "pool_reference.json"))
    a = p.parse_args(argv)
    if a.likes and not a.drifts:
        p.error("--likes gates on top of a drift level: give --drifts too")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.summary:
        for rule, v in summarize(json.loads(Path(a.summary).read_text())["rows"]).items():
            print(f"{rule:32s} {json.dumps(v)}")  # noqa: T201 (a report on stdout)
        return 0
    torch.set_num_threads(a.threads)
    from patchloupe.data import generate_dataset

    data = Path(a.data) / "medium"
    pools = a.pools.split(",")
    drifts = tuple(float(v) for v in a.drifts.split(",") if v)
    spatials = tuple(float(v) for v in a.drift_spatial.split(",") if v)
    likes = tuple(float(v) for v in a.likes.split(",") if v)
    fit_args = SimpleNamespace(max_train=0, seed=a.seed)
    rows: list[dict[str, Any]] = []
    out = Path(a.out)
    opts = {"closest": a.closest, "seed": a.seed, "drifts": drifts, "spatials": spatials, "likes": likes,
            "sdk": a.sdk}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        log.info("%s", json.dumps(row))
        out.write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))

    fams = [] if a.families == "none" else a.families.split(",")
    for fam in fams:
        for st in (0, 1):
            generate_dataset(data, families=[fam], style=st, **GEN)
        models = {st: rb.fit_model("selfref", rb._cat(data, fam, st) / "train" / "good", fit_args) for st in (0, 1)}
        for fit in (0, 1):
            for test in (0, 1):
                add({"data": fam, "fit": fit, "test": test, "change": "none",
                     **measure(models[fit], rb._cat(data, fam, test), pools, **opts)})  # fmt: skip
        if a.lighting:
            for kind in rb.LIGHTING:
                folder = rb.lighting_copy(rb._cat(data, fam, 0), data / "lighting" / f"{fam}_{kind}", kind, a.seed)
                add({"data": fam, "fit": 0, "test": 0, "change": kind,
                     **measure(models[0], folder, pools, **opts)})  # fmt: skip
    if a.tile and rb.TILE.is_dir():
        det = rb.fit_model("selfref", rb.TILE / "train" / "good", fit_args)
        add({"data": "magnetic_tile", "fit": "train", "test": "test", "change": "none",
             **measure(det, rb.TILE, a.tile_pools.split(","), **opts)})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
