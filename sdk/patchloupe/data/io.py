"""Image IO: read images from disk and validate in-memory images.

Every image leaving this module is a C-contiguous numpy ``uint8`` array of shape ``(H, W, 3)`` in RGB order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["IMAGE_SUFFIXES", "ImageError", "list_images", "read_image", "to_rgb_uint8", "write_image"]

logger = logging.getLogger(__name__)

#: File suffixes (lower case) that :func:`list_images` picks up.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")

_ALPHA_HINT = (
    "flatten it onto a background first, e.g. PIL: Image.open(p).convert('RGB'), "
    "or cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)"
)


class ImageError(ValueError):
    """An image (file or array) that patchloupe cannot use; the message names the file or the problem."""


def _check_pixels(img: np.ndarray, what: str, bgr: bool) -> np.ndarray:
    """Validate a decoded/in-memory image and return it as uint8 ``(H, W, 3)`` RGB (always a new array)."""
    if img.size == 0 or img.ndim < 2 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageError(f"{what}: empty image (shape {img.shape})")
    if img.ndim == 3 and img.shape[2] in (2, 4):
        raise ImageError(f"{what}: image has an alpha channel ({img.shape[2]} channels); {_ALPHA_HINT}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
        raise ImageError(f"{what}: expected an H x W or H x W x 1/3 image, got shape {img.shape}")
    if img.dtype != np.uint8:
        if img.dtype in (np.uint16, np.int16):
            raise ImageError(
                f"{what}: 16-bit image ({img.dtype}); convert to 8 bits first, e.g. (img >> 8).astype(np.uint8)"
            )
        if np.issubdtype(img.dtype, np.floating):
            if np.isnan(img).any():
                raise ImageError(f"{what}: float image contains NaN")
            raise ImageError(
                f"{what}: float image ({img.dtype}); patchloupe takes uint8, e.g. "
                "np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8) for an image in [0, 1]"
            )
        raise ImageError(f"{what}: unsupported pixel type {img.dtype}; expected uint8")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if bgr:
        return np.ascontiguousarray(img[:, :, ::-1])
    return np.array(img, dtype=np.uint8, order="C", copy=True)


def read_image(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG/BMP (or any format OpenCV decodes) as uint8 ``(H, W, 3)`` RGB.

    Gray files are replicated to 3 channels. Raises :class:`ImageError` naming the file for a missing,
    empty, unreadable or corrupt file, a 16-bit image, or an image with an alpha channel.
    EXIF orientation is ignored (pixels are returned as stored, which is what pixel masks refer to).
    """
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if not p.is_file():
        raise ImageError(f"{p}: not a file")
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{p}: cannot read file ({exc})") from exc
    if data.size == 0:
        raise ImageError(f"{p}: empty file")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{p}: not a readable image (corrupt or unsupported format)")
    return _check_pixels(img, str(p), bgr=True)


def _from_pil(image: Any) -> np.ndarray:
    """Convert a PIL image to a numpy array, rejecting alpha and high bit depths."""
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        raise ImageError(f"PIL image: mode {mode} has an alpha channel; use image.convert('RGB')")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        raise ImageError(f"PIL image: 16-bit image (mode {mode}); convert to 8 bits first")
    if mode in ("I", "F"):
        raise ImageError(f"PIL image: mode {mode} (32-bit); convert to an 8-bit mode ('L' or 'RGB') first")
    if mode not in ("RGB", "L"):
        image = image.convert("RGB")
    return np.asarray(image)


def to_rgb_uint8(array: Any, bgr: bool = False) -> np.ndarray:
    """Validate an in-memory image and return a new uint8 ``(H, W, 3)`` RGB array.

    Accepts a numpy array ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` of dtype uint8 (``bgr=True`` when it is in
    OpenCV's BGR order), or a PIL image (PIL is imported only when one is passed). Float, 16-bit, RGBA, NaN
    and empty images raise :class:`ImageError` naming the problem.
    """
    if not isinstance(array, np.ndarray):
        if type(array).__module__.startswith("PIL."):
            from PIL import Image  # lazy: PIL is optional

            if isinstance(array, Image.Image):
                return _check_pixels(_from_pil(array), "PIL image", bgr=False)
        raise ImageError(f"expected a numpy uint8 image or a PIL image, got {type(array).__name__}")
    return _check_pixels(array, "image array", bgr=bgr)


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files (png/jpg/jpeg/bmp, any case) directly inside ``folder``; hidden files are skipped.

    Raises :class:`FileNotFoundError` when the folder is missing and :class:`ImageError` when it holds no image.
    """
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such folder")
    files = sorted(
        p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )
    if not files:
        raise ImageError(f"{d}: no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 ``(H, W, 3)`` RGB or ``(H, W)`` gray/bool image; the format follows the suffix."""
    p = Path(path)
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise ImageError(f"{p}: can only write uint8 images, got {arr.dtype}")
    if arr.ndim == 3:
        arr = np.ascontiguousarray(arr[:, :, ::-1]) if arr.shape[2] == 3 else arr
    ok, buf = cv2.imencode(p.suffix or ".png", arr)
    if not ok:
        raise ImageError(f"{p}: cannot encode image with shape {arr.shape}")
    p.parent.mkdir(parents=True, exist_ok=True)
    buf.tofile(p)
    return p
