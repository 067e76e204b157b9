"""``patchloupe`` command line: mirrors the Python API (fit, inspect, evaluate, demo, pretrain, generate)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


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


def _expand_inputs(paths: Sequence[str]) -> Iterator[tuple[str, str]]:
    """Yield (kind, path) with kind in image/video/missing; folders expand to their images and videos."""
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            if not files:
                yield "missing", f"{p} (a folder with no images or videos)"
            for f in files:
                yield ("video" if f.suffix.lower() in VIDEO_SUFFIXES else "image"), str(f)
        elif p.is_file():
            yield ("video" if p.suffix.lower() in VIDEO_SUFFIXES else "image"), str(p)
        else:
            yield "missing", str(p)


def _video_frames(path: str, every: int) -> Iterator[Any]:
    import cv2

    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise ValueError(f"{path}: cannot open the video")
    try:
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if i % every == 0:
                yield i, frame
            i += 1
    finally:
        cap.release()


def cmd_inspect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    det = _load(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_ok = n_bad = n_anom = 0
    records: list[dict[str, Any]] = []

    def handle(res: Any, name: str) -> None:
        nonlocal n_ok, n_bad, n_anom
        if not res.ok:
            n_bad += 1
            print(f"error: {res.source or name}: {res.error}", file=sys.stderr)
            records.append({"source": res.source or name, "error": res.error})
            return
        n_ok += 1
        n_anom += int(res.is_anomalous)
        res.source = res.source or name
        if not args.no_images:
            res.save(out / f"{name}.png")
        d = res.to_dict()
        records.append(d)
        if args.json:
            print(json.dumps(d), flush=True)

    inputs = list(_expand_inputs(args.paths))
    images = [p for kind, p in inputs if kind == "image"]
    for kind, p in inputs:
        if kind == "missing":
            n_bad += 1
            print(f"error: {p}: no such file or folder", file=sys.stderr)
            records.append({"source": p, "error": "no such file or folder"})
    bar = tqdm(total=len(images), desc="inspect", unit="img", disable=args.quiet or args.json)
    names = _unique_names(images)
    for res, name in zip(det.inspect_many(images, batch_size=args.batch_size, threshold=args.threshold), names):
        handle(res, name)
        bar.update(1)
    bar.close()
    for kind, p in inputs:
        if kind != "video":
            continue
        stem = Path(p).stem
        try:
            frames = list(_video_frames(p, args.every))
        except ValueError as exc:
            n_bad += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        results = det.inspect_many(
            (f for _, f in frames), batch_size=args.batch_size, threshold=args.threshold, bgr=True
        )
        for (i, _), res in zip(frames, tqdm(results, total=len(frames), desc=stem, disable=args.quiet or args.json)):
            res.source = f"{p}#frame={i}"
            handle(res, f"{stem}_f{i:06d}")
    (out / "results.json").write_text(json.dumps(records, indent=2))
    if not args.json:
        print(f"{n_ok} inspected, {n_anom} anomalous, {n_bad} failed; results in {out}")
    return 1 if n_bad else 0


def _unique_names(paths: Sequence[str]) -> list[str]:
    """Output names from file stems, disambiguated with the parent folder when stems repeat."""
    stems = [Path(p).stem for p in paths]
    dup = {s for s in stems if stems.count(s) > 1}
    return [f"{Path(p).parent.name}_{s}" if s in dup else s for p, s in zip(paths, stems)]


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patchloupe", description="Unsupervised visual defect detection.")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="inspect images, folders or videos")
    s.add_argument("paths", nargs="+", help="image files, folders, or video files")
    s.add_argument("--model", help="model folder (default: the built-in model)")
    s.add_argument("--out", required=True, help="output folder for overlays and results.json")
    s.add_argument("--json", action="store_true", help="print one JSON line per result")
    s.add_argument("--threshold", type=float, default=None, help="override the model's threshold")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--every", type=int, default=1, help="inspect every N-th video frame")
    s.add_argument("--no-images", action="store_true", help="write no overlay images")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("fit", help="train a detector on defect-free images")
    s.add_argument("images", help="folder of defect-free images")
    s.add_argument("-o", "--output", required=True, help="model folder to write")
    s.add_argument("--base", help="model folder to start from (default: the built-in model)")
    s.add_argument(
        "--scorer",
        choices=("auto", "pattern", "memory"),
        default="auto",
        help="pattern: the paper's generator + comparator (regular textures, robust to texture change); "
        "memory: nearest-neighbour ImageNet features (irregular real surfaces); auto: memory when the "
        "images are not predictable from their neighbours (see README)",
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

    try:
        from patchloupe.train.pretrain import add_pretrain_arguments, run_pretrain
    except ImportError:  # pragma: no cover - training extras always ship; keep the CLI usable regardless
        pass
    else:
        s = sub.add_parser("pretrain", help="pre-train the generic generator on generated textures")
        add_pretrain_arguments(s)
        s.set_defaults(func=lambda a: run_pretrain(a) or 0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
