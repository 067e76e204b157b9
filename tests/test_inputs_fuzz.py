"""Property/fuzz test of input handling: ``to_rgb_uint8``, ``read_image``, ``load_rgb``, ``resize_for_model`` and
``read_model_folder`` (plus ``write_model_folder``) over generated shapes, dtypes, subclasses, strides, sizes from
1 x 1 up, files (valid, truncated, corrupted, headers that lie, other formats) and model-folder mutations (field
values and types, truncations, flipped bytes, symlinks, special files).

Every call must either succeed with a well-formed result or raise the documented exception type (ImageError /
ValueError / ModelError), never anything else. Inputs that are valid must succeed (and give the right pixels
where the format is lossless). The fuzz runs in a child process with ``faulthandler`` on, so a segfault or an
abort fails the test with a traceback instead of killing the test run; the child reports how many cases ran.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

DEFAULT_CASES = {"to_rgb_uint8": 700, "read_image": 350, "load_rgb": 300, "resize_for_model": 350, "model_folder": 400}
SLOW_FACTOR = 5


def _run_fuzz(cases: dict[str, int], derandomize: bool, timeout: float) -> dict[str, dict[str, int]]:
    cmd = [sys.executable, "-X", "faulthandler", __file__, json.dumps({"cases": cases, "derandomize": derandomize})]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"fuzz child exited with {proc.returncode}:\n{tail}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for target, n in cases.items():
        assert sum(report[target].values()) >= n, (target, report[target])
    logging.getLogger(__name__).info("fuzz outcomes per target: %s", report)
    return report


def test_inputs_fuzz() -> None:
    report = _run_fuzz(DEFAULT_CASES, derandomize=True, timeout=900)
    assert sum(sum(v.values()) for v in report.values()) >= 2000
    for target, outcomes in report.items():  # each target both accepted and refused inputs
        assert outcomes.get("ok", 0) > 0 and len(outcomes) >= 2, (target, outcomes)


@pytest.mark.slow
def test_inputs_fuzz_long() -> None:
    report = _run_fuzz({k: v * SLOW_FACTOR for k, v in DEFAULT_CASES.items()}, derandomize=False, timeout=3600)
    assert sum(sum(v.values()) for v in report.values()) >= 10_000


# ------------------------------------------------------------------------------------------------ the child


def _child(cases: dict[str, int], derandomize: bool) -> None:  # noqa: C901 - one place for all strategies
    import collections
    import contextlib
    import hashlib
    import itertools
    import random
    import shutil
    import tempfile

    import cv2
    import numpy as np
    import torch
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from patchloupe.data import ImageError, read_image, to_rgb_uint8
    from patchloupe.data import io as dio
    from patchloupe.model_folder import META_FILE, ModelError, read_model_folder, write_model_folder
    from patchloupe.preprocess import load_rgb, resize_for_model
    from safetensors.torch import save as st_save

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="patchloupe-fuzz-"))
    serial = itertools.count()  # unique file names (hypothesis repeats drawn numbers)
    counts: dict[str, collections.Counter] = {k: collections.Counter() for k in cases}
    limit = 100_000  # a small pixel limit so that the limit itself is fuzzed cheaply
    dio.MAX_PIXELS = limit

    def conf(n: int):
        return settings(
            max_examples=n,
            deadline=None,
            database=None,
            derandomize=derandomize,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )

    # ---------------------------------------------------------------- arrays
    dtypes = [
        "u1", "u1", "u1", "u1", "?", "i1", "i2", "u2", ">u2", "i4", "u4", "i8", "f2", "f4", ">f4", "f8", "c8",
        "O", "S1", "M8[s]", "V2", [("r", "u1"), ("g", "u1")],
    ]  # fmt: skip
    dims = st.sampled_from([0, 1, 1, 2, 3, 5, 8, 13, 40])
    channels = st.sampled_from([None, None, 1, 2, 3, 3, 3, 4, 5])

    @st.composite
    def arrays(draw):
        kind = draw(st.sampled_from(["plain"] * 8 + ["huge", "object"]))
        if kind == "object":
            return draw(st.sampled_from([None, "x.png", 3, 2.5, b"\x89PNG", [[1, 2], [3, 4]], {}, object(), (1,)]))
        dtype = np.dtype(draw(st.sampled_from(dtypes)))
        if kind == "huge":  # absurd sizes that cost nothing (zero strides)
            shape = (draw(st.sampled_from([1, 317, 1 << 20])), 1 << 20) + draw(st.sampled_from([(), (3,), (1,)]))
            return np.broadcast_to(np.zeros((), dtype=dtype), shape)
        ndim = draw(st.sampled_from([0, 1, 2, 2, 3, 3, 3, 4]))
        shape = [draw(dims) for _ in range(min(ndim, 2))]
        if ndim >= 3:
            c = draw(channels)
            shape.append(3 if c is None else c)
        if ndim == 4:
            shape.insert(0, draw(st.sampled_from([1, 2])))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        raw = rng.integers(0, 256, size=shape)
        try:
            a = raw.astype(dtype)
        except (TypeError, ValueError):
            a = np.zeros(shape, dtype=dtype)
        if dtype.kind == "f" and a.size and draw(st.booleans()):
            a.flat[rng.integers(a.size)] = draw(st.sampled_from([np.nan, np.inf, -1.0, 1e30]))
        # strides: reverse / step / transpose / Fortran order / broadcast
        if a.ndim >= 1 and draw(st.booleans()):
            sl = tuple(slice(None, None, draw(st.sampled_from([1, -1, 2, -2]))) for _ in range(a.ndim))
            a = a[sl]
        if a.ndim >= 2 and draw(st.integers(0, 4)) == 0:
            a = a.swapaxes(0, 1)
        if draw(st.integers(0, 4)) == 0:
            a = np.asfortranarray(a)
        if a.ndim >= 1 and a.shape[0] == 1 and draw(st.booleans()):
            a = np.broadcast_to(a, (draw(st.sampled_from([1, 4, 50])), *a.shape[1:]))
        if a.flags.writeable and draw(st.integers(0, 3)) == 0:
            a.flags.writeable = False
        sub = draw(st.sampled_from(["none", "none", "none", "matrix", "masked", "memmap", "torch", "bad"]))
        if sub == "matrix" and a.ndim == 2 and a.dtype.kind not in "OSVM":
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PendingDeprecationWarning)
                a = np.asmatrix(a)
        elif sub == "masked":
            a = np.ma.masked_array(a, mask=np.zeros(a.shape, bool) if a.dtype.kind != "V" else False)
        elif sub == "memmap" and a.size and a.dtype.kind not in "OM" and a.dtype.names is None:
            mm = np.memmap(work / f"mm{next(serial)}.raw", dtype=a.dtype, mode="w+", shape=a.shape)
            mm[...] = a
            a = mm
        elif sub == "torch" and a.dtype in (np.uint8, np.float32, np.int64, np.bool_) and a.flags.writeable:
            a = torch.from_numpy(np.array(a, order="C", copy=True))
        elif sub == "bad":

            class Bad:
                def __array__(self, dtype=None, copy=None):
                    raise RuntimeError("cannot convert")

            a = Bad()
        return a

    def valid_uint8_image(a) -> np.ndarray | None:
        """The expected RGB output for an input that must be accepted, else None."""
        if isinstance(a, torch.Tensor):
            a = a.numpy()
        if not isinstance(a, np.ndarray):
            return None
        b = np.asarray(a.data) if isinstance(a, np.ma.MaskedArray) else np.asarray(a)
        if b.dtype != np.uint8 or b.ndim not in (2, 3) or b.size == 0:
            return None
        if b.ndim == 3 and b.shape[2] not in (1, 3):
            return None
        if b.shape[0] * b.shape[1] > limit:
            return None
        b = b[:, :, None] if b.ndim == 2 else b
        return np.repeat(b, 3, axis=2) if b.shape[2] == 1 else b

    def check_rgb(out: np.ndarray) -> None:
        assert type(out) is np.ndarray and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
        assert out.flags.c_contiguous and out.shape[0] >= 1 and out.shape[1] >= 1
        assert out.shape[0] * out.shape[1] <= limit

    def pil_images():
        from PIL import Image

        modes = ["RGB", "L", "RGBA", "P", "1", "I", "F", "I;16", "CMYK", "LA", "YCbCr", "HSV", "LAB", "RGBX"]
        return st.builds(
            lambda m, w, h: Image.new(m, (w, h)), st.sampled_from(modes), st.integers(1, 40), st.integers(1, 40)
        ) | st.builds(lambda w: Image.new("L", (w, 1 << 10)), st.sampled_from([1, 97, 98, 200]))

    @conf(cases["to_rgb_uint8"])
    @given(st.one_of(arrays(), arrays(), arrays(), pil_images()), st.booleans())
    def fuzz_to_rgb(a, bgr) -> None:
        expected = valid_uint8_image(a)
        try:
            out = to_rgb_uint8(a, bgr=bgr)
        except ImageError as exc:
            assert expected is None, f"valid image refused: {exc}"
            counts["to_rgb_uint8"]["ImageError"] += 1
            return
        check_rgb(out)
        if expected is not None:
            np.testing.assert_array_equal(out, expected[:, :, ::-1] if bgr else expected)
            src = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
            assert not np.may_share_memory(out, src)
        counts["to_rgb_uint8"]["ok"] += 1

    # ---------------------------------------------------------------- files
    @st.composite
    def image_files(draw):
        """(path, expected RGB or None when it must be refused, exact: whether pixels must match exactly)."""
        i = draw(st.integers(0, 2**31))
        n = next(serial)
        p = work / f"f{n}{draw(st.sampled_from(['.png', '.jpg', '.bmp', '.PNG', '', '.tif']))}"
        kind = draw(st.sampled_from(["image"] * 6 + ["junk", "empty", "dir", "missing", "link", "other"]))
        if kind == "empty":
            p.write_bytes(b"")
            return p, None, False
        if kind == "dir":
            p.mkdir(exist_ok=True)
            return p, None, False
        if kind == "missing":
            return work / f"missing{n}.png", None, False
        if kind == "junk":
            p.write_bytes(draw(st.binary(min_size=1, max_size=300)))
            return p, None, False
        if kind == "link":
            with contextlib.suppress(FileExistsError):
                p.symlink_to(draw(st.sampled_from(["/dev/null", str(p), "/nonexistent", "/proc/self/mem"])))
            return p, None, False
        h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
        c = draw(st.sampled_from([None, 1, 3, 3, 4]))
        deep = draw(st.integers(0, 5)) == 0
        fmt = draw(st.sampled_from([".png", ".png", ".jpg", ".bmp"]))
        if kind == "other":
            fmt = draw(st.sampled_from([".tif", ".webp", ".ppm", ".pgm"]))
        if deep:
            fmt = ".png" if kind != "other" else ".tif"
        rng = np.random.default_rng(i)
        shape = (h, w) if c is None else (h, w, c)
        img = rng.integers(0, 65536 if deep else 256, size=shape).astype(np.uint16 if deep else np.uint8)
        if fmt == ".ppm" and c in (None, 1, 4):
            fmt = ".pgm" if c != 4 else ".tif"
        try:
            ok, buf = cv2.imencode(fmt, img)
        except cv2.error:
            ok = False
        if not ok:
            p.write_bytes(b"\x00")
            return p, None, False
        data = bytearray(buf.tobytes())
        mutation = draw(st.sampled_from(["none"] * 5 + ["truncate", "flip", "header", "prefix", "append"]))
        if mutation == "truncate":
            data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
        elif mutation == "flip":
            for _ in range(draw(st.integers(1, 8))):
                j = draw(st.integers(0, len(data) - 1))
                data[j] = draw(st.integers(0, 255))
        elif mutation == "header" and fmt in (".png", ".bmp"):
            big = draw(st.sampled_from([0, 1, 2, 317, 70000, 1 << 30, (1 << 31) - 1]))
            if fmt == ".png":
                data[16:20] = big.to_bytes(4, "big")
            else:
                data[22:26] = (-big if draw(st.booleans()) else big).to_bytes(4, "little", signed=True)
        elif mutation == "prefix":
            data = bytearray(draw(st.binary(min_size=1, max_size=8))) + data
        elif mutation == "append":
            data += draw(st.binary(min_size=1, max_size=64))
        p.write_bytes(bytes(data))
        good = kind == "image" and not deep and c in (None, 1, 3) and mutation in ("none", "append")
        if not good:
            return p, None, False
        rgb = img[:, :, None] if img.ndim == 2 else img
        rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb[:, :, ::-1]
        return p, rgb, fmt in (".png", ".bmp")

    def check_file_result(target: str, fn, path, expected, exact) -> None:
        try:
            out = fn(path)
        except ImageError as exc:
            assert expected is None, f"valid file {path} refused: {exc}"
            counts[target]["ImageError"] += 1
            return
        check_rgb(out)
        if expected is not None:
            assert out.shape == expected.shape
            if exact:
                np.testing.assert_array_equal(out, expected)
        counts[target]["ok"] += 1

    @conf(cases["read_image"])
    @given(image_files())
    def fuzz_read_image(case) -> None:
        check_file_result("read_image", read_image, *case)

    @conf(cases["load_rgb"])
    @given(st.one_of(image_files(), arrays().map(lambda a: (a, "array", False))), st.sampled_from([str, Path, None]))
    def fuzz_load_rgb(case, as_type) -> None:
        item, expected, exact = case
        if isinstance(expected, str):  # an array, not a file
            expected = valid_uint8_image(item)
            try:
                out = load_rgb(item)
            except ImageError as exc:
                assert expected is None, f"valid image refused: {exc}"
                counts["load_rgb"]["ImageError"] += 1
                return
            check_rgb(out)
            counts["load_rgb"]["ok"] += 1
            return
        path = as_type(item) if as_type is not None else item
        check_file_result("load_rgb", load_rgb, path, expected, exact)

    # ---------------------------------------------------------------- resize
    size_value = st.one_of(
        st.integers(1, 300),
        st.integers(1, 300),
        st.integers(-3, 0),
        st.sampled_from([10**6, 10**9, 2**40]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(1, 64).map(float),
        st.integers(1, 64).map(np.int64),
        st.sampled_from([True, None, "64", b"8", [8]]),
    )
    sizes = st.one_of(
        st.tuples(size_value, size_value),
        st.tuples(size_value, size_value).map(list),
        st.tuples(st.integers(-3, 300), st.integers(-3, 300) | st.floats(1, 300)).map(np.array),
        st.tuples(size_value),
        st.tuples(size_value, size_value, size_value),
        st.sampled_from([None, 5, "ab", b"xy"]),
    )

    def whole(v) -> bool:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            return False
        return bool(np.isfinite(v)) and float(v).is_integer() and v >= 1

    @st.composite
    def model_inputs(draw):
        """Mostly valid uint8 (H, W, 3) images, 1 x 1 up, with any strides; else anything from arrays()."""
        if draw(st.integers(0, 3)) == 0:
            return draw(arrays())
        h, w = draw(st.integers(1, 70)), draw(st.integers(1, 70))
        a = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, (h, w, 3), dtype=np.uint8)
        sl = tuple(slice(None, None, draw(st.sampled_from([1, 1, -1, 2, -3]))) for _ in range(3))
        return a[sl[0], sl[1]] if draw(st.booleans()) else np.asfortranarray(a[sl[0], sl[1]])

    @conf(cases["resize_for_model"])
    @given(model_inputs(), st.one_of(st.tuples(st.integers(1, 300), st.integers(1, 300)), sizes))
    def fuzz_resize(a, size) -> None:
        try:
            out = resize_for_model(a, size)
        except ValueError as exc:
            src = np.asarray(a) if isinstance(a, np.ndarray) else None
            valid_image = src is not None and src.dtype == np.uint8 and src.ndim == 3 and src.shape[2] == 3
            valid_image = valid_image and src.size > 0 and src.shape[0] * src.shape[1] <= limit
            try:
                valid_size = not isinstance(size, (str, bytes)) and len(size) == 2 and all(whole(v) for v in size)
                valid_size = valid_size and int(size[0]) * int(size[1]) <= limit
            except TypeError:
                valid_size = False
            assert not (valid_image and valid_size), f"valid resize refused: {exc}"
            counts["resize_for_model"][type(exc).__name__] += 1
            return
        h, w = (int(v) for v in size)
        assert type(out) is np.ndarray and out.dtype == np.uint8 and out.shape == (h, w, 3) and out.flags.c_contiguous
        counts["resize_for_model"]["ok"] += 1

    # ---------------------------------------------------------------- model folders
    def base_states(seed: int) -> dict[str, dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        return {
            "generator": {"w": torch.randn(8, 4, generator=g), "n": torch.tensor([seed], dtype=torch.int64)},
            "comparator": {"w": torch.randn(5, generator=g)},
            "memory": {"bank": torch.randn(6, 2, generator=g), "used": torch.ones(2, dtype=torch.bool)},
        }

    template = write_model_folder(work / "template", {"format_version": 3, "threshold": 0.5}, base_states(0))
    template_bytes = {q.name: q.read_bytes() for q in template.iterdir()}
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=12,
    )
    mutations = st.sampled_from(
        [
            "set_field", "del_field", "files_value", "files_key", "sha_value", "sha_key", "json_truncate",
            "json_flip", "json_replace", "json_deep", "w_truncate", "w_flip", "w_delete", "w_append", "w_symlink",
            "w_dir", "w_fifo", "w_restate", "legacy", "folder_file", "folder_missing", "folder_link", "json_link",
            "stray_files", "none",
        ]
    )  # fmt: skip
    benign = {"none", "folder_link", "stray_files", "legacy"}

    def weight_files(folder: Path) -> list[Path]:
        names = (p for p in folder.iterdir() if p.name.endswith(".safetensors"))
        return sorted(p for p in names if p.is_file() and not p.is_symlink())  # regular files only

    def rjson(r: random.Random, depth: int = 0):
        """A random JSON-ish value (NaN and infinities included)."""
        roll = r.random()
        if depth < 3 and roll < 0.15:
            return [rjson(r, depth + 1) for _ in range(r.randint(0, 3))]
        if depth < 3 and roll < 0.3:
            return {rtext(r): rjson(r, depth + 1) for _ in range(r.randint(0, 3))}
        return r.choice([None, True, False, 0, -1, 2**70, 0.5, -1e308, float("nan"), float("inf"), "", "abc",
                         "generator.0123456789abcdef.safetensors", [4], {"a": 1}, 1e-300])  # fmt: skip

    def rtext(r: random.Random) -> str:
        return "".join(r.choice("abcxyz._/0é\x00") for _ in range(r.randint(0, 8)))

    def apply(r: random.Random, folder: Path, m: str) -> Path:
        meta_path = folder / META_FILE
        rec = None
        with contextlib.suppress(Exception):
            rec = json.loads(meta_path.read_text()) if not meta_path.is_symlink() else None
        ws = weight_files(folder) if folder.is_dir() else []
        if m in ("set_field", "del_field", "files_value", "files_key", "sha_value", "sha_key") and isinstance(
            rec, dict
        ):
            if m == "set_field":
                key = r.choice([*rec.keys(), "files", "sha256", "x"])
                rec[key] = rjson(r)
            elif m == "del_field" and rec:
                rec.pop(r.choice(sorted(rec)))
            elif m in ("files_value", "files_key") and isinstance(rec.get("files"), dict) and rec["files"]:
                k = r.choice(sorted(rec["files"]))
                if m == "files_value":
                    rec["files"][k] = r.choice([rjson(r), "../x", "/etc/passwd", f"{k}.safetensors"])
                else:
                    rec["files"][rtext(r)] = rec["files"].pop(k)
            elif isinstance(rec.get("sha256"), dict) and rec["sha256"]:
                k = r.choice(sorted(rec["sha256"]))
                if m == "sha_value":
                    rec["sha256"][k] = r.choice([rjson(r), "0" * 64])
                else:
                    rec["sha256"][rtext(r)] = rec["sha256"].pop(k)
            meta_path.write_text(json.dumps(rec))
        elif m.startswith("json_") and meta_path.is_file() and not meta_path.is_symlink():
            data = bytearray(meta_path.read_bytes())
            if m == "json_truncate":
                data = data[: r.randint(0, len(data))]
            elif m == "json_flip" and data:
                for _ in range(r.randint(1, 6)):
                    data[r.randint(0, len(data) - 1)] = r.randint(0, 255)
            elif m == "json_replace":
                data = bytearray(r.randbytes(r.randint(0, 200)))
            elif m == "json_deep":
                n = r.choice([33, 1000, 200_000])
                data = bytearray(b"[" * n + b"]" * n)
            elif m == "json_link":
                meta_path.unlink()
                meta_path.symlink_to(r.choice([str(template / META_FILE), "/proc/self/mem", "/nope"]))
                return folder
            meta_path.write_bytes(bytes(data))
        elif m.startswith("w_") and ws:
            p = r.choice(ws)
            if m == "w_truncate":
                p.write_bytes(p.read_bytes()[: r.randint(0, p.stat().st_size)])
            elif m == "w_flip" and p.stat().st_size:
                data = bytearray(p.read_bytes())
                for _ in range(r.randint(1, 6)):
                    data[r.randint(0, len(data) - 1)] = r.randint(0, 255)
                p.write_bytes(bytes(data))
            elif m == "w_delete":
                p.unlink()
            elif m == "w_append":
                with open(p, "ab") as fh:
                    fh.write(r.randbytes(r.randint(1, 32)))
            elif m == "w_symlink":
                target = r.choice([*[str(w) for w in weight_files(template)], "/proc/self/mem", "/nope"])
                p.unlink()
                p.symlink_to(target)
            elif m == "w_dir":
                p.unlink()
                p.mkdir()
            elif m == "w_fifo":
                p.unlink()
                os.mkfifo(p)
            elif m == "w_restate":  # a well-formed file whose checksum is fixed up: only the tensor checks remain
                dtype = r.choice([torch.float32, torch.float16, torch.float64, torch.bfloat16,
                                              torch.int32, torch.uint8, torch.bool, torch.complex64,
                                              torch.float8_e4m3fn])  # fmt: skip
                t = torch.randn(r.randint(0, 5), generator=torch.Generator().manual_seed(r.randint(0, 99))).to(dtype)
                if dtype.is_floating_point and t.numel() and (r.random() < 0.5):
                    t[0] = r.choice([float("nan"), float("inf"), -float("inf")])
                try:
                    data = st_save({"w": t})
                except Exception:
                    return folder
                p.write_bytes(data)
                if isinstance(rec, dict) and isinstance(rec.get("sha256"), dict) and p.name in rec["sha256"]:
                    rec["sha256"][p.name] = hashlib.sha256(data).hexdigest()
                    meta_path.write_text(json.dumps(rec))
        elif m == "legacy" and isinstance(rec, dict) and isinstance(rec.get("files"), dict):
            digests = {}
            for entry, name in list(rec["files"].items()):
                with contextlib.suppress(Exception):
                    (folder / name).rename(folder / f"{entry}.safetensors")
                    digests[f"{entry}.safetensors"] = rec["sha256"][name]
            rec.pop("files")
            rec["sha256"] = digests
            meta_path.write_text(json.dumps(rec))
        elif m in ("folder_file", "folder_missing"):
            folder.unlink() if folder.is_symlink() else shutil.rmtree(folder)
            if m == "folder_file":
                folder.write_bytes(b"x")
        elif m == "folder_link":
            link = folder.with_name(folder.name + "-link")
            link.symlink_to(folder)
            return link
        elif m == "stray_files":  # new names only: an earlier mutation may have made one a fifo, a folder or a link
            strays = ((".patchloupe-tmp-generator.x.ab", b"half"), (f"memory.{'0' * 16}.safetensors", b"orphan"),
                      ("notes.txt", b"hi"))  # fmt: skip
            for name, data in strays:
                if not os.path.lexists(folder / name):
                    (folder / name).write_bytes(data)
        return folder

    @st.composite
    def folders(draw):
        folder = work / f"m{next(serial)}"
        shutil.copytree(template, folder)
        ms = draw(st.lists(mutations, min_size=1, max_size=3))
        rng = random.Random(draw(st.integers(0, 2**32 - 1)))  # all details from one seed: draws never depend on files
        path = folder
        for m in ms:
            if not path.is_dir():
                break
            path = apply(rng, path, m)
            if m in ("json_link", "w_symlink"):  # a link into the template or /proc/self/mem: nothing writes after it
                break
        assert {q.name: q.read_bytes() for q in template.iterdir()} == template_bytes, f"{ms} changed the template"
        legacy_only = "legacy" in ms
        return path, all(m in benign for m in ms) and not (legacy_only and "stray_files" in ms)

    expected_states = {e: dict(s) for e, s in base_states(0).items()}

    @conf(cases["model_folder"] * 4 // 5)
    @given(folders())
    def fuzz_read_model_folder(case) -> None:
        path, must_load = case
        try:
            meta, states = read_model_folder(path, required=("generator", "comparator"))
        except ModelError as exc:
            assert not must_load, f"intact folder refused: {exc}"
            counts["model_folder"]["ModelError"] += 1
            return
        assert isinstance(meta, dict) and "files" not in meta and "sha256" not in meta
        for entry, state in states.items():
            for key, t in state.items():
                assert isinstance(t, torch.Tensor) and t.dtype in (
                    torch.float32,
                    torch.int32,
                    torch.int64,
                    torch.uint8,
                    torch.int8,
                    torch.int16,
                    torch.bool,
                )
                if t.is_floating_point():
                    assert bool(torch.isfinite(t).all()), (entry, key)
        if must_load:
            assert set(states) == set(expected_states)
            for entry, state in expected_states.items():
                for key, t in state.items():
                    assert torch.equal(states[entry][key], t)
        counts["model_folder"]["ok"] += 1

    @conf(max(1, cases["model_folder"] // 5))
    @given(
        st.dictionaries(st.text(max_size=6), json_values, max_size=4),
        st.dictionaries(
            st.sampled_from(["generator", "memory", "Bad", "x.y", ""]),
            st.dictionaries(
                st.text(min_size=1, max_size=4),
                st.sampled_from(["f32", "f16", "i64", "nan", "big", "c64", "obj"]),
                max_size=3,
            ),
            max_size=3,
        ),
        st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.float64, "float16"]),
    )
    def fuzz_write_model_folder(meta, spec, dtype) -> None:
        make = {
            "f32": lambda: torch.randn(3),
            "f16": lambda: torch.randn(2, 2).half(),
            "i64": lambda: torch.arange(4),
            "nan": lambda: torch.tensor([float("nan")]),
            "big": lambda: torch.tensor([1e6]),
            "c64": lambda: torch.zeros(2, dtype=torch.complex64),
            "obj": lambda: [1.0],
        }
        tensors = {e: {k: make[v]() for k, v in s.items()} for e, s in spec.items()}
        folder = work / f"w{next(serial)}"
        try:
            write_model_folder(folder, meta, tensors, weights_dtype=dtype)
        except (ValueError, TypeError) as exc:
            counts["model_folder"][f"write:{type(exc).__name__}"] += 1
            assert not (folder / META_FILE).exists()
            return
        back_meta, back = read_model_folder(folder)
        assert back_meta == json.loads(json.dumps(meta)) and set(back) == set(tensors)
        for e, s in tensors.items():
            for k, t in s.items():
                assert torch.equal(back[e][k], t.to(dtype).float() if t.is_floating_point() else t)
        counts["model_folder"]["write:ok"] += 1

    import time

    timings = {}
    try:
        for fn in (fuzz_to_rgb, fuzz_read_image, fuzz_load_rgb, fuzz_resize, fuzz_read_model_folder,
                   fuzz_write_model_folder):  # fmt: skip
            t0 = time.perf_counter()
            fn()
            timings[fn.__name__] = round(time.perf_counter() - t0, 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(timings), file=sys.stderr)
    print(json.dumps({k: dict(v) for k, v in counts.items()}))


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    _child(args["cases"], args["derandomize"])
