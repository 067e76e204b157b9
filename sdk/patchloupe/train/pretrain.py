"""Generic pre-training of the pattern generator on generated textures, and the packaged default weights.

The paper pre-trains on ImageNet plus its own textures; we have neither, so the default generator is
trained on a broad mix of procedural textures (method.md §2): every family and style of
:mod:`patchloupe.data.textures`, many random renderings each, with extra variation on top of what the
renderer already randomises (phase, small rotation/scale, lighting, noise):

- texture scale: each image is rendered at 1x to 1.6x the model size and area-downsampled, so the
  generator sees periods between the native ones;
- colour: random channel permutation (p = 0.5) and grey conversion (p = 0.1);
- geometry: row triplets in both directions, column triplets (transposed, the detector's convention),
  random pixel offsets (grid jitter) and geometry-preserving mirror flips (see
  :class:`~patchloupe.train.sampling.TripletSampler`).

Fine-tuning on a user's defect-free images (``Detector.fit``) starts from these weights.

Output: ``<out>/generator.safetensors`` + ``<out>/generator.json`` (see :func:`pretrain`), the same
pair that ships in ``patchloupe/weights/pattern/`` (:func:`default_generator_path`,
:func:`load_default_generator`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from patchloupe.train.devices import resolve_device
from patchloupe.train.distributed import DistInfo, cleanup_distributed, init_distributed, unwrap_model
from patchloupe.train.rng import derive_seed
from patchloupe.train.sampling import TripletSampler
from patchloupe.train.stage1 import GeneratorTrainConfig, TrainResult, evaluate_prediction, train_generator
from patchloupe.train.weights import WeightsError, load_weights, save_weights

logger = logging.getLogger(__name__)

__all__ = [
    "GENERATOR_FORMAT",
    "PretrainConfig",
    "add_pretrain_arguments",
    "default_generator_path",
    "evaluate_families",
    "load_default_generator",
    "load_generator",
    "pretrain",
    "pretrain_images",
    "run_pretrain",
    "save_generator",
]

GENERATOR_FORMAT = "patchloupe-generator/1"
WEIGHTS_NAME = "generator"
_PRETRAIN_STREAM = 0x5EED_0001  # keys the random streams of pre-training images
_EVAL_STREAM = 0x5EED_0002  # keys the held-out evaluation images (never trained on)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def _family_styles(families: Sequence[str] | None) -> list[tuple[str, int]]:
    from patchloupe.data.textures import FAMILIES, STYLES

    fams = tuple(FAMILIES if families is None else families)
    for f in fams:
        if f not in STYLES:
            raise ValueError(f"unknown texture family {f!r}; choose from {FAMILIES}")
    return [(f, s) for f in fams for s in range(len(STYLES[f]))]


def pretrain_images(
    n_per_family_style: int,
    image_size: Sequence[int] = (256, 256),
    *,
    seed: int = 0,
    families: Sequence[str] | None = None,
    augment: bool = True,
    stream: int = _PRETRAIN_STREAM,
) -> list[np.ndarray]:
    """Render ``n_per_family_style`` uint8 ``(H, W, 3)`` textures for every (family, style) pair.

    Images are keyed by ``(seed, stream, family, style, index)``, so the training set (default
    ``stream``) and :func:`evaluate_families`' held-out set never share an image. ``augment``: texture
    scale 1x-1.6x (rendered larger, area-downsampled) and colour permutation / grey conversion.
    """
    from patchloupe.data.textures import FAMILIES, render_texture
    from patchloupe.preprocess import resize_for_model

    h, w = (int(v) for v in image_size)
    out: list[np.ndarray] = []
    for family, style in _family_styles(families):
        fam_id = FAMILIES.index(family) if family in FAMILIES else abs(hash(family)) % 1000
        for i in range(n_per_family_style):
            rng = np.random.default_rng(derive_seed(seed, stream, fam_id, style, i))
            scale = float(rng.uniform(1.0, 1.6)) if augment else 1.0
            img = render_texture(family, (round(h * scale), round(w * scale)), rng, style=style)
            img = resize_for_model(img, (h, w))
            if augment:
                if rng.random() < 0.5:
                    img = img[:, :, rng.permutation(3)]
                if rng.random() < 0.1:
                    grey = (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round()
                    img = np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
            out.append(np.ascontiguousarray(img))
    return out


# ---------------------------------------------------------------------------------------------
# generator weights (generator.safetensors + generator.json)
# ---------------------------------------------------------------------------------------------


def save_generator(
    generator: nn.Module,
    directory: str | os.PathLike[str],
    *,
    image_size: Sequence[int],
    grid: Sequence[int],
    preset: str | None = None,
    training: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    name: str = WEIGHTS_NAME,
) -> tuple[Path, Path]:
    """Write ``<name>.safetensors`` + ``<name>.json`` for a :class:`PatternGenerator`.

    JSON: ``{"format", "preset", "generator": GeneratorConfig.to_dict(), "image_size", "grid",
    "training": {...}}``. ``dtype`` (e.g. ``torch.float16``) stores floating tensors in a smaller type;
    :func:`load_generator` casts them back to the model's dtype.
    """
    model = unwrap_model(generator)
    state = model.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    config = {
        "format": GENERATOR_FORMAT,
        "preset": preset,
        "generator": model.config.to_dict(),
        "image_size": [int(v) for v in image_size],
        "grid": [int(v) for v in grid],
        "stored_dtype": str(dtype or torch.float32).replace("torch.", ""),
        "training": training or {},
    }
    return save_weights(state, config, directory, name)


def load_generator(
    directory: str | os.PathLike[str],
    name: str = WEIGHTS_NAME,
    *,
    device: str | torch.device | None = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Read a pair written by :func:`save_generator` -> ``(PatternGenerator in eval mode, config dict)``.

    Raises ``FileNotFoundError`` / :class:`~patchloupe.train.weights.WeightsError` for missing, corrupt
    or mismatched files.
    """
    from patchloupe.models.generator import GeneratorConfig, PatternGenerator

    state, config = load_weights(directory, name)
    if config.get("format") != GENERATOR_FORMAT or "generator" not in config:
        raise WeightsError(f"{Path(directory) / name}.json is not a generator config (format {config.get('format')!r})")
    model = PatternGenerator(GeneratorConfig.from_dict(config["generator"]))
    try:
        model.load_state_dict(state)  # copies cast stored fp16 tensors to the parameters' float32
    except RuntimeError as exc:
        raise WeightsError(f"{Path(directory) / name}.safetensors does not fit its config: {exc}") from exc
    return model.to(resolve_device(device)).eval(), config


def default_generator_path() -> Path:
    """Path of the packaged default generator weights, ``patchloupe/weights/pattern/generator.safetensors``.

    Located with :mod:`importlib.resources` (works for regular and editable installs). The file may be
    missing in a source checkout that has not run the pre-training; see :func:`load_default_generator`.
    """
    resource = importlib.resources.files("patchloupe").joinpath("weights", "pattern", f"{WEIGHTS_NAME}.safetensors")
    path = Path(str(resource))
    if not path.is_file():  # e.g. a multiplexed editable-install path: look in each location
        import patchloupe

        for base in getattr(patchloupe, "__path__", []):
            cand = Path(base) / "weights" / f"{WEIGHTS_NAME}.safetensors"
            if cand.is_file():
                return cand
    return path


def load_default_generator(device: str | torch.device | None = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The packaged pre-trained generator -> ``(PatternGenerator in eval mode, config dict)``.

    ``config["preset"]``, ``config["image_size"]``, ``config["grid"]`` give the geometry it was trained
    for; ``config["training"]`` how. Raises ``FileNotFoundError`` if the package ships no weights.
    """
    path = default_generator_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"no packaged generator weights at {path}; run `patchloupe pretrain --out <dir>` and copy "
            "generator.safetensors + generator.json there"
        )
    return load_generator(path.parent, WEIGHTS_NAME, device=device)


# ---------------------------------------------------------------------------------------------
# pre-training
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class PretrainConfig:
    """Settings of :func:`pretrain`.

    ``preset``: generator preset (``paper``, ``edge``, ``tiny``). ``steps`` / ``batch_size`` (per rank) /
    ``seed`` / ``lr``: the generator training (:class:`~patchloupe.train.stage1.GeneratorTrainConfig`).
    ``n_images_per_family_style``: rendered training textures per (family, style) of ``families``
    (default all). ``grid`` / ``image_size``: geometry (default ``grid x preset patch size``).
    ``ckpt_every``: checkpoint interval (default ``steps // 20``); ``resume``: continue from the latest
    checkpoint. ``threads``: ``torch.set_num_threads``. ``store_dtype``: stored weight dtype (fp16 by
    default). ``eval_images_per_family_style > 0``: held-out PSNR per family in ``generator.json``.
    """

    preset: str = "edge"
    steps: int = 8000
    batch_size: int = 16
    seed: int = 0
    n_images_per_family_style: int = 32
    grid: Sequence[int] = (4, 4)
    image_size: Sequence[int] | None = None
    families: Sequence[str] | None = None
    lr: float = 1e-3
    resume: bool = False
    ckpt_every: int | None = None
    threads: int | None = None
    progress: bool = True
    device: str | torch.device | None = None
    distributed: bool | str = "auto"
    store_dtype: torch.dtype | None = torch.float16
    eval_images_per_family_style: int = 0

    def __post_init__(self) -> None:
        from patchloupe.models.generator import PRESETS

        if self.preset not in PRESETS:
            raise ValueError(f"unknown generator preset {self.preset!r}; choose one of {sorted(PRESETS)}")

    @property
    def geometry(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(image_size, grid)`` as int pairs; the image size defaults to ``grid x preset patch size``."""
        from patchloupe.models.generator import PRESETS

        rows, cols = (int(v) for v in self.grid)
        if self.image_size is None:
            ph, pw = PRESETS[self.preset].patch_size
            return (rows * ph, cols * pw), (rows, cols)
        return (int(self.image_size[0]), int(self.image_size[1])), (rows, cols)

    def generator_training(self, out_dir: str | os.PathLike[str]) -> GeneratorTrainConfig:
        """The :func:`train_generator` settings (checkpoints in ``<out_dir>/checkpoints``)."""
        return GeneratorTrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed,
            ckpt_dir=Path(out_dir) / "checkpoints",
            ckpt_every=max(1, self.steps // 20) if self.ckpt_every is None else self.ckpt_every,
            resume=self.resume,
            progress=self.progress,
            device=self.device,
            distributed=self.distributed,
        )


def pretrain(
    out_dir: str | os.PathLike[str],
    preset: str | None = None,
    *,
    config: PretrainConfig | None = None,
    **settings: Any,
) -> TrainResult:
    """Pre-train a ``preset`` generator on generated textures and write ``<out_dir>/generator.*``.

    Settings: a :class:`PretrainConfig` and/or its fields as keywords (keywords and ``preset`` override
    the config's), e.g. ``pretrain(out, "edge", steps=8000)``. ``image_size`` defaults to ``grid x
    preset patch size`` (``edge``: 4 x 4 x 64 px = 256 x 256). Checkpoints go to
    ``<out_dir>/checkpoints`` every ``ckpt_every`` steps (default ``steps // 20``); ``resume=True``
    continues an interrupted run (same arguments) from the latest one. Under ``torchrun`` every rank
    trains on its own triplets of the same images and rank 0 writes the files. Weights are stored as
    ``store_dtype`` (fp16 halves the package size; the loss in prediction PSNR is below 0.01 dB, see
    docs/training.md).

    ``generator.json`` records ``preset``, ``generator`` (the config), ``image_size``, ``grid`` and
    ``training``: steps, batch size, world size, seed, lr, data (families, styles, images), total
    wall time (over resumes), final loss and the loss history; with
    ``eval_images_per_family_style > 0`` also held-out PSNR per family (:func:`evaluate_families`).
    """
    from patchloupe.models.generator import build_generator

    if preset is not None:
        settings["preset"] = preset
    if config is not None and not isinstance(config, PretrainConfig):
        raise TypeError(f"config must be a PretrainConfig, got {type(config).__name__}")
    cfg = PretrainConfig(**settings) if config is None else dataclasses.replace(config, **settings)
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    size, grid = cfg.geometry
    out = Path(out_dir)
    info = init_distributed(required=cfg.distributed is True) if cfg.distributed in ("auto", True) else DistInfo()
    try:
        sampler = _pretrain_sampler(cfg, size, grid, log=info.is_main)
        torch.manual_seed(cfg.seed)
        generator = build_generator(cfg.preset)
        result = train_generator(generator, sampler, cfg.generator_training(out))
        if info.is_main:
            training = _training_record(cfg, result, sampler, info.world_size)
            if cfg.eval_images_per_family_style > 0:
                training["heldout"] = evaluate_families(
                    generator, n_per_family_style=cfg.eval_images_per_family_style, image_size=size, grid=grid,
                    seed=cfg.seed, families=cfg.families, device=cfg.device,
                )  # fmt: skip
            save_generator(
                generator, out, image_size=size, grid=grid, preset=cfg.preset, training=training, dtype=cfg.store_dtype
            )
            logger.info("pre-trained generator written to %s (%d steps, final loss %.5g)", out, result.steps,
                        result.final_loss)  # fmt: skip
    finally:
        cleanup_distributed(info)
    return result


def _pretrain_sampler(cfg: PretrainConfig, size: tuple[int, int], grid: tuple[int, int], log: bool) -> TripletSampler:
    """Render the training textures and wrap them in the pre-training sampler (all four directions, jitter, flips)."""
    t0 = time.perf_counter()
    images = pretrain_images(cfg.n_images_per_family_style, size, seed=cfg.seed, families=cfg.families)
    if log:
        logger.info(
            "pre-training data: %d images %dx%d rendered in %.1f s", len(images), *size, time.perf_counter() - t0
        )
    return TripletSampler(
        images, size, grid, directions=("ltr", "rtl"), column_wise=True, seed=cfg.seed, offset_jitter=True, flips=True
    )


def _training_record(cfg: PretrainConfig, result: TrainResult, sampler: TripletSampler, world_size: int) -> dict:
    """The ``training`` entry of ``generator.json``."""
    fams = _family_styles(cfg.families)
    return {
        "steps": result.steps,
        "batch_size": cfg.batch_size,
        "world_size": world_size,
        "seed": cfg.seed,
        "lr": cfg.lr,
        "loss": "mse",
        "threads": torch.get_num_threads(),
        "device": str(resolve_device(cfg.device)),
        "torch": torch.__version__,
        "data": {
            "source": "patchloupe.data.synth (all families and styles)",
            "families": sorted({f for f, _ in fams}),
            "family_styles": len(fams),
            "images_per_family_style": cfg.n_images_per_family_style,
            "images": sampler.images.shape[0],
            "augment": "scale 1-1.6x, channel permutation p=0.5, grey p=0.1, flips, grid jitter, columns",
        },
        "wall_s": round(result.total_wall_s, 1),
        "final_loss": result.final_loss,
        "history": [{"step": h["step"], "loss": round(h["loss"], 6)} for h in result.history],
    }


def evaluate_families(
    generator: nn.Module,
    *,
    n_per_family_style: int = 4,
    image_size: Sequence[int] = (256, 256),
    grid: Sequence[int] = (4, 4),
    seed: int = 0,
    families: Sequence[str] | None = None,
    directions: Sequence[str] = ("ltr", "rtl"),
    device: str | torch.device | None = None,
) -> dict[str, dict[str, float]]:
    """Held-out prediction quality per texture family, on freshly rendered images (a random stream
    disjoint from the training images, no augmentation, native scale).

    Returns ``{family: {"psnr", "psnr_copy", "mse", "mse_copy", "n"}}`` (see
    :func:`~patchloupe.train.stage1.evaluate_prediction`) plus ``"mean"`` over families.
    """
    from patchloupe.data.textures import STYLES

    fams = list(dict.fromkeys(f for f, _ in _family_styles(families)))
    res: dict[str, dict[str, float]] = {}
    for f in fams:
        imgs = pretrain_images(
            n_per_family_style, image_size, seed=seed, families=[f], augment=False, stream=_EVAL_STREAM
        )
        assert len(imgs) == n_per_family_style * len(STYLES[f])
        r = evaluate_prediction(generator, imgs, image_size=image_size, grid=grid, directions=directions, device=device)
        res[f] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
    res["mean"] = {
        k: round(float(np.mean([res[f][k] for f in fams])), 3) for k in ("psnr", "psnr_copy", "mse", "mse_copy")
    }
    return res


# ---------------------------------------------------------------------------------------------
# CLI (mounted as `patchloupe pretrain` by patchloupe.cli)
# ---------------------------------------------------------------------------------------------


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``patchloupe pretrain`` options to ``parser`` (returns it)."""
    parser.add_argument("--out", required=True, help="output folder for generator.safetensors/.json and checkpoints")
    parser.add_argument("--preset", default="edge", help="generator preset (paper, edge, tiny); default edge")
    parser.add_argument("--steps", type=int, default=8000, help="optimizer steps (default 8000)")
    parser.add_argument("--batch-size", type=int, default=16, help="triplets per step and rank (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    parser.add_argument("--images", type=int, default=32, dest="images_per_family_style",
                        help="rendered images per texture family and style (default 32)")  # fmt: skip
    parser.add_argument("--families", nargs="+", default=None, help="texture families (default: all)")
    parser.add_argument("--grid", type=int, nargs=2, default=(4, 4), metavar=("ROWS", "COLS"))
    parser.add_argument("--ckpt-every", type=int, default=None, help="checkpoint interval in steps (default steps/20)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--eval-images", type=int, default=4,
                        help="held-out images per family and style for the PSNR report (0 = skip)")  # fmt: skip
    parser.add_argument("--fp32", action="store_true", help="store float32 weights (default float16)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    return parser


def run_pretrain(args: argparse.Namespace) -> int:
    """``patchloupe pretrain`` handler: run :func:`pretrain` from parsed arguments.

    This is CLI glue: on success it writes a one-line JSON summary to stdout and returns 0.
    """
    result = pretrain(
        args.out,
        args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        n_images_per_family_style=args.images_per_family_style,
        families=args.families,
        grid=tuple(args.grid),
        lr=args.lr,
        resume=args.resume,
        ckpt_every=args.ckpt_every,
        threads=args.threads,
        progress=not args.no_progress,
        device=args.device,
        store_dtype=None if args.fp32 else torch.float16,
        eval_images_per_family_style=args.eval_images,
    )
    json_path = Path(args.out) / f"{WEIGHTS_NAME}.json"
    if json_path.is_file():  # rank 0 only
        summary = {
            "weights": str(Path(args.out) / f"{WEIGHTS_NAME}.safetensors"),
            "steps": result.steps,
            "final_loss": round(result.final_loss, 6),
            "wall_s": round(result.total_wall_s, 1),
        }
        heldout = json.loads(json_path.read_text()).get("training", {}).get("heldout", {}).get("mean")
        if heldout:
            summary["heldout_psnr"] = heldout["psnr"]
            summary["heldout_psnr_copy"] = heldout["psnr_copy"]
        sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m patchloupe.train.pretrain`` (same options as ``patchloupe pretrain``)."""
    parser = add_pretrain_arguments(argparse.ArgumentParser(prog="python -m patchloupe.train.pretrain"))
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    return run_pretrain(args)


if __name__ == "__main__":  # pragma: no cover - exercised via the CLI
    sys.exit(_main())
