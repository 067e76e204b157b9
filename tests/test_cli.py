"""``patchloupe inspect`` / ``serve`` on the command line: sources, outputs, the six defects of issue 14, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import MJPEGServer, checks_surface, tiny_detector, write_video
from patchloupe import Detector
from patchloupe.cli import main


def _img(seed: int = 0, shape: tuple[int, ...] = (96, 96, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def _write(path: Path, seed: int = 0, shape: tuple[int, ...] = (48, 64, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), _img(seed, shape))
    return path


def _inspect(model_dir: Path, *args: str) -> int:
    return main(["inspect", "--model", str(model_dir), *args])


def _lines(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.startswith("{")]


def test_cli_inspect_folder_reports_bad_files_and_goes_on(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"img{i}.png"), _img(i, (64, 80, 3)))
    (src / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    rc = _inspect(model_dir, str(src), str(tmp_path / "nope.png"), "--out", str(out), "--json", "--save", "all")
    assert rc == 1  # some inputs failed, the rest were inspected
    lines = _lines(capsys.readouterr().out)
    assert len([d for d in lines if "score" in d]) == 3 and len([d for d in lines if "error" in d]) == 2
    assert sorted(p.name for p in out.glob("img*.png")) == ["img0.png", "img1.png", "img2.png"]
    records = json.loads((out / "results.json").read_text())
    assert sum("error" in r for r in records) == 2
    assert records == [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def test_cli_inspect_video(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for i in range(4):
        writer.write(_img(i, (48, 64, 3)))
    writer.release()
    rc = _inspect(model_dir, str(path), "--out", str(tmp_path / "o"), "--json", "--every", "2")
    assert rc == 0
    lines = _lines(capsys.readouterr().out)
    assert [d["source"].rsplit("=", 1)[1] for d in lines] == ["0", "2"]
    assert [d["frame"] for d in lines] == [0, 2] and all(d["timestamp"] > 1e9 and "verdict" in d for d in lines)


def _sidecar_sources(out: Path) -> list[str]:
    """The source named by each overlay's JSON sidecar under ``out``."""
    return sorted(json.loads(p.read_text())["source"] for p in out.rglob("*.json") if p.name != "results.json")


def test_output_names_never_collide(model_dir: Path, tmp_path: Path) -> None:
    """Defect 1: y.png/y.jpg, a/same/x.png + b/same/x.png and an input named results.png all kept apart."""
    src = tmp_path / "in"
    inputs = [_write(src / rel, k) for k, rel in enumerate(("y.png", "y.jpg", "results.png"))]
    out = tmp_path / "out"
    assert _inspect(model_dir, str(src), "--out", str(out), "--threshold", "0.4", "-q") == 0  # all flagged
    assert len(list(out.rglob("*.png"))) == 3
    assert _sidecar_sources(out) == sorted(map(str, inputs))
    records = json.loads((out / "results.json").read_text())  # the summary, not results.png's sidecar
    assert isinstance(records, list) and sorted(r["source"] for r in records) == sorted(map(str, inputs))
    pair = [_write(tmp_path / d / "same" / "x.png", k) for k, d in enumerate("ab")]
    out2 = tmp_path / "out2"
    assert _inspect(model_dir, str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out2), "--threshold", "0.4") == 0
    assert _sidecar_sources(out2) == sorted(map(str, pair))
    assert sorted(str(p.relative_to(out2)) for p in out2.rglob("*.png")) == ["a/same/x.png", "b/same/x.png"]


def test_out_inside_the_input_and_hidden_files_are_not_inspected(model_dir: Path, tmp_path: Path) -> None:
    """Defect 2: the second run does not inspect the first run's overlays; ._a.png is skipped."""
    src = tmp_path / "in"
    _write(src / "a.png", 1)
    _write(src / "._a.png", 2)
    (src / "._b.png").write_bytes(b"\x00\x05resource fork")
    for _ in range(2):
        assert _inspect(model_dir, str(src), "--out", str(src / "out"), "--threshold", "0.4", "-q") == 0
        records = json.loads((src / "out" / "results.json").read_text())
        assert [Path(r["source"]).name for r in records] == ["a.png"]


def test_zero_frame_video_is_a_failure(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect 3."""
    video = write_video(tmp_path / "empty.avi", 0)
    assert _inspect(model_dir, str(video), "--out", str(tmp_path / "o")) == 1
    captured = capsys.readouterr()
    assert "no frames" in captured.err and "1 failed" in captured.out


@pytest.mark.parametrize("every", ["0", "-2", "x"])
def test_every_must_be_positive(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], every: str
) -> None:
    """Defect 4: a usage error (exit 2 with a message), not a ZeroDivisionError traceback or silence."""
    video = write_video(tmp_path / "clip.avi", 2)
    with pytest.raises(SystemExit) as exc:
        _inspect(model_dir, str(video), "--out", str(tmp_path / "o"), "--every", every)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--every" in err and ">= 1" in err and "Traceback" not in err


def test_json_reports_failures_once(model_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Defect 5: a failed item is in the JSON stream, and its error is printed once."""
    src = tmp_path / "in"
    _write(src / "a.png")
    (src / "broken.png").write_bytes(b"not a png")
    rc = _inspect(model_dir, str(src), "--out", str(tmp_path / "o"), "--json")
    captured = capfd.readouterr()
    assert rc == 1
    errors = [d for d in _lines(captured.out) if "error" in d]
    assert len(errors) == 1 and errors[0]["source"].endswith("broken.png") and errors[0]["verdict"] == "error"
    assert captured.err.count("broken.png") == 1 and "WARNING" not in captured.err


def test_unwritable_out_fails_before_inspecting(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 6: with --no-images, an unwritable --out used to be found only after the whole inspection."""
    _write(tmp_path / "a.png")
    if os.geteuid() == 0:  # root writes anywhere a permission bit forbids: use a folder no one can write to
        out = Path("/proc")
        if os.access(out, os.W_OK) and (out / "results.jsonl").exists():
            pytest.skip("no unwritable folder here")
    else:
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o500)
    rc = _inspect(model_dir, str(tmp_path / "a.png"), "--out", str(out), "--no-images", "--json")
    captured = capsys.readouterr()
    assert rc == 2 and "cannot write to the output folder" in captured.err
    assert captured.out == ""  # nothing was inspected


def test_save_flagged_all_none(model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i in range(3):
        _write(src / f"{i}.png", i)
    # the untrained tiny model scores these images 0.5: flagged at threshold 0.4, clean at 0.9
    for save, thr, n in (("flagged", "0.9", 0), ("flagged", "0.4", 3), ("all", "0.9", 3), ("none", "0.4", 0)):
        out = tmp_path / f"{save}{thr}"
        assert _inspect(model_dir, str(src), "--out", str(out), "--save", save, "--threshold", thr, "-q") == 0
        assert len(list(out.glob("*.png"))) == n
        records = json.loads((out / "results.json").read_text())
        assert sum(r["overlay"] is not None for r in records) == n and len(records) == 3


def test_camera_index(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    """A camera is OpenCV's VideoCapture(0); simulated here by a generated video behind index 0."""
    import patchloupe.sources as sources

    video = write_video(tmp_path / "cam.avi", 6)
    real = sources.cv2.VideoCapture
    opened = []

    def fake_capture(target, *args):  # noqa: ANN001, ANN202
        opened.append(target)
        return real(str(video)) if target == 0 else real(target, *args)

    monkeypatch.setattr(sources.cv2, "VideoCapture", fake_capture)
    rc = _inspect(model_dir, "0", "--out", str(tmp_path / "o"), "--json", "--reconnects", "0", "--no-drop")
    captured = capsys.readouterr()
    lines = _lines(captured.out)
    assert opened[0] == 0 and [d["frame"] for d in lines] == list(range(6))
    assert lines[0]["source"] == "camera:0#frame=0" and lines[0]["input"] == "camera:0"
    assert rc == 1 and "gave up" in captured.err  # the camera went away and did not come back


def test_stream_url_with_reconnect(model_dir: Path, tmp_path: Path, mjpeg_server: MJPEGServer, capsys) -> None:  # noqa: ANN001
    def unplug() -> None:  # the camera goes away for good after its second connection
        while mjpeg_server.connections < 2:
            time.sleep(0.02)
        time.sleep(0.3)
        mjpeg_server.close()

    t = threading.Thread(target=unplug)
    t.start()
    rc = _inspect(model_dir, mjpeg_server.url, "--out", str(tmp_path / "o"), "--json", "--reconnects", "1")
    t.join()
    captured = capsys.readouterr()
    lines = _lines(captured.out)
    # each connection streams 10 frames then closes: reopened, frames from both connections arrive, then it gives up
    assert len(lines) > 10 and "reconnecting" in captured.err and "gave up" in captured.err
    assert rc == 1 and all(d["input"] == mjpeg_server.url for d in lines)


def test_watch_hot_folder_until_sigint(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hot = tmp_path / "hot"
    hot.mkdir()
    data = cv2.imencode(".png", _img(3, (64, 64, 3)))[1].tobytes()

    def camera() -> None:  # drops three files, each written slowly, then presses Ctrl-C
        for k in range(3):
            with open(hot / f"part{k}.png", "wb") as f:
                for piece in (data[: len(data) // 2], data[len(data) // 2 :]):
                    f.write(piece)
                    f.flush()
                    time.sleep(0.2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            jsonl = tmp_path / "o" / "results.jsonl"
            if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 3:
                break
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=camera)
    t.start()
    rc = _inspect(model_dir, "--watch", str(hot), "--out", str(tmp_path / "o"), "--json")
    t.join()
    captured = capsys.readouterr()
    assert rc == 0 and "stopped by SIGINT" in captured.err
    assert [Path(d["source"]).name for d in _lines(captured.out)] == ["part0.png", "part1.png", "part2.png"]
    assert len(json.loads((tmp_path / "o" / "results.json").read_text())) == 3


@pytest.mark.slow  # a fresh interpreter importing torch: ~10 s on the shared VM
def test_sigterm_stops_cleanly_and_flushes(model_dir: Path, tmp_path: Path) -> None:
    video = write_video(tmp_path / "long.avi", 400)
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "patchloupe.cli", "inspect", "--model", str(model_dir), str(video)]
    proc = subprocess.Popen(
        [*cmd, "--out", str(out), "--json", "--batch-size", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    first = proc.stdout.readline()  # the run is going
    assert json.loads(first)["frame"] == 0
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=60)
    lines = _lines(first + rest)
    assert proc.returncode == 130 and "stopped by SIGTERM" in err and "Traceback" not in err
    assert 1 <= len(lines) < 400
    assert json.loads((out / "results.json").read_text()) == lines  # every printed result was flushed


def test_inspect_needs_a_source_and_serve_help(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["inspect", "--out", str(tmp_path / "o")]) == 2
    assert "--watch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    assert "--host" in text and "127.0.0.1" in text and "--max-upload-mb" in text


def test_cli_fit_and_evaluate(
    model_dir: Path, textures: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fitted"
    rc = main(
        [
            "fit",
            str(textures / "train" / "good"),
            "-o",
            str(out),
            "--base",
            str(model_dir),
            "--scorer",
            "pattern",
            "--grid",
            "3x3",
            "--generator-steps",
            "1",
            "--comparator-steps",
            "1",
            "--batch-size",
            "2",
            "-q",
        ]
    )
    assert rc == 0 and (out / "detector.json").is_file()
    rc = main(["evaluate", str(textures), "--model", str(out), "--json"])
    assert rc == 0
    assert "image_auroc" in json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert main(["evaluate", str(textures), "--model", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "image_auroc" in text and "image_auroc hole" in text  # the per-kind lines of the plain output


def test_cli_errors_are_messages_not_tracebacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path / "nothing"), "--model", str(tmp_path / "nomodel")]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "x", "-o", "y", "--grid", "banana"])


def test_console_script_installed() -> None:
    r = subprocess.run([sys.executable, "-m", "patchloupe.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "inspect" in r.stdout and "fit" in r.stdout


def test_cli_inspect_with_a_pool(small_selfref_detector, tmp_path, capsys) -> None:  # noqa: ANN001
    model = small_selfref_detector.save(tmp_path / "m")
    folder = tmp_path / "parts"
    folder.mkdir()
    for s in range(8):
        cv2.imwrite(str(folder / f"{s:02d}.png"), checks_surface(s))
    out = tmp_path / "o"
    assert main(["inspect", str(folder), "--model", str(model), "--out", str(out), "--pool", "4", "-q"]) == 0
    text = capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and "scored against the stream pool" in text
    pooled = small_selfref_detector.pooled(size=4)
    files = sorted(folder.iterdir())
    expected = [r.score for r in pooled.inspect_many([str(f) for f in files])]
    by_name = {Path(r["source"]).name: r["score"] for r in rows}
    np.testing.assert_allclose([by_name[f.name] for f in files], expected, atol=1e-4)
    assert pooled.scorer.stats()["pooled"] > 0


def test_cli_inspect_with_a_pool_and_the_built_in_model(tmp_path, capsys) -> None:  # noqa: ANN001
    folder = tmp_path / "parts"
    folder.mkdir()
    for s in range(4):
        cv2.imwrite(str(folder / f"{s:02d}.png"), checks_surface(s))
    out = tmp_path / "o"
    assert main(["inspect", str(folder), "--out", str(out), "--pool", "4", "-q"]) == 0  # no --model: built-in
    out = capsys.readouterr().out
    assert "3 scored against the stream pool (" in out and "kept out of it)" in out  # every image after the first


def test_cli_inspect_pool_admission_reads_the_threshold_option(tmp_path) -> None:  # noqa: ANN001
    """``--threshold`` with ``--pool`` is the threshold the pool's admission uses: with 0 every pooled part is flagged
    and stays out of the pool once it holds ``min_pool`` images, so the scores are those of a detector whose
    threshold is 0, not those of one with the built-in threshold."""
    folder = tmp_path / "parts"
    folder.mkdir()
    files = []
    for s in range(8):
        files.append(folder / f"{s:02d}.png")
        cv2.imwrite(str(files[-1]), checks_surface(s))
    out = tmp_path / "o"
    assert main(["inspect", str(folder), "--out", str(out), "--pool", "4", "--threshold", "0", "-q"]) == 0
    rows = {Path(r["source"]).name: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert all(r["is_anomalous"] for r in rows.values())
    flagged_all = Detector.load().pooled(size=4)
    flagged_all.threshold = 0.0
    expected = [r.score for r in flagged_all.inspect_many([str(f) for f in files])]
    np.testing.assert_allclose([rows[f.name]["score"] for f in files], expected, atol=1e-4)
    admitted = [r.score for r in Detector.load().pooled(size=4).inspect_many([str(f) for f in files])]
    assert not np.allclose(expected, admitted, atol=1e-4)  # the admission made a difference here


def test_cli_inspect_pool_needs_a_selfref_model(tmp_path, capsys) -> None:  # noqa: ANN001
    model = tiny_detector().save(tmp_path / "m")
    cv2.imwrite(str(tmp_path / "a.png"), checks_surface(0))
    rc = main(["inspect", str(tmp_path / "a.png"), "--model", str(model), "--out", str(tmp_path / "o"), "--pool", "4"])
    assert rc == 2 and "selfref" in capsys.readouterr().err
