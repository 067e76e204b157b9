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
    rev = np.ascontiguousarray(rgb[:, :, ::-1])[:, :, ::-1]  # reversing it again is a contiguous view
    out = to_rgb_uint8(rev, bgr=True)
    assert not np.may_share_memory(out, rev)  # found by the fuzz: the result was a view of the input


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


# ---------------------------------------------------------------- array kinds (issue 15, item 3)


def test_to_rgb_uint8_accepts_subclasses_strides_and_array_likes(tmp_path: Path, rgb: np.ndarray) -> None:
    gray = rgb[..., 0]
    with pytest.warns(PendingDeprecationWarning):
        matrix = np.asmatrix(gray)
    m = to_rgb_uint8(matrix)  # segfaulted via np.repeat on the matrix subclass
    assert type(m) is np.ndarray and m.shape == (13, 17, 3) and np.array_equal(m[..., 2], gray)
    mm = np.memmap(tmp_path / "img.raw", dtype=np.uint8, mode="w+", shape=rgb.shape)
    mm[:] = rgb
    out = to_rgb_uint8(mm)
    assert type(out) is np.ndarray and np.array_equal(out, rgb)
    masked = np.ma.masked_array(rgb, mask=rgb > 200)  # the mask is ignored, the data used
    assert np.array_equal(to_rgb_uint8(masked), rgb)
    ro = rgb.copy()
    ro.flags.writeable = False
    assert np.array_equal(to_rgb_uint8(ro), rgb) and to_rgb_uint8(ro).flags.writeable
    assert np.array_equal(to_rgb_uint8(rgb[::-1, ::-1]), rgb[::-1, ::-1])
    assert np.array_equal(to_rgb_uint8(np.asfortranarray(rgb)), rgb)
    wide = np.zeros((13, 34, 3), np.uint8)
    wide[:, ::2] = rgb
    assert np.array_equal(to_rgb_uint8(wide[:, ::2]), rgb)
    assert np.array_equal(to_rgb_uint8(np.broadcast_to(rgb[:1], (5, 17, 3))), np.repeat(rgb[:1], 5, axis=0))
    assert np.array_equal(to_rgb_uint8(rgb.astype(">u1")), rgb)
    import torch

    assert np.array_equal(to_rgb_uint8(torch.from_numpy(rgb)), rgb)  # __array__ objects


class _BadArray:
    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("device memory")


@pytest.mark.parametrize(
    ("arr", "msg"),
    [
        (np.array(5, np.uint8), r"shape \(\)"),
        (np.zeros(7, np.uint8), r"shape \(7,\)"),
        (np.zeros((1, 1, 1, 1), np.uint8), "shape"),
        (np.zeros((4, 4, 0), np.uint8), "empty"),
        (np.zeros((0, 0), np.uint8), "empty"),
        (np.zeros((4, 4), ">u2"), "16-bit"),
        (np.zeros((4, 4), np.int16), "16-bit"),
        (np.zeros((4, 4, 3), np.int64), r"int64.*astype\(np.uint8\)"),
        (np.zeros((4, 4, 3), np.uint32), "uint32"),
        (np.zeros((4, 4, 3), np.float16), "float"),
        (np.zeros((4, 4), np.complex64), "complex64"),
        (np.zeros((4, 4), object), "object"),
        (np.array([[b"a"]]), "unsupported pixel type"),
        (np.zeros((4, 4), "datetime64[s]"), "datetime64"),
        (np.zeros((4, 4), [("r", "u1"), ("g", "u1")]), "unsupported pixel type"),
        (np.ma.masked_array(np.zeros((4, 4), np.float32)), "float"),
        (_BadArray(), "device memory"),
        ("image.png", "str"),
        (None, "NoneType"),
        (b"\x89PNG", "bytes"),
    ],
)
def test_to_rgb_uint8_refuses_with_image_error(arr: object, msg: str) -> None:
    with pytest.raises(ImageError, match=msg):
        to_rgb_uint8(arr)


# ---------------------------------------------------------------- pixel limit (issue 15, item 4)


def test_max_pixels_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from patchloupe.data import io

    monkeypatch.delenv("PATCHLOUPE_MAX_PIXELS", raising=False)
    assert io.max_pixels() == io.DEFAULT_MAX_PIXELS == 1 << 26
    monkeypatch.setenv("PATCHLOUPE_MAX_PIXELS", "1_000")
    assert io.max_pixels() == 1000
    monkeypatch.setattr(io, "MAX_PIXELS", 77)
    assert io.max_pixels() == 77  # the module setting wins over the environment
    for bad in (0, -5, 2.5, "100", True):
        monkeypatch.setattr(io, "MAX_PIXELS", bad)
        with pytest.raises(ValueError, match="MAX_PIXELS"):
            io.max_pixels()
    monkeypatch.setattr(io, "MAX_PIXELS", None)
    monkeypatch.setenv("PATCHLOUPE_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="PATCHLOUPE_MAX_PIXELS='lots'"):
        io.max_pixels()


def test_arrays_over_the_pixel_limit(monkeypatch: pytest.MonkeyPatch, rgb: np.ndarray) -> None:
    from patchloupe.data import io

    huge = np.broadcast_to(np.zeros((), np.uint8), (1 << 20, 1 << 20, 3))  # 1 Tpx, no memory
    with pytest.raises(ImageError, match=r"1048576 x 1048576 .* more than the limit .*MAX_PIXELS"):
        to_rgb_uint8(huge)
    monkeypatch.setattr(io, "MAX_PIXELS", 13 * 17)
    assert to_rgb_uint8(rgb).shape == (13, 17, 3)  # exactly at the limit
    monkeypatch.setattr(io, "MAX_PIXELS", 13 * 17 - 1)
    with pytest.raises(ImageError, match="PATCHLOUPE_MAX_PIXELS"):
        to_rgb_uint8(rgb)
    Image = pytest.importorskip("PIL.Image")
    with pytest.raises(ImageError, match="PIL image: 13 x 17"):
        to_rgb_uint8(Image.fromarray(rgb))


def _patched_header(tmp_path: Path, suffix: str, h: int, w: int) -> Path:
    """A real 8x8 file whose header claims h x w (only the header is ever looked at before the refusal)."""
    ok, buf = cv2.imencode(suffix, np.zeros((8, 8, 3), np.uint8))
    data = bytearray(buf.tobytes())
    if suffix == ".png":
        data[16:24] = w.to_bytes(4, "big") + h.to_bytes(4, "big")
    elif suffix == ".bmp":
        data[18:26] = w.to_bytes(4, "little", signed=True) + h.to_bytes(4, "little", signed=True)
    else:
        i = next(i for i in range(2, len(data)) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
        data[i + 5 : i + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    p = tmp_path / f"bomb{suffix}"
    p.write_bytes(bytes(data))
    return p


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".jpg"])
def test_read_image_checks_the_header_size_before_decoding(tmp_path: Path, suffix: str, monkeypatch) -> None:
    side = 60000 if suffix == ".jpg" else 20000  # JPEG sizes are 16-bit
    p = _patched_header(tmp_path, suffix, side, side)
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(1))
    with pytest.raises(ImageError, match=rf"bomb{suffix}: {side} x {side} = .* more than the limit"):
        read_image(p)
    assert not decoded  # refused from the header: nothing was decoded


def test_read_image_refuses_png_chunks_that_run_past_the_file(tmp_path: Path, rgb: np.ndarray, monkeypatch) -> None:
    """OpenCV 5.0 spends ~10 s and 3.4 GB on this 9 KB file (an IDAT length claiming 3.4 GB); found by the fuzz."""
    ok, buf = cv2.imencode(".png", rgb.astype(np.uint16) * 257)
    data = bytearray(buf.tobytes())
    data[data.index(b"IDAT") - 4] = 0xCE
    (tmp_path / "bomb.png").write_bytes(bytes(data))
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(1))
    with pytest.raises(ImageError, match="bomb.png: .*a chunk runs past the end of the file"):
        read_image(tmp_path / "bomb.png")
    (tmp_path / "cut.png").write_bytes(buf.tobytes()[:-30])
    with pytest.raises(ImageError, match="cut.png: .*truncated"):
        read_image(tmp_path / "cut.png")
    assert not decoded
    (tmp_path / "tail.png").write_bytes(buf.tobytes() + b"trailing bytes after IEND")
    monkeypatch.undo()
    with pytest.raises(ImageError, match="16-bit"):  # decoded: trailing data after IEND is harmless
        read_image(tmp_path / "tail.png")


@pytest.mark.parametrize(
    ("suffix", "params"),
    [
        (".png", []),
        (".bmp", []),
        (".jpg", []),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        (".jpg", [cv2.IMWRITE_JPEG_OPTIMIZE, 1]),
    ],
)
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (37, 5), (300, 2)])
def test_header_sizes_match_the_decoded_sizes(tmp_path: Path, suffix: str, params: list, shape: tuple) -> None:
    from patchloupe.data import io

    img = np.random.default_rng(3).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(suffix, img, params)
    assert io._header_size(Path("x"), buf.tobytes()) == shape
    p = tmp_path / f"x{suffix}"
    buf.tofile(p)
    assert read_image(p).shape == (*shape, 3)


def test_read_image_refuses_other_formats_and_huge_files(tmp_path: Path, rgb: np.ndarray, monkeypatch) -> None:
    from patchloupe.data import io

    for suffix, name in ((".tif", "TIFF"), (".webp", "WebP"), (".ppm", "PPM")):
        ok, buf = cv2.imencode(suffix, rgb)
        if not ok:  # pragma: no cover - an OpenCV build without that codec
            continue
        p = tmp_path / f"a{suffix}"
        buf.tofile(p)
        with pytest.raises(
            ImageError, match=rf"a{suffix}: not a readable image .*looks like {name}: convert it to PNG"
        ):
            read_image(p)
    head = tmp_path / "head.png"
    head.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDX")
    with pytest.raises(ImageError, match="head.png: not a readable image .*corrupt PNG header"):
        read_image(head)
    jpeg = tmp_path / "nosof.jpg"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xda\x00\x08")
    with pytest.raises(ImageError, match="nosof.jpg: not a readable image .*corrupt JPEG header"):
        read_image(jpeg)
    monkeypatch.setattr(io, "MAX_PIXELS", 1)
    sparse = tmp_path / "sparse.png"
    with open(sparse, "wb") as fh:
        fh.truncate(65 << 20)  # 65 MiB of nothing, allocated lazily
    with pytest.raises(ImageError, match="sparse.png: .* too large a file for the pixel limit"):
        read_image(sparse)
    with pytest.raises(ImageError, match="not a file"):
        read_image("/dev/null")
    with pytest.raises(ImageError, match="expected a path"):
        read_image(5)  # type: ignore[arg-type]


def test_write_image_suffixes(tmp_path: Path, rgb: np.ndarray) -> None:
    for suffix in (".xyz", ".tif", ""):
        with pytest.raises(ImageError, match=r"use one of \.png, \.jpg, \.jpeg, \.bmp") as e:
            write_image(tmp_path / f"w{suffix}", rgb)
        assert repr(suffix or "a file without suffix") in str(e.value)
    assert write_image(tmp_path / "w.JPG", rgb).is_file()
    with pytest.raises(ImageError, match="shape"):
        write_image(tmp_path / "w.png", np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ImageError, match="shape"):
        write_image(tmp_path / "w.png", np.zeros((0, 3), np.uint8))
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "n.png", rgb[::-1, ::2])), rgb[::-1, ::2])


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
