from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from patchloupe.data import (
    DatasetError,
    ImageError,
    MVTecCategory,
    TestItem,
    list_images,
    read_image,
    to_rgb_uint8,
    write_image,
)

MAGNETIC_TILE = Path(__file__).resolve().parents[1].parent / "shared/data/magnetic_tile"


def _save(path: Path, arr: np.ndarray) -> Path:
    ok, buf = cv2.imencode(path.suffix, arr)
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    buf.tofile(path)
    return path


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)


# ---------------------------------------------------------------- read_image


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".PNG"])
def test_read_lossless_rgb(tmp_path: Path, rgb: np.ndarray, suffix: str) -> None:
    p = _save(tmp_path / f"a{suffix}", rgb[:, :, ::-1])  # cv2 writes BGR
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == (13, 17, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_read_jpeg_and_gray(tmp_path: Path) -> None:
    gray = np.tile(np.arange(0, 240, 8, dtype=np.uint8), (20, 1))
    out = read_image(_save(tmp_path / "g.jpg", gray))
    assert out.shape == (20, 30, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    assert np.abs(out[..., 0].astype(int) - gray).max() < 12
    out = read_image(_save(tmp_path / "g.png", gray))
    np.testing.assert_array_equal(out[..., 2], gray)


def test_read_odd_path_and_str(tmp_path: Path, rgb: np.ndarray) -> None:
    p = _save(tmp_path / "dir with spaces" / "bild_ä✓.png", rgb[:, :, ::-1])
    np.testing.assert_array_equal(read_image(str(p)), rgb)


def test_write_image_roundtrip(tmp_path: Path, rgb: np.ndarray) -> None:
    p = write_image(tmp_path / "sub" / "w.png", rgb)
    np.testing.assert_array_equal(read_image(p), rgb)
    m = write_image(tmp_path / "m.png", rgb[..., 0] > 100)
    assert set(np.unique(cv2.imread(str(m), cv2.IMREAD_UNCHANGED))) <= {0, 255}


def test_read_errors_name_the_file(tmp_path: Path, rgb: np.ndarray) -> None:
    with pytest.raises(ImageError, match="no such file") as e:
        read_image(tmp_path / "nope.png")
    assert "nope.png" in str(e.value)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png: empty file"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "bad.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    with pytest.raises(ImageError, match="bad.jpg: not a readable image"):
        read_image(tmp_path / "bad.jpg")
    good = _save(tmp_path / "t.png", rgb).read_bytes()
    (tmp_path / "trunc.png").write_bytes(good[:40])
    with pytest.raises(ImageError, match="trunc.png"):
        read_image(tmp_path / "trunc.png")
    with pytest.raises(ImageError, match="not a file"):
        read_image(tmp_path)
    p16 = _save(tmp_path / "deep.png", (rgb.astype(np.uint16) * 257))
    with pytest.raises(ImageError, match="deep.png: 16-bit"):
        read_image(p16)
    pa = _save(tmp_path / "alpha.png", np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))
    with pytest.raises(ImageError, match=r"alpha.png: .*alpha channel.*convert\('RGB'\)"):
        read_image(pa)


# ---------------------------------------------------------------- to_rgb_uint8


def test_to_rgb_uint8_arrays(rgb: np.ndarray) -> None:
    out = to_rgb_uint8(rgb)
    np.testing.assert_array_equal(out, rgb)
    assert out is not rgb
    np.testing.assert_array_equal(to_rgb_uint8(rgb[:, :, ::-1], bgr=True), rgb)
    g = to_rgb_uint8(rgb[..., 0])
    assert g.shape == (13, 17, 3) and np.array_equal(g[..., 1], rgb[..., 0])
    assert to_rgb_uint8(rgb[..., :1]).shape == (13, 17, 3)
    assert to_rgb_uint8(rgb[::2, ::3]).flags.c_contiguous


@pytest.mark.parametrize(
    ("arr", "msg"),
    [
        (np.zeros((4, 4, 3), np.float32), "float"),
        (np.full((4, 4), np.nan, np.float64), "NaN"),
        (np.zeros((4, 4, 3), np.uint16), "16-bit"),
        (np.zeros((4, 4, 4), np.uint8), "alpha"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.zeros((4, 4, 5), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((4, 4), bool), "bool"),
        ([[1, 2], [3, 4]], "numpy"),
    ],
)
def test_to_rgb_uint8_errors(arr: object, msg: str) -> None:
    with pytest.raises(ImageError, match=msg):
        to_rgb_uint8(arr)


def test_to_rgb_uint8_pil(rgb: np.ndarray) -> None:
    Image = pytest.importorskip("PIL.Image")
    np.testing.assert_array_equal(to_rgb_uint8(Image.fromarray(rgb)), rgb)
    assert to_rgb_uint8(Image.fromarray(rgb[..., 0])).shape == (13, 17, 3)
    pal = Image.fromarray(rgb).convert("P")
    assert to_rgb_uint8(pal).shape == (13, 17, 3)
    with pytest.raises(ImageError, match="alpha"):
        to_rgb_uint8(Image.fromarray(rgb).convert("RGBA"))
    with pytest.raises(ImageError, match="32-bit"):
        to_rgb_uint8(Image.fromarray(rgb[..., 0]).convert("F"))


# ---------------------------------------------------------------- list_images


def test_list_images(tmp_path: Path, rgb: np.ndarray) -> None:
    for name in ["b.PNG", "a.jpg", "c.JPEG", "d.bmp", ".hidden.png", "e.tif"]:
        _save(tmp_path / name, rgb)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.JPEG", "d.bmp"]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list_images(tmp_path / "missing")
    (tmp_path / "none").mkdir()
    with pytest.raises(ImageError, match="no images"):
        list_images(tmp_path / "none")


# ---------------------------------------------------------------- MVTecCategory


def _category(root: Path, rgb: np.ndarray, mask_for_b: bool = True) -> Path:
    for split, name in [("train/good", "000.png"), ("train/good", "001.png"), ("test/good", "g.png")]:
        _save(root / split / name, rgb)
    _save(root / "test/crack/a.png", rgb)
    _save(root / "test/crack/b.png", rgb)
    _save(root / "test/hole/c.png", rgb)
    m = np.zeros(rgb.shape[:2], np.uint8)
    m[2:5, 3:9] = 255
    _save(root / "ground_truth/crack/a_mask.png", m)
    if mask_for_b:
        _save(root / "ground_truth/crack/b_mask.png", m)
    _save(root / "ground_truth/hole/c_mask.png", (m > 0).astype(np.uint8))  # 0/1 mask also accepted
    return root


def test_mvtec_category(tmp_path: Path, rgb: np.ndarray) -> None:
    cat = MVTecCategory(_category(tmp_path / "cat", rgb))
    assert cat.name == "cat"
    assert [p.name for p in cat.train_good()] == ["000.png", "001.png"]
    assert cat.defect_kinds == ("crack", "hole")
    items = cat.test_items()
    assert [(it.defect, it.label, it.path.name) for it in items] == [
        ("crack", 1, "a.png"),
        ("crack", 1, "b.png"),
        ("good", 0, "g.png"),
        ("hole", 1, "c.png"),
    ]
    assert isinstance(items[0], TestItem)
    with pytest.raises(AttributeError):
        items[0].label = 0  # type: ignore[misc]
    good = next(it for it in items if it.label == 0)
    assert good.mask_path is None
    gm = cat.load_mask(good)
    assert gm.dtype == bool and gm.shape == (13, 17) and not gm.any()
    m = cat.load_mask(items[0])
    assert m.dtype == bool and m.sum() == 18 and m[2:5, 3:9].all()
    assert cat.load_mask(items[3], shape=(13, 17, 3)).sum() == 18
    assert [it.defect for it in cat.test_items(["good"])] == ["good"]
    with pytest.raises(DatasetError, match="unknown"):
        cat.test_items(["scratch"])
    assert "2 train" in repr(cat)


def test_mvtec_mask_size_mismatch(tmp_path: Path, rgb: np.ndarray) -> None:
    root = _category(tmp_path / "cat", rgb)
    _save(root / "ground_truth/crack/a_mask.png", np.zeros((5, 5), np.uint8))
    cat = MVTecCategory(root)
    with pytest.raises(DatasetError, match=r"a_mask.png: mask size 5x5 .* differs .* 17x13"):
        cat.load_mask(cat.test_items()[0])


def test_mvtec_layout_errors(tmp_path: Path, rgb: np.ndarray) -> None:
    with pytest.raises(DatasetError, match="no such dataset folder"):
        MVTecCategory(tmp_path / "missing")
    root = _category(tmp_path / "nomask", rgb, mask_for_b=False)
    with pytest.raises(DatasetError, match=r"1 defect image\(s\) without a mask: .*b_mask.png"):
        MVTecCategory(root)
    (tmp_path / "empty" / "test").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no test images"):
        MVTecCategory(tmp_path / "empty")
    _save(tmp_path / "evalonly" / "test/good/x.png", rgb)
    with pytest.raises(DatasetError, match="missing .*train/good"):
        MVTecCategory(tmp_path / "evalonly").train_good()
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        MVTecCategory(tmp_path / "empty")
    _save(tmp_path / "notest" / "train/good/x.png", rgb)
    with pytest.raises(DatasetError, match="missing .*test"):
        MVTecCategory(tmp_path / "notest")
    (tmp_path / "notest" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no test images"):
        MVTecCategory(tmp_path / "notest")


@pytest.mark.skipif(not MAGNETIC_TILE.is_dir(), reason="shared/data/magnetic_tile not present")
def test_magnetic_tile_parses() -> None:
    cat = MVTecCategory(MAGNETIC_TILE)
    assert len(cat.train_good()) == 700
    items = cat.test_items()
    assert sum(it.label == 0 for it in items) == 252
    defects = [it for it in items if it.label == 1]
    assert len(defects) == 388 and all(it.mask_path is not None and it.mask_path.is_file() for it in defects)
    assert cat.defect_kinds == ("blowhole", "break", "crack", "fray", "uneven")
    for kind in cat.defect_kinds:  # one mask per kind: right size, not empty
        it = next(i for i in defects if i.defect == kind)
        img = read_image(it.path)
        mask = cat.load_mask(it, img.shape)
        assert mask.shape == img.shape[:2] and mask.any()
