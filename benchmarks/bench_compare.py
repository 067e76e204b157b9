"""Run the pytest-benchmark suites, store baselines, and fail when a benchmark got slower than its tolerance.

Every benchmark is compared as a *ratio*: its median over the median of the reference workload
(``reference.py``) timed in the same run, interleaved round by round where the benchmark uses
``reference.interleaved`` (``extra_info["ratio"]``), else the ``test_bench_reference[tN]`` benchmark of the
run at the benchmark's thread count (2 when unknown: the suites' default). A benchmark fails when
``fresh ratio / baseline ratio > 1 + tolerance``; each benchmark's tolerance was set from the run-to-run
spread of its ratio when the baseline was made (``baseline``), see docs/benchmarks.md, "Latency guard".

    python benchmarks/bench_compare.py run                       # make bench: all suites -> runs/bench/<date>.json
    python benchmarks/bench_compare.py run --check               # make bench-check
    python benchmarks/bench_compare.py run --gate --check        # make bench-gate (CI): inspect only, < 2 min
    python benchmarks/bench_compare.py check runs/bench/X.json   # compare a saved run
    python benchmarks/bench_compare.py baseline runs/bench/*.json -o benchmarks/baselines/<machine class>.json
    python benchmarks/bench_compare.py baseline --measure 6 --merge  # make bench-baseline: 6 fresh gate runs
    python benchmarks/bench_compare.py baseline runs/bench/full/*-all.json --add-new  # the other suites' entries
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASELINES = HERE / "baselines"
GATE_FILE = "benchmarks/test_bench_inspect.py"
REFERENCE = "test_bench_reference"
#: a benchmark whose measured spread needs a tolerance above this cannot tell a 2x slowdown from noise: not gated
MAX_TOLERANCE = 0.5
#: tolerance = max(MIN_TOLERANCE, SPREAD_FACTOR x the largest relative deviation of a run's ratio from the median)
MIN_TOLERANCE = 0.25
SPREAD_FACTOR = 3.0
#: with fewer runs than this the spread is not trusted and the tolerance is MAX_TOLERANCE
MIN_RUNS = 5

_THREADS = re.compile(r"\[(?:.*-)?t(\d+)(?:-.*)?\]$")


# ------------------------------------------------------------------------------------------------ reading
def _short(fullname: str) -> str:
    """``benchmarks/test_x.py::test_y[p]`` -> ``test_x.py::test_y[p]`` (stable whatever the rootdir)."""
    return fullname.split("/")[-1]


def _threads(name: str, extra: dict[str, Any]) -> int:
    if "threads" in extra:
        return int(extra["threads"])
    m = _THREADS.search(name)
    return int(m.group(1)) if m else 2


def ratios(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per benchmark of a pytest-benchmark JSON ``run``: ``median_s``, ``threads`` and ``ratio`` (to the
    reference workload; None when the run has no reference at that thread count)."""
    refs: dict[int, float] = {}
    for b in run["benchmarks"]:
        if b["name"].startswith(REFERENCE):
            refs[_threads(b["name"], b.get("extra_info", {}))] = b["stats"]["median"]
    out = {}
    for b in run["benchmarks"]:
        name, extra, med = _short(b["fullname"]), b.get("extra_info", {}), b["stats"]["median"]
        th = _threads(b["name"], extra)
        if "ratio" in extra:
            r = float(extra["ratio"])
        elif b["name"].startswith(REFERENCE):
            r = 1.0
        else:
            r = med / refs[th] if th in refs else None
        out[name] = {"median_s": med, "threads": th, "ratio": r, "rounds": b["stats"]["rounds"]}
    return out


# ------------------------------------------------------------------------------------------------ baseline
def make_baseline(runs: list[dict[str, Any]], tolerance: float | None = None) -> dict[str, Any]:
    """A baseline from repeated runs on unchanged code: per benchmark the median ratio over the runs, the
    spread (largest relative deviation of one run's ratio from that median) and the tolerance it implies."""
    from reference import machine_info

    per: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for name, e in ratios(run).items():
            if e["ratio"] is not None:
                per.setdefault(name, []).append(e)
    benches = {}
    for name, es in sorted(per.items()):
        rs = [e["ratio"] for e in es]
        med = statistics.median(rs)
        spread = max(abs(r / med - 1) for r in rs)
        tol = tolerance if tolerance is not None else max(MIN_TOLERANCE, SPREAD_FACTOR * spread)
        if tolerance is None and len(rs) < MIN_RUNS:  # too few runs to trust the spread: the widest tolerance
            tol = max(tol, MAX_TOLERANCE)
        gated = not name.split("::")[-1].startswith(REFERENCE) and (len(rs) >= 2 or tolerance is not None)
        benches[name] = {
            "ratio": med,
            "median_s": statistics.median(e["median_s"] for e in es),
            "threads": es[0]["threads"],
            "runs": len(rs),
            "spread": spread,
            "tolerance": round(min(tol, MAX_TOLERANCE), 3),
            "gated": gated and tol <= MAX_TOLERANCE,
            "ratios": [round(r, 5) for r in rs],
        }
    return {
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": (
            f"ratio = median / reference median (same run); tolerance = max({MIN_TOLERANCE}, {SPREAD_FACTOR} x spread)"
            f" ({MAX_TOLERANCE} from fewer than {MIN_RUNS} runs), not gated when 3 x spread exceeds {MAX_TOLERANCE};"
            " fail when fresh ratio / baseline ratio > 1 + tolerance"
        ),
        "benchmarks": benches,
    }


def baseline_path(path: str | Path | None = None) -> Path | None:
    """``path``, else the baseline of this machine class (``reference.machine_class``: the class of the machine
    running the check, which ``check`` assumes the saved runs came from); None when this class has none."""
    from reference import machine_class

    if path is not None:
        return Path(path)
    own = BASELINES / f"{machine_class()}.json"
    return own if own.is_file() else None


# --------------------------------------------------------------------------------------------------- check
def compare(fresh: list[dict[str, Any]], baseline: dict[str, Any]) -> tuple[bool, list[dict[str, Any]]]:
    """Compare one or more fresh runs with ``baseline``. With several runs (a confirmation rerun), a benchmark
    fails only when *every* run is over its tolerance: noise rarely repeats, a regression always does.

    Returns (ok, rows); ``ok`` is False when a gated benchmark failed or no benchmark could be compared."""
    got = [ratios(r) for r in fresh]
    rows = []
    for name, base in baseline["benchmarks"].items():
        seen = [g[name]["ratio"] for g in got if name in g and g[name]["ratio"] is not None]
        if not seen:
            continue
        slow = [r / base["ratio"] for r in seen]
        limit = 1 + base["tolerance"]
        failed = base["gated"] and min(slow) > limit
        rows.append({"name": name, "slowdown": slow, "limit": limit, "gated": base["gated"], "failed": failed})
    ok = bool(rows) and not any(r["failed"] for r in rows if r["gated"]) and any(r["gated"] for r in rows)
    return ok, rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["| benchmark | slowdown vs baseline (ratio to reference) | limit | verdict |", "|---|---|---|---|"]
    for r in rows:
        verdict = "FAIL" if r["failed"] else ("ok" if r["gated"] else "not gated")
        s = " / ".join(f"{x:.3f}" for x in r["slowdown"])
        lines.append(f"| {r['name']} | {s} | {r['limit']:.2f} | {verdict} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- run
def run_suite(gate: bool, out_dir: Path, extra: list[str]) -> Path:
    """Run the benchmark suites (``gate``: only the inspect gate at 1 thread) and return the JSON's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = out_dir / f"{stamp}-{'gate' if gate else 'all'}.json"
    env = dict(os.environ)
    if gate:
        env.setdefault("PATCHLOUPE_BENCH_THREADS", "1")
        sel = [GATE_FILE]
    else:
        sel = ["benchmarks", "-m", "not gpu"]
    cmd = [sys.executable, "-m", "pytest", *sel, "--benchmark-only", "-q", "-p", "no:cacheprovider"]
    cmd += ["--benchmark-columns=median,iqr,rounds", f"--benchmark-json={out}", *extra]
    sys.stderr.write(" ".join(cmd) + "\n")
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("run", help="run the suites, save the JSON, optionally check it")
    pr.add_argument("--gate", action="store_true", help="only the inspect gate (benchmarks/test_bench_inspect.py)")
    pr.add_argument("--check", action="store_true", help="compare with the baseline; exit 1 on a regression")
    pr.add_argument("--no-confirm", action="store_true", help="fail on the first run (default: rerun to confirm)")
    pr.add_argument("--baseline", default=None)
    pr.add_argument("--require-baseline", action="store_true", help="fail when this machine class has no baseline")
    pr.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    pc = sub.add_parser("check", help="compare saved runs with the baseline (fails only if every run fails)")
    pc.add_argument("runs", nargs="+")
    pc.add_argument("--baseline", default=None)
    pc.add_argument("--require-baseline", action="store_true", help="fail when this machine class has no baseline")
    pb = sub.add_parser("baseline", help="write a baseline from repeated runs on unchanged code")
    pb.add_argument("runs", nargs="*")
    pb.add_argument("--measure", type=int, default=0, help="first run the gate this many times and use those runs")
    pb.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    pb.add_argument("-o", "--out", default=None, help="default: benchmarks/baselines/<machine class>.json")
    pb.add_argument("--tolerance", type=float, default=None, help="one tolerance for all (default: from spread)")
    pb.add_argument("--merge", action="store_true", help="keep the benchmarks of an existing file not in these runs")
    pb.add_argument("--add-new", action="store_true", help="only add benchmarks an existing file lacks (keep the rest)")
    a, extra = p.parse_known_args(argv)
    sys.path.insert(0, str(HERE))

    if a.cmd == "baseline":
        from reference import machine_class

        out = Path(a.out) if a.out else BASELINES / f"{machine_class()}.json"
        paths = [Path(r) for r in a.runs] + [run_suite(True, Path(a.out_dir), extra) for _ in range(a.measure)]
        if not paths:
            p.error("baseline needs saved runs or --measure N")
        base = make_baseline([json.loads(r.read_text()) for r in paths], a.tolerance)
        if (a.merge or a.add_new) and out.is_file():
            old = json.loads(out.read_text())
            new = base["benchmarks"]
            base = {**old, "benchmarks": {**new, **old["benchmarks"]} if a.add_new else {**old["benchmarks"], **new}}
            base.setdefault("updates", []).append(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(base, indent=1) + "\n")
        sys.stdout.write(f"wrote {out} ({len(base['benchmarks'])} benchmarks)\n")
        return 0

    if a.cmd == "check":
        fresh = [json.loads(Path(r).read_text()) for r in a.runs]
    else:
        fresh = [json.loads(run_suite(a.gate, Path(a.out_dir), extra).read_text())]
        if not a.check:
            return 0
    bpath = baseline_path(a.baseline)
    if bpath is None:
        from reference import machine_class

        stored = ", ".join(p.stem for p in sorted(BASELINES.glob("*.json"))) or "none"
        msg = (
            f"latency check NOT GATED: no baseline for machine class {machine_class()} (stored: {stored}); ratios"
            " to the reference do not carry across CPUs. `make bench-baseline` on this machine class writes one.\n"
        )
        sys.stdout.write(msg)
        sys.stderr.write(msg)
        return 1 if a.require_baseline else 0
    baseline = json.loads(bpath.read_text())
    ok, rows = compare(fresh, baseline)
    if not ok and a.cmd == "run" and not a.no_confirm and rows:
        bad = [r["name"] for r in rows if r["failed"]]
        sys.stdout.write(format_rows(rows) + f"\n\nover the limit: {bad}; rerunning once to confirm\n")
        fresh.append(json.loads(run_suite(a.gate, Path(a.out_dir), extra).read_text()))
        ok, rows = compare(fresh, baseline)
    sys.stdout.write(f"baseline {bpath.relative_to(ROOT) if bpath.is_relative_to(ROOT) else bpath}\n")
    sys.stdout.write(format_rows(rows) + "\n")
    if not rows:
        sys.stdout.write("no benchmark of the baseline was in the run\n")
    unknown = sorted({n for f in fresh for n in ratios(f)} - set(baseline["benchmarks"]))
    if unknown:
        sys.stdout.write(f"{len(unknown)} benchmark(s) without a baseline, not checked: {', '.join(unknown[:8])}\n")
    sys.stdout.write(("latency check passed" if ok else "latency check FAILED") + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
