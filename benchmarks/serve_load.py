"""Loopback load test of ``patchloupe serve``: throughput and latency percentiles (issue 14).

Starts the service (uvicorn, one worker) on 127.0.0.1 in this process, then ``--clients`` threads each
send ``--requests`` PNG uploads (``POST /inspect``, raw body) one after the other, and checks every answer
against ``det.inspect`` of the same image. Latency is measured by the client (request sent to answer read).

Usage:
  python benchmarks/serve_load.py --model tiny --clients 8 --requests 500
  python benchmarks/serve_load.py --model default --clients 8 --requests 50 --threads 2
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import torch
import uvicorn

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="'tiny' (untrained tiny preset), 'default', or a model folder")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=500, help="per client")
    ap.add_argument("--size", default="256x256", help="HxW of the uploaded PNGs")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from patchloupe import Detector
    from patchloupe.serve import create_app

    if args.model == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import tiny_detector

        det = tiny_detector()
    else:
        det = Detector.load(None if args.model == "default" else args.model)
    h, w = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    images = [cv2.imencode(".png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))[1].tobytes() for _ in range(4)]
    refs = [det.inspect(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED), bgr=True).score for b in images]

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(det), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)

    def client(cid: int) -> list[tuple[float, bool]]:
        out = []
        with httpx.Client(base_url=url, timeout=120) as c:
            for i in range(args.requests):
                k = (cid + i) % len(images)
                t0 = time.perf_counter()
                r = c.post("/inspect", content=images[k])
                ms = (time.perf_counter() - t0) * 1000
                out.append((ms, r.status_code == 200 and r.json()["score"] == refs[k]))
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        answers = [a for chunk in pool.map(client, range(args.clients)) for a in chunk]
    wall = time.perf_counter() - t0
    server.should_exit = True
    thread.join(timeout=10)
    lat = np.array([ms for ms, _ in answers])
    report = {
        "model": args.model,
        "clients": args.clients,
        "requests": len(answers),
        "all_ok_and_identical": all(ok for _, ok in answers),
        "size": args.size,
        "torch_threads": args.threads,
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(answers) / wall, 1),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 1),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
