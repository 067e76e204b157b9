"""Streaming inspection: a background reader feeds frames through a bounded queue to the detector.

``stream(det, source)`` yields a :class:`StreamResult` per frame or image as they arrive. The reader thread
decodes ahead of inference; the queue holds at most ``queue_size`` frames, so memory stays flat however long
the source is. When inference falls behind a live source (camera, network stream) and ``drop`` is on (the
default for live sources), the oldest queued frame is dropped and counted; files, folders, videos and hot
folders are never dropped (the reader waits instead). ``Stream.stop()`` (e.g. from a signal handler) ends
the run after the batch in flight. A detector from ``Detector.pooled()`` (``patchloupe inspect --pool N``) also
compares each frame with the frames before it once the stream has drifted from the fitted surface
(``patchloupe.scorers.stream_pool``); a stream drives it in order, so one pooled detector serves one stream.

Example:
    >>> from patchloupe.stream import stream
    >>> s = stream(det, "rtsp://10.0.0.5/line1")                  # doctest: +SKIP
    >>> for r in s:                                                # doctest: +SKIP
    ...     if r.ok and r.result.is_anomalous: print(r.source, r.result.score)
    >>> s.stats.line()                                             # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from patchloupe.results import InspectionError, InspectionResult
from patchloupe.sources import Frame, Source, SourceEvent, open_source

__all__ = ["Stream", "StreamResult", "StreamStats", "stream"]

log = logging.getLogger(__name__)

_END = object()  # the reader's last item


@dataclass
class StreamResult:
    """A result (or error) with the frame's metadata.

    Attributes:
        result: what ``Detector.inspect`` returns for the frame, or an ``InspectionError``.
        origin: the input it came from (path, URL, ``"camera:0"``).
        index: frame number within ``origin`` (0 for a still image).
        timestamp: wall-clock time (``time.time()``) when the frame was read.
        pos_ms: position in a video file in ms (None otherwise).
        name: output name hint (relative, no suffix).
        latency_ms: from reading the frame to its result (queueing included).
    """

    result: InspectionResult | InspectionError
    origin: str
    index: int
    timestamp: float
    pos_ms: float | None
    name: str
    latency_ms: float

    @property
    def ok(self) -> bool:
        return bool(self.result.ok)

    @property
    def source(self) -> str | None:
        return self.result.source

    def to_dict(self) -> dict[str, Any]:
        """The JSON line: source, input, frame, timestamp, verdict, latency, then the result's own fields."""
        d: dict[str, Any] = {
            "source": self.result.source,
            "input": self.origin,
            "frame": self.index,
            "timestamp": round(self.timestamp, 6),
            "pos_ms": None if self.pos_ms is None else round(self.pos_ms, 3),
            "verdict": "error" if not self.ok else ("anomalous" if self.result.is_anomalous else "ok"),  # type: ignore[union-attr]
            "latency_ms": round(self.latency_ms, 3),
        }
        d.update(self.result.to_dict())
        return d


class StreamStats:
    """Counters of a stream, safe to read from another thread; latency percentiles over the last ``window``."""

    def __init__(self, window: int = 1000) -> None:
        self.frames_in = 0  # frames (and error items) read from the source
        self.inspected = 0
        self.dropped = 0
        self.flagged = 0
        self.failed = 0  # items that could not be read or inspected
        self.reconnects = 0
        self.source_errors = 0  # live sources given up on
        self.started = time.monotonic()
        self._latency: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def add_latency(self, ms: float) -> None:
        with self._lock:
            self._latency.append(ms)

    def latency_ms(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) of the recent latencies, None before the first result."""
        with self._lock:
            lat = np.fromiter(self._latency, dtype=np.float64)
        return float(np.percentile(lat, q)) if lat.size else None

    def to_dict(self) -> dict[str, Any]:
        p50, p99 = self.latency_ms(50), self.latency_ms(99)
        return {
            "frames_in": self.frames_in,
            "inspected": self.inspected,
            "dropped": self.dropped,
            "flagged": self.flagged,
            "failed": self.failed,
            "reconnects": self.reconnects,
            "source_errors": self.source_errors,
            "latency_ms_p50": None if p50 is None else round(p50, 3),
            "latency_ms_p99": None if p99 is None else round(p99, 3),
            "wall_s": round(time.monotonic() - self.started, 3),
        }

    def line(self) -> str:
        """One status line: ``in 120 | inspected 118 | dropped 2 | flagged 3 | p50 12 ms | p99 40 ms``."""
        p50, p99 = self.latency_ms(50), self.latency_ms(99)
        parts = [f"in {self.frames_in}", f"inspected {self.inspected}", f"dropped {self.dropped}"]
        parts.append(f"flagged {self.flagged}")
        if self.failed:
            parts.append(f"failed {self.failed}")
        if self.reconnects:
            parts.append(f"reconnects {self.reconnects}")
        if p50 is not None:
            parts += [f"p50 {p50:.0f} ms", f"p99 {p99:.0f} ms"]
        return " | ".join(parts)


class Stream:
    """An iterator of :class:`StreamResult` over a source; see :func:`stream`."""

    def __init__(
        self,
        det: Any,
        source: Any,
        *,
        batch_size: int = 1,
        threshold: float | None = None,
        drop: bool | None = None,
        every: int = 1,
        queue_size: int | None = None,
        keep_image: bool = True,
        watch: bool = False,
        exclude: Sequence[str | os.PathLike[str]] = (),
        on_event: Callable[[SourceEvent], None] | None = None,
        **capture: Any,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if queue_size is not None and queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.det = det
        self.source: Source = open_source(
            source, every=every, watch=watch, exclude=[str(e) for e in exclude], **capture
        )
        if drop and not self.source.live:
            log.info("drop ignored: %s is not a live source, every frame is inspected", type(self.source).__name__)
        self.drop = self.source.live if drop is None else bool(drop) and self.source.live
        self.batch_size = batch_size
        self.threshold = threshold
        self.keep_image = keep_image
        # live sources: a short queue keeps latency low; files: enough read-ahead to fill the next batch
        self.queue_size = queue_size or max(2, batch_size if self.source.live else 2 * batch_size)
        self.on_event = on_event
        self.stats = StreamStats()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self.queue_size)
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._reader_error: BaseException | None = None
        self._gen: Iterator[StreamResult] | None = None

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """End the stream after the batch in flight (safe from a signal handler or another thread)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def close(self) -> None:
        """Stop and wait (briefly) for the reader; releases cameras and files."""
        self._stop.set()
        if self._gen is not None:
            self._gen.close()  # type: ignore[attr-defined]
        if self._reader is not None:
            self._reader.join(timeout=5.0)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> StreamResult:
        if self._gen is None:
            self._gen = self._run()
        return next(self._gen)

    # ------------------------------------------------------------------ reader thread
    def _read(self) -> None:
        try:
            for item in self.source.frames(self._stop):
                if isinstance(item, SourceEvent):
                    self._event(item)
                    continue
                self.stats.frames_in += 1
                self._put(item)
                if self._stop.is_set():
                    break
        except BaseException as exc:  # surfaced in the consumer
            self._reader_error = exc
        finally:
            self._put(_END)

    def _event(self, ev: SourceEvent) -> None:
        if ev.kind == "reconnect":
            self.stats.reconnects += 1
        elif ev.kind == "gave_up":
            self.stats.source_errors += 1
        if self.on_event is not None:
            self.on_event(ev)
        else:
            log.warning("%s: %s", ev.origin, ev.message)

    def _put(self, item: Any) -> None:
        while True:
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                if self._stop.is_set():
                    return
                if self.drop and item is not _END:
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        continue
                    self.stats.dropped += 1

    # ------------------------------------------------------------------ consumer
    def _get(self, block: bool) -> Any:
        """Next queued item; None when nothing is waiting (non-blocking) or the stream was stopped."""
        while not self._stop.is_set():
            try:
                return self._queue.get(timeout=0.05) if block else self._queue.get_nowait()
            except queue.Empty:
                if not block:
                    return None
        return None

    def _run(self) -> Iterator[StreamResult]:
        self._reader = threading.Thread(target=self._read, name="patchloupe-reader", daemon=True)
        self._reader.start()
        try:
            ended = False
            while not ended:
                first = self._get(block=True)
                if first is None or first is _END:
                    break
                if first.image is None:
                    yield self._error(first)
                    continue
                batch: list[Frame] = [first]
                tail: Frame | None = None
                while len(batch) < self.batch_size:
                    nxt = self._get(block=False)
                    if nxt is None:
                        break
                    if nxt is _END:
                        ended = True
                        break
                    if nxt.image is None:
                        tail = nxt
                        break
                    batch.append(nxt)
                yield from self._inspect(batch)
                if tail is not None:
                    yield self._error(tail)
            if self._reader_error is not None:
                raise self._reader_error
        finally:
            self._stop.set()
            self._reader.join(timeout=5.0)

    def _inspect(self, batch: list[Frame]) -> Iterator[StreamResult]:
        images = [f.image for f in batch]
        results = list(
            self.det.inspect_many(images, batch_size=len(batch), threshold=self.threshold, keep_image=self.keep_image)
        )
        for frame, res in zip(batch, results):
            frame.image = None
            res.source = frame.source
            if res.ok:
                self.stats.inspected += 1
                self.stats.flagged += int(res.is_anomalous)
            else:
                self.stats.failed += 1
            yield self._record(frame, res)

    def _error(self, frame: Frame) -> StreamResult:
        self.stats.failed += 1
        return self._record(frame, InspectionError(source=frame.source, error=frame.error or "unreadable"))

    def _record(self, frame: Frame, res: InspectionResult | InspectionError) -> StreamResult:
        latency = (time.perf_counter() - frame.t_read) * 1000.0
        if res.ok:
            self.stats.add_latency(latency)
        return StreamResult(res, frame.origin, frame.index, frame.timestamp, frame.pos_ms, frame.name, latency)


def stream(det: Any, source: Any, **kwargs: Any) -> Stream:
    """Inspect a source as its frames arrive; yields a :class:`StreamResult` per frame or image.

    Args:
        det: a ``Detector`` (only ``inspect_many`` and ``threshold`` are used).
        source: a camera index (``0``), a stream URL (``rtsp://``, ``http://``), a file, a folder, a glob,
            a list of files/folders/globs, a :class:`~patchloupe.sources.Source`, or a folder with ``watch=True``.
        batch_size: frames inspected together (latency grows with it; 1 for live sources).
        threshold: overrides ``det.threshold`` (None: ``det.threshold`` at each batch, so it can change live).
        drop: drop the oldest queued frame when inference falls behind (default: True for live sources;
            never applied to files, folders, videos or hot folders).
        every: inspect every N-th video or stream frame.
        queue_size: frames read ahead (default ``max(2, batch_size)`` for live sources, else ``2 * batch_size``).
        keep_image: keep the image in each result (needed for ``result.save``/``plot``).
        watch: treat the folder ``source`` as a hot folder (new files, once completely written).
        exclude: folders never read (e.g. the output folder).
        on_event: called (from the reader thread) with each reconnect report; default: a log warning.
        **capture: for live sources: ``backoff_s``, ``max_backoff_s``, ``max_reconnects``.

    Returns:
        A :class:`Stream`: iterate it; ``.stats`` has the counters, ``.stop()`` ends it after the batch in flight.
        Leaving the loop early? ``close()`` it (or use ``with stream(...) as s:``) to release a camera at once.
    """
    return Stream(det, source, **kwargs)
