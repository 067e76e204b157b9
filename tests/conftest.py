"""Shared test setup.

Triton only runs on this CPU machine under its interpreter, and the flag must be set before any
kernel is defined, so it is set here, before anything imports ``patchloupe.kernels``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("OMP_NUM_THREADS", "2")
try:  # only decide on the interpreter when there is no GPU
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)  # tiny test workloads; >1 thread spins badly on a busy 2-core host
except ImportError:  # pragma: no cover - torch is a hard dependency
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests when CUDA is absent."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for the test, restored after; use ``pytest.mark.usefixtures("one_thread")``.

    Small ops on a shared, busy 2-core host: 2 intra-op threads spin-wait on each other and ran the
    training test 50x slower (127 s vs 2.5 s) under load; one thread is fast and deterministic."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- detectors with exact, hand-written networks
class MeanGenerator(torch.nn.Module):
    """Predicts a target as the mean of its two input patches (an exact predictor on flat images)."""

    def predict_targets(self, patches: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
        return 0.5 * (patches[triplets[:, 0]] + patches[triplets[:, 1]])


class DiffComparator(torch.nn.Module):
    """Logit high (= match) when prediction and reality agree; mask = |difference| > 0.1 at 1/4 size."""

    def forward(self, generated: torch.Tensor, real: torch.Tensor):  # noqa: ANN201
        diff = (generated - real).abs().mean(1, keepdim=True)
        logit = 8.0 - 80.0 * diff.mean((1, 2, 3))
        mask = torch.nn.functional.avg_pool2d((diff > 0.1).float(), 4)
        return torch.sigmoid(logit), mask, logit


def fake_detector(size: int = 128, grid: tuple[int, int] = (4, 4), **config):  # noqa: ANN003, ANN201
    """A pattern-scorer Detector on ``size`` x ``size`` built from MeanGenerator + DiffComparator;
    ``config``: further DetectorConfig fields (threshold 0.5 unless given)."""
    from patchloupe import Detector
    from patchloupe.detector import DetectorConfig
    from patchloupe.scorers.pattern import PatternScorer

    cfg = DetectorConfig(image_size=(size, size), grid=grid, **{"threshold": 0.5, **config})
    return Detector(PatternScorer(MeanGenerator(), DiffComparator(), (size, size), grid), cfg)


# ---------------------------------------------------------------- streaming, CLI and service tests
def tiny_detector(seed: int = 0):  # noqa: ANN201 - returns a patchloupe Detector
    """A detector with the tiny generator preset (untrained, 96 x 96, 3 x 3 grid): fast, deterministic."""
    import torch
    from patchloupe import Detector
    from patchloupe.detector import DetectorConfig
    from patchloupe.models.comparator import ComparatorConfig, PatternComparator
    from patchloupe.models.generator import build_generator
    from patchloupe.scorers.pattern import PatternScorer

    torch.manual_seed(seed)
    gen = build_generator("tiny")
    comp = PatternComparator(ComparatorConfig())
    cfg = DetectorConfig(image_size=(96, 96), grid=(3, 3), threshold=0.5)
    return Detector(PatternScorer(gen, comp, (96, 96), (3, 3)), cfg)


def write_video(path, n: int, size: tuple[int, int] = (48, 64), fps: int = 25, seed: int = 0):  # noqa: ANN001, ANN201
    """Write an MJPG AVI of ``n`` random frames of ``size`` (H, W); returns the path."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(n):
        writer.write(np.roll(base, i, axis=1))
    writer.release()
    return path


class MJPEGServer:
    """An MJPEG-over-HTTP camera on 127.0.0.1 (multipart/x-mixed-replace), as IP cameras serve it.

    Each connection streams ``frames_per_connection`` JPEG frames, ``interval_s`` apart, then closes (a
    stream that stops); ``connections`` counts the connections served."""

    def __init__(self, frames_per_connection: int = 10, interval_s: float = 0.01, size: tuple[int, int] = (48, 64)):
        import http.server
        import socketserver
        import threading
        import time

        import cv2
        import numpy as np

        self.connections = 0
        server = self
        jpegs = []
        for i in range(frames_per_connection):
            img = np.full((*size, 3), (i * 23) % 256, np.uint8)
            jpegs.append(cv2.imencode(".jpg", img)[1].tobytes())

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for jpg in jpegs:
                        head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                        self.wfile.write(head + jpg + b"\r\n")
                        self.wfile.flush()
                        time.sleep(interval_s)
                except OSError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/stream.mjpg"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - Path
    """The tiny detector saved as a model folder (one per test module)."""
    return tiny_detector().save(tmp_path_factory.mktemp("m") / "model")


@pytest.fixture(scope="module")
def textures(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - Path
    """A small generated cloth category (MVTec layout, 96 px): 6 train, 3 good + 1 per defect kind to test."""
    from patchloupe.data import generate_dataset

    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, families=["cloth"], n_train=6, n_test_good=3, n_test_defect_per_kind=1, size=96, seed=3)
    return root / "cloth"


def random_image(seed: int = 0, shape: tuple[int, ...] = (96, 96, 3)) -> np.ndarray:
    """Uniform random uint8 pixels of ``shape``."""
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


@pytest.fixture
def mjpeg_server() -> Iterator[MJPEGServer]:
    srv = MJPEGServer()
    yield srv
    srv.close()


# ---------------------------------------------------------------------------------------------- export
def striped_surface(seed: int, shape: tuple[int, int] = (64, 64), hole: bool = False) -> np.ndarray:
    """A stationary striped texture with noise, RGB uint8 ``(*shape, 3)``; ``hole`` adds a dark disc."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = shape
    x = np.arange(w)
    base = 128 + 50 * np.sin(2 * np.pi * (x[None, :] + rng.integers(8)) / 8.0) + rng.normal(0, 6, (h, w))
    img = np.repeat(np.clip(base, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    img[..., 1] = np.clip(img[..., 1].astype(int) + 20, 0, 255)  # not grey: channel order matters
    if hole:
        cv2.circle(img, (int(w * 0.6), int(h * 0.4)), max(3, h // 10), (10, 10, 10), -1)
    return img


def checks_surface(seed: int, n: int = 64, hole: bool = False) -> np.ndarray:
    """Another surface than the fitted stripes: a noisy checkerboard of period 16, RGB uint8 ``(n, n, 3)``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n] + rng.integers(16, size=2)[:, None, None]
    base = 128 + 60 * np.sign(np.sin(2 * np.pi * x / 16) * np.sin(2 * np.pi * y / 16)) + rng.normal(0, 5, (n, n))
    import cv2

    img = np.repeat(np.clip(base, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if hole:
        cv2.circle(img, (40, 24), 6, (20, 200, 40), -1)
    return img


@pytest.fixture(scope="session")
def tiny_pattern_detector():  # noqa: ANN201 - a Detector
    """An untrained tiny-preset pattern detector on 96 x 96 / 3 x 3, calibrated on clean surfaces."""
    import torch
    from patchloupe import Detector
    from patchloupe.config import DetectorConfig
    from patchloupe.models.comparator import ComparatorConfig, PatternComparator
    from patchloupe.models.generator import build_generator
    from patchloupe.scorers.pattern import PatternScorer

    torch.manual_seed(0)
    scorer = PatternScorer(build_generator("tiny"), PatternComparator(ComparatorConfig()), (96, 96), (3, 3))
    det = Detector(scorer, DetectorConfig(image_size=(96, 96), grid=(3, 3)))
    det.calibrate([striped_surface(s, (96, 96)) for s in range(6)], false_alarm_rate=0.2)
    return det


def _small_feature_detector(base, scorer: str):  # noqa: ANN001, ANN202 - a Detector
    """A ``scorer`` ("memory" or "selfref") detector (EfficientNet-Lite0 trunk, context memory) fitted on 12
    surfaces at 64 x 64 (skips without the trunk's weights)."""
    import torch
    from patchloupe import Detector
    from patchloupe.scorers.memory import memory_available

    if not memory_available():
        pytest.skip(f"the {scorer} scorer's trunk weights are not installed")
    torch.manual_seed(0)
    train = [striped_surface(s) for s in range(12)]
    return Detector.fit(train, base=base, scorer=scorer, image_size=(64, 64), coreset_fraction=0.25, progress=False)


@pytest.fixture(scope="session")
def small_memory_detector(tiny_pattern_detector):  # noqa: ANN001, ANN201 - a Detector
    """A memory detector fitted on 12 surfaces at 64 x 64."""
    return _small_feature_detector(tiny_pattern_detector, "memory")


@pytest.fixture(scope="session")
def small_selfref_detector(tiny_pattern_detector):  # noqa: ANN001, ANN201 - a Detector
    """A self-reference detector (the default scorer: combine="gate") fitted on 12 surfaces at 64 x 64."""
    return _small_feature_detector(tiny_pattern_detector, "selfref")


@pytest.fixture(scope="session")
def exported_graphs(tiny_pattern_detector, small_memory_detector, small_selfref_detector, tmp_path_factory):  # noqa: ANN001, ANN201
    """The detectors exported to ONNX with a dynamic batch: ``{"pattern": Path, "memory": Path, "selfref": Path}``
    (graph files)."""
    pytest.importorskip("onnx", reason="export needs the 'export' extra")
    pytest.importorskip("onnxruntime", reason="export needs the 'export' extra")
    out = tmp_path_factory.mktemp("exported")
    return {
        "pattern": tiny_pattern_detector.export(out / "pattern.onnx", batch="dynamic"),
        "memory": small_memory_detector.export(out / "memory", batch="dynamic"),
        "selfref": small_selfref_detector.export(out / "selfref", batch="dynamic"),
    }
