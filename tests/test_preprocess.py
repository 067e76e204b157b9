"""The shared preprocessing policy (training and inference use the same functions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from patchloupe import _native
from patchloupe.detector import default_model_dir
from patchloupe.preprocess import check_geometry, image_to_patches, load_rgb, resize_for_model, to_tensor


def test_check_geometry() -> None:
    assert check_geometry((256, 192), (4, 3)) == ((64, 64), (256, 192))
    for size, grid in (((100, 100), (3, 3)), ((64, 64), (0, 4)), ((32, 32), (8, 8))):
        with pytest.raises(ValueError):
            check_geometry(size, grid)


def test_resize_for_model_shrinks_enlarges_and_passes_through() -> None:
    img = np.random.default_rng(0).integers(0, 255, (300, 170, 3), dtype=np.uint8)
    assert resize_for_model(img, (128, 96)).shape == (128, 96, 3)
    assert resize_for_model(img, (512, 512)).shape == (512, 512, 3)
    same = resize_for_model(img, (300, 170))
    np.testing.assert_array_equal(same, img)


def test_to_tensor_and_patches_match_the_native_tiler() -> None:
    img = np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    x = to_tensor(img)
    assert x.shape == (3, 64, 96) and x.dtype == torch.float32 and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert to_tensor(img[None]).shape == (1, 3, 64, 96)
    patches = image_to_patches(x[None], (4, 3))  # (1, 12, 3, 16, 32)
    native = torch.from_numpy(np.asarray(_native.tile(img, (4, 3)))).permute(0, 3, 1, 2).float() / 255.0
    torch.testing.assert_close(patches[0], native)
    with pytest.raises(ValueError):
        image_to_patches(x[None], (5, 3))


def test_load_rgb_bgr_and_gray() -> None:
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV order
    assert load_rgb(bgr, bgr=True)[0, 0].tolist() == [0, 0, 200]
    assert load_rgb(np.full((8, 8), 7, np.uint8)).shape == (8, 8, 3)


def test_default_model_dir_holds_a_model() -> None:
    assert (default_model_dir() / "detector.json").is_file()


def test_load_rgb_takes_any_path_like(tmp_path) -> None:
    import pathlib

    import cv2

    img = np.random.default_rng(2).integers(0, 255, (9, 11, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img[:, :, ::-1])
    for path in (str(tmp_path / "a.png"), tmp_path / "a.png", pathlib.PurePosixPath(tmp_path / "a.png")):
        np.testing.assert_array_equal(load_rgb(path), img)

    class Fs:
        def __fspath__(self) -> str:
            return str(tmp_path / "a.png")

    np.testing.assert_array_equal(load_rgb(Fs()), img)


def test_check_geometry_wants_whole_numbers() -> None:
    assert check_geometry(np.array([256, 192]), (np.int64(4), 3.0)) == ((64, 64), (256, 192))
    for size, grid in (
        ((256, 256), (4.7, 4.7)),
        ((256, 256), (4,)),
        ((256, 256), "44"),
        ((256.5, 256), (4, 4)),
        ((256, 256), (True, 4)),
        ((256, 256), 4),
        ((float("nan"), 256), (4, 4)),
    ):
        with pytest.raises(ValueError, match="whole numbers"):
            check_geometry(size, grid)


def test_resize_for_model_any_strides_and_tiny_inputs() -> None:
    img = np.random.default_rng(3).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    ref = resize_for_model(img[::-1, ::2].copy(), (32, 32))
    ro = img.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(resize_for_model(img[::-1, ::2], (32, 32)), ref)  # negative + gapped strides
    assert resize_for_model(ro, (16, 16)).shape == (16, 16, 3)
    assert resize_for_model(np.asfortranarray(img), (40, 30)).flags.c_contiguous
    for shape in ((1, 1, 3), (1, 300, 3), (300, 1, 3)):
        out = resize_for_model(np.full(shape, 7, np.uint8), (24, 24))
        assert out.shape == (24, 24, 3) and (out == 7).all()


@pytest.mark.parametrize(
    ("image", "size", "exc", "msg"),
    [
        (np.zeros((8, 8, 3), np.uint8), (4.7, 8), ValueError, "whole numbers"),
        (np.zeros((8, 8, 3), np.uint8), (0, 8), ValueError, "positive"),
        (np.zeros((8, 8, 3), np.uint8), (-3, 8), ValueError, "positive"),
        (np.zeros((8, 8, 3), np.uint8), (8,), ValueError, "whole numbers"),
        (np.zeros((8, 8, 3), np.uint8), None, ValueError, "whole numbers"),
        (np.zeros((8, 8, 3), np.uint8), (10**9, 10**9), ValueError, "MAX_PIXELS"),
        (np.zeros((8, 8), np.uint8), (8, 8), ValueError, "uint8 \\(H, W, 3\\)"),
        (np.zeros((8, 8, 4), np.uint8), (8, 8), ValueError, "uint8 \\(H, W, 3\\)"),
        (np.zeros((8, 8, 3), np.float32), (8, 8), ValueError, "float32"),
        (np.zeros((0, 8, 3), np.uint8), (8, 8), ValueError, "uint8 \\(H, W, 3\\)"),
        ([[1]], (8, 8), ValueError, "list"),
    ],
)
def test_resize_for_model_refusals(image, size, exc, msg) -> None:
    from patchloupe.data import ImageError

    with pytest.raises(exc, match=msg) as e:
        resize_for_model(image, size)
    if "uint8" in msg or msg in ("float32", "list"):
        assert isinstance(e.value, ImageError)
