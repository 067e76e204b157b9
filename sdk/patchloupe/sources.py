"""Frame sources for streaming inspection: files, folders, globs, videos, cameras, stream URLs and hot folders.

A source turns one argument (as people know it from ``yolo predict source=...``) into a lazy sequence of
:class:`Frame` records. Every frame carries an RGB uint8 ``(H, W, 3)`` image, or the error that stood in for
it, so a bad file or a lost stream is reported in place and the run goes on. Sources never hold more than
the frame they are reading: memory stays flat over arbitrarily long videos and streams.

Example:
    >>> src = open_source("clip.mp4", every=2)            # doctest: +SKIP
    >>> for item in src.frames(threading.Event()): ...    # doctest: +SKIP
"""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from patchloupe.data.io import IMAGE_SUFFIXES, read_image

__all__ = [
    "STREAM_SCHEMES",
    "VIDEO_SUFFIXES",
    "Capture",
    "Frame",
    "HotFolder",
    "Paths",
    "Source",
    "SourceEvent",
    "open_source",
]

log = logging.getLogger(__name__)

#: File suffixes (lower case) read as videos; everything else is read as an image.
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
#: URL prefixes opened as live streams through OpenCV's FFmpeg backend.
STREAM_SCHEMES: tuple[str, ...] = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


@dataclass
class Frame:
    """One item read from a source.

    Attributes:
        source: unique id of the item: the path of an image, ``"<input>#frame=<i>"`` for a video or stream frame.
        origin: the input it came from (path, URL, ``"camera:0"``).
        index: frame number within ``origin`` (0 for a still image); keeps counting across reconnects.
        timestamp: wall-clock time (``time.time()``) when the frame was read.
        image: RGB uint8 ``(H, W, 3)``, or None when ``error`` is set.
        error: why the item could not be read.
        name: output name hint, relative and without suffix (``"sub/x"``, ``"clip_f000012"``).
        pos_ms: the frame's position in a video file, in milliseconds (None for images and live streams).
        t_read: ``time.perf_counter()`` when read (for latency).
    """

    source: str
    origin: str
    index: int
    timestamp: float
    image: np.ndarray | None
    error: str | None = None
    name: str = ""
    pos_ms: float | None = None
    t_read: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class SourceEvent:
    """Something a live source reports besides frames: ``kind`` is ``"lost"``, ``"reconnect"`` or ``"gave_up"``."""

    kind: str
    origin: str
    message: str
    attempt: int = 0
    delay_s: float = 0.0


class Source:
    """Base class. ``live``: frames are lost unless read in time (cameras, network streams), so a falling-behind
    reader may drop the oldest; ``endless``: no known end (live sources and hot folders)."""

    live: bool = False
    endless: bool = False

    def total(self) -> int | None:
        """Number of frames this source will yield, when known up front (for a progress bar)."""
        return None

    def frames(self, stop: threading.Event) -> Iterator[Frame | SourceEvent]:
        """Yield frames (and events) until the source ends or ``stop`` is set."""
        raise NotImplementedError


def _error_frame(source: str, message: str, name: str = "", index: int = 0) -> Frame:
    return Frame(source=source, origin=source, index=index, timestamp=time.time(), image=None, error=message, name=name)


def _video_frames(path: str, every: int, name: str, stop: threading.Event) -> Iterator[Frame]:
    """Frames of a video file, one at a time; an unreadable or zero-frame video yields one error frame."""
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            yield _error_frame(path, "cannot open the video (missing codec or not a video)", name)
            return
        i = 0
        while not stop.is_set():
            if i % every == 0:
                ok, bgr = cap.read()
            else:
                ok, bgr = cap.grab(), None
            if not ok:
                break
            if bgr is not None:
                pos = cap.get(cv2.CAP_PROP_POS_MSEC)
                yield Frame(
                    source=f"{path}#frame={i}",
                    origin=path,
                    index=i,
                    timestamp=time.time(),
                    image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                    name=f"{name}_f{i:06d}",
                    pos_ms=float(pos) if pos >= 0 else None,
                )
            i += 1
        if i == 0 and not stop.is_set():
            yield _error_frame(path, "the video has no frames (empty, truncated or unsupported)", name)
    finally:
        cap.release()


def _video_length(path: str, every: int) -> int:
    cap = cv2.VideoCapture(path)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()
    return max(1, -(-n // every)) if n > 0 else 1  # an unreadable video still yields one (error) item


def _hidden(path: Path, root: Path) -> bool:
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = (path.name,)
    return any(p.startswith(".") for p in parts)


def _inside(path: Path, folders: Sequence[Path]) -> bool:
    rp = path.resolve()
    return any(rp == f or f in rp.parents for f in folders)


def _is_media(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES or p.suffix.lower() in VIDEO_SUFFIXES


class Paths(Source):
    """Image files, video files, folders (searched recursively) and globs, inspected in order, every frame.

    Hidden files and folders (``.x``) are skipped, and so is every file under ``exclude`` (the output folder,
    so that a run never inspects its own overlays). A missing path or a folder without images yields an
    error frame. Output names are the paths relative to the inputs' common folder (sub-folders kept), with
    the suffix dropped; see :class:`patchloupe.stream.NameAllocator` for how collisions are resolved.
    """

    def __init__(self, specs: Sequence[str | os.PathLike[str]], every: int = 1, exclude: Sequence[str] = ()) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self._exclude = [Path(e).resolve() for e in exclude]
        self.items: list[tuple[str, str, str | None]] = []  # (kind image|video|missing, path, error)
        for spec in map(str, specs):
            self.items.extend(self._expand(spec))
        self._names = self._name_items()

    def _expand(self, spec: str) -> list[tuple[str, str, str | None]]:
        p = Path(spec)
        if p.is_dir():
            files = sorted(
                f
                for f in p.rglob("*")
                if _is_media(f) and f.is_file() and not _hidden(f, p) and not _inside(f, self._exclude)
            )
            if not files:
                return [("missing", spec, "a folder with no images or videos")]
            return [(self._kind(f), str(f), None) for f in files]
        if p.is_file():
            return [(self._kind(p), spec, None)]
        if glob.has_magic(spec):
            files = sorted(
                Path(f)
                for f in glob.glob(spec, recursive=True)
                if _is_media(Path(f)) and Path(f).is_file() and not Path(f).name.startswith(".")
            )
            files = [f for f in files if not _inside(f, self._exclude)]
            if not files:
                return [("missing", spec, "no image or video matches this pattern")]
            return [(self._kind(f), str(f), None) for f in files]
        return [("missing", spec, "no such file or folder")]

    @staticmethod
    def _kind(p: Path) -> str:
        return "video" if p.suffix.lower() in VIDEO_SUFFIXES else "image"

    def _name_items(self) -> list[str]:
        """Names relative to the common folder of all inputs; stems shared by several files keep their suffix."""
        paths = [Path(p).resolve() for kind, p, _ in self.items if kind != "missing"]
        root = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path("/")
        names = []
        for kind, p, _ in self.items:
            if kind == "missing":
                names.append(_safe_name(Path(p).name or "input"))
                continue
            rel = Path(p).resolve().relative_to(root)
            names.append(str(rel.with_suffix("")))
        folded = [n.casefold() for n in names]
        counts: dict[str, int] = {}
        for n in folded:
            counts[n] = counts.get(n, 0) + 1
        for i, (_, p, _) in enumerate(self.items):
            if counts[folded[i]] > 1 and Path(p).suffix:
                names[i] = f"{names[i]}_{Path(p).suffix.lstrip('.').lower()}"
        return names

    def total(self) -> int:
        return sum(_video_length(p, self.every) if kind == "video" else 1 for kind, p, _ in self.items)

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        for (kind, path, err), name in zip(self.items, self._names):
            if stop.is_set():
                return
            if kind == "missing":
                yield _error_frame(path, err or "no such file or folder", name)
            elif kind == "video":
                yield from _video_frames(path, self.every, name, stop)
            else:
                yield _read_still(path, name)


def _read_still(path: str, name: str) -> Frame:
    try:
        img = read_image(path)
    except (ValueError, OSError) as exc:
        return _error_frame(path, str(exc).removeprefix(f"{path}: "), name)
    return Frame(source=path, origin=path, index=0, timestamp=time.time(), image=img, name=name)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "stream"


class Capture(Source):
    """A camera (OpenCV index, e.g. ``0``) or a network stream (``rtsp://``, ``http://`` MJPEG, ...), read live.

    When the stream cannot be opened, stops or errors, it is reopened with exponential back-off
    (``backoff_s`` doubling up to ``max_backoff_s``, reset after a frame was read), and each attempt is
    reported as a :class:`SourceEvent`. ``max_reconnects=None`` retries forever; after that many failed
    attempts in a row the source ends with a ``"gave_up"`` event. ``target`` may also be a video file,
    which is then read as if it were a camera (live, reopened when it ends).
    """

    live = True
    endless = True

    def __init__(
        self,
        target: int | str,
        every: int = 1,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        max_reconnects: int | None = None,
        api: int = cv2.CAP_ANY,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.target = target
        self.every = every
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_reconnects = max_reconnects
        self.api = api
        self.origin = f"camera:{target}" if isinstance(target, int) else str(target)
        if isinstance(target, int):
            self.name = f"camera{target}"
        else:
            self.name = _safe_name(re.sub(r"^[a-z]+://", "", str(target)).split("?")[0])

    def _open(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(self.target, self.api)

    def frames(self, stop: threading.Event) -> Iterator[Frame | SourceEvent]:
        i = 0  # frame counter across reconnects
        failures = 0
        delay = self.backoff_s
        while not stop.is_set():
            cap = self._open()
            got = 0
            try:
                if cap.isOpened():
                    while not stop.is_set():
                        ok = cap.grab()
                        if not ok:
                            break
                        if i % self.every == 0:
                            ok, bgr = cap.retrieve()
                            if not ok or bgr is None:
                                break
                            yield Frame(
                                source=f"{self.origin}#frame={i}",
                                origin=self.origin,
                                index=i,
                                timestamp=time.time(),
                                image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                                if bgr.ndim == 3
                                else cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB),
                                name=f"{self.name}_f{i:06d}",
                            )
                        got += 1
                        i += 1
            finally:
                cap.release()
            if stop.is_set():
                return
            if got:
                failures, delay = 0, self.backoff_s
                what = "stream ended or failed"
            else:
                what = "cannot open the stream" if failures == 0 else "still cannot open the stream"
            failures += 1
            if self.max_reconnects is not None and failures > self.max_reconnects:
                yield SourceEvent("gave_up", self.origin, f"{what}; gave up after {failures - 1} reconnects", failures)
                return
            yield SourceEvent("reconnect", self.origin, f"{what}; reconnecting in {delay:.1f} s", failures, delay)
            if stop.wait(delay):
                return
            delay = min(delay * 2, self.max_backoff_s)


class HotFolder(Source):
    """A folder into which a camera or PLC drops images (or videos): each new file is inspected once it is
    completely written, i.e. its size and modification time have not changed for ``settle_s`` seconds.

    Polling (every ``poll_s``) rather than file-system events, so that it also works on network shares.
    Hidden files (``.x``, which is how careful writers stage a file before renaming it) and files under
    ``exclude`` are skipped. ``existing=True`` also inspects the files present at start. A file rewritten
    later (new size or time) is inspected again. An image that does not decode is retried until it has
    been unchanged for ``grace_s`` (a writer that paused longer than ``settle_s``), then reported. Only
    files still present are remembered, so memory stays flat as long as files are moved away.
    """

    endless = True

    def __init__(
        self,
        folder: str | os.PathLike[str],
        settle_s: float = 0.5,
        poll_s: float = 0.2,
        existing: bool = True,
        every: int = 1,
        exclude: Sequence[str] = (),
        grace_s: float = 5.0,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: no such folder to watch")
        self.settle_s, self.poll_s, self.existing, self.every = settle_s, poll_s, existing, every
        self.grace_s = max(grace_s, settle_s)
        self._exclude = [Path(e).resolve() for e in exclude]

    def _scan(self) -> dict[Path, tuple[int, int]]:
        found = {}
        for f in self.folder.rglob("*"):
            if not _is_media(f) or _hidden(f, self.folder) or _inside(f, self._exclude):
                continue
            try:
                st = f.stat()
            except OSError:  # vanished between listing and stat
                continue
            if st.st_size > 0 and os.path.isfile(f):
                found[f] = (st.st_size, st.st_mtime_ns)
        return found

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        done: dict[Path, tuple[int, int]] = {} if self.existing else dict(self._scan())
        seen: dict[Path, tuple[tuple[int, int], float]] = {}  # path -> (signature, first time seen unchanged)
        while not stop.is_set():
            now = time.monotonic()
            current = self._scan()
            for f in list(done):
                if f not in current:
                    del done[f]
            for f in list(seen):
                if f not in current:
                    del seen[f]
            for f in sorted(current):
                sig = current[f]
                if done.get(f) == sig:
                    continue
                prev = seen.get(f)
                if prev is None or prev[0] != sig:
                    seen[f] = (sig, now)
                    continue
                if now - prev[1] < self.settle_s:
                    continue
                name = str(f.relative_to(self.folder).with_suffix(""))
                if f.suffix.lower() in VIDEO_SUFFIXES:
                    done[f] = sig
                    del seen[f]
                    yield from _video_frames(str(f), self.every, name, stop)
                else:
                    frame = _read_still(str(f), name)
                    if frame.error is not None and now - prev[1] < self.grace_s:
                        continue  # maybe still being written: try again at the next poll
                    done[f] = sig
                    del seen[f]
                    yield frame
                if stop.is_set():
                    return
            stop.wait(self.poll_s)


def open_source(
    spec: str | int | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    every: int = 1,
    watch: bool = False,
    exclude: Sequence[str] = (),
    **capture: float | int | None,
) -> Source:
    """Turn a source argument into a :class:`Source`.

    ``spec`` is a camera index (``0`` or ``"0"``, unless a file of that name exists), a stream URL
    (``rtsp://``, ``http://``, ...), a file, a folder, a glob (``"parts/**/*.png"``), or a list of files,
    folders and globs; ``watch=True`` with a folder watches it as a hot folder. An existing :class:`Source`
    is returned as is. ``capture`` goes to :class:`Capture` (``backoff_s``, ``max_reconnects``, ...).
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, (list, tuple)):
        specs = [str(s) for s in spec]
        if len(specs) == 1:
            return open_source(specs[0], every=every, watch=watch, exclude=exclude, **capture)
        live = [s for s in specs if _is_live(s)]
        if live or watch:
            raise ValueError(f"a camera, stream URL or watched folder must be the only source, got {specs}")
        return Paths(specs, every=every, exclude=exclude)
    if isinstance(spec, bool):
        raise TypeError("source must be a path, a camera index or a URL, not a bool")
    if watch:
        return HotFolder(spec, every=every, exclude=exclude)  # type: ignore[arg-type]
    if isinstance(spec, int):
        return Capture(spec, every=every, **capture)  # type: ignore[arg-type]
    text = str(spec)
    if _is_live(text):
        return Capture(int(text) if text.isdigit() else text, every=every, **capture)  # type: ignore[arg-type]
    return Paths([text], every=every, exclude=exclude)


def _is_live(text: str) -> bool:
    if text.isdigit() and not Path(text).exists():
        return True
    return text.lower().startswith(STREAM_SCHEMES)
