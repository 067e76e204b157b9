"""Peak RSS of ``patchloupe inspect`` over a long generated video (issue 14: memory stays flat).

Writes an MJPG video of ``--frames`` frames, runs the CLI on it in a child process (every frame inspected,
no overlays) and samples the child's resident memory twice a second. Prints the RSS after 10 %, 50 % and
100 % of the frames and the peak (``VmHWM``).

Usage:
  python benchmarks/stream_memory.py --frames 10000 --size 480x640            # tiny untrained model (fast)
  python benchmarks/stream_memory.py --frames 2000 --model default            # the built-in model
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--size", default="480x640", help="HxW of the frames")
    ap.add_argument("--model", default="tiny", help="'tiny' (untrained tiny preset), 'default', or a model folder")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="stream_memory_"))
    video = tmp / "long.avi"
    t0 = time.perf_counter()
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (w, h))
    base = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(args.frames):
        writer.write(np.roll(base, i, axis=1))
    writer.release()
    mb = video.stat().st_size / 1e6
    print(f"wrote {args.frames} frames {h}x{w} ({mb:.0f} MB) in {time.perf_counter() - t0:.0f} s")
    model: list[str] = []
    if args.model == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import tiny_detector

        model = ["--model", str(tiny_detector().save(tmp / "model"))]
    elif args.model != "default":
        model = ["--model", args.model]
    cmd = [sys.executable, "-m", "patchloupe.cli", "inspect", str(video), *model, "--out", str(tmp / "out")]
    cmd += ["--save", "none", "-q", "--batch-size", str(args.batch_size)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    samples: list[tuple[float, int, int]] = []  # (time, lines written, rss MB)
    jsonl = tmp / "out" / "results.jsonl"
    hwm = 0
    while proc.poll() is None:
        try:
            st = _status(proc.pid)
            done = sum(1 for _ in open(jsonl)) if jsonl.exists() else 0
        except (FileNotFoundError, ProcessLookupError):
            break
        hwm = max(hwm, st.get("VmHWM", 0))
        samples.append((time.perf_counter() - t0, done, st.get("VmRSS", 0)))
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    n = sum(1 for _ in open(jsonl))

    def rss_at(frac: float) -> int:
        return next((r for _, d, r in samples if d >= frac * args.frames), samples[-1][2])

    report = {
        "frames": args.frames,
        "inspected": n,
        "size": args.size,
        "model": args.model,
        "rss_mb_at_10pct": rss_at(0.1),
        "rss_mb_at_50pct": rss_at(0.5),
        "rss_mb_at_end": samples[-1][2],
        "peak_rss_mb": hwm,
        "wall_s": round(wall, 1),
        "returncode": proc.returncode,
    }
    print(json.dumps(report))
    shutil.rmtree(tmp, ignore_errors=True)  # the video is large (about 230 kB a frame at 480 x 640)


if __name__ == "__main__":
    main()
