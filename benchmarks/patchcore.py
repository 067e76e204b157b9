"""A plain PatchCore baseline (Roth et al., 2022) on MobileNetV2 features: the reference beside every figure.

Not part of the SDK. The recipe, kept deliberately plain:

* features: ImageNet MobileNetV2 (``patchloupe.models.backbone``), torchvision ``features`` 6 (stride 8,
  32 channels) and 13 (stride 16, 96 channels); each 3x3-average-pooled (stride 1, zero padding counted),
  the stride-16 map upsampled bilinearly to the stride-8 grid and concatenated: 128-d patch vectors;
* memory: a greedy k-center coreset of 10 % of the training patch vectors (exact greedy, seeded);
* score: each test patch's Euclidean distance to its nearest memory vector; the patch map is upsampled
  bilinearly to the model size and blurred with a Gaussian (sigma 4 px); the image score is its maximum.

``python benchmarks/patchcore.py DATASET_DIR`` fits on ``train/good`` and prints the metrics as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

__all__ = ["PatchCore", "evaluate_patchcore", "greedy_coreset"]


def greedy_coreset(x: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices ``(n,)`` of an exact greedy k-center subset of ``x`` ``(N, C)``: each pick is the vector
    farthest (Euclidean) from those already picked, starting from a seeded random one."""
    N = x.shape[0]
    if not 0 < n <= N:
        raise ValueError(f"coreset size must be in 1..{N}, got {n}")
    z = x.float().contiguous()
    sq = z.square().sum(1)
    picked = torch.empty(n, dtype=torch.long)
    picked[0] = int(torch.randint(N, (1,), generator=torch.Generator().manual_seed(seed)))
    mind = torch.full((N,), float("inf"))
    for i in range(1, n):
        c = z[picked[i - 1]]
        d = torch.addmv(sq, z, c, alpha=-2.0).add_(float(c.square().sum()))  # |z - c|^2
        torch.minimum(mind, d, out=mind)
        picked[i] = int(torch.argmax(mind))
    return picked


class PatchCore:
    """PatchCore with a MobileNetV2 trunk: ``fit`` on defect-free RGB images, then ``predict``.

    ``taps``: the trunk's ``features`` indices (the first sets the grid); ``coreset_ratio``: the share of
    training patch vectors kept; ``sigma``: the blur of the anomaly map in model pixels; ``weights``: a
    MobileNetV2 weights file (default: ``patchloupe.models.backbone.default_weights_path``).
    """

    def __init__(
        self,
        taps: tuple[int, int] = (6, 13),
        coreset_ratio: float = 0.1,
        sigma: float = 4.0,
        seed: int = 0,
        weights: str | Path | None = None,
        batch_size: int = 8,
    ) -> None:
        from patchloupe.models.backbone import load_backbone

        if not 0 < coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}")
        self.trunk = load_backbone(weights, tuple(taps), "mobilenet_v2")
        self.coreset_ratio = coreset_ratio
        self.sigma = sigma
        self.seed = seed
        self.batch_size = batch_size
        self.image_size: tuple[int, int] | None = None  # (H, W), set by fit
        self.bank: torch.Tensor | None = None  # (M, C)
        self._bank_sq: torch.Tensor | None = None  # (M,)

    # -------------------------------------------------------------------------------------------- features
    def _to_batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 ``(H, W, 3)`` images -> float ``(B, 3, h, w)`` in [0, 1] at the model size."""
        assert self.image_size is not None
        h, w = self.image_size
        out = []
        for im in images:
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"images must be RGB uint8 (H, W, 3), got {im.dtype} {im.shape}")
            out.append(im if im.shape[:2] == (h, w) else cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR))
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div_(255.0)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch features ``(B, C, h, w)`` on the first tap's grid for images ``x`` ``(B, 3, H, W)``."""
        fine, coarse = (F.avg_pool2d(f, 3, stride=1, padding=1) for f in self.trunk(x))
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([fine, coarse], dim=1)

    def _batches(self, images: Sequence[np.ndarray]):  # noqa: ANN202 - generator of tensors
        for i in range(0, len(images), self.batch_size):
            yield self._to_batch(images[i : i + self.batch_size])

    # ------------------------------------------------------------------------------------------------- fit
    def fit(self, images: Sequence[np.ndarray], image_size: tuple[int, int] = (256, 256)) -> PatchCore:
        """Build the memory from defect-free RGB uint8 ``images`` resized to ``image_size`` ``(H, W)``."""
        if len(images) == 0:
            raise ValueError("fit needs at least one image")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        t0 = time.perf_counter()
        feats = [self.features(x) for x in self._batches(images)]
        z = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in feats])
        n = max(1, round(self.coreset_ratio * z.shape[0]))
        t1 = time.perf_counter()
        self.bank = z[greedy_coreset(z, n, self.seed)].contiguous()
        self._bank_sq = self.bank.square().sum(1)
        log.info(
            "PatchCore memory: %d of %d vectors (%d-d); features %.1f s, coreset %.1f s",
            n,
            z.shape[0],
            z.shape[1],
            t1 - t0,
            time.perf_counter() - t1,
        )
        return self

    # --------------------------------------------------------------------------------------------- predict
    @torch.no_grad()
    def _nn_distance(self, f: torch.Tensor) -> torch.Tensor:
        """Nearest-memory distances ``(B, h, w)`` of patch features ``f`` ``(B, C, h, w)``."""
        assert self.bank is not None and self._bank_sq is not None
        B, C, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, C)
        d2 = torch.addmm(self._bank_sq, q, self.bank.T, alpha=-2.0)  # (Q, M): |b|^2 - 2 q.b
        d2 = d2.amin(dim=1).add_(q.square().sum(1)).clamp_(min=0)
        return d2.sqrt_().view(B, h, w)

    def predict(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Image scores ``(B,)`` and anomaly maps ``(B, H, W)`` (float32, at the model size) of RGB uint8 ``images``."""
        if self.bank is None or self.image_size is None:
            raise RuntimeError("PatchCore.predict before fit")
        H, W = self.image_size
        maps = []
        for x in self._batches(images):
            d = self._nn_distance(self.features(x))
            up = F.interpolate(d[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0].numpy()
            maps += [cv2.GaussianBlur(m, (0, 0), self.sigma, borderType=cv2.BORDER_REFLECT) for m in up]
        out = np.stack(maps).astype(np.float32, copy=False)
        return out.reshape(len(out), -1).max(axis=1), out


def evaluate_patchcore(
    dataset_dir: str | Path,
    image_size: tuple[int, int] = (256, 256),
    n_train: int | None = None,
    coreset_ratio: float = 0.1,
    seed: int = 0,
    max_fpr: float = 0.3,
) -> dict[str, Any]:
    """Fit PatchCore on ``dataset_dir``'s ``train/good`` (the first ``n_train`` images when given) and score
    its test set: ``image_auroc``, ``pixel_auroc``, ``aupro`` (maps resized back to each image's size),
    ``f1_max``, per-kind image AUROC, memory size, fit seconds and median predict ms per image."""
    from patchloupe.data import MVTecCategory, read_image
    from patchloupe.metrics import aupro, f1_max, image_auroc, pixel_auroc

    cat = MVTecCategory(dataset_dir)
    train = cat.train_good()[:n_train] if n_train else cat.train_good()
    t0 = time.perf_counter()
    pc = PatchCore(coreset_ratio=coreset_ratio, seed=seed).fit([read_image(p) for p in train], image_size)
    fit_s = time.perf_counter() - t0
    labels, scores, maps, masks, kinds, ms = [], [], [], [], [], []
    for item in cat.test_items():
        img = read_image(item.path)
        t = time.perf_counter()
        s, m = pc.predict([img])
        ms.append(1000 * (time.perf_counter() - t))
        h, w = img.shape[:2]
        labels.append(item.label)
        scores.append(float(s[0]))
        maps.append(cv2.resize(m[0], (w, h), interpolation=cv2.INTER_LINEAR))
        masks.append(cat.load_mask(item, img.shape))
        kinds.append(item.defect)
    y, sc = np.asarray(labels), np.asarray(scores)
    f1, thr = f1_max(y, sc)
    per_kind = {
        k: float(image_auroc(y[[d in (k, "good") for d in kinds]], sc[[d in (k, "good") for d in kinds]]))
        for k in cat.defect_kinds
        if k in kinds
    }
    assert pc.bank is not None
    return {
        "dataset": str(dataset_dir),
        "method": "patchcore-mobilenet_v2",
        "n_train": len(train),
        "n_test": len(labels),
        "image_size": list(image_size),
        "memory_size": int(pc.bank.shape[0]),
        "image_auroc": float(image_auroc(y, sc)),
        "pixel_auroc": float(pixel_auroc(masks, maps)),
        "aupro": float(aupro(masks, maps, max_fpr=max_fpr)),
        "f1_max": float(f1),
        "f1_threshold": float(thr),
        "per_kind_image_auroc": per_kind,
        "fit_s": round(fit_s, 2),
        "median_predict_ms": round(float(np.median(ms)), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="an MVTec-AD-layout category folder")
    p.add_argument("--n-train", type=int, default=None, help="first N train/good images (default: all)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--coreset", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(a.threads)
    res = evaluate_patchcore(a.dataset, (a.size, a.size), a.n_train, a.coreset)
    sys.stdout.write(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
