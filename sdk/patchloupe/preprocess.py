"""Image preprocessing shared by training and inference.

Policy (documented in the README): every image, whatever its size and aspect ratio, is converted
to RGB uint8, resized with area interpolation to the model's ``image_size`` (rows x cols pixels,
a multiple of the patch grid), scaled to float32 ``[0, 1]`` and cut into a ``rows x cols`` grid of
equal patches in reading order. Anomaly maps are stitched back at the input's original size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

ImageLike = Any  # str | Path | np.ndarray | PIL.Image.Image


def load_rgb(image: ImageLike, bgr: bool = False) -> np.ndarray:
    """Load a path, numpy array or PIL image as uint8 ``(H, W, 3)`` RGB.

    ``bgr=True`` says a numpy array is in OpenCV's BGR order. Raises ``patchloupe.data.ImageError``
    (a ``ValueError``) naming the problem for unreadable or unsupported input.
    """
    from patchloupe.data import read_image, to_rgb_uint8

    if isinstance(image, (str, Path)):
        return read_image(image)
    return to_rgb_uint8(image, bgr=bgr)


def check_geometry(image_size: Sequence[int], grid: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Validate ``image_size`` (H, W) and ``grid`` (rows, cols); return the patch size (ph, pw) too."""
    h, w = (int(v) for v in image_size)
    rows, cols = (int(v) for v in grid)
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be positive, got {tuple(grid)}")
    if h % rows or w % cols:
        raise ValueError(f"image_size {h}x{w} must be divisible by the grid {rows}x{cols}")
    ph, pw = h // rows, w // cols
    if ph < 8 or pw < 8:
        raise ValueError(f"patches of {ph}x{pw} px are too small (grid {rows}x{cols} on {h}x{w})")
    return (ph, pw), (h, w)


def resize_for_model(image: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> uint8 ``(h, w, 3)`` at the model's size (area interpolation, cubic when enlarging)."""
    h, w = (int(v) for v in image_size)
    if image.shape[:2] == (h, w):
        return np.ascontiguousarray(image)
    enlarge = image.shape[0] < h or image.shape[1] < w
    interp = cv2.INTER_CUBIC if enlarge else cv2.INTER_AREA
    return cv2.resize(image, (w, h), interpolation=interp)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` or ``(B, H, W, 3)`` -> float32 ``(3, H, W)`` / ``(B, 3, H, W)`` in [0, 1]."""
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
