"""Reader for one MVTec-AD-style category folder.

Layout::

    root/train/good/*.png                       defect-free training images
    root/test/good/*.png                        defect-free test images
    root/test/<kind>/*.png                      defective test images, one folder per defect kind
    root/ground_truth/<kind>/<stem>_mask.png    pixel masks (0 = normal, >0 = defect), same size as the image
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .io import IMAGE_SUFFIXES, ImageError, list_images, read_image

__all__ = ["DatasetError", "MVTecCategory", "TestItem"]

logger = logging.getLogger(__name__)

GOOD = "good"


class DatasetError(ValueError):
    """A dataset folder that does not follow the MVTec-AD layout; the message names the path."""


@dataclass(frozen=True)
class TestItem:
    """One test image: ``defect`` is ``'good'`` for normal images (``label`` 0, ``mask_path`` None)."""

    __test__ = False  # not a pytest class

    path: Path
    defect: str
    label: int
    mask_path: Path | None


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    for suffix in (".png", *[s for s in IMAGE_SUFFIXES if s != ".png"]):
        for cand in (gt_dir / f"{stem}_mask{suffix}", gt_dir / f"{stem}_mask{suffix.upper()}"):
            if cand.is_file():
                return cand
    return None


class MVTecCategory:
    """An MVTec-AD-layout category at ``root``; the layout (and every defect image's mask) is checked on creation.

    Raises :class:`DatasetError` for a missing ``test`` folder, an empty ``test`` or ``train/good``, or a defect
    image without its ``ground_truth/<kind>/<stem>_mask.png``. ``train/good`` may be absent (evaluation-only
    copies); :meth:`train_good` then raises.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such dataset folder")
        train = self.root / "train" / GOOD
        self._train: list[Path] | None = None  # train/good is optional: an evaluation-only copy may lack it
        if train.is_dir():
            try:
                self._train = list_images(train)
            except ImageError as exc:
                raise DatasetError(str(exc)) from exc
        test = self.root / "test"
        if not test.is_dir():
            raise DatasetError(f"{self.root}: not an MVTec-AD category (missing {test})")
        items: list[TestItem] = []
        missing: list[Path] = []
        kinds: list[str] = []
        for kind_dir in sorted(p for p in test.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                files = list_images(kind_dir)
            except ImageError:
                logger.warning("%s: no images, skipped", kind_dir)
                continue
            kind = kind_dir.name
            if kind != GOOD:
                kinds.append(kind)
            gt_dir = self.root / "ground_truth" / kind
            for f in files:
                if kind == GOOD:
                    items.append(TestItem(f, GOOD, 0, None))
                    continue
                mask = _find_mask(gt_dir, f.stem)
                if mask is None:
                    missing.append(gt_dir / f"{f.stem}_mask.png")
                else:
                    items.append(TestItem(f, kind, 1, mask))
        if missing:
            shown = ", ".join(str(m) for m in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DatasetError(f"{self.root}: {len(missing)} defect image(s) without a mask: {shown}{more}")
        if not items:
            raise DatasetError(f"{self.root}: {test} holds no test images")
        self._items = items
        self._kinds = tuple(kinds)

    @property
    def name(self) -> str:
        """The category's folder name."""
        return self.root.name

    @property
    def defect_kinds(self) -> tuple[str, ...]:
        """Sorted names of the defect folders under ``test/`` (without ``good``)."""
        return self._kinds

    def train_good(self) -> list[Path]:
        """Sorted defect-free training images (``DatasetError`` when the category has no ``train/good``)."""
        if self._train is None:
            raise DatasetError(f"{self.root}: not an MVTec-AD training set (missing {self.root / 'train' / GOOD})")
        return list(self._train)

    def test_items(self, kinds: str | tuple[str, ...] | list[str] | None = None) -> list[TestItem]:
        """Test items sorted by kind, then file name; ``kinds`` restricts them (e.g. ``['good', 'crack']``)."""
        if kinds is None:
            return list(self._items)
        if isinstance(kinds, str):
            kinds = (kinds,)
        unknown = set(kinds) - {GOOD, *self._kinds}
        if unknown:
            raise DatasetError(f"{self.root}: unknown defect kind(s) {sorted(unknown)}; have {list(self._kinds)}")
        return [it for it in self._items if it.defect in kinds]

    def load_mask(self, item: TestItem, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Ground-truth mask of ``item`` as bool ``(H, W)`` (all False for good items).

        ``shape`` is the image's ``(H, W[, C])`` when already known; otherwise the image is read to find it.
        Raises :class:`DatasetError` when the mask's size differs from the image's.
        """
        hw = tuple(shape[:2]) if shape is not None else read_image(item.path).shape[:2]
        if item.mask_path is None:
            return np.zeros(hw, dtype=bool)
        data = np.fromfile(item.mask_path, dtype=np.uint8) if item.mask_path.is_file() else None
        mask = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data is not None and data.size else None
        if mask is None:
            raise DatasetError(f"{item.mask_path}: missing or unreadable mask")
        if mask.shape != hw:
            raise DatasetError(
                f"{item.mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from the image "
                f"{item.path} size {hw[1]}x{hw[0]}"
            )
        return mask > (0 if mask.max() <= 1 else 127)  # 0/255 masks (MVTec), also tolerates 0/1 masks

    def __len__(self) -> int:
        return len(self._train) + len(self._items)

    def __repr__(self) -> str:
        n_def = sum(it.label for it in self._items)
        return (
            f"MVTecCategory({str(self.root)!r}: {len(self._train)} train, {len(self._items) - n_def} good test, "
            f"{n_def} defect test, kinds={list(self._kinds)})"
        )
