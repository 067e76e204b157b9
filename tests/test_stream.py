"""Streaming inspection: results match det.inspect, drop-oldest only for live sources, flat memory, clean stop."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import MJPEGServer, tiny_detector, write_video
from patchloupe.results import InspectionError, InspectionResult
from patchloupe.sources import Capture
from patchloupe.stream import StreamStats, stream


@pytest.fixture(scope="module")
def det() -> Any:
    return tiny_detector()


class SlowDetector:
    """Delegates to a real detector, ``delay_s`` slower per image (inference falling behind a source)."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    @property
    def threshold(self) -> float:
        return self.inner.threshold

    def inspect_many(self, images: Any, **kw: Any) -> Any:
        images = list(images)
        time.sleep(self.delay_s * len(images))
        return self.inner.inspect_many(images, **kw)


class CheapDetector:
    """Answers instantly with a constant verdict (only the pipeline around the detector is measured)."""

    threshold = 0.5

    def inspect_many(self, images: Any, batch_size: int = 8, threshold: float | None = None, **kw: Any) -> Any:
        for img in images:
            z = np.zeros((1, 1))
            yield InspectionResult(
                float(img[0, 0, 0]) / 255, False, 0.5, z.astype(np.float32), z > 0, z > 0, z.astype(np.float32), {}
            )


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


def test_video_stream_inspects_every_frame_like_inspect(det: Any, tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", 9)
    s = stream(det, str(video), batch_size=4, every=2)
    out = list(s)
    assert [r.index for r in out] == [0, 2, 4, 6, 8] and all(r.ok for r in out)
    assert out[1].source == f"{video}#frame=2" and out[1].to_dict()["frame"] == 2
    cap = cv2.VideoCapture(str(video))
    frames = [cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2RGB) for _ in range(9)]
    for r in out:
        ref = det.inspect(frames[r.index])
        assert r.result.score == pytest.approx(ref.score, abs=1e-6)
        np.testing.assert_allclose(r.result.anomaly_map, ref.anomaly_map, atol=1e-5)
    st = s.stats.to_dict()
    assert st["frames_in"] == 5 and st["inspected"] == 5 and st["dropped"] == 0 and st["latency_ms_p99"] > 0


def test_errors_come_in_order_and_the_run_goes_on(det: Any, tmp_path: Path) -> None:
    for name in ("a.png", "c.png"):
        cv2.imwrite(str(tmp_path / name), np.full((40, 40, 3), 90, np.uint8))
    (tmp_path / "b.png").write_bytes(b"broken")
    out = list(stream(det, tmp_path, batch_size=8))
    assert [Path(r.source).name for r in out] == ["a.png", "b.png", "c.png"]
    assert [r.ok for r in out] == [True, False, True]
    assert isinstance(out[1].result, InspectionError) and out[1].to_dict()["verdict"] == "error"


def test_live_source_drops_the_oldest_and_counts_them(det: Any, tmp_path: Path) -> None:
    video = write_video(tmp_path / "cam.avi", 60)
    slow = SlowDetector(det, 0.05)
    s = stream(slow, Capture(str(video), max_reconnects=0), queue_size=2)
    out = list(s)
    st = s.stats
    assert st.dropped > 0 and st.frames_in == 60
    assert st.inspected + st.dropped == st.frames_in  # every frame is either inspected or counted as dropped
    idx = [r.index for r in out]
    assert idx == sorted(idx) and idx[-1] == 59  # oldest dropped first: the newest frame is always inspected
    assert st.source_errors == 1  # gave up after the "camera" ended (max_reconnects=0)


def test_files_and_videos_are_never_dropped(det: Any, tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", 12)
    s = stream(SlowDetector(det, 0.02), str(video), drop=True, queue_size=1)
    assert [r.index for r in s] == list(range(12)) and s.stats.dropped == 0
    live = stream(SlowDetector(det, 0.02), Capture(str(video), max_reconnects=0), drop=False, queue_size=1)
    assert [r.index for r in live] == list(range(12)) and live.stats.dropped == 0


def test_stream_reconnects_to_a_local_camera_stream(det: Any, mjpeg_server: MJPEGServer) -> None:
    events: list[Any] = []
    s = stream(det, mjpeg_server.url, on_event=events.append, backoff_s=0.01, max_reconnects=3)
    got = []
    for r in s:
        got.append(r)
        if len(got) == 15:
            s.stop()
    assert len(got) >= 15 and all(r.ok for r in got) and s.stats.reconnects >= 1
    assert any(e.kind == "reconnect" for e in events) and mjpeg_server.connections >= 2


def test_stop_ends_after_the_batch_in_flight_and_threshold_changes_live(tmp_path: Path) -> None:
    det = tiny_detector()
    video = write_video(tmp_path / "cam.avi", 5)
    s = stream(det, Capture(str(video), backoff_s=0.0), batch_size=1)  # endless: reopened when it ends
    seen = []
    for r in s:
        seen.append(r)
        if len(seen) == 3:
            det.threshold = 0.99  # applies from the next frame on
        if len(seen) == 6:
            threading.Timer(0.0, s.stop).start()  # from another thread, like a signal handler
            time.sleep(0.2)
    assert s.stopped and 6 <= len(seen) <= 8
    assert [r.result.threshold for r in seen[:3]] == [0.5] * 3 and seen[4].result.threshold == 0.99
    assert s._reader is not None and not s._reader.is_alive()


@pytest.mark.parametrize("n", [600, pytest.param(3000, marks=pytest.mark.slow)])
def test_memory_stays_flat_over_a_long_video(tmp_path: Path, n: int) -> None:
    video = write_video(tmp_path / "long.avi", n, size=(240, 320))  # 225 KiB per decoded frame
    s = stream(CheapDetector(), str(video), batch_size=4)
    rss = []
    seen = 0
    for _ in s:
        seen += 1
        if seen % 100 == 0:
            rss.append(_rss_mb())
    assert seen == n
    # holding the frames (the old CLI read a video into a list) would grow by (n - 200) x 225 KiB here
    assert max(rss) - rss[1] < 40, rss


def test_stats_percentiles_and_line() -> None:
    st = StreamStats(window=100)
    assert st.latency_ms(50) is None and "p50" not in st.line()
    for v in range(1, 201):
        st.add_latency(float(v))
    assert st.latency_ms(50) == pytest.approx(150.5) and st.latency_ms(100) == 200.0  # the last 100 only
    st.frames_in, st.inspected, st.dropped, st.flagged = 10, 8, 2, 1
    assert st.line().startswith("in 10 | inspected 8 | dropped 2 | flagged 1 | p50 150 ms")


def test_detector_stream_is_the_stream_function(tmp_path) -> None:  # noqa: ANN001
    det = tiny_detector()
    video = write_video(tmp_path / "v.avi", 3)
    with det.stream(str(video)) as s:
        records = list(s)
    assert len(records) == 3 and all(r.ok for r in records)
