"""``patchloupe`` command line: mirrors the Python API (fit, inspect, serve, evaluate, demo, pretrain, generate)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STATUS_EVERY_S = 30.0  # status line period when stderr is not a terminal


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _grid(text: str) -> tuple[int, int] | str:
    if text == "auto":
        return text
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"grid must be 'auto' or ROWSxCOLS, got {text!r}") from exc
    return rows, cols


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must be HxW, got {text!r}") from exc
    return h, w


def _load(model: str | None) -> Any:
    from patchloupe import Detector

    return Detector.load(model)


def cmd_inspect(args: argparse.Namespace) -> int:
    import signal
    import threading

    from tqdm import tqdm

    from patchloupe.outputs import RunOutputs
    from patchloupe.sources import open_source
    from patchloupe.stream import stream

    if bool(args.sources) == bool(args.watch):
        raise ValueError(
            "give either SOURCE... (files, folders, globs, videos, a camera index or a URL) or --watch DIR"
        )
    save = "none" if args.no_images else args.save
    source = open_source(
        args.watch or args.sources,
        every=args.every,
        watch=bool(args.watch),
        exclude=[args.out],
        max_reconnects=args.reconnects,
    )
    outputs = RunOutputs(args.out, save=save, echo=sys.stdout if args.json else None)  # fails now if unwritable
    try:
        det = _load(args.model)
        if args.pool:
            det = det.pooled(args.pool)
            if args.threshold is not None:  # the pool's admission reads the detector's threshold
                det.threshold = args.threshold
    except BaseException:
        outputs.close()
        raise
    total = None if source.endless else source.total()
    bar = tqdm(
        total=total,
        desc="inspect",
        unit="frame",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=True if args.quiet else None,  # None: shown on a terminal only
    )

    def on_event(ev: Any) -> None:
        tqdm.write(f"warning: {ev.origin}: {ev.message}", file=sys.stderr)

    s = stream(
        det,
        source,
        batch_size=args.batch_size,
        threshold=args.threshold,
        drop=args.drop,
        queue_size=args.queue,
        keep_image=save != "none",
        on_event=on_event,
    )
    stopped_by: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if stopped_by:  # a second signal: stop now
            raise KeyboardInterrupt
        stopped_by.append(signal.Signals(signum).name)
        s.stop()

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    # no terminal (a service's log): an endless source still reports a status line now and then
    log_status = bar.disable and not args.quiet and source.endless
    last = last_logged = time.monotonic()
    try:
        for item in s:
            outputs.write(item)
            if not item.ok:
                tqdm.write(f"error: {item.source}: {item.result.error}", file=sys.stderr)
            bar.update(1)
            now = time.monotonic()
            if now - last > 0.5:
                bar.set_postfix_str(s.stats.line(), refresh=False)
                last = now
            if log_status and now - last_logged > STATUS_EVERY_S:
                print(f"status: {s.stats.line()}", file=sys.stderr, flush=True)
                last_logged = now
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
        s.close()
        bar.set_postfix_str(s.stats.line(), refresh=False)
        bar.close()
        outputs.close()
    st = s.stats
    extra = f", {st.dropped} dropped" if st.dropped else ""
    extra += f", {st.reconnects} reconnects" if st.reconnects else ""
    extra += f"; stopped by {stopped_by[0]}" if stopped_by else ""
    if args.pool:
        extra += f"; {det.scorer.pooled} scored against the stream pool ({det.scorer.kept_out} flagged, kept out of it)"
    summary = f"{st.inspected} inspected, {st.flagged} anomalous, {st.failed} failed{extra}; results in {args.out}"
    print(summary, file=sys.stderr if args.json else sys.stdout)
    if stopped_by and not source.endless:
        return 130  # a finite input left unfinished
    return 1 if st.failed or st.source_errors else 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from patchloupe.serve import serve
    except ImportError as exc:
        print(f"error: the service needs the 'serve' extra: pip install 'patchloupe[serve]' ({exc})", file=sys.stderr)
        return 2
    det = _load(args.model)
    if args.threshold is not None:
        det.threshold = args.threshold
    serve(
        det,
        host=args.host,
        port=args.port,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        model_id=args.model or "default",
    )
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from patchloupe import Detector

    kwargs: dict[str, Any] = {
        "grid": args.grid,
        "generator_steps": args.generator_steps,
        "comparator_steps": args.comparator_steps,
        "false_alarm_rate": args.far,
        "seed": args.seed,
        "progress": not args.quiet,
        "batch_size": args.batch_size,
        "scorer": args.scorer,
        "coreset_fraction": args.coreset_fraction,
    }
    if args.image_size:
        kwargs["image_size"] = args.image_size
    if args.base:
        kwargs["base"] = args.base
    det = Detector.fit(args.images, **kwargs)
    det.save(args.output)
    t = det.config.training
    print(
        f"saved {args.output}: {det.config.scorer} scorer, grid {det.config.grid[0]}x{det.config.grid[1]}, "
        f"threshold {det.threshold:.4g}, "
        f"{t.get('n_train')} train + {t.get('n_holdout')} held-out images, {t.get('wall_s')} s"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    det = _load(args.model)
    res = det.evaluate(args.dataset, batch_size=args.batch_size, progress=not args.quiet and not args.json)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for key in (
            "image_auroc",
            "pixel_auroc",
            "aupro",
            "f1_max",
            "n_images",
            "n_good",
            "n_defect",
            "latency_ms_median",
        ):
            if key in res:
                v = res[key]
                print(f"{key:>18}: {v:.4f}" if isinstance(v, float) else f"{key:>18}: {v}")
        for kind, v in res.get("per_kind_image_auroc", {}).items():
            print(f"{'image_auroc ' + kind:>18}: {v:.4f}")
        if res["errors"]:
            print(f"{len(res['errors'])} images failed", file=sys.stderr)
    return 1 if res["errors"] else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from patchloupe.demo import run_demo

    summary = run_demo(out_dir=args.out, data_dir=args.data)
    print(summary["text"])
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from patchloupe.data.dataset import generate_dataset

    families = args.families.split(",") if args.families else None
    paths = generate_dataset(
        args.root,
        families=families,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_defect_per_kind=args.n_test_defect,
        size=args.size,
        seed=args.seed,
        style=args.style,
    )
    print("\n".join(str(p) for p in paths))
    return 0


# ---------------------------------------------------------------- export and benchmark
def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``patchloupe export MODEL --format onnx -o OUT [--half] [--int8 [--calibration DIR]] [--batch dynamic]``."""
    from patchloupe.export import DEFAULT_OPSET, FORMATS

    s = subparsers.add_parser("export", help="export a model as one graph for ONNX Runtime / OpenVINO / TensorRT")
    s.add_argument("model", nargs="?", default=None, help="model folder (default: the built-in model)")
    s.add_argument("--format", choices=FORMATS, default="onnx")
    s.add_argument("-o", "--out", required=True, help="graph file (model.onnx) or folder")
    s.add_argument("--half", action="store_true", default=None, help="float16 networks (default for engine)")
    s.add_argument("--int8", action="store_true", help="ONNX Runtime int8 quantization of the networks")
    s.add_argument("--calibration", help="folder of defect-free images for static int8 (default: dynamic)")
    s.add_argument("--batch", default="1", choices=["1", "dynamic"])
    s.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    s.add_argument("--simplify", action="store_true", help="run onnxslim on the graph")
    s.set_defaults(func=cmd_export)
    return s


def cmd_export(args: argparse.Namespace) -> int:
    from patchloupe import Detector

    cal = None
    if args.calibration:
        from patchloupe.data import list_images

        cal = list_images(args.calibration)
    det = Detector.load(args.model)
    batch = "dynamic" if args.batch == "dynamic" else 1
    path = det.export(
        args.out, format=args.format, half=args.half, int8=args.int8, calibration=cal, batch=batch,
        opset=args.opset, simplify=args.simplify,
    )  # fmt: skip
    print(f"wrote {path} and {path.with_suffix('.json').name}")
    return 0


def add_benchmark_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``patchloupe benchmark [--model M] [--data CATEGORY] [--formats ...] [--out DIR]``."""
    from patchloupe.benchmark import FORMATS

    s = subparsers.add_parser("benchmark", help="one model in every format: size, load time, ms/image, AUROC")
    s.add_argument("--model", default=None, help="model folder (default: the built-in model)")
    s.add_argument("--data", default=None, help="MVTec-layout category (default: generated sample data)")
    s.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--repeats", type=int, default=10)
    s.add_argument("--calibration", type=int, default=16, help="defect-free images for static int8 (0: dynamic)")
    s.add_argument("--out", default="benchmark_out", help="folder for the graphs, data and benchmark.json")
    s.set_defaults(func=cmd_benchmark)
    return s


def cmd_benchmark(args: argparse.Namespace) -> int:
    from patchloupe.benchmark import run_benchmark, to_markdown

    rows = run_benchmark(
        args.model, args.data, args.out, formats=args.formats, threads=args.threads, repeats=args.repeats,
        calibration=args.calibration,
    )  # fmt: skip
    Path(args.out, "benchmark.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(to_markdown(rows))
    return 0


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patchloupe", description="Unsupervised visual defect detection.")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "inspect",
        help="inspect images, folders, globs, videos, cameras, streams or a hot folder",
        description="Inspect a source as its frames arrive. SOURCE is an image, a folder (searched recursively), "
        "a glob ('parts/**/*.png'), a video, a camera index (0) or a stream URL (rtsp://, http://); "
        "--watch DIR inspects each new file of a hot folder once it is completely written. One JSON line per "
        "result goes to DIR/results.jsonl (and stdout with --json), results.json is written at the end.",
    )
    s.add_argument("sources", nargs="*", metavar="SOURCE", help="files, folders, globs, videos, camera index, URL")
    s.add_argument("--watch", metavar="DIR", help="hot folder: inspect new files once completely written")
    s.add_argument("--model", help="model folder (default: the built-in model)")
    s.add_argument("--out", required=True, help="output folder for overlays, results.jsonl and results.json")
    s.add_argument("--json", action="store_true", help="also print one JSON line per result (errors too) to stdout")
    s.add_argument("--threshold", type=float, default=None, help="override the model's threshold")
    s.add_argument("--batch-size", type=_positive_int, default=8)
    s.add_argument("--every", type=_positive_int, default=1, help="inspect every N-th video or stream frame")
    s.add_argument(
        "--save",
        choices=("all", "flagged", "none"),
        default="flagged",
        help="overlays to save (default: flagged)",
    )
    s.add_argument("--no-images", action="store_true", help="same as --save none")
    s.add_argument(
        "--drop",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drop the oldest frame when inference falls behind a live source (default: on for cameras and "
        "streams; files, folders, videos and hot folders are never dropped)",
    )
    s.add_argument(
        "--queue", type=_positive_int, default=None, help="frames read ahead (default: batch size if live, else 2x)"
    )
    s.add_argument(
        "--reconnects",
        type=int,
        default=None,
        help="cameras and streams: give up after N failed reconnects in a row (default: retry forever)",
    )
    s.add_argument(
        "--pool",
        type=int,
        default=0,
        metavar="N",
        help="also compare each image with the last N inspected while the stream has drifted from the fitted surface "
        "(a product or texture change; with the built-in model always; Detector.pooled; selfref models; 0: off); "
        "an image flagged at --threshold (default the model's) does not join those N",
    )
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar or status line")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("serve", help="serve a model over HTTP on this machine (needs the 'serve' extra)")
    s.add_argument("model", nargs="?", default=None, help="model folder (default: the built-in model)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--threshold", type=float, default=None, help="start with this threshold")
    s.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload")
    s.add_argument("--max-pixels", type=_positive_int, default=40_000_000, help="largest accepted image (H x W)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("fit", help="train a detector on defect-free images")
    s.add_argument("images", help="folder of defect-free images")
    s.add_argument("-o", "--output", required=True, help="model folder to write")
    s.add_argument("--base", help="model folder to start from (default: the built-in pattern model)")
    s.add_argument(
        "--scorer",
        choices=("selfref", "auto", "pattern", "memory"),
        default="selfref",
        help="selfref (default): ImageNet features compared with a memory of the training images and with the "
        "same image (real surfaces, changes of texture); memory: the memory alone; pattern: the paper's "
        "generator + comparator (regular textures); auto: memory or pattern by how predictable the images "
        "are from their neighbours (see README)",
    )
    s.add_argument("--coreset-fraction", type=float, default=0.1, help="memory scorer: share of features kept")
    s.add_argument("--grid", type=_grid, default="auto", help="'auto' or ROWSxCOLS")
    s.add_argument("--image-size", type=_size, default=None, help="HxW the images are resized to")
    s.add_argument("--generator-steps", type=int, default=300)
    s.add_argument("--comparator-steps", type=int, default=400)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--far", type=float, default=0.01, help="false-alarm rate for the threshold")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_fit)

    s = sub.add_parser("evaluate", help="evaluate on an MVTec-AD-layout category")
    s.add_argument("dataset")
    s.add_argument("--model", help="model folder (default: the built-in model)")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--json", action="store_true")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("demo", help="generate sample data and inspect it with the default model")
    s.add_argument("--out", default="demo_out")
    s.add_argument("--data", default="sample_data")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("generate", help="write procedural textures with defects in MVTec-AD layout")
    s.add_argument("root")
    s.add_argument("--families", default=None, help="comma-separated families (default: all)")
    s.add_argument("--n-train", type=int, default=60)
    s.add_argument("--n-test-good", type=int, default=20)
    s.add_argument("--n-test-defect", type=int, default=6, help="test images per defect kind")
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--style", type=int, default=0)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_generate)

    add_export_parser(sub)
    add_benchmark_parser(sub)

    s = sub.add_parser("pretrain", help="pre-train the generic generator on generated textures")
    if argv and argv[0] == "pretrain":  # the trainer is imported only for the training command itself
        from patchloupe.train.pretrain import add_pretrain_arguments, run_pretrain

        add_pretrain_arguments(s)
        s.set_defaults(func=lambda a: run_pretrain(a) or 0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(list(argv) if argv is not None else sys.argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
