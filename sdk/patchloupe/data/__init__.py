"""Data: image IO, MVTec-AD-layout readers, procedural textures and defect synthesis.

Images are uint8 ``(H, W, 3)`` RGB numpy arrays; masks are bool ``(H, W)``.
"""

from __future__ import annotations

from .dataset import generate_dataset, generate_texture_shift
from .defects import DATASET_DEFECTS, DEFECT_KINDS, make_defect, synthesize_defect
from .io import IMAGE_SUFFIXES, ImageError, list_images, read_image, to_rgb_uint8, write_image
from .mvtec import DatasetError, MVTecCategory, TestItem
from .textures import FAMILIES, STYLES, render_texture

__all__ = [
    "DATASET_DEFECTS",
    "DEFECT_KINDS",
    "FAMILIES",
    "IMAGE_SUFFIXES",
    "STYLES",
    "DatasetError",
    "ImageError",
    "MVTecCategory",
    "TestItem",
    "generate_dataset",
    "generate_texture_shift",
    "list_images",
    "make_defect",
    "read_image",
    "render_texture",
    "synthesize_defect",
    "to_rgb_uint8",
    "write_image",
]
