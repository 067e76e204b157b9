"""Frame sources: argument parsing, files/folders/globs, videos, cameras and streams (reconnects), hot folders."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import MJPEGServer, write_video
from patchloupe.data.io import read_image
from patchloupe.sources import Capture, Frame, HotFolder, Paths, SourceEvent, open_source


def _png(path: Path, seed: int = 0, shape: tuple[int, ...] = (40, 56, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8))
    return path


def _frames(src, stop: threading.Event | None = None) -> list:  # noqa: ANN001
    return list(src.frames(stop or threading.Event()))


def test_open_source_recognises_each_kind(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    video = write_video(tmp_path / "v.avi", 3)
    assert isinstance(open_source(0), Capture) and open_source(0).target == 0
    cam = open_source("1")
    assert isinstance(cam, Capture) and cam.target == 1 and cam.live and cam.origin == "camera:1"
    url = open_source("rtsp://10.0.0.5:554/line1?x=1", max_reconnects=3)
    assert isinstance(url, Capture) and url.target.startswith("rtsp://") and url.max_reconnects == 3
    assert isinstance(open_source("http://127.0.0.1:8080/video.mjpg"), Capture)
    for spec in (tmp_path, str(tmp_path / "a.png"), str(tmp_path / "*.png"), [str(tmp_path / "a.png"), str(video)]):
        src = open_source(spec)
        assert isinstance(src, Paths) and not src.live and not src.endless
    assert isinstance(open_source(tmp_path, watch=True), HotFolder)
    with pytest.raises(ValueError, match="only source"):
        open_source([str(tmp_path / "a.png"), "0"])
    with pytest.raises(ValueError, match="every"):
        open_source(tmp_path, every=0)
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / "nope", watch=True)


def test_folder_is_recursive_skips_hidden_and_excluded_and_reports_missing(tmp_path: Path) -> None:
    src_dir = tmp_path / "in"
    _png(src_dir / "b.png", 1)
    _png(src_dir / "sub" / "a.jpg", 2)
    _png(src_dir / "._b.png", 3)  # macOS resource fork
    _png(src_dir / ".cache" / "c.png", 4)
    _png(src_dir / "out" / "b.png", 5)  # a previous run's overlay
    (src_dir / "notes.txt").write_text("x")
    src = Paths([str(src_dir), str(tmp_path / "missing.png"), str(tmp_path / "none-*.png")], exclude=[src_dir / "out"])
    frames = _frames(src)
    assert [Path(f.source).name for f in frames[:2]] == ["b.png", "a.jpg"]
    assert [f.error for f in frames[2:]] == ["no such file or folder", "no image or video matches this pattern"]
    np.testing.assert_array_equal(frames[0].image, read_image(src_dir / "b.png"))
    assert src.total() == 4


def test_glob_and_names_are_distinct(tmp_path: Path) -> None:
    for rel in ("a/y.png", "a/y.jpg", "a/Y.bmp", "b/same/x.png", "c/same/x.png"):
        _png(tmp_path / rel)
    src = Paths([str(tmp_path / "a" / "*"), str(tmp_path / "b"), str(tmp_path / "c")])
    names = [f.name for f in _frames(src)]
    assert len(names) == 5 and len({n.casefold() for n in names}) == 5
    assert "b/same/x" in names and "c/same/x" in names and "a/y_png" in names and "a/y_jpg" in names
    only = Paths([str(tmp_path / "**" / "x.png")])
    assert sorted(f.name for f in _frames(only)) == ["b/same/x", "c/same/x"]


def test_video_every_positions_and_zero_frame_video(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", 7, fps=10)
    src = open_source(str(video), every=3)
    frames = _frames(src)
    assert [f.index for f in frames] == [0, 3, 6] and src.total() == 3
    assert frames[1].source == f"{video}#frame=3" and frames[1].name == "clip_f000003"
    assert frames[1].pos_ms == pytest.approx(300.0, abs=1)
    cap = cv2.VideoCapture(str(video))
    for _ in range(4):
        ok, bgr = cap.read()
    np.testing.assert_array_equal(frames[1].image, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    empty = write_video(tmp_path / "empty.avi", 0)
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    errors = _frames(Paths([str(empty), str(tmp_path / "junk.mp4")]))
    assert len(errors) == 2 and all(f.image is None and f.error for f in errors)


def test_capture_reads_an_mjpeg_stream_and_reconnects_when_it_stops(mjpeg_server: MJPEGServer) -> None:
    src = Capture(mjpeg_server.url, backoff_s=0.01, max_reconnects=2)
    stop = threading.Event()
    frames: list[Frame] = []
    events: list[SourceEvent] = []
    for item in src.frames(stop):
        (events if isinstance(item, SourceEvent) else frames).append(item)
        if len(frames) >= 25:
            stop.set()
    assert len(frames) >= 25 and mjpeg_server.connections >= 3  # 10 frames per connection
    assert [f.index for f in frames] == list(range(len(frames)))  # counting goes on across reconnects
    assert frames[0].image.shape == (48, 64, 3) and frames[0].origin == mjpeg_server.url
    assert sum(e.kind == "reconnect" for e in events) >= 2


def test_capture_backs_off_and_gives_up_on_a_dead_stream(tmp_path: Path) -> None:
    src = Capture(str(tmp_path / "no-camera.avi"), backoff_s=0.01, max_backoff_s=0.03, max_reconnects=4)
    items = _frames(src)
    assert not any(isinstance(i, Frame) for i in items)
    assert [e.kind for e in items] == ["reconnect"] * 4 + ["gave_up"]
    assert [e.delay_s for e in items[:4]] == pytest.approx([0.01, 0.02, 0.03, 0.03])


def test_camera_simulated_by_a_video_is_reopened_when_it_ends(tmp_path: Path) -> None:
    video = write_video(tmp_path / "cam.avi", 4)
    src = Capture(str(video), backoff_s=0.0, max_reconnects=1)  # a reopen that reads frames is a success
    stop = threading.Event()
    frames, events = [], []
    for item in src.frames(stop):
        (events if isinstance(item, SourceEvent) else frames).append(item)
        if len(frames) == 10:
            stop.set()
    assert [f.index for f in frames] == list(range(10))  # 4 frames, lost, reopened, 4 more, ...
    assert [e.kind for e in events] == ["reconnect", "reconnect"]
    np.testing.assert_array_equal(frames[0].image, frames[4].image)


def test_hot_folder_inspects_files_once_completely_written(tmp_path: Path) -> None:
    hot = tmp_path / "hot"
    hot.mkdir()
    _png(hot / "old.png", 9)
    big = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    data = cv2.imencode(".png", big)[1].tobytes()

    def slow_writer() -> None:
        time.sleep(0.3)
        with open(hot / "new.png", "wb") as f:  # written in 5 pieces over ~1 s
            for k in range(5):
                f.write(data[k * len(data) // 5 : (k + 1) * len(data) // 5])
                f.flush()
                time.sleep(0.2)
        _png(hot / ".staging.png", 3)  # hidden: skipped
        (hot / "bad.png").write_bytes(b"garbage")

    stop = threading.Event()
    src = HotFolder(hot, settle_s=0.4, poll_s=0.05, grace_s=1.0)
    got: list[Frame] = []
    writer = threading.Thread(target=slow_writer)
    writer.start()
    watchdog = threading.Timer(20.0, stop.set)
    watchdog.start()
    for f in src.frames(stop):
        got.append(f)
        if len(got) == 3:
            stop.set()
    watchdog.cancel()
    writer.join()
    assert [Path(f.source).name for f in got] == ["old.png", "new.png", "bad.png"]
    np.testing.assert_array_equal(got[1].image, cv2.cvtColor(big, cv2.COLOR_BGR2RGB))  # the whole file, once
    assert got[2].image is None and "not a readable image" in got[2].error
    assert HotFolder(hot, existing=False).existing is False


def test_hot_folder_waits_for_a_writer_that_pauses(tmp_path: Path) -> None:
    img = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = cv2.imencode(".png", img)[1].tobytes()
    stop = threading.Event()

    def writer() -> None:
        with open(tmp_path / "p.png", "wb") as f:
            f.write(data[:100])
            f.flush()
            time.sleep(0.6)  # longer than settle_s: looks complete, does not decode yet
            f.write(data[100:])

    t = threading.Thread(target=writer)
    t.start()
    watchdog = threading.Timer(10.0, stop.set)
    watchdog.start()
    frame = next(iter(HotFolder(tmp_path, settle_s=0.1, poll_s=0.05, grace_s=3.0).frames(stop)))
    stop.set()
    watchdog.cancel()
    t.join()
    assert frame.error is None
    np.testing.assert_array_equal(frame.image, cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
