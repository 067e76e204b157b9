"""Image IO: read images from disk and validate in-memory images.

Every image leaving this module is a C-contiguous numpy ``uint8`` array of shape ``(H, W, 3)`` in RGB order.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "ImageError",
    "check_image_suffix",
    "list_images",
    "max_pixels",
    "read_image",
    "to_rgb_uint8",
    "write_image",
]

logger = logging.getLogger(__name__)

#: The image file suffixes (lower case) patchloupe reads and writes; the single list every module uses.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")

#: Default largest image, in pixels (height x width): 2**26 = 67,108,864, e.g. 8192 x 8192.
DEFAULT_MAX_PIXELS = 1 << 26
#: Largest image (height x width) that :func:`read_image` decodes and :func:`to_rgb_uint8` accepts; checked
#: before decoding (from the file header) or copying. ``None``: the environment variable
#: ``PATCHLOUPE_MAX_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`. Set it to allow larger images, e.g.
#: ``patchloupe.data.io.MAX_PIXELS = 200_000_000`` (OpenCV itself stops at 2**30).
MAX_PIXELS: int | None = None
_ENV_MAX_PIXELS = "PATCHLOUPE_MAX_PIXELS"

_ALPHA_HINT = (
    "flatten it onto a background first, e.g. PIL: Image.open(p).convert('RGB'), "
    "or cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)"
)
_OTHER_FORMATS = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF8", "GIF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"P1", "PBM"),
    (b"P2", "PGM"),
    (b"P3", "PPM"),
    (b"P4", "PBM"),
    (b"P5", "PGM"),
    (b"P6", "PPM"),
    (b"#?RADIANCE", "Radiance HDR"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
)


class ImageError(ValueError):
    """An image (file or array) that patchloupe cannot use; the message names the file or the problem."""


def max_pixels() -> int:
    """The pixel limit in force: :data:`MAX_PIXELS`, else ``$PATCHLOUPE_MAX_PIXELS``, else the default."""
    value: Any = MAX_PIXELS
    source = "patchloupe.data.io.MAX_PIXELS"
    if value is None:
        env = os.environ.get(_ENV_MAX_PIXELS)
        if env is None or not env.strip():
            return DEFAULT_MAX_PIXELS
        value, source = env.strip().replace("_", ""), _ENV_MAX_PIXELS
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f"{source}={env!r} is not a whole number of pixels") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{source} must be a positive whole number of pixels, got {value!r}")
    return int(value)


def _check_size(h: int, w: int, what: str) -> None:
    limit = max_pixels()
    if h * w > limit:
        raise ImageError(
            f"{what}: {h} x {w} = {h * w:,} pixels is more than the limit of {limit:,} "
            f"(raise patchloupe.data.io.MAX_PIXELS or the environment variable {_ENV_MAX_PIXELS} to allow it)"
        )


def check_image_suffix(path: str | os.PathLike[str], what: str = "image") -> str:
    """The lower-case suffix of ``path``; ValueError (:class:`ImageError`) naming it unless in IMAGE_SUFFIXES."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageError(
            f"{path}: cannot write an {what} as {suffix or 'a file without suffix'!r}; "
            f"use one of {', '.join(IMAGE_SUFFIXES)}"
        )
    return suffix


def _as_array(img: Any) -> np.ndarray:
    """``np.asarray`` of an ndarray (subclasses: matrix, memmap, masked -> plain view; a mask is ignored)."""
    return np.asarray(img.data) if isinstance(img, np.ma.MaskedArray) else np.asarray(img)


def _check_pixels(img: np.ndarray, what: str, bgr: bool) -> np.ndarray:
    """Validate a decoded/in-memory image and return it as uint8 ``(H, W, 3)`` RGB (always a new array)."""
    if img.ndim not in (2, 3):
        raise ImageError(f"{what}: expected an H x W or H x W x 1/3 image, got shape {img.shape}")
    if img.size == 0:
        raise ImageError(f"{what}: empty image (shape {img.shape})")
    if img.ndim == 3 and img.shape[2] in (2, 4):
        raise ImageError(f"{what}: image has an alpha channel ({img.shape[2]} channels); {_ALPHA_HINT}")
    if img.ndim == 3 and img.shape[2] not in (1, 3):
        raise ImageError(f"{what}: expected an H x W or H x W x 1/3 image, got shape {img.shape}")
    _check_size(int(img.shape[0]), int(img.shape[1]), what)
    kind, size = img.dtype.kind, img.dtype.itemsize
    if img.dtype != np.uint8:
        if kind in "ui" and size == 2:
            raise ImageError(
                f"{what}: 16-bit image ({img.dtype}); convert to 8 bits first, e.g. (img >> 8).astype(np.uint8)"
            )
        if kind == "f":
            if np.isnan(img).any():
                raise ImageError(f"{what}: float image contains NaN")
            raise ImageError(
                f"{what}: float image ({img.dtype}); patchloupe takes uint8, e.g. "
                "np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8) for an image in [0, 1]"
            )
        if kind == "b":
            raise ImageError(f"{what}: unsupported pixel type bool; expected uint8, e.g. img.astype(np.uint8) * 255")
        if kind in "ui":
            raise ImageError(
                f"{what}: unsupported pixel type {img.dtype}; expected uint8, e.g. img.astype(np.uint8) "
                "when the values are already 0..255"
            )
        raise ImageError(f"{what}: unsupported pixel type {img.dtype}; expected uint8")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if bgr:  # a copy even when the reversed view happens to be contiguous (an input that was reversed already)
        img = img[:, :, ::-1]
    return np.array(img, dtype=np.uint8, order="C", copy=True)


# ---------------------------------------------------------------------------------------------------- headers


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return (h, w) if h and w else None


def _png_chunks_fit(data: bytes) -> bool:
    """False when a chunk claims more bytes than the file holds (OpenCV 5 then spends seconds on a 9 KB file)."""
    i, n = 8, len(data)
    while i + 8 <= n:
        length = int.from_bytes(data[i : i + 4], "big")
        if length > 0x7FFFFFFF or i + 12 + length > n:
            return False
        if data[i + 4 : i + 8] == b"IEND":
            return True
        i += 12 + length
    return True


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Frame size from the first SOF segment before the scan data (None when there is none)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # standalone markers
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            h, w = int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
            return (h, w) if h and w else None
        i += 2 + length
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    header = int.from_bytes(data[14:18], "little")
    if header == 12:
        w, h = int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
    elif header >= 40:
        w = int.from_bytes(data[18:22], "little", signed=True)
        h = abs(int.from_bytes(data[22:26], "little", signed=True))
    else:
        return None
    return (h, w) if h > 0 and w > 0 else None


def _header_size(p: Path, data: bytes) -> tuple[int, int]:
    """(H, W) read from a PNG/JPEG/BMP header; ImageError for other formats or a header without a size."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        size, kind = _png_size(data), "PNG"
    elif data.startswith(b"\xff\xd8"):
        size, kind = _jpeg_size(data), "JPEG"
    elif data.startswith(b"BM"):
        size, kind = _bmp_size(data), "BMP"
    else:
        other = next((name for magic, name in _OTHER_FORMATS if data.startswith(magic)), None)
        if other is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            other = "WebP"
        hint = f"; it looks like {other}: convert it to PNG" if other else ""
        raise ImageError(f"{p}: not a readable image (patchloupe reads PNG, JPEG and BMP files{hint})")
    if size is None:
        raise ImageError(f"{p}: not a readable image (corrupt {kind} header: no image size)")
    if kind == "PNG" and not _png_chunks_fit(data):
        raise ImageError(f"{p}: not a readable image (truncated or corrupt PNG: a chunk runs past the end of the file)")
    return size


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG, JPEG or BMP file (recognised by its content) as uint8 ``(H, W, 3)`` RGB.

    Gray files are replicated to 3 channels. The size in the file's header is checked against
    :func:`max_pixels` before anything is decoded. Raises :class:`ImageError` naming the file for a missing,
    empty, unreadable, corrupt or too large file, another format, a 16-bit image, or an image with an alpha
    channel. EXIF orientation is ignored (pixels are returned as stored, which is what pixel masks refer to).
    """
    try:
        p = Path(path)
    except TypeError as exc:
        raise ImageError(f"expected a path, got {type(path).__name__}") from exc
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ImageError(f"{p}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"{p}: cannot read file ({exc})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{p}: not a file")
    if st.st_size == 0:
        raise ImageError(f"{p}: empty file")
    max_bytes = 8 * max_pixels() + (64 << 20)  # generous: no PNG/JPEG/BMP within the pixel limit is larger
    if st.st_size > max_bytes:
        raise ImageError(f"{p}: {st.st_size:,} bytes is too large a file for the pixel limit ({max_pixels():,} px)")
    try:
        with open(p, "rb") as fh:
            raw = fh.read(st.st_size + 1)  # not max_bytes: read(n) allocates n bytes up front
    except OSError as exc:
        raise ImageError(f"{p}: cannot read file ({exc})") from exc
    if len(raw) > st.st_size:
        raise ImageError(f"{p}: the file grew while it was read; read it again when it is complete")
    if not raw:
        raise ImageError(f"{p}: empty file")
    h, w = _header_size(p, raw)
    _check_size(h, w, str(p))
    try:
        img = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageError(f"{p}: not a readable image ({exc})") from exc
    if img is None:
        raise ImageError(f"{p}: not a readable image (corrupt or unsupported format)")
    return _check_pixels(img, str(p), bgr=True)


def _from_pil(image: Any) -> np.ndarray:
    """Convert a PIL image to a numpy array, rejecting alpha, high bit depths and images over the pixel limit."""
    w, h = image.size
    _check_size(int(h), int(w), "PIL image")
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        raise ImageError(f"PIL image: mode {mode} has an alpha channel; use image.convert('RGB')")
    if mode.startswith("I;16"):
        raise ImageError(f"PIL image: 16-bit image (mode {mode}); convert to 8 bits first")
    if mode in ("I", "F"):
        raise ImageError(f"PIL image: mode {mode} (32-bit); convert to an 8-bit mode ('L' or 'RGB') first")
    try:
        if mode not in ("RGB", "L"):
            image = image.convert("RGB")
        return np.asarray(image)
    except (OSError, ValueError) as exc:  # truncated file behind a lazy image, unsupported conversion
        raise ImageError(f"PIL image: cannot convert mode {mode} to RGB ({exc})") from exc


def to_rgb_uint8(array: Any, bgr: bool = False) -> np.ndarray:
    """Validate an in-memory image and return a new uint8 ``(H, W, 3)`` RGB array.

    Accepts a numpy array ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` of dtype uint8 (``bgr=True`` when it is in
    OpenCV's BGR order), any strides, read-only or not, including subclasses (matrix, memmap; a masked array's
    mask is ignored) and objects with ``__array__`` (e.g. a CPU torch tensor), or a PIL image (PIL is imported only
    when one is passed). Lists, float, 16-bit, bool, RGBA, NaN, empty, other shapes and images over
    :func:`max_pixels` raise :class:`ImageError` naming the problem.
    """
    if isinstance(array, np.ndarray):
        return _check_pixels(_as_array(array), "image array", bgr=bgr)
    if type(array).__module__.startswith("PIL."):
        from PIL import Image  # lazy: PIL is optional

        if isinstance(array, Image.Image):
            return _check_pixels(_from_pil(array), "PIL image", bgr=False)
    if hasattr(array, "__array__") or hasattr(array, "__array_interface__"):
        try:
            arr = np.asarray(array)
        except Exception as exc:  # whatever the object's own conversion raises
            raise ImageError(f"cannot convert a {type(array).__name__} to a numpy array ({exc})") from exc
        return _check_pixels(arr, f"image ({type(array).__name__})", bgr=bgr)
    raise ImageError(f"expected a numpy uint8 image or a PIL image, got {type(array).__name__}")


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


def write_image(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write a uint8 ``(H, W, 3)`` RGB or ``(H, W)`` gray/bool image; the format follows the suffix, which must
    be one of :data:`IMAGE_SUFFIXES` (ImageError naming it otherwise)."""
    p = Path(path)
    suffix = check_image_suffix(p)
    arr = _as_array(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise ImageError(f"{p}: can only write uint8 images, got {arr.dtype}")
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)) or arr.size == 0:
        raise ImageError(f"{p}: can only write H x W or H x W x 1/3 images, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr[:, :, ::-1]) if arr.ndim == 3 and arr.shape[2] == 3 else np.ascontiguousarray(arr)
    try:
        ok, buf = cv2.imencode(suffix, arr)
    except cv2.error as exc:
        raise ImageError(f"{p}: cannot encode image with shape {arr.shape} ({exc})") from exc
    if not ok:
        raise ImageError(f"{p}: cannot encode image with shape {arr.shape}")
    p.parent.mkdir(parents=True, exist_ok=True)
    buf.tofile(p)
    return p
