"""Data: image IO, MVTec-AD-layout readers, procedural textures and defect synthesis.

Images are uint8 ``(H, W, 3)`` RGB numpy arrays; masks are bool ``(H, W)``.
"""

from __future__ import annotations

from .io import IMAGE_SUFFIXES, ImageError, list_images, read_image, to_rgb_uint8, write_image
from .mvtec import DatasetError, MVTecCategory, TestItem

__all__ = [
    "IMAGE_SUFFIXES",
    "DatasetError",
    "ImageError",
    "MVTecCategory",
    "TestItem",
    "list_images",
    "read_image",
    "to_rgb_uint8",
    "write_image",
]
