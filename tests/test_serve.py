"""The inspection service over real HTTP on loopback: answers, bad uploads, metrics, threshold, load."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from conftest import tiny_detector  # noqa: E402
from patchloupe.serve import create_app, image_header  # noqa: E402


class Server:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", limit_concurrency=64))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def det() -> Any:
    return tiny_detector()


@pytest.fixture(scope="module")
def server(det: Any) -> Iterator[Server]:
    srv = Server(create_app(det, max_upload_bytes=200_000, max_pixels=1_000_000, model_id="tiny-test"))
    yield srv
    srv.close()


def _png(seed: int, shape: tuple[int, ...] = (64, 80, 3), dtype: Any = np.uint8) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    return cv2.imencode(".png", img)[1].tobytes()


def _reference(det: Any, data: bytes) -> dict[str, Any]:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return _verdict(det.inspect(img, bgr=True).to_dict())


def _verdict(d: dict[str, Any]) -> dict[str, Any]:
    """A result without its timings (which differ from run to run) and the overlay."""
    return {k: v for k, v in d.items() if k not in ("timings_ms", "overlay_png_base64")}


def test_raw_and_multipart_uploads_match_inspect(server: Server, det: Any) -> None:
    data = _png(1)
    ref = _reference(det, data)
    with httpx.Client(base_url=server.url) as c:
        raw = c.post("/inspect", content=data, headers={"content-type": "image/png"}, params={"source": "p1"})
        form = c.post("/inspect", files={"file": ("p1.png", data, "image/png")})
        jpg = cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))[1].tobytes()
        jr = c.post("/inspect", content=jpg, params={"overlay": "true"})
    assert raw.status_code == form.status_code == jr.status_code == 200
    assert _verdict(raw.json()) == {**ref, "source": "p1"} and _verdict(form.json()) == ref
    assert set(raw.json()["timings_ms"]) >= {"preprocess", "inference"}
    panel = cv2.imdecode(np.frombuffer(base64.b64decode(jr.json()["overlay_png_base64"]), np.uint8), 1)
    assert panel.shape == (64, 240, 3)  # original | overlay | outline


@pytest.mark.parametrize(
    ("body", "ctype", "status", "words"),
    [
        (b"", "image/png", 400, "empty upload"),
        (b"hello, this is text", "text/plain", 415, "not an image"),
        (_png(7)[:80], "image/png", 415, "cannot decode"),  # truncated
        (_png(2, (64, 64), np.uint16), "image/png", 422, "16-bit"),
        (_png(3, (8, 8, 4)), "image/png", 422, "alpha"),
        (cv2.imencode(".png", np.zeros((1100, 1000), np.uint8))[1].tobytes(), "image/png", 422, "1000000 pixels"),
        (np.zeros(300_000, np.uint8).tobytes(), "application/octet-stream", 413, "over the limit"),
    ],
)
def test_bad_uploads_get_a_4xx_with_a_message(server: Server, body: bytes, ctype: str, status: int, words: str) -> None:
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/inspect", content=body, headers={"content-type": ctype})
        assert r.status_code == status and words in r.json()["detail"], r.text
        assert c.post("/inspect", content=_png(5)).status_code == 200  # and it keeps serving


def test_multipart_without_a_file_and_bad_threshold(server: Server) -> None:
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/inspect", data={"name": "x"}, files={})
        assert r.status_code in (400, 415)
        r = c.post("/inspect", data={"name": "x"}, headers={"content-type": "multipart/form-data; boundary=zz"})
        assert r.status_code == 400
        assert c.put("/threshold", json={"threshold": "nan"}).status_code == 422
        assert c.put("/threshold", json={}).status_code == 422


def test_threshold_at_run_time_health_and_metrics(server: Server, det: Any) -> None:
    data = _png(6)
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/health").json() == {
            "status": "ok",
            "model_id": "tiny-test",
            "scorer": "pattern",
            "threshold": 0.5,
        }
        assert c.post("/inspect", content=data).json()["is_anomalous"] is True  # the tiny model scores 0.5
        assert c.put("/threshold", json={"threshold": 0.9}).json() == {"threshold": 0.9}
        r = c.post("/inspect", content=data).json()
        assert r["threshold"] == 0.9 and r["is_anomalous"] is False and det.threshold == 0.9
        assert c.post("/inspect", content=data, params={"threshold": 0.1}).json()["threshold"] == 0.1
        assert c.get("/threshold").json() == {"threshold": 0.9}
        c.put("/threshold", json={"threshold": 0.5})
        text = c.get("/metrics").text
    assert 'patchloupe_model_info{model_id="tiny-test",scorer="pattern"} 1' in text
    assert "patchloupe_threshold 0.5" in text and "# TYPE patchloupe_inspect_latency_seconds histogram" in text
    count = int(
        next(x for x in text.splitlines() if x.startswith("patchloupe_inspect_latency_seconds_count")).split()[1]
    )
    ok = int(next(x for x in text.splitlines() if x.startswith('patchloupe_requests_total{status="200"}')).split()[1])
    assert count == ok >= 3
    assert 'patchloupe_inspections_total{verdict="ok"}' in text


def test_loopback_by_default(monkeypatch: pytest.MonkeyPatch, det: Any) -> None:
    import patchloupe.serve as serve_mod

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    serve_mod.serve(det)
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8000


def _load(server: Server, det: Any, clients: int, per_client: int) -> None:
    images = [_png(100 + k, (48 + 8 * k, 64, 3)) for k in range(4)]
    refs = [_reference(det, im) for im in images]
    before = server.server.config.app.state.metrics.count

    def client(cid: int) -> list[tuple[str, int, dict[str, Any]]]:
        out = []
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for i in range(per_client):
                k = (cid + i) % len(images)
                tag = f"c{cid}-r{i}-img{k}"
                r = c.post("/inspect", content=images[k], params={"source": tag})
                out.append((tag, r.status_code, r.json()))
        return out

    with ThreadPoolExecutor(clients) as pool:
        answers = [a for chunk in pool.map(client, range(clients)) for a in chunk]
    assert len(answers) == clients * per_client
    assert {tag for tag, _, _ in answers} == {
        f"c{c}-r{i}-img{(c + i) % 4}" for c in range(clients) for i in range(per_client)
    }
    for tag, status, body in answers:
        assert status == 200 and body["source"] == tag  # every answer is the one for its own request
        assert _verdict(body) == {**refs[int(tag.rsplit("img", 1)[1])], "source": tag}  # identical to det.inspect
    assert server.server.config.app.state.metrics.count - before == clients * per_client  # none lost


def test_small_load(server: Server, det: Any) -> None:
    _load(server, det, clients=4, per_client=10)


@pytest.mark.slow
def test_load_8_clients_x_500(server: Server, det: Any) -> None:
    _load(server, det, clients=8, per_client=500)


def test_image_header() -> None:
    assert image_header(_png(1, (30, 40, 3))) == ("png", 40, 30)
    bmp = cv2.imencode(".bmp", np.zeros((7, 9, 3), np.uint8))[1].tobytes()
    jpg = cv2.imencode(".jpg", np.zeros((11, 13, 3), np.uint8))[1].tobytes()
    assert image_header(bmp) == ("bmp", 9, 7) and image_header(jpg) == ("jpeg", 13, 11)
    assert image_header(b"GIF89a....") is None
