"""The CLI's ``export`` and ``benchmark`` subcommands: parsers and actions."""

from __future__ import annotations

import argparse
import json

from patchloupe import Detector
from patchloupe.cli import add_benchmark_parser, add_export_parser, cmd_export


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="patchloupe")
    sub = ap.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    add_benchmark_parser(sub)
    return ap


def test_export_command_writes_a_loadable_graph(small_memory_detector, tmp_path, capsys) -> None:
    small_memory_detector.save(tmp_path / "model")
    args = _parser().parse_args(["export", str(tmp_path / "model"), "--format", "onnx", "-o", str(tmp_path / "g.onnx"),
                                 "--batch", "dynamic"])  # fmt: skip
    assert args.func is cmd_export and args.func(args) == 0
    assert "g.onnx" in capsys.readouterr().out
    meta = json.loads((tmp_path / "g.json").read_text())
    assert meta["batch"] == "dynamic" and meta["precision"] == "fp32"
    assert Detector.load(tmp_path / "g.onnx").threshold == small_memory_detector.threshold


def test_benchmark_parser_defaults() -> None:
    args = _parser().parse_args(["benchmark"])
    assert args.model is None and args.data is None and args.threads == 2 and "onnxruntime" in args.formats
