"""The latency guard's bookkeeping (``bench_compare.py``) on synthetic pytest-benchmark JSON: ratios to the
reference workload, tolerances from spread, and the pass/fail rule with a confirmation run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bench_compare import compare, main, make_baseline, ratios


def _bench(name: str, median: float, ratio: float | None = None, threads: int | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if ratio is not None:
        extra["ratio"] = ratio
    if threads is not None:
        extra["threads"] = threads
    return {
        "name": name,
        "fullname": f"benchmarks/test_bench_x.py::{name}",
        "stats": {"median": median, "rounds": 40},
        "extra_info": extra,
    }


def _run(speed: float = 1.0, inspect_ratio: float = 5.0, native: float = 0.02) -> dict[str, Any]:
    """A run on a machine ``speed`` times slower: every median scales, interleaved ratios do not."""
    return {
        "benchmarks": [
            _bench("test_bench_reference[t1]", 0.030 * speed, threads=1),
            _bench("test_bench_reference[t2]", 0.020 * speed, threads=2),
            _bench("test_bench_inspect_default[t1]", 0.150 * speed, ratio=inspect_ratio, threads=1),
            _bench("test_native_stitch[256]", native * speed),  # not interleaved: divided by reference[t2]
        ]
    }


def test_ratios_cancel_machine_speed() -> None:
    a, b = ratios(_run(1.0)), ratios(_run(1.7))
    for name in a:
        assert a[name]["ratio"] == pytest.approx(b[name]["ratio"])
    assert a["test_bench_x.py::test_native_stitch[256]"]["ratio"] == pytest.approx(0.02 / 0.020)
    assert a["test_bench_x.py::test_native_stitch[256]"]["threads"] == 2
    assert a["test_bench_x.py::test_bench_inspect_default[t1]"]["ratio"] == 5.0
    no_ref = {"benchmarks": [_bench("test_native_stitch[256]", 0.02)]}
    assert ratios(no_ref)["test_bench_x.py::test_native_stitch[256]"]["ratio"] is None


def test_baseline_tolerance_follows_spread() -> None:
    runs = [_run(1.0, 5.0, 0.020), _run(1.3, 5.2, 0.020), _run(0.9, 4.9, 0.031), _run(1, 5.1, 0.02), _run(1, 5, 0.02)]
    assert make_baseline(runs[:3])["benchmarks"]["test_bench_x.py::test_bench_inspect_default[t1]"]["tolerance"] == 0.5
    base = make_baseline(runs)["benchmarks"]
    ins = base["test_bench_x.py::test_bench_inspect_default[t1]"]
    assert ins["ratio"] == 5.0 and ins["spread"] == pytest.approx(0.04) and ins["tolerance"] == 0.25 and ins["gated"]
    nat = base["test_bench_x.py::test_native_stitch[256]"]  # 55 % spread: cannot see a 2x regression
    assert nat["spread"] == pytest.approx(0.55) and not nat["gated"]
    assert not base["test_bench_x.py::test_bench_reference[t1]"]["gated"]
    assert make_baseline(runs, tolerance=0.4)["benchmarks"]["test_bench_x.py::test_native_stitch[256]"]["gated"]


def test_compare_catches_a_2x_slowdown_not_a_slow_machine() -> None:
    base = make_baseline([_run(1.0, 5.0), _run(1.1, 5.1)])
    ok, rows = compare([_run(2.5, 5.3)], base)  # a much slower machine, small noise: passes
    assert ok and all(not r["failed"] for r in rows)
    ok, rows = compare([_run(1.0, 10.0)], base)  # inspect 2x slower against the reference
    assert not ok and [r["name"] for r in rows if r["failed"]] == ["test_bench_x.py::test_bench_inspect_default[t1]"]
    # with a confirmation run, a one-off blip passes and a real regression still fails
    assert compare([_run(1.0, 10.0), _run(1.0, 5.2)], base)[0]
    assert not compare([_run(1.0, 10.0), _run(1.0, 9.0)], base)[0]
    assert not compare([{"benchmarks": [_bench("other", 1.0)]}], base)[0]  # nothing to compare is a failure


def test_cli_baseline_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for i, run in enumerate([_run(1.0, 5.0), _run(1.2, 5.1)]):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(run))
    base = tmp_path / "base.json"
    assert main(["baseline", *map(str, paths), "-o", str(base)]) == 0
    stored = json.loads(base.read_text())
    assert stored["machine"]["cpu_count"] > 0 and "torch" in stored["machine"] and stored["date"]
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(_run(1.0, 11.0)))
    assert main(["check", str(paths[0]), "--baseline", str(base)]) == 0
    assert main(["check", str(slow), "--baseline", str(base)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_cli_add_new_keeps_the_stored_entries(tmp_path: Path) -> None:
    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps({"benchmarks": _run(1.0, 5.0)["benchmarks"][:3]}))
    base = tmp_path / "base.json"
    assert main(["baseline", str(gate), "-o", str(base), "--tolerance", "0.3"]) == 0
    full = [tmp_path / "f0.json", tmp_path / "f1.json"]
    for p, r in zip(full, (6.0, 6.1)):
        p.write_text(json.dumps(_run(1.0, r)))
    assert main(["baseline", *map(str, full), "-o", str(base), "--add-new"]) == 0
    stored = json.loads(base.read_text())
    names = stored["benchmarks"]
    assert names["test_bench_x.py::test_bench_inspect_default[t1]"]["ratio"] == 5.0  # kept
    assert names["test_bench_x.py::test_native_stitch[256]"]["runs"] == 2  # added
    assert len(stored["updates"]) == 1
    assert main(["baseline", *map(str, full), "-o", str(base), "--merge"]) == 0
    assert (
        json.loads(base.read_text())["benchmarks"]["test_bench_x.py::test_bench_inspect_default[t1]"]["ratio"] == 6.05
    )


def test_machine_class_names_the_cpu_vendor_and_isa() -> None:
    import reference

    cls = reference.machine_class()
    assert cls.endswith(f"-{reference.cpu_vendor()}-{reference.cpu_capability()}")
    assert reference.cpu_capability() and reference.cpu_vendor()
    info = reference.machine_info()
    assert info["machine_class"] == cls and info["vendor"] == reference.cpu_vendor()


def test_baseline_path_is_the_machine_class_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench_compare
    import reference

    monkeypatch.setattr(bench_compare, "BASELINES", tmp_path)
    monkeypatch.setattr(reference, "machine_class", lambda: "linux-x86_64-2cpu-intel-avx512")
    (tmp_path / "linux-x86_64-2cpu-amd-avx2.json").write_text("{}")
    (tmp_path / "linux-x86_64-2cpu-intel-avx2.json").write_text("{}")
    assert bench_compare.baseline_path() is None  # another vendor's or ISA's ratios are not comparable
    (tmp_path / "linux-x86_64-2cpu-intel-avx512.json").write_text("{}")
    assert bench_compare.baseline_path() == tmp_path / "linux-x86_64-2cpu-intel-avx512.json"
    assert bench_compare.baseline_path(tmp_path / "x.json") == tmp_path / "x.json"


def test_cli_check_without_a_baseline_says_not_gated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import bench_compare
    import reference

    monkeypatch.setattr(bench_compare, "BASELINES", tmp_path)
    monkeypatch.setattr(reference, "machine_class", lambda: "linux-x86_64-2cpu-newvendor-avx2")
    (tmp_path / "linux-x86_64-2cpu-amd.json").write_text("{}")
    run = tmp_path / "run.json"
    run.write_text(json.dumps(_run(1.0, 11.0)))
    assert main(["check", str(run)]) == 0
    cap = capsys.readouterr()
    assert "NOT GATED" in cap.out and "linux-x86_64-2cpu-newvendor-avx2" in cap.out
    assert "linux-x86_64-2cpu-amd" in cap.out  # the stored classes are named
    assert "NOT GATED" in cap.err  # also where a CI log shows warnings
    assert main(["check", str(run), "--require-baseline"]) == 1
