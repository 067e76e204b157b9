from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from patchloupe.metrics import aupro, f1_max, image_auroc, pixel_auroc
from skimage.measure import label as sk_label
from sklearn.metrics import precision_recall_curve, roc_auc_score


def slow_aupro(masks: list[np.ndarray], maps: list[np.ndarray], max_fpr: float = 0.3) -> float:
    """Straightforward reference: every distinct threshold, per-region overlap, trapezoid cut at max_fpr."""
    regions = []  # (image index, region pixels)
    for i, m in enumerate(masks):
        lab = sk_label(m, connectivity=2)
        regions += [(i, lab == k) for k in range(1, lab.max() + 1)]
    neg_total = sum(int((~m).sum()) for m in masks)
    xs, ys = [0.0], [0.0]
    for t in np.unique(np.concatenate([s.ravel() for s in maps]))[::-1]:
        flagged = [s >= t for s in maps]
        fp = sum(int((f & ~m).sum()) for f, m in zip(flagged, masks, strict=True))
        pro = np.mean([flagged[i][r].mean() for i, r in regions])
        xs.append(fp / neg_total)
        ys.append(float(pro))
    area = 0.0
    for j in range(1, len(xs)):
        x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < max_fpr:
                yc = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
                area += (max_fpr - x0) * (y0 + yc) / 2
            break
    return area / max_fpr


# ---------------------------------------------------------------- hand-computed cases


def test_image_auroc_hand() -> None:
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert image_auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert image_auroc([True, False, True], [3, 1, 2]) == pytest.approx(1.0)
    assert image_auroc([1, 0, 1], [3, 5, 2]) == pytest.approx(0.0)


def test_pixel_auroc_hand_and_varying_sizes() -> None:
    masks = [np.array([[1, 0], [0, 0]], bool), np.array([[0, 1, 0]], bool)]
    maps = [np.array([[0.9, 0.1], [0.2, 0.5]]), np.array([[0.3, 0.5, 0.6]])]
    # positives 0.9, 0.5; negatives 0.1, 0.2, 0.5, 0.3, 0.6: 0.9 beats 5; 0.5 beats 3, ties 1 -> (5 + 3.5) / 10
    assert pixel_auroc(masks, maps) == pytest.approx(0.85)


def test_aupro_hand() -> None:
    mask = np.array([[1, 1, 0, 0]], bool)
    amap = np.array([[0.9, 0.5, 0.7, 0.1]])
    # curve (0,0) (0,.5) (.5,.5) (.5,1) (1,1)
    assert aupro(mask, amap, max_fpr=0.3) == pytest.approx(0.5)
    assert aupro(mask, amap, max_fpr=1.0) == pytest.approx(0.75)
    assert aupro(mask[None], amap[None], max_fpr=0.5) == pytest.approx(0.5)


def test_aupro_regions_weigh_equally() -> None:
    # two regions (8-connectivity joins diagonal pixels): a big one found, a small one missed
    m = np.zeros((6, 6), bool)
    m[0:2, 0:3] = True  # region A, 6 px
    m[4, 4] = m[5, 5] = True  # region B, 2 px, diagonal -> one 8-connected region
    s = np.where(m, 0.0, 0.5)
    s[0:2, 0:3] = 1.0
    # A is flagged before any FP, B only after all normal pixels: PRO = 0.5 over the whole range
    assert aupro(m, s) == pytest.approx(0.5)
    assert pixel_auroc(m, s) == pytest.approx(6 / 8)


def test_f1_max_hand() -> None:
    f1, thr = f1_max([0, 1, 1, 0, 1], [0.1, 0.9, 0.8, 0.85, 0.2])
    assert f1 == pytest.approx(6 / 7)
    assert thr == pytest.approx(0.2)
    f1, thr = f1_max([0, 1], [0.3, 0.3])  # tie: only threshold 0.3 -> P=0.5, R=1
    assert f1 == pytest.approx(2 / 3) and thr == pytest.approx(0.3)


# ---------------------------------------------------------------- against scikit-learn


@pytest.mark.parametrize("seed", range(6))
def test_image_auroc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.integers(0, 6, n) / 5.0 if seed % 2 else rng.normal(size=n).astype(np.float32)
    assert image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_pixel_auroc_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = rng.random((5, 24, 20)) < 0.1
    maps = (rng.integers(0, 30, masks.shape) + 5 * masks).astype(np.float32)  # heavy ties
    want = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(want, abs=1e-6)
    assert pixel_auroc(list(masks), list(maps.astype(np.float64))) == pytest.approx(want, abs=1e-6)


def sklearn_f1_max(y: np.ndarray, s: np.ndarray) -> float:
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(f1.max())


@pytest.mark.parametrize("seed", range(6))
def test_f1_max_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(5, 300))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.integers(0, 8, n) / 7.0 if seed % 2 else rng.random(n)
    f1, thr = f1_max(y, s)
    assert f1 == pytest.approx(sklearn_f1_max(y, s), abs=1e-6)
    pred = s >= thr
    tp = np.sum(pred & (y == 1))
    assert 2 * tp / (pred.sum() + y.sum()) == pytest.approx(f1, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 4)), min_size=2, max_size=40).filter(
        lambda v: 0 < sum(b for b, _ in v) < len(v)
    )
)
def test_auroc_and_f1_property(pairs: list[tuple[bool, int]]) -> None:
    y = np.array([b for b, _ in pairs], int)
    s = np.array([v for _, v in pairs], float)
    assert image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert f1_max(y, s)[0] == pytest.approx(sklearn_f1_max(y, s), abs=1e-6)


# ---------------------------------------------------------------- AUPRO against the slow reference


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_aupro_matches_slow_reference(seed: int, max_fpr: float) -> None:
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(3):
        h, w = int(rng.integers(6, 14)), int(rng.integers(6, 14))
        m = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(0 if i else 1, 4))):
            y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
            m[y0 : y0 + rng.integers(1, 4), x0 : x0 + rng.integers(1, 4)] = True
        levels = 12 if seed % 2 else 1000
        s = (rng.integers(0, levels, (h, w)) + (levels // 3) * m * rng.random((h, w))).round() / levels
        masks.append(m)
        maps.append(s)
    assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(slow_aupro(masks, maps, max_fpr), abs=1e-9)


def test_aupro_perfect_and_random() -> None:
    rng = np.random.default_rng(0)
    m = np.zeros((4, 32, 32), bool)
    m[:, 5:12, 7:20] = True
    assert aupro(m, m.astype(np.float32) + rng.random(m.shape).astype(np.float32) * 0.5) == pytest.approx(1.0)
    # constant map: all pixels flagged at once -> FPR jumps 0 -> 1, PRO interpolates linearly: mean 0.15
    assert aupro(m, np.zeros(m.shape)) == pytest.approx(0.15)


# ---------------------------------------------------------------- validation


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="both"):
        image_auroc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="0/1"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="both"):
        f1_max([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="masks but"):
        pixel_auroc([np.zeros((2, 2), bool)], [np.zeros((2, 2)), np.zeros((2, 2))])
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc([np.zeros((2, 2), bool)], [np.zeros((2, 3))])
    with pytest.raises(ValueError, match="both"):
        pixel_auroc(np.zeros((2, 3, 3), bool), np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        aupro(np.eye(3, dtype=bool), np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="both"):
        aupro(np.zeros((3, 3), bool), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(np.eye(3, dtype=bool), np.eye(3), max_fpr=0)


def test_large_pixel_inputs_fast() -> None:
    rng = np.random.default_rng(1)
    masks = np.zeros((16, 256, 256), bool)
    masks[:8, 100:130, 60:90] = True
    maps = rng.random(masks.shape, dtype=np.float32) + masks * 0.3
    pa = pixel_auroc(masks, maps)
    assert pa == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-6)
    assert 0.2 < aupro(masks, maps) < 0.7  # uniform scores, defects shifted by 0.3
