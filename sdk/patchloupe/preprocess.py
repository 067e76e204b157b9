"""Image preprocessing shared by training and inference.

Policy (documented in the README): every image, whatever its size and aspect ratio, is converted
to RGB uint8, resized with area interpolation to the model's ``image_size`` (rows x cols pixels,
a multiple of the patch grid), scaled to float32 ``[0, 1]`` and cut into a ``rows x cols`` grid of
equal patches in reading order. Anomaly maps are stitched back at the input's original size.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

ImageLike = Any  # str | Path | np.ndarray | PIL.Image.Image


def load_rgb(image: ImageLike, bgr: bool = False) -> np.ndarray:
    """Load a path (``str`` or any ``os.PathLike``), numpy array or PIL image as uint8 ``(H, W, 3)`` RGB.

    ``bgr=True`` says a numpy array is in OpenCV's BGR order. Raises ``patchloupe.data.ImageError``
    (a ``ValueError``) naming the problem for unreadable or unsupported input (see ``read_image`` and
    ``to_rgb_uint8``, including the pixel limit ``patchloupe.data.io.MAX_PIXELS``).
    """
    from patchloupe.data import read_image, to_rgb_uint8

    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    return to_rgb_uint8(image, bgr=bgr)


def _pair(name: str, value: Any) -> tuple[int, int]:
    """Two whole numbers (ints, numpy ints or integral floats) from ``value``; ValueError naming ``name``."""
    try:
        items = list(value) if not isinstance(value, (str, bytes)) else None
    except TypeError:
        items = None
    if items is None or len(items) != 2:
        raise ValueError(f"{name} must be two whole numbers, got {value!r}")
    out = []
    for v in items:
        if isinstance(v, (bool, np.bool_)):
            raise ValueError(f"{name} must be two whole numbers, got {value!r}")
        if isinstance(v, numbers.Integral):
            out.append(int(v))
        elif isinstance(v, numbers.Real) and float(v).is_integer():
            out.append(int(v))
        else:
            raise ValueError(f"{name} must be two whole numbers, got {value!r}")
    return out[0], out[1]


def check_geometry(image_size: Sequence[int], grid: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Validate ``image_size`` (H, W) and ``grid`` (rows, cols); return the patch size (ph, pw) too."""
    h, w = _pair("image_size", image_size)
    rows, cols = _pair("grid", grid)
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be positive, got {tuple(grid)}")
    if h % rows or w % cols:
        raise ValueError(f"image_size {h}x{w} must be divisible by the grid {rows}x{cols}")
    ph, pw = h // rows, w // cols
    if ph < 8 or pw < 8:
        raise ValueError(f"patches of {ph}x{pw} px are too small (grid {rows}x{cols} on {h}x{w})")
    return (ph, pw), (h, w)


def resize_for_model(image: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> uint8 ``(h, w, 3)`` at the model's size (area interpolation, cubic when enlarging).

    Any strides are fine. Raises ``patchloupe.data.ImageError`` for another image type or shape or an image over
    the pixel limit (``patchloupe.data.io.max_pixels``), ValueError for an ``image_size`` that is not two positive
    whole numbers or exceeds the pixel limit.
    """
    from patchloupe.data.io import ImageError, max_pixels

    h, w = _pair("image_size", image_size)
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {(h, w)}")
    if h * w > max_pixels():
        raise ValueError(
            f"image_size {h}x{w} is more than the pixel limit of {max_pixels():,} (patchloupe.data.io.MAX_PIXELS)"
        )
    if not isinstance(image, np.ndarray):
        raise ImageError(f"resize_for_model takes a numpy uint8 (H, W, 3) image, got {type(image).__name__}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ImageError(f"resize_for_model takes a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if image.shape[0] * image.shape[1] > max_pixels():
        raise ImageError(
            f"resize_for_model: a {image.shape[0]}x{image.shape[1]} image is more than the pixel limit of "
            f"{max_pixels():,} (patchloupe.data.io.MAX_PIXELS)"
        )
    image = np.ascontiguousarray(image)
    if image.shape[:2] == (h, w):
        return image
    enlarge = image.shape[0] < h or image.shape[1] < w
    interp = cv2.INTER_CUBIC if enlarge else cv2.INTER_AREA
    return cv2.resize(image, (w, h), interpolation=interp)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` or ``(B, H, W, 3)`` -> float32 ``(3, H, W)`` / ``(B, 3, H, W)`` in [0, 1]."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(images))
    t = t.permute(2, 0, 1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    return t.float().div_(255.0)


def image_to_patches(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B, rows*cols, 3, ph, pw)`` in reading order (H, W divisible by the grid)."""
    rows, cols = (int(v) for v in grid)
    b, c, h, w = x.shape
    if h % rows or w % cols:
        raise ValueError(f"image {h}x{w} is not divisible by the grid {rows}x{cols}")
    ph, pw = h // rows, w // cols
    p = x.reshape(b, c, rows, ph, cols, pw).permute(0, 2, 4, 1, 3, 5)
    return p.reshape(b, rows * cols, c, ph, pw)
