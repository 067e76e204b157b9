"""Property tests of the public API: whatever a caller passes, every call either succeeds or raises the
documented exception type (ValueError / TypeError for inputs, ModelError for model folders), never crashes;
threads give the serial results; memory stays flat (slow tier)."""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import fake_detector
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from patchloupe import Detector
from patchloupe.detector import ModelError

INPUT_ERRORS = (ValueError, TypeError)


def _det() -> Detector:
    return fake_detector(64, (4, 4))


DET = _det()

_dtypes = st.sampled_from(
    [np.uint8, np.uint16, np.int8, np.int32, np.float32, np.float64, np.bool_, np.complex64, object]
)
_shapes = st.one_of(
    st.tuples(st.integers(0, 40), st.integers(0, 40)),
    st.tuples(st.integers(0, 40), st.integers(0, 40), st.sampled_from([0, 1, 2, 3, 4, 5])),
    st.tuples(st.integers(0, 3)),
    st.tuples(st.integers(0, 3), st.integers(0, 9), st.integers(0, 9), st.integers(1, 3)),
    st.just(()),
)


@st.composite
def arrays(draw: st.DrawFn) -> object:
    shape = draw(_shapes)
    dtype = draw(_dtypes)
    a = np.asarray(draw(st.integers(0, 255))) if shape == () else np.zeros(shape, dtype=dtype)
    if a.size and dtype is not object:
        a = (np.random.default_rng(draw(st.integers(0, 9))).integers(0, 256, shape)).astype(dtype)
    kind = draw(st.sampled_from(["plain", "matrix", "masked", "fortran", "reversed", "strided", "readonly", "list"]))
    if kind == "matrix" and a.ndim == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            return np.asmatrix(a)
    if kind == "masked":
        return np.ma.masked_array(a, mask=np.zeros(a.shape, bool))
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "reversed" and a.ndim >= 1:
        return a[::-1]
    if kind == "strided" and a.ndim >= 2:
        return a[::2, ::3]
    if kind == "readonly":
        a.setflags(write=False)
        return a
    if kind == "list" and a.size < 50:
        return a.tolist()
    return a


_FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@_FUZZ
@given(arrays(), st.booleans())
def test_inspect_any_array_succeeds_or_raises_a_documented_error(image: object, bgr: bool) -> None:
    try:
        r = DET.inspect(image, bgr=bgr)
    except INPUT_ERRORS:
        return
    h, w = np.asarray(image).shape[:2]
    assert r.anomaly_map.shape == (h, w) and r.mask.shape == (h, w) and 0.0 <= r.score <= 1.0


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.lists(arrays(), min_size=0, max_size=4), st.integers(1, 3))
def test_inspect_many_yields_one_item_per_input(images: list, batch_size: int) -> None:
    out = list(DET.inspect_many(images, batch_size=batch_size))
    assert len(out) == len(images)


_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.text(max_size=3), st.none(),
    st.booleans(), st.lists(st.floats(0, 1), max_size=2),
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(_values)
def test_threshold_setter_and_overrides_validate(value: object) -> None:
    det = _det()
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
    for call in (
        lambda: setattr(det, "threshold", value),
        lambda: det.inspect(np.zeros((64, 64, 3), np.uint8), threshold=value if value is not None else "x"),
        lambda: det.inspect_many([], threshold=value if value is not None else "x"),
    ):
        if ok:
            call()
        else:
            with pytest.raises(ValueError, match="threshold"):
                call()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.lists(_values, max_size=5), _values)
def test_calibrate_from_scores_succeeds_or_raises_value_error(scores: list, far: object) -> None:
    det = _det()
    try:
        thr = det.calibrate_from_scores(scores, false_alarm_rate=far)  # type: ignore[arg-type]
    except INPUT_ERRORS:
        assert det.threshold == 0.5
        return
    assert 0.0 <= thr <= 1.0 and det.threshold == thr


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(), st.text(max_size=4)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _det().save(tmp_path_factory.mktemp("fuzz") / "model")


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.sampled_from(["format_version", "image_size", "grid", "threshold", "false_alarm_rate", "scorer",
                        "calibration", "training", "scorer_config", "sha256", "directions"]), _json_values)  # fmt: skip
def test_load_of_a_mutated_model_folder_is_a_model_or_a_model_error(saved: Path, tmp_path_factory, key, value) -> None:  # noqa: ANN001
    folder = tmp_path_factory.mktemp("mut") / "m"
    folder.mkdir()
    for f in saved.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    meta = json.loads((saved / "detector.json").read_text())
    target = meta["scorer_config"] if key == "directions" else meta
    target[key] = value
    (folder / "detector.json").write_text(json.dumps(meta))
    try:
        det = Detector.load(folder)
    except ModelError:
        return
    det.inspect(np.zeros((64, 64, 3), np.uint8))


def test_threads_give_the_serial_results() -> None:
    det = _det()
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(8)]
    serial = [det.inspect(im) for im in imgs]
    results: dict[int, list] = {}

    def work(i: int) -> None:
        results[i] = [det.inspect(imgs[(i + k) % 8]) for k in range(100)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, rs in results.items():
        for k, r in enumerate(rs):
            ref = serial[(i + k) % 8]
            assert r.score == ref.score and np.array_equal(r.anomaly_map, ref.anomaly_map)


@pytest.mark.slow
def test_threads_8x1000_give_the_serial_results() -> None:
    det = _det()
    imgs = [np.random.default_rng(s).integers(0, 255, (64, 64, 3), dtype=np.uint8) for s in range(8)]
    serial = [det.inspect(im).score for im in imgs]
    bad: list[int] = []

    def work(i: int) -> None:
        bad.extend(k for k in range(1000) if det.inspect(imgs[(i + k) % 8]).score != serial[(i + k) % 8])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


@pytest.mark.slow
def test_rss_stays_flat_over_10000_inspections() -> None:
    import resource

    det = _det()
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for _ in range(500):  # warm-up: allocator pools, caches
        det.inspect(img)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(10_000):
        det.inspect(img)
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert growth_mb < 20, f"peak RSS grew by {growth_mb:.1f} MB over 10,000 inspections"
