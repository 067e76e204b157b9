"""Model folders: the one place where a saved model is written and read.

Layout (written since this module; "layout 3")::

    model_dir/
        detector.json                          the configuration + {"files": {entry: file}, "sha256": {file: hex}}
        generator.<sha16>.safetensors          one safetensors file per entry, named by its content
        comparator.<sha16>.safetensors
        memory.<sha16>.safetensors             (only when the model has one)
        .patchloupe.lock                       empty; writers hold an flock on it while they save

Older folders (format 1/2, and the shipped default model) name their files ``<entry>.safetensors`` with the same
``sha256`` map (or none); they are read unchanged.

How a save stays atomic (readers always see the old or the new model; a crash at any point leaves one of them):

1. take the folder's lock (``flock`` on ``.patchloupe.lock``; concurrent savers queue, readers never lock);
2. write every weight file under a temporary name (``.patchloupe-tmp-*``), ``fsync`` it and rename it to its
   content-addressed name. A name that already exists holds the same bytes, so files the current
   ``detector.json`` refers to are never changed;
3. write ``detector.json`` the same way and ``os.replace`` it over the old one: this single rename is the commit;
4. remove what no longer belongs: files the new ``detector.json`` does not name (the old model's weights, legacy
   ``<entry>.safetensors`` files) and temporary files of saves that were killed.

A save killed before step 3 leaves the old model intact (plus files that the next save removes); one killed after it
leaves the new model. A reader that finds a named file gone (a writer cleaned up between its two reads) re-reads
``detector.json`` and tries again. Leftovers of a killed save stay until the next save into that folder (loading
never writes).

Saving through a symlinked folder (``current -> releases/v1``) writes into the link's target and keeps the link.
Files are created with mode ``0o666`` minus the process umask (like any ``open``), the folder with ``0o777`` minus
the umask. A path that exists and is not a folder, or a non-empty folder that holds no patchloupe model, is refused.

Loading turns every problem into :class:`ModelError` naming the file or field: pickles never load (safetensors
only), weight files must be regular files (not symlinks), checksums must match, and every tensor must be finite,
of a floating (cast back to float32), integer or bool type.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from patchloupe.errors import ModelError
from patchloupe.fileio import fsync_dir

try:  # POSIX; elsewhere concurrent savers into one folder are not serialised
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ALLOWED_WEIGHT_DTYPES",
    "MAX_META_BYTES",
    "META_FILE",
    "ModelError",
    "read_model_folder",
    "write_model_folder",
]

log = logging.getLogger(__name__)

META_FILE = "detector.json"
LOCK_FILE = ".patchloupe.lock"
TMP_PREFIX = ".patchloupe-tmp-"
#: dtypes that ``write_model_folder(weights_dtype=...)`` accepts for floating-point tensors.
ALLOWED_WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: ``detector.json`` larger than this is refused (the real one is a few KiB).
MAX_META_BYTES = 4 << 20
#: JSON nested deeper than this is refused (the real one is 3 levels deep).
MAX_META_DEPTH = 32
_RESERVED_KEYS = ("files", "sha256")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)
_ENTRY_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_LEGACY_RE = re.compile(r"([a-z][a-z0-9_]{0,63})\.safetensors")
_ADDRESSED_RE = re.compile(r"([a-z][a-z0-9_]{0,63})\.[0-9a-f]{16}\.safetensors")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_READ_RETRIES = 8


class _Vanished(Exception):
    """A weight file named by the detector.json just read is not there (maybe a writer removed it meanwhile)."""

    def __init__(self, raw: bytes, entry: str, name: str) -> None:
        super().__init__(name)
        self.raw, self.entry, self.name = raw, entry, name


# ---------------------------------------------------------------------------------------------------- writing


def _write_file(directory: Path, name: str, data: bytes) -> None:
    """Write ``data`` to ``directory/name`` atomically: temp file (umask-respecting mode), fsync, rename."""
    tmp = directory / f"{TMP_PREFIX}{name}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the folder's lock file (released when the process dies)."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _is_leftover(name: str) -> bool:
    """Files a (possibly killed) save of ours may leave in a folder that has no detector.json yet."""
    return name == LOCK_FILE or name.startswith(TMP_PREFIX) or _ADDRESSED_RE.fullmatch(name) is not None


def _prepare_folder(path: Path) -> Path:
    """Create the folder (through a symlink: its target) or check that it may be written into."""
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{str(path)!r} is a symlink to a missing folder ({os.readlink(path)!r})")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{str(path)!r} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    names = os.listdir(path)
    if names and META_FILE not in names and not all(_is_leftover(n) for n in names):
        raise ValueError(f"{str(path)!r} is a non-empty folder that holds no patchloupe model; refusing to replace it")
    return path


def _json_safe(obj: Any, where: str) -> None:
    """Raise ValueError naming the key when ``obj`` holds something strict JSON cannot hold."""
    if isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            raise ValueError(f"meta{where} is {obj}; detector.json holds finite numbers only")
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"meta{where} has a non-string key {k!r}")
            _json_safe(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _json_safe(v, f"{where}[{i}]")
    elif obj is not None and not isinstance(obj, (str, int, bool)):
        raise ValueError(f"meta{where} is a {type(obj).__name__}, which JSON cannot hold")


def _encode_state(entry: str, state: Mapping[str, torch.Tensor], weights_dtype: torch.dtype) -> bytes:
    from safetensors.torch import save

    if not isinstance(state, Mapping):
        raise TypeError(f"tensors[{entry!r}] must be a dict of tensors, got {type(state).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TypeError(f"tensors[{entry!r}] must map str to torch.Tensor, got {key!r}: {type(value).__name__}")
        t = value.detach().to("cpu")
        if t.is_floating_point():
            if t.dtype not in _FLOAT_DTYPES:
                raise ValueError(f"{entry}/{key}: unsupported dtype {t.dtype}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{entry}/{key} holds NaN or inf; refusing to save a broken model")
            t = t.to(weights_dtype)
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{entry}/{key} overflows {weights_dtype} (max |x| {value.abs().max().item():.4g})")
        elif t.dtype not in _INT_DTYPES:
            raise ValueError(f"{entry}/{key}: unsupported dtype {t.dtype} (floating, integer or bool only)")
        out[key] = t.clone().contiguous()  # clone: safetensors refuses tensors that share memory
    return save(out)


def write_model_folder(
    path: str | os.PathLike[str],
    meta: Mapping[str, Any],
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
    weights_dtype: torch.dtype = torch.float32,
) -> Path:
    """Save ``meta`` (JSON-safe config, no checksums) and one safetensors file per ``tensors`` entry, atomically.

    Floating-point tensors are stored as ``weights_dtype`` (float32, float16 or bfloat16); integer and bool tensors
    as they are. Raises ValueError for another dtype, non-finite tensors (also after the cast), meta that strict
    JSON cannot hold, bad entry names, or a path that is a file / a non-empty non-model folder; TypeError for
    arguments of the wrong type. See the module docstring for the crash-safety guarantees. Returns the path.
    """
    if weights_dtype not in ALLOWED_WEIGHT_DTYPES:
        raise ValueError(
            f"weights_dtype must be one of {[str(d) for d in ALLOWED_WEIGHT_DTYPES]}, got {weights_dtype!r}"
        )
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a dict of state dicts, got {type(tensors).__name__}")
    clash = [k for k in _RESERVED_KEYS if k in meta]
    if clash:
        raise ValueError(f"meta must not hold {clash}: write_model_folder records the files and checksums")
    _json_safe(dict(meta), "")
    bad = [e for e in tensors if not isinstance(e, str) or not _ENTRY_RE.fullmatch(e)]
    if bad:
        raise ValueError(f"entry names must match {_ENTRY_RE.pattern}, got {bad}")
    blobs = {entry: _encode_state(entry, state, weights_dtype) for entry, state in tensors.items()}

    folder = Path(path)
    _prepare_folder(folder)
    files: dict[str, str] = {}
    digests: dict[str, str] = {}
    for entry, blob in blobs.items():
        digest = hashlib.sha256(blob).hexdigest()
        files[entry] = f"{entry}.{digest[:16]}.safetensors"
        digests[files[entry]] = digest
    record = {**meta, "files": files, "sha256": digests}
    text = (json.dumps(record, indent=2, allow_nan=False) + "\n").encode("utf-8")

    with _locked(folder):
        previous = _names_in_current_meta(folder)
        for entry, blob in blobs.items():
            target = folder / files[entry]
            if _same_content(target, digests[files[entry]]):
                continue  # an identical file is already there (maybe the current model's own)
            _write_file(folder, files[entry], blob)
        fsync_dir(folder)
        _write_file(folder, META_FILE, text)  # the commit
        fsync_dir(folder)
        _remove_unreferenced(folder, set(files.values()), previous | {f"{e}.safetensors" for e in tensors})
    return folder


def _same_content(path: Path, digest: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest() == digest


def _names_in_current_meta(folder: Path) -> set[str]:
    """Weight file names the folder's current detector.json refers to (best effort; empty when unreadable)."""
    try:
        meta = _parse_meta(folder / META_FILE, _read_regular(folder / META_FILE, MAX_META_BYTES, "detector.json"))
        return {name for name, _ in _file_map(folder, meta).values()}
    except (OSError, ModelError):
        return set()


def _remove_unreferenced(folder: Path, keep: set[str], stale: set[str]) -> None:
    """Delete temp files of killed saves, content-addressed weight files not in ``keep`` and the ``stale`` names
    (what the previous detector.json referred to, legacy ``<entry>.safetensors``) that are not in ``keep``."""
    for name in os.listdir(folder):
        if name in keep:
            continue
        weights = _ADDRESSED_RE.fullmatch(name) or (name in stale and _LEGACY_RE.fullmatch(name))
        if name.startswith(TMP_PREFIX) or weights:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                os.unlink(folder / name)


# ---------------------------------------------------------------------------------------------------- reading


def _read_regular(path: Path, limit: int | None, what: str) -> bytes:
    """Bytes of a regular file (no symlink, no device, no /proc file); FileNotFoundError passes through."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ModelError(f"{path}: cannot read {what} ({exc})") from exc
    if stat.S_ISLNK(st.st_mode):
        raise ModelError(f"{path}: {what} is a symlink; model files must be regular files")
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"{path}: {what} is not a regular file")
    if limit is not None and st.st_size > limit:
        raise ModelError(f"{path}: {what} is {st.st_size} bytes, more than the {limit} allowed")
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        code = "a symlink" if exc.errno == errno.ELOOP else str(exc)
        raise ModelError(f"{path}: cannot open {what} ({code})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{path}: {what} is not a regular file")
        chunks = []
        total = 0
        cap = (limit if limit is not None else st.st_size) + 1
        while total < cap:
            chunk = os.read(fd, min(1 << 24, cap - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read {what} ({exc})") from exc
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if limit is not None and len(data) > limit:
        raise ModelError(f"{path}: {what} is larger than the {limit} bytes allowed")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ModelError(f"detector.json: key {k!r} appears twice")
        out[k] = v
    return out


def _depth(obj: Any) -> int:
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_META_DEPTH:
                return d
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def _parse_meta(meta_path: Path, data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError(f"{meta_path}: detector.json is not UTF-8 text ({exc})") from exc
    try:
        meta = json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError as exc:
        raise ModelError(f"{meta_path}: detector.json is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, int too long
        if isinstance(exc, ModelError):
            raise ModelError(f"{meta_path}: {exc}") from exc
        raise ModelError(f"{meta_path}: cannot parse detector.json ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelError(f"{meta_path}: detector.json is not a JSON object (got {type(meta).__name__})")
    if _depth(meta) > MAX_META_DEPTH:
        raise ModelError(f"{meta_path}: detector.json is nested deeper than {MAX_META_DEPTH} levels")
    return meta


def _file_map(folder: Path, meta: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """{entry: (file name, sha256 hex or None)} from detector.json (layout 3) or a legacy folder."""
    digests = meta.get("sha256", {})
    if digests is None:
        digests = {}
    if not isinstance(digests, dict):
        raise ModelError(f"{folder}: detector.json field 'sha256' must be an object, got {type(digests).__name__}")
    for name, hexd in digests.items():
        if not isinstance(hexd, str) or not _HEX64_RE.fullmatch(hexd):
            raise ModelError(f"{folder}: detector.json field 'sha256' holds a bad digest for {name!r}: {hexd!r}")
    if "files" in meta:
        files = meta["files"]
        if not isinstance(files, dict):
            raise ModelError(f"{folder}: detector.json field 'files' must be an object, got {type(files).__name__}")
        out: dict[str, tuple[str, str | None]] = {}
        for entry, name in files.items():
            m = _ADDRESSED_RE.fullmatch(name) if isinstance(name, str) else None
            if not _ENTRY_RE.fullmatch(entry) or m is None or m.group(1) != entry:
                raise ModelError(f"{folder}: detector.json field 'files' holds a bad entry {entry!r}: {name!r}")
            if name not in digests:
                raise ModelError(f"{folder}: detector.json field 'sha256' has no checksum for {name!r}")
            out[entry] = (name, digests[name])
        extra = sorted(set(digests) - set(files.values()))
        if extra:
            raise ModelError(f"{folder}: detector.json field 'sha256' names files that 'files' does not: {extra}")
        return out
    # legacy (format 1/2): <entry>.safetensors, checksummed when listed in 'sha256'
    out = {}
    for name in digests:
        m = _LEGACY_RE.fullmatch(name)
        if m is None:
            raise ModelError(f"{folder}: detector.json field 'sha256' names an unexpected file {name!r}")
        out[m.group(1)] = (name, digests[name])
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            m = _LEGACY_RE.fullmatch(name)
            if m is not None and m.group(1) not in out:
                out[m.group(1)] = (name, None)
    return out


def _decode_state(path: Path, data: bytes, entry: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        state = load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"{path}: corrupt weights file for {entry}.safetensors ({exc})") from exc
    out = {}
    for key, t in state.items():
        if t.dtype in _FLOAT_DTYPES:
            if not bool(torch.isfinite(t).all()):
                raise ModelError(f"{path}: tensor {key!r} of {entry}.safetensors holds NaN or inf")
            t = t.float()
        elif t.dtype not in _INT_DTYPES:
            raise ModelError(f"{path}: tensor {key!r} of {entry}.safetensors has unsupported dtype {t.dtype}")
        out[key] = t
    return out


def _read_once(folder: Path, required: Sequence[str]) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    meta_path = folder / META_FILE
    try:
        raw = _read_regular(meta_path, MAX_META_BYTES, "detector.json")
    except FileNotFoundError:
        raise ModelError(f"{str(folder)!r} is not a patchloupe model: detector.json is missing") from None
    meta = _parse_meta(meta_path, raw)
    files = _file_map(folder, meta)
    missing = [e for e in required if e not in files]
    if missing:
        names = ", ".join(f"{e}.safetensors" for e in missing)
        raise ModelError(f"{str(folder)!r} is missing {names}")
    states: dict[str, dict[str, torch.Tensor]] = {}
    for entry, (name, digest) in files.items():
        wpath = folder / name
        try:
            data = _read_regular(wpath, None, f"weights file ({entry}.safetensors)")
        except FileNotFoundError:
            raise _Vanished(raw, entry, name) from None
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise ModelError(
                f"{wpath} ({entry}.safetensors) does not match the checksum in detector.json (corrupt or mixed files)"
            )
        states[entry] = _decode_state(wpath, data, entry)
    for key in _RESERVED_KEYS:
        meta.pop(key, None)
    return raw, meta, states


def read_model_folder(
    path: str | os.PathLike[str], required: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Read a model folder: ``(meta, {entry: state dict})``.

    ``meta`` is ``detector.json`` without the ``files``/``sha256`` records; floating tensors come back as float32.
    Every entry the folder declares is loaded and verified; ``required`` entries (e.g. ``("generator",
    "comparator")``) must be among them. Any problem raises :class:`ModelError` naming the file or field.
    """
    folder = Path(path)
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        raise ModelError(f"model folder {str(folder)!r} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"model folder {str(folder)!r} cannot be read ({exc})") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise ModelError(f"model folder {str(folder)!r} is not a folder")
    gone: _Vanished | None = None
    for attempt in range(_READ_RETRIES):
        try:
            _, meta, states = _read_once(folder, required)
        except _Vanished as exc:
            gone = exc
            try:
                now = _read_regular(folder / META_FILE, MAX_META_BYTES, "detector.json")
            except FileNotFoundError:
                now = None
            if now == exc.raw and not os.path.lexists(folder / exc.name):
                break  # detector.json unchanged and the file still absent: it really is missing
            time.sleep(0.002 * (attempt + 1))
            continue
        return meta, states
    assert gone is not None
    what = gone.name if gone.name == f"{gone.entry}.safetensors" else f"{gone.entry}.safetensors ({gone.name})"
    raise ModelError(f"{str(folder)!r} is missing {what}, which detector.json names")
