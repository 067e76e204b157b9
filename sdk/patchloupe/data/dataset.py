"""MVTec-AD-layout datasets of procedural textures with exact defect masks.

:func:`generate_dataset` writes one category per texture family and :func:`generate_texture_shift` a
category that trains on one style and tests on another. A marker file in each category records the
parameters, so a complete category is skipped and an incompatible one is refused.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .defects import DATASET_DEFECTS, make_defect
from .io import IMAGE_SUFFIXES, write_image
from .textures import FAMILIES, check_family, image_size, render_texture

__all__ = ["MARKER", "generate_dataset", "generate_texture_shift"]

logger = logging.getLogger(__name__)

#: Marker file in each generated category (its parameters, as JSON).
MARKER = ".patchloupe_synth.json"
_FORMAT = 1


def _rng(seed: int, family: str, style: int, split: str, i: int) -> np.random.Generator:
    key = [int(seed), zlib.crc32(family.encode()), int(style), zlib.crc32(split.encode()), int(i)]
    return np.random.default_rng(key)


def _dataset_kinds(kinds: Sequence[str] | None) -> tuple[str, ...]:
    """``kinds`` (default: all of :data:`DATASET_DEFECTS`) as a tuple; ValueError for an unknown kind."""
    kinds_t = tuple(DATASET_DEFECTS if kinds is None else kinds)
    for k in kinds_t:
        if k not in DATASET_DEFECTS:
            raise ValueError(f"unknown dataset defect kind {k!r}; choose from {tuple(DATASET_DEFECTS)}")
    return kinds_t


def _write_category(
    out: Path,
    family: str,
    train_style: int,
    test_style: int,
    n_train: int,
    n_test_good: int,
    n_defect: int,
    size: tuple[int, int],
    seed: int,
    kinds: tuple[str, ...],
) -> Path:
    params = {
        "format": _FORMAT,
        "family": family,
        "train_style": train_style,
        "test_style": test_style,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect_per_kind": n_defect,
        "size": list(size),
        "seed": seed,
        "kinds": list(kinds),
    }
    marker = out / MARKER
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old == params:
            logger.info("%s: complete, skipped", out)
            return out
        raise ValueError(f"{out} holds a synthetic dataset made with other parameters ({old}); remove it first")
    plan: list[tuple[Path, Path | None, str, int, int]] = []  # (image, mask, kind, style, index)
    plan += [(out / "train/good" / f"{i:03d}.png", None, "good", train_style, i) for i in range(n_train)]
    plan += [(out / "test/good" / f"{i:03d}.png", None, "good", test_style, i) for i in range(n_test_good)]
    for kind in kinds:
        for i in range(n_defect):
            plan.append((out / "test" / kind / f"{i:03d}.png", out / "ground_truth" / kind / f"{i:03d}_mask.png", kind,
                         test_style, i))  # fmt: skip
    if out.is_dir():
        planned = {p for p, _, _, _, _ in plan} | {m for _, m, _, _, _ in plan if m is not None}
        stray = [p for p in out.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p not in planned]
        if stray:
            raise ValueError(f"{out} is incomplete and holds files this run would not write (e.g. {stray[0]}); "
                             "remove it first")  # fmt: skip
    t0 = time.perf_counter()
    logger.info("%s: writing %d images (%s, train style %d, test style %d)", out, len(plan), family, train_style,
                test_style)  # fmt: skip
    for img_path, mask_path, kind, style, i in plan:
        split = "train" if img_path.parent.parent.name == "train" else f"test/{kind}"
        rng = _rng(seed, family, style, split, i)
        img = render_texture(family, size, rng, style=style)
        if mask_path is not None:
            img, mask = make_defect(img, kind, rng)
            write_image(mask_path, mask)
        write_image(img_path, img)
    marker.write_text(json.dumps(params, indent=1))
    logger.info("%s: done in %.1f s", out, time.perf_counter() - t0)
    return out


def generate_dataset(
    root: str | Path,
    families: Sequence[str] | None = None,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect_per_kind: int = 6,
    size: int | Sequence[int] = 256,
    seed: int = 0,
    style: int = 0,
    kinds: Sequence[str] | None = None,
) -> list[Path]:
    """Write one MVTec-AD-layout category per family and return the category folders.

    Folders are ``root/<family>`` for style 0 and ``root/<family>_style<k>`` otherwise; images are PNG, masks
    0/255 ``ground_truth/<kind>/<stem>_mask.png``; ``kinds`` defaults to all of :data:`DATASET_DEFECTS`.
    Idempotent: a complete category with the same parameters is skipped (a marker file records them). Images are
    seeded per (seed, family, style, split, index), so a subset of families renders the same images.
    """
    fams = tuple(FAMILIES if families is None else families)
    kinds_t = _dataset_kinds(kinds)
    for f in fams:
        check_family(f, style)
    hw = image_size(size)
    out = []
    for f in fams:
        name = f if style == 0 else f"{f}_style{style}"
        out.append(
            _write_category(
                Path(root) / name, f, style, style, n_train, n_test_good, n_test_defect_per_kind, hw, seed, kinds_t
            )
        )
    return out


def generate_texture_shift(
    root: str | Path,
    family: str,
    train_style: int = 0,
    test_style: int = 1,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect_per_kind: int = 6,
    size: int | Sequence[int] = 256,
    seed: int = 0,
    kinds: Sequence[str] | None = None,
) -> Path:
    """Write a texture-change category ``root/<family>_s<a>_to_s<b>``: train on style a, test on style b.

    The train and test images are the same as those of the single-style categories of
    :func:`generate_dataset` (same seeds), so results are comparable. Returns the category folder.
    """
    check_family(family, train_style)
    check_family(family, test_style)
    kinds_t = _dataset_kinds(kinds)
    out = Path(root) / f"{family}_s{train_style}_to_s{test_style}"
    n_defect, hw = n_test_defect_per_kind, image_size(size)
    return _write_category(out, family, train_style, test_style, n_train, n_test_good, n_defect, hw, seed, kinds_t)
