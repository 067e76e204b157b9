"""A local inspection service (FastAPI + uvicorn, the optional ``serve`` extra).

Endpoints:
    ``POST /inspect``: the image as the raw request body (``image/png``, ``image/jpeg``, ``image/bmp`` or
    ``application/octet-stream``) or as the file of a ``multipart/form-data`` upload; query parameters
    ``threshold`` (this request only), ``overlay=true`` (adds the overlay panel as base64 PNG) and
    ``source`` (echoed back). Answers the result JSON (``InspectionResult.to_dict``).
    ``GET /health``, ``GET /metrics`` (Prometheus text format), ``GET /threshold`` and ``PUT /threshold``
    (``{"threshold": 0.6}``) to change the threshold at run time.

Bad uploads get a 4xx with a message and the service goes on: 400 empty or malformed, 413 over the upload
size, 415 not a PNG/JPEG/BMP or undecodable, 422 an image patchloupe refuses (16-bit, alpha, over the pixel
limit, which is checked from the header before decoding). Inference runs one request at a time (a lock), so
each answer is exactly ``det.inspect`` of the decoded image.

Example:
    >>> from patchloupe.serve import create_app
    >>> app = create_app(Detector.load())      # doctest: +SKIP
    >>> serve(Detector.load(), port=8000)      # doctest: +SKIP
"""

from __future__ import annotations

import base64
import logging
import struct
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import cv2
import numpy as np

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.formparsers import MultiPartException, MultiPartParser
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("patchloupe.serve needs the 'serve' extra: pip install 'patchloupe[serve]'") from exc

__all__ = ["LATENCY_BUCKETS_S", "Metrics", "create_app", "image_header", "serve"]

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the ``/metrics`` latency histogram.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def image_header(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` of a PNG, JPEG or BMP from its header, without decoding; None if not one."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return "png", w, h
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return "bmp", abs(w), abs(h)
    if data[:3] == b"\xff\xd8\xff":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return "jpeg", w, h
            i += 2 + length
        return "jpeg", 0, 0  # no frame header found: let the decoder say what is wrong
    return None


class Metrics:
    """Counters and a latency histogram, rendered in the Prometheus text exposition format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {}  # by HTTP status
        self.verdicts = {"anomalous": 0, "ok": 0}
        self.buckets = [0] * len(LATENCY_BUCKETS_S)
        self.count = 0
        self.total_s = 0.0

    def observe(self, status: int, seconds: float | None = None, anomalous: bool | None = None) -> None:
        with self._lock:
            self.requests[str(status)] = self.requests.get(str(status), 0) + 1
            if anomalous is not None:
                self.verdicts["anomalous" if anomalous else "ok"] += 1
            if seconds is not None:
                self.count += 1
                self.total_s += seconds
                for k, le in enumerate(LATENCY_BUCKETS_S):
                    if seconds <= le:
                        self.buckets[k] += 1

    def render(self, model_id: str, threshold: float, scorer: str) -> str:
        with self._lock:
            lines = [
                "# HELP patchloupe_model_info The served model.",
                "# TYPE patchloupe_model_info gauge",
                f'patchloupe_model_info{{model_id="{_label(model_id)}",scorer="{_label(scorer)}"}} 1',
                "# HELP patchloupe_threshold The image score threshold in force.",
                "# TYPE patchloupe_threshold gauge",
                f"patchloupe_threshold {threshold:.6g}",
                "# HELP patchloupe_requests_total POST /inspect requests by HTTP status.",
                "# TYPE patchloupe_requests_total counter",
            ]
            lines += [f'patchloupe_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())]
            lines += ["# HELP patchloupe_inspections_total Inspected images by verdict."]
            lines += ["# TYPE patchloupe_inspections_total counter"]
            lines += [f'patchloupe_inspections_total{{verdict="{v}"}} {n}' for v, n in self.verdicts.items()]
            lines += ["# HELP patchloupe_inspect_latency_seconds Time to decode and inspect an upload."]
            lines += ["# TYPE patchloupe_inspect_latency_seconds histogram"]
            lines += [
                f'patchloupe_inspect_latency_seconds_bucket{{le="{le}"}} {n}'
                for le, n in zip(LATENCY_BUCKETS_S, self.buckets)
            ]
            lines += [
                f'patchloupe_inspect_latency_seconds_bucket{{le="+Inf"}} {self.count}',
                f"patchloupe_inspect_latency_seconds_sum {self.total_s:.6f}",
                f"patchloupe_inspect_latency_seconds_count {self.count}",
            ]
        return "\n".join(lines) + "\n"


def _label(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def create_app(
    det: Any,
    *,
    max_upload_bytes: int = 20 * 1024 * 1024,
    max_pixels: int = 40_000_000,
    model_id: str = "default",
) -> FastAPI:
    """The FastAPI application serving ``det`` (a ``Detector``); see the module docstring for the endpoints."""
    app = FastAPI(title="patchloupe", summary="unsupervised visual defect detection")
    metrics = Metrics()
    lock = threading.Lock()
    scorer = str(getattr(getattr(det, "config", None), "scorer", "pattern"))

    def fail(status: int, message: str) -> HTTPException:
        metrics.observe(status)
        return HTTPException(status_code=status, detail=message)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            raise fail(413, f"upload of {int(declared)} bytes is over the limit of {max_upload_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_upload_bytes:
                raise fail(413, f"upload is over the limit of {max_upload_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            try:
                form = await MultiPartParser(request.headers, _once(body), max_files=1, max_fields=8).parse()
            except MultiPartException as exc:
                raise fail(400, f"malformed multipart upload: {exc.message}") from exc
            files = [v for _, v in form.multi_items() if hasattr(v, "read")]
            if not files:
                raise fail(400, "multipart upload without a file part (send the image as a file field)")
            body = await files[0].read()
            await form.close()
        return body

    def decode(data: bytes) -> np.ndarray:
        if not data:
            raise fail(400, "empty upload: send the image bytes as the request body or as a multipart file")
        head = image_header(data)
        if head is None:
            raise fail(415, "not an image: patchloupe accepts PNG, JPEG and BMP")
        fmt, w, h = head
        if w * h > max_pixels:
            raise fail(422, f"{fmt} image of {w} x {h} = {w * h} pixels is over the limit of {max_pixels} pixels")
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise fail(415, f"cannot decode the {fmt} image (corrupt or truncated)")
        return img

    @app.post("/inspect")
    async def inspect(
        request: Request, threshold: float | None = None, overlay: bool = False, source: str | None = None
    ) -> JSONResponse:
        t0 = time.perf_counter()
        if threshold is not None and not np.isfinite(threshold):
            raise fail(422, f"threshold must be finite, got {threshold}")
        img = decode(await read_body(request))

        def run() -> Any:
            with lock:
                return det.inspect(img, threshold=threshold, bgr=True, keep_image=overlay)

        from starlette.concurrency import run_in_threadpool

        try:
            res = await run_in_threadpool(run)
        except ValueError as exc:  # refused pixels: 16-bit, alpha, ...
            raise fail(422, str(exc).removeprefix("image array: ")) from exc
        res.source = source
        body = res.to_dict()
        if overlay:
            ok, buf = cv2.imencode(".png", cv2.cvtColor(res.plot(), cv2.COLOR_RGB2BGR))
            body["overlay_png_base64"] = base64.b64encode(buf.tobytes()).decode() if ok else None
        metrics.observe(200, time.perf_counter() - t0, bool(res.is_anomalous))
        return JSONResponse(body)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model_id": model_id, "scorer": scorer, "threshold": det.threshold}

    @app.get("/threshold")
    def get_threshold() -> dict[str, float]:
        return {"threshold": det.threshold}

    @app.put("/threshold")
    async def put_threshold(request: Request) -> dict[str, float]:
        try:
            value = float((await request.json())["threshold"])
            det.threshold = value
        except (ValueError, KeyError, TypeError) as exc:
            raise HTTPException(422, 'send {"threshold": <finite number>}') from exc
        log.info("threshold set to %.6g", value)
        return {"threshold": det.threshold}

    @app.get("/metrics")
    def get_metrics() -> PlainTextResponse:
        text = metrics.render(model_id, det.threshold, scorer)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    app.state.metrics = metrics
    return app


def serve(det: Any, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> None:
    """Run the service with uvicorn until interrupted; binds to loopback unless ``host`` says otherwise."""
    import uvicorn

    if host not in _LOOPBACK:
        log.warning("binding to %s: the service has no authentication; anyone who can reach it can use it", host)
    uvicorn.run(create_app(det, **kwargs), host=host, port=port, log_level="info")
