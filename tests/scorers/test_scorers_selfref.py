"""The self-reference scorer: lighting normalisation, same-image distances, fit, robustness and save/load."""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from patchloupe import Detector
from patchloupe.detector import DetectorConfig
from patchloupe.models.comparator import ComparatorConfig, PatternComparator
from patchloupe.models.generator import build_generator
from patchloupe.scorers import scorer_class
from patchloupe.scorers.pattern import PatternScorer
from patchloupe.scorers.selfref import (
    SelfRefConfig,
    SelfRefScorer,
    border_normalize,
    cap_clipped,
    cell_average_matrix,
    cell_share,
    class_normalize,
    clipped_cells,
    clipped_fraction,
    exclusion_mask,
    fit_selfref,
    flat_field,
    lighting_copies,
    lower_median,
    lower_quantile,
    normalize_lighting,
    position_classes,
    self_distances,
)

SIZE = (128, 128)


def _texture(seed: int, kind: str = "check", n: int = 128) -> np.ndarray:
    """A periodic texture with noise: RGB uint8 (n, n, 3); "check" (period 16) or "stripes" (period 12)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n] + rng.integers(16, size=2)[:, None, None]
    if kind == "check":
        base = 128 + 60 * np.sign(np.sin(2 * np.pi * x / 16) * np.sin(2 * np.pi * y / 16))
    else:
        base = 120 + 50 * np.sin(2 * np.pi * (x + 0.5 * y) / 12)
    base = base + rng.normal(0, 5, (n, n))
    rgb = np.stack([base, base * 0.9, base * 0.8], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _with_defect(img: np.ndarray) -> np.ndarray:
    out = img.copy()
    cv2.circle(out, (84, 40), 9, (20, 200, 40), -1)
    return out


def _tiny_base() -> Detector:
    gen = build_generator("tiny")
    cfg = DetectorConfig(image_size=(96, 96), grid=(3, 3))
    return Detector(PatternScorer(gen, PatternComparator(ComparatorConfig()), (96, 96), (3, 3)), cfg)


@pytest.fixture(scope="module")
def det() -> Detector:
    torch.manual_seed(0)
    train = [_texture(s) for s in range(6)]  # a few images: 4 for the memory, 2 held out
    det = Detector.fit(train, base=_tiny_base(), scorer="selfref", image_size=SIZE, grid=(4, 4), progress=False)
    det.calibrate([_texture(s) for s in range(50, 62)])  # two held-out images cannot place a threshold
    return det


def _scores(det: Detector, images: list[np.ndarray]) -> np.ndarray:
    return det.scorer.image_scores(images)


def test_registered_and_config_validated() -> None:
    assert scorer_class("selfref") is SelfRefScorer
    with pytest.raises(ValueError, match="combine"):
        SelfRefConfig(combine="max")
    with pytest.raises(ValueError, match="normalize"):
        SelfRefConfig(normalize="clahe")
    with pytest.raises(ValueError, match="k must"):
        SelfRefConfig(k=0)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="pool_gain"):
            SelfRefConfig(pool_gain=bad)
    assert SelfRefConfig.from_dict({"k": 8}).pool_gain == 1.0  # models saved before it: the pool's maps as they were


def test_normalize_lighting_removes_gain_gamma_and_gradient() -> None:
    x = torch.from_numpy(_texture(1)).permute(2, 0, 1)[None].float().div(255.0) * 0.8 + 0.1
    ref = normalize_lighting(x)
    ramp = torch.linspace(0.7, 1.3, SIZE[1])[None, None, None, :]
    for changed in (x * 0.6, x**1.4, x * ramp):
        assert (normalize_lighting(changed) - ref).abs().mean() < 0.02
    assert (ref - x).abs().mean() > 0.05  # it does change the image


def test_flat_field_removes_gain_and_gradient_and_keeps_contrast() -> None:
    x = torch.from_numpy(_texture(2)).permute(2, 0, 1)[None].float().div(255.0) * 0.8 + 0.1
    ref = flat_field(x)
    ramp = torch.linspace(0.7, 1.3, SIZE[1])[None, None, None, :]
    for changed in (x * 0.6, x * 1.2, x * ramp):
        assert (flat_field(changed) - ref).abs().mean() < 0.01
    assert ref.mean() == pytest.approx(0.45, abs=0.01)
    assert ref.std() == pytest.approx(float(x.std() * 0.45 / x.mean()), rel=0.05)  # contrast kept


@pytest.mark.parametrize("shape", [(1, 3, 128, 128), (3, 3, 37, 91), (2, 3, 1, 64)])
def test_flat_field_divides_by_the_least_squares_plane_of_the_luminance(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(*shape, generator=g) * torch.linspace(0.5, 1.0, shape[-1])  # with a gradient to remove
    b, _, h, w = shape
    u = torch.linspace(-1.0, 1.0, w).double()
    v = torch.linspace(-1.0, 1.0, h).double()
    cols = [torch.ones(h, w).double(), u[None].expand(h, w)] + ([v[:, None].expand(h, w)] if h > 1 else [])
    basis = torch.stack(cols, -1).reshape(-1, len(cols))  # one row: no vertical slope to fit
    for batch in (x, x.contiguous(memory_format=torch.channels_last)):
        lum = batch.double().mean(1).reshape(b, -1, 1)  # (B, H W, 1)
        coef = torch.linalg.lstsq(basis.expand(b, -1, -1), lum).solution  # the plane, solved directly
        plane = (basis @ coef).reshape(b, 1, h, w).clamp_min(0.02)
        want = (batch.double() * (0.45 / plane)).clamp(0.0, 1.0)
        torch.testing.assert_close(flat_field(batch, 0.45).double(), want, atol=1e-5, rtol=0)


def test_self_distances_exclude_the_neighbourhood() -> None:
    f = torch.randn(1, 4, 6, 6)
    f[0, :, 5, 5] = f[0, :, 0, 0]  # a far twin of position (0, 0)
    f[0, :, 0, 1] = f[0, :, 0, 0]  # a near twin, inside the excluded neighbourhood
    d = self_distances(f, k=1, exclude=1)
    assert d[0, 0, 0] == pytest.approx(0.0, abs=1e-3) and d[0, 5, 5] == pytest.approx(0.0, abs=1e-3)
    f[0, :, 5, 5] = torch.randn(4) * 10
    assert self_distances(f, k=1, exclude=1)[0, 0, 0] > 0.1  # the near twin does not count
    with pytest.raises(ValueError, match="no positions"):
        self_distances(torch.randn(1, 4, 3, 3), k=1, exclude=1)


@pytest.mark.parametrize(
    ("shape", "k", "exclude", "chunk"),
    [((2, 16, 32, 32), 8, 2, 1024), ((1, 8, 5, 7), 3, 1, 4), ((3, 4, 1, 30), 2, 2, 7), ((1, 24, 13, 11), 20, 3, 50)],
)
def test_self_distances_native_selection_equals_masked_topk(
    shape: tuple[int, int, int, int], k: int, exclude: int, chunk: int
) -> None:
    """The CPU path selects in the native module; the masked ``topk`` (the exported graph's way) is the reference:
    odd grids, a single row, uneven chunks, ties (repeated features) included."""
    f = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    f[..., 0, :] = f[..., -1, :]  # exact ties between the first and the last row
    want = self_distances(f, k, exclude, chunk=chunk, use_native=False)
    torch.testing.assert_close(self_distances(f, k, exclude, chunk=chunk), want, atol=1e-5, rtol=1e-6)


def test_self_distances_nan_features_fall_back_to_the_torch_path() -> None:
    f = torch.randn(1, 6, 8, 8, generator=torch.Generator().manual_seed(2))
    f[0, 2, 3, 3] = float("nan")
    got, want = self_distances(f, 4, 1), self_distances(f, 4, 1, use_native=False)
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got[~got.isnan()], want[~want.isnan()], atol=1e-5, rtol=1e-6)


def test_self_distances_cached_mask_equals_the_computed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Grids up to MASK_CACHE_MAX positions reuse a cached mask; larger ones compute it per chunk: same result
    (an odd grid walked in uneven chunks, two images)."""
    import patchloupe.scorers.selfref as selfref

    f = torch.randn(2, 5, 7, 9)
    cached = self_distances(f, k=3, exclude=2, chunk=10)
    torch.testing.assert_close(self_distances(f, k=3, exclude=2, chunk=10, use_native=False), cached)
    monkeypatch.setattr(selfref, "MASK_CACHE_MAX", 0)
    torch.testing.assert_close(self_distances(f, k=3, exclude=2, chunk=10), cached, atol=0, rtol=0)
    torch.testing.assert_close(self_distances(f, k=3, exclude=2, chunk=10, use_native=False), cached)
    # brute force: each position's 3 nearest outside its 5 x 5 neighbourhood
    q = f.flatten(2).transpose(1, 2)
    yy, xx = torch.meshgrid(torch.arange(7), torch.arange(9), indexing="ij")
    yy, xx = yy.flatten(), xx.flatten()
    keep = ((yy[:, None] - yy[None]).abs() > 2) | ((xx[:, None] - xx[None]).abs() > 2)
    d = torch.cdist(q, q).masked_fill(~keep, float("inf"))
    want = d.topk(3, dim=-1, largest=False).values.mean(-1).reshape(2, 7, 9)
    torch.testing.assert_close(cached, want, atol=1e-4, rtol=1e-4)


def test_position_scale_is_fitted_on_held_out_images(det: Detector) -> None:
    ps = det.scorer.position_scale
    assert ps.shape == (SIZE[0] // 8, SIZE[1] // 8) and not torch.allclose(ps, torch.ones_like(ps))
    assert ps[[0, 0, -1, -1], [0, -1, 0, -1]].mean() > ps[4:-4, 4:-4].median()  # corners match less of their image


def test_combine_rules(det: Detector) -> None:
    sc = det.scorer
    s = torch.full((2, 4, 4), 0.5)
    d = torch.full((2, 4, 4), sc.config.memory_scale)
    d[1] *= 3.0  # image 1 is far from the memory (a changed texture), image 0 is like the fitted surface
    assert sc.config.combine == "gate"  # the default
    out = sc.combine(s, d)
    assert torch.allclose(out[0], torch.ones(4, 4)) and torch.equal(out[1], s[1])
    assert sc.near(d).tolist() == [True, False]
    low = SelfRefScorer(sc.memory, replace(sc.config, combine="min"), SIZE, (4, 4), sc.position_scale, sc.class_scale)
    assert torch.equal(low.combine(s, d), torch.full((2, 4, 4), 0.5))


def test_gate_reads_a_lower_quantile_so_a_large_defect_stays_with_the_memory(det: Detector) -> None:
    sc = det.scorer
    d = torch.full((1, 4, 4), sc.config.memory_scale)
    d[0, :3] *= 3.0  # 12 of 16 positions far from the memory: a defect over most of a fitted-surface image
    assert sc.config.gate_quantile == 0.25 and sc.near(d).tolist() == [True]  # 4 matching positions: the 0.25 quantile
    med = SelfRefScorer(sc.memory, replace(sc.config, gate_quantile=0.5), SIZE, (4, 4), sc.position_scale)
    assert med.near(d).tolist() == [False]  # the median (models saved before the quantile) sends it to min(s, m)
    d[0, 3, 1:] *= 3.0  # 15 of 16 far: a changed texture
    assert sc.near(d).tolist() == [False]


def test_gate_takes_the_context_height_for_images_near_the_memory(det: Detector) -> None:
    sc = det.scorer
    assert sc.memory.has_context and sc.config.context_scale != 1.0  # fitted on the held-out images
    s = torch.full((2, 16, 16), 0.5)
    d = torch.full((2, 16, 16), sc.config.memory_scale)
    d[0, 8, 8] *= 1.5  # image 0: near the memory with one odd position; image 1: far (min(s, m) = s)
    d[1] *= 3.0
    c = torch.full((2, 8, 8), sc.config.context_scale * 4.0)
    out = sc.blend(s, d, c, SIZE)
    assert out[0].amax() == pytest.approx(4.0, rel=1e-4)  # the context memory's height
    assert out[0].argmax() == sc.blend(s, d, None, SIZE)[0].argmax()  # the memory map's shape
    assert torch.allclose(out[1], sc.blend(s, d, None, SIZE)[1])  # a far image ignores the context memory


def test_a_batch_the_memory_alone_scores_takes_the_general_path_s_map(det: Detector) -> None:
    from patchloupe.scorers.memory import rescale_to_peak

    sc = det.scorer
    x = torch.from_numpy(np.stack([_texture(11), _with_defect(_texture(12))])).permute(0, 3, 1, 2).float() / 255.0
    p = sc.parts(x)
    assert bool(sc.near(p.d, p.clipped).all())  # both like the fitted surface: blend's short path
    out = sc.memory._blurred(sc.combine(p.s, p.d, p.clipped), SIZE)  # the general path, written out
    want = torch.where(sc.near(p.d, p.clipped)[:, None, None], rescale_to_peak(out, sc.height_map(p.s, p.c, SIZE)), out)
    torch.testing.assert_close(sc.blend(p.s, p.d, p.c, SIZE, p.clipped), want, rtol=0, atol=0)


def test_images_near_the_memory_skip_the_self_reference_and_keep_their_maps(det: Detector) -> None:
    sc = det.scorer
    imgs = [_texture(300), _texture(301, "stripes"), _with_defect(_texture(302))]  # near, far, near with a defect
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    s, d, c, clipped, cells = sc.parts(x)
    s_all, d_all, c_all, _, _ = sc.parts(x, every=True)
    near = sc.near(d, clipped)
    assert near.tolist() == [True, False, True]
    assert torch.isinf(s[near]).all() and torch.equal(s[~near], s_all[~near]) and torch.isfinite(s_all).all()
    assert torch.equal(d, d_all) and torch.equal(c, c_all)
    assert torch.allclose(sc.raw_map(x), sc.blend(s_all, d_all, c_all, SIZE, clipped, cells))  # the skipped s: unused


def test_level_is_fixed_or_the_training_images_median_brightness(det: Detector) -> None:
    assert det.scorer.config.level == 0.45 and det.scorer.memory.trunk.level == 0.45  # the default
    train = [_texture(s) for s in range(4)]
    dark = [(im * 0.3).astype(np.uint8) for im in train]
    for fit, want_level in ((True, float(np.median([im.mean() for im in dark])) / 255.0), (False, 0.45)):
        cfg = SelfRefConfig(fit_level=fit, lighting_copies=0)
        sc, _, _ = fit_selfref(dark, dark[:2], SIZE, (4, 4), coreset_fraction=0.1, seed=0, progress=False, config=cfg)
        assert sc.config.level == pytest.approx(want_level, abs=1e-6) and sc.memory.trunk.level == sc.config.level
    assert SelfRefConfig.from_dict({"k": 8}).level == 0.45  # models saved before it
    for bad in ({"level": 0.0}, {"level": 1.5}, {"fit_level": "yes"}):
        with pytest.raises(ValueError, match="level"):
            SelfRefConfig(**bad)


def test_self_height_joins_the_context_height_of_memory_scored_images(det: Detector) -> None:
    sc = det.scorer
    assert sc.config.self_gain == 0.0  # two held-out images: too few for the probe defects to decide
    on = SelfRefScorer(
        sc.memory, replace(sc.config, self_gain=2.0, self_offset=0.1), SIZE, sc.grid, sc.position_scale, sc.class_scale
    )
    imgs = [_texture(300), _with_defect(_texture(302))]  # both near the memory
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    p_off, p_on = sc.parts(x), on.parts(x)
    assert torch.isinf(p_off.s).all() and torch.isfinite(p_on.s).all()  # with self_gain, s is always searched
    assert on.near(p_on.d, p_on.clipped).all()
    h_off, h_on = sc.height_map(p_on.s, p_on.c, SIZE), on.height_map(p_on.s, p_on.c, SIZE)
    want = torch.maximum(h_off, 2.0 * sc.memory._blurred(p_on.s, SIZE) + 0.1)
    assert torch.allclose(h_on, want) and bool((h_on >= h_off).all())
    peaks_on = on.blend(*p_on[:3], SIZE, p_on.clipped).amax(dim=(1, 2))
    assert torch.allclose(peaks_on, h_on.amax(dim=(1, 2)))  # the image takes the larger height
    with pytest.raises(ValueError, match="self_gain"):
        SelfRefConfig(self_gain=-1.0)


def test_no_self_height_without_a_spread_to_match(det: Detector) -> None:
    from patchloupe.scorers.selfref import SelfRefParts, _select_height

    sc = det.scorer
    flat = SelfRefParts(torch.ones(8, 16, 16), torch.ones(8, 16, 16), torch.ones(8, 8, 8), torch.zeros(8))
    hold = [_texture(s) for s in range(60, 68)]
    assert _select_height(sc, [flat], hold, SIZE, seed=0) == {"self_height": False}
    assert _select_height(sc, [flat], hold[:7], SIZE, seed=0) == {}  # too few held-out images to decide


def test_fitted_settings_survive_save_and_load(det: Detector) -> None:
    import copy

    sc = det.scorer
    cfg = replace(sc.config, level=0.6, self_gain=1.5, self_offset=0.2, clip_limit=0.3)
    memory = copy.deepcopy(sc.memory)
    memory.trunk.level = 0.6
    on = SelfRefScorer(memory, cfg, SIZE, sc.grid, sc.position_scale, sc.class_scale)
    back = SelfRefScorer.from_saved(on.settings(), on.tensors(), SIZE, sc.grid)
    assert back.config == cfg and back.memory.trunk.level == 0.6
    x = np.stack([_texture(300), _with_defect(_texture(302))])
    assert np.allclose(back.infer(x)[1], on.infer(x)[1], atol=1e-6)
    assert not np.allclose(on.infer(x)[1], sc.infer(x)[1], atol=1e-3)  # the settings change the maps
    with pytest.raises(ValueError, match="level"):  # the trunk and the config must agree (the export reads the config)
        SelfRefScorer(sc.memory, cfg, SIZE, sc.grid, sc.position_scale, sc.class_scale)


def test_probe_defects_decide_the_self_height_at_fit() -> None:
    train, hold = [_texture(s) for s in range(6)], [_texture(s) for s in range(40, 48)]
    sc, scores, rec = fit_selfref(train, hold, SIZE, (4, 4), coreset_fraction=0.1, seed=0, progress=False)
    assert {"probe_auroc_context", "probe_auroc_with_self", "self_height"} <= set(rec)
    assert rec["self_height"] == (sc.config.self_gain > 0.0)
    assert rec["self_height"] == (rec["probe_auroc_with_self"] >= rec["probe_auroc_context"] + 0.05)
    off, _, rec_off = fit_selfref(
        train, hold, SIZE, (4, 4), coreset_fraction=0.1, seed=0, progress=False,
        config=SelfRefConfig(select_height=False),
    )  # fmt: skip
    assert off.config.self_gain == 0.0 and "self_height" not in rec_off
    few, _, rec_few = fit_selfref(train, hold[:7], SIZE, (4, 4), coreset_fraction=0.1, seed=0, progress=False)
    assert few.config.self_gain == 0.0 and "self_height" not in rec_few  # 7 held-out images: too few to choose


def test_clipped_fraction_counts_pixels_at_either_end_of_the_range() -> None:
    img = np.full((10, 10, 3), 128, np.uint8)
    img[0, :, 0] = 255  # one channel clipped high on 10 pixels
    img[1, :5] = 1  # 5 pixels clipped low
    img[2, :5] = 2  # 2 and 253 are inside the range
    img[3, :5] = 253
    img[4, :5, 2] = 254  # 5 more clipped high, 5 more clipped low
    img[5, 5:, 1] = 0
    x = torch.from_numpy(np.stack([img, np.full_like(img, 255)])).permute(0, 3, 1, 2).float() / 255.0
    assert clipped_fraction(x).tolist() == pytest.approx([0.25, 1.0])
    channels_last = torch.from_numpy(np.ascontiguousarray(img[None])).permute(0, 3, 1, 2).float() / 255.0  # to_batch's
    assert clipped_fraction(channels_last).tolist() == pytest.approx([0.25])


def test_clip_limit_is_fitted_and_clipped_images_leave_the_memory_branch(det: Detector) -> None:
    sc = det.scorer
    assert det.config.training["clip_limit"] == sc.config.clip_limit
    assert sc.config.clip_limit == pytest.approx(sc.config.clip_margin)  # the synthetic textures never clip
    good = _texture(303)
    bright = np.clip(good.astype(np.float32) * 1.8, 0, 255).astype(np.uint8)  # a gain that clips the light squares
    x = torch.from_numpy(np.stack([good, bright])).permute(0, 3, 1, 2).float() / 255.0
    p = sc.parts(x)
    assert p.clipped[0] <= sc.config.clip_limit < p.clipped[1]
    assert sc.near(p.d).tolist()[0] and sc.near(p.d, p.clipped).tolist() == [True, False]
    assert torch.isinf(p.s[0]).all() and torch.isfinite(p.s[1]).all()  # the clipped image is self-referenced
    mixed = sc.combine(p.s, p.d, p.clipped)
    assert torch.equal(mixed[1], torch.minimum(p.s[1], p.d[1] / sc.config.memory_scale))
    off = SelfRefScorer(sc.memory, replace(sc.config, clip_limit=1.0), SIZE, sc.grid, sc.position_scale, sc.class_scale)
    assert off.near(p.d, p.clipped).tolist()[1]  # clip_limit 1 (models saved before it): the median alone


def test_mostly_clipped_cells_are_capped_at_normal_in_min_s_m(det: Detector) -> None:
    sc = det.scorer
    assert sc.config.clip_cells == 0.5  # the default
    good = _texture(304)
    burnt = good.copy()
    burnt[:, : SIZE[1] // 2] = 255  # the left half saturated: no texture there
    x = torch.from_numpy(np.stack([good, burnt])).permute(0, 3, 1, 2).float() / 255.0
    p = sc.parts(x)
    assert p.cells is not None and p.cells.shape == p.d.shape  # an image goes to min(s, m): the shares are computed
    torch.testing.assert_close(p.cells, clipped_cells(x, p.d.shape[-2:]))
    assert bool((p.cells[1, :, : p.d.shape[-1] // 2] == 1.0).all()) and float(p.cells[1, :, -1].max()) == 0.0
    far = torch.minimum(p.s[1], p.d[1] / sc.config.memory_scale)
    capped = sc.combine(p.s, p.d, p.clipped, p.cells)[1]
    left = p.cells[1] > 0.5
    assert torch.equal(capped[left], far[left].clamp_max(1.0)) and torch.equal(capped[~left], far[~left])
    assert torch.equal(sc.combine(p.s, p.d, p.clipped)[1], far)  # no shares: no cap
    off = SelfRefScorer(sc.memory, replace(sc.config, clip_cells=1.0), SIZE, sc.grid, sc.position_scale, sc.class_scale)
    assert off.parts(x).cells is None and torch.equal(off.combine(p.s, p.d, p.clipped, p.cells)[1], far)
    assert sc.parts(x[:1]).cells is None  # every image scored by the memory: nothing to cap, nothing computed
    raw = sc.raw_map(x)
    torch.testing.assert_close(raw, sc.blend(p.s, p.d, p.c, SIZE, p.clipped, p.cells))
    with pytest.raises(ValueError, match="clip_cells"):
        SelfRefConfig(clip_cells=1.5)
    assert SelfRefConfig.from_dict({"k": 8}).clip_cells == 1.0  # models saved before it: no cap


@pytest.mark.parametrize("n_in,n_out", [(256, 32), (250, 32), (7, 3), (5, 5), (3, 7)])
def test_cell_average_matrix_is_adaptive_average_pooling(n_in: int, n_out: int) -> None:
    v = torch.randn(2, 4, n_in, generator=torch.Generator().manual_seed(n_in))
    want = torch.nn.functional.adaptive_avg_pool1d(v, n_out)
    torch.testing.assert_close(v @ cell_average_matrix(n_in, n_out).T, want)
    px = torch.rand(2, n_in, n_in + 3, generator=torch.Generator().manual_seed(1)) > 0.7
    pooled = torch.nn.functional.adaptive_avg_pool2d(px.float()[:, None], (n_out, n_out + 1))[:, 0]
    torch.testing.assert_close(cell_share(px, (n_out, n_out + 1)), pooled)


def test_cap_clipped_caps_only_cells_above_the_limit() -> None:
    far = torch.tensor([[[0.5, 3.0], [3.0, 3.0]]])
    cells = torch.tensor([[[0.9, 0.9], [0.5, 0.1]]])
    assert cap_clipped(far, cells, 0.5).tolist() == [[[0.5, 1.0], [3.0, 3.0]]]  # 0.5 is not above the limit
    assert torch.equal(cap_clipped(far, cells, 1.0), far) and torch.equal(cap_clipped(far, None, 0.5), far)


def test_lighting_copies_are_bounded_seeded_and_changed() -> None:
    imgs = [_texture(s) for s in range(5)]
    a, b = lighting_copies(imgs, 7, seed=3), lighting_copies(imgs, 7, seed=3)
    assert len(a) == 7 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(x.shape == imgs[0].shape and x.dtype == np.uint8 for x in a)
    assert all(not any(np.array_equal(x, im) for im in imgs) for x in a)
    assert len(lighting_copies(imgs, 100, seed=0)) == 10  # at most 2 per image
    assert lighting_copies(imgs, 0, seed=0) == [] and lighting_copies([], 5, seed=0) == []


def test_lighting_copies_join_the_memory(det: Detector) -> None:
    rec = det.config.training
    assert rec["lighting_copies"] == 8  # 4 training images, 2 copies each
    assert rec["held_out_near"] == rec["n_holdout"]  # held-out images of the fitted surface pass the gate


def test_copies_can_compete_for_the_training_images_memory_size() -> None:
    train, hold = [_texture(s) for s in range(4)], [_texture(s) for s in range(4, 6)]
    size = {}
    for grow in (True, False):
        cfg = SelfRefConfig(copies_grow_memory=grow)
        sc, _, rec = fit_selfref(train, hold, SIZE, (4, 4), coreset_fraction=0.1, seed=0, progress=False, config=cfg)
        size[grow] = (rec["memory_size_at_calibration"], rec["lighting_copies"])
    assert size[True][1] == size[False][1] == 8  # the same 8 copies either way
    assert size[False][0] < size[True][0]  # 4 + 8 images compete for 4 images' share
    assert size[False][0] == round(0.1 * 4 * (SIZE[0] // 8) * (SIZE[1] // 8))
    with pytest.raises(ValueError, match="copies_grow_memory"):
        SelfRefConfig(copies_grow_memory="no")  # type: ignore[arg-type]


def test_configs_saved_before_the_gate_load_as_min() -> None:
    old = {"k": 8, "exclude": 2, "normalize": "flat", "gate": 2.0, "memory_scale": 1.5, "scale": 0.7}
    cfg = SelfRefConfig.from_dict(old)
    assert cfg.combine == "min" and cfg.lighting_copies == 0 and cfg.context_scale == 1.0
    assert SelfRefConfig.from_dict({**old, "combine": "gate"}).combine == "gate"
    assert cfg.clip_limit == 1.0 and SelfRefConfig().clip_margin == 0.01  # old models: the gate ignores clipping
    assert cfg.gate_quantile == 0.5 and SelfRefConfig().gate_quantile == 0.25  # old models: the gate reads the median
    for q in (-0.1, 1.5):
        with pytest.raises(ValueError, match="gate_quantile"):
            SelfRefConfig(gate_quantile=q)
    for bad in ({"clip_limit": 1.5}, {"clip_margin": -0.1}):
        with pytest.raises(ValueError, match="clip_"):
            SelfRefConfig(**bad)
    with pytest.raises(ValueError, match="lighting_copies"):
        SelfRefConfig(lighting_copies=-1)


def test_finds_an_obvious_defect(det: Detector) -> None:
    good = [_texture(s) for s in range(100, 106)]
    bad = [_with_defect(im) for im in good]
    sg, sb = _scores(det, good), _scores(det, bad)
    assert sb.min() > sg.max()
    assert (sb >= det.threshold).all() and (sg < det.threshold).all()
    res = det.inspect(bad[0])
    y, x = np.unravel_index(np.argmax(res.anomaly_map), res.anomaly_map.shape)
    assert abs(y - 40) <= 16 and abs(x - 84) <= 16


def test_finds_a_defect_on_a_texture_it_never_saw(det: Detector) -> None:
    """Fitted on checks, tested on stripes: the memory cannot match, the image's own pattern does."""
    good = [_texture(s, "stripes") for s in range(200, 206)]
    bad = [_with_defect(im) for im in good]
    assert _scores(det, bad).min() > _scores(det, good).max()


@pytest.fixture(scope="module")
def det_min() -> Detector:
    """The same fit with ``combine="min"`` (either reference may call a position normal)."""
    from patchloupe.config import DetectorConfig as Config
    from patchloupe.scorers.selfref import fit_selfref

    torch.manual_seed(0)
    train = [_texture(s) for s in range(6)]
    scorer, _, _ = fit_selfref(
        train[:4], train[4:], SIZE, (4, 4), coreset_fraction=0.1, seed=0, progress=False,
        config=SelfRefConfig(combine="min"),
    )  # fmt: skip
    det = Detector(scorer, Config(image_size=SIZE, grid=(4, 4), scorer="selfref"))
    det.calibrate([_texture(s) for s in range(50, 62)])
    return det


@pytest.mark.parametrize("change", ["gain0.6", "gain1.5", "gamma0.7", "gamma1.4", "gradient"])
def test_good_images_stay_below_threshold_under_lighting_change(det_min: Detector, change: str) -> None:
    """``combine="min"``: lighting-robust (the default "gate" scores an image like the fitted surface by the
    memory alone, which measured less robust to lighting: docs/benchmarks.md, "Robustness")."""
    det = det_min
    good = [_texture(s).astype(np.float64) / 255.0 for s in range(300, 306)]
    if change.startswith("gain"):
        changed = [im * float(change[4:]) for im in good]
    elif change.startswith("gamma"):
        changed = [im ** float(change[5:]) for im in good]
    else:
        changed = [im * np.linspace(0.7, 1.3, SIZE[1])[None, :, None] for im in good]
    images = [np.clip(im * 255.0 + 0.5, 0, 255).astype(np.uint8) for im in changed]
    assert (_scores(det, images) < det.threshold).all()
    assert (_scores(det, [_with_defect(im) for im in images]) >= det.threshold).all()


def test_save_load_round_trip(det: Detector, tmp_path) -> None:
    det.save(tmp_path / "m")
    back = Detector.load(tmp_path / "m")
    assert isinstance(back.scorer, SelfRefScorer) and back.config.scorer == "selfref"
    assert back.scorer.config == det.scorer.config and back.threshold == det.threshold
    assert torch.equal(back.scorer.position_scale, det.scorer.position_scale)
    assert torch.equal(back.scorer.class_scale, det.scorer.class_scale)
    imgs = [_texture(7), _with_defect(_texture(8))]
    np.testing.assert_array_equal(_scores(back, imgs), _scores(det, imgs))
    np.testing.assert_array_equal(back.inspect(imgs[1]).anomaly_map, det.inspect(imgs[1]).anomaly_map)


def test_border_normalize_divides_an_elevated_band_by_its_own_median() -> None:
    s = torch.ones(2, 8, 10)
    s[0, -1, :] = 3.0  # image 0: its bottom row matches less of the image (a texture with a long period)
    s[0, -1, 4] = 9.0  # and one defect in that row
    s[1, 0, :] = 0.5  # image 1: a top row below the image median is left as it is
    out = border_normalize(s, 1)
    assert torch.allclose(out[0, -1, 1:-1].clone().index_fill_(0, torch.tensor([3]), 1.0), torch.ones(8))
    assert out[0, -1, 4] == pytest.approx(3.0) and torch.equal(out[1], s[1]) and torch.equal(out[0, :-1], s[0, :-1])
    assert torch.equal(border_normalize(s, 0), s) and torch.equal(
        border_normalize(torch.ones(1, 2, 2) * 3, 1), torch.ones(1, 2, 2) * 3
    )
    with pytest.raises(ValueError, match="border"):
        SelfRefConfig(border=-1)
    assert SelfRefConfig.from_dict({"k": 8}).border == 0 and SelfRefConfig().border == 1  # old models: unchanged


def test_position_classes_group_cells_by_their_distances_to_the_borders() -> None:
    cls, idx, med = position_classes(6, 7, 2)
    grid = cls.reshape(6, 7)
    corners = {int(grid[0, 0]), int(grid[0, -1]), int(grid[-1, 0]), int(grid[-1, -1])}
    assert len(corners) == 1 and int((grid == grid[0, 0]).sum()) == 4
    assert grid[0, 1] == grid[1, 0] == grid[-2, -1] and grid[0, 1] != grid[0, 0]  # unordered pairs: (0, 1) = (1, 0)
    assert int((grid == grid[2, 2]).sum()) == 2 * 3  # the cells 2 or more from every border: one class
    assert torch.equal(grid, grid.flip(0)) and torch.equal(grid, grid.flip(1))
    for k in range(int(idx.shape[0])):  # the padded member lists and the lower median's position
        members = idx[k][idx[k] < 6 * 7]
        assert torch.equal(members, torch.nonzero(cls == k).flatten()) and int(med[k]) == (len(members) - 1) // 2
    assert bool((idx[idx >= 6 * 7] == 6 * 7).all())
    assert int(position_classes(6, 7, 0)[0].max()) == 0  # depth 0: one class, the image


def _class_normalize_loop(s: torch.Tensor, depth: int) -> torch.Tensor:
    """class_normalize written as a loop over the classes, with torch.median."""
    cls = position_classes(int(s.shape[1]), int(s.shape[2]), depth)[0].reshape(s.shape[1:])
    out = s.clone()
    for k in cls.unique():
        f = s[:, cls == k].median(dim=1).values.clamp_min(1.0)
        out[:, cls == k] = s[:, cls == k] / f[:, None]
    return out


def test_class_normalize_divides_each_position_class_by_its_own_median() -> None:
    h, w = 12, 14
    rows, cols = np.mgrid[0:h, 0:w]
    near = np.minimum(np.minimum(np.minimum(rows, h - 1 - rows), np.minimum(cols, w - 1 - cols)), 3)  # depth 3
    s = torch.from_numpy(1.0 + 2.0 / (1.0 + near)).float()[None].repeat(2, 1, 1)  # a border handicap, worst at 0
    s[0, 0, 0] *= 4.0  # a defect in one corner
    s[0, 6, 7] = 5.0  # and one in the interior
    s[1] = 0.5 + 0 * s[1]  # an image whose every class is below 1: left as it is
    out = class_normalize(s, 3)
    defect = torch.zeros(h, w, dtype=torch.bool)
    defect[0, 0] = defect[6, 7] = True
    assert torch.allclose(out[0][~defect], torch.ones(int((~defect).sum())), atol=1e-6)  # the handicap is gone
    assert float(out[0, 0, 0]) == pytest.approx(4.0) and float(out[0, 6, 7]) == pytest.approx(5.0 / 1.5)
    assert torch.equal(out[1], s[1])
    g = torch.Generator().manual_seed(3)
    for shape, depth in (((2, 7, 13), 8), ((1, 9, 5), 2), ((3, 16, 16), 4)):
        r = torch.rand(*shape, generator=g) * 3.0
        torch.testing.assert_close(class_normalize(r, depth), _class_normalize_loop(r, depth), rtol=0, atol=0)
    with pytest.raises(ValueError, match="position_classes"):
        SelfRefConfig(position_classes=-1)
    assert SelfRefConfig.from_dict({"k": 8}).position_classes == 0 and SelfRefConfig().position_classes == 8


def test_models_saved_before_the_classes_load_with_the_bands_only(det: Detector) -> None:
    sc = det.scorer
    settings, tensors = sc.settings(), sc.tensors()
    del settings["selfref"]["position_classes"], tensors["selfref"]["class_scale"]
    old = SelfRefScorer.from_saved(settings, tensors, sc.image_size, sc.grid)
    assert old.config.position_classes == 0 and torch.equal(old.class_scale, torch.ones_like(sc.position_scale))
    bands = SelfRefScorer(sc.memory, replace(sc.config, position_classes=0), SIZE, sc.grid, sc.position_scale)
    x = torch.from_numpy(np.stack([_texture(9), _with_defect(_texture(8, "stripes"))])).permute(0, 3, 1, 2) / 255.0
    torch.testing.assert_close(old.raw_map(x.float()), bands.raw_map(x.float()))


def test_the_fitted_surface_keeps_its_fitted_position_scale_and_other_surfaces_get_the_classes(det: Detector) -> None:
    sc = det.scorer
    assert sc.class_scale.shape == sc.position_scale.shape and not torch.equal(sc.class_scale, sc.position_scale)
    x = torch.from_numpy(np.stack([_texture(9), _with_defect(_texture(8, "stripes"))])).permute(0, 3, 1, 2) / 255.0
    f, _ = sc.memory._tap_features(x.float())
    raw = self_distances(f, sc.config.k, sc.config.exclude)
    raw = raw / raw.flatten(1).median(dim=1).values[:, None, None]
    fitted = border_normalize(raw, sc.config.border) / sc.position_scale
    other = class_normalize(raw, sc.config.position_classes) / sc.class_scale
    got = sc.self_reference(f, torch.tensor([True, False]))
    torch.testing.assert_close(got[0], fitted[0])
    torch.testing.assert_close(got[1], other[1])
    p = sc.parts(x.float(), every=True)  # "auto": each image by the gate
    near = sc.near(p.d, p.clipped)
    assert near.tolist() == [True, False]
    torch.testing.assert_close(p.s, torch.where(near[:, None, None], fitted, other))
    torch.testing.assert_close(sc.parts(x.float(), every=True, branch="far").s, other)
    torch.testing.assert_close(sc.parts(x.float(), every=True, branch="near").s, fitted)
    both, far = sc.fit_parts(x.float())  # one trunk pass for the fit: both branches for every image
    torch.testing.assert_close(both.s, fitted)
    torch.testing.assert_close(far, other)
    torch.testing.assert_close(both.d, p.d)
    with pytest.raises(ValueError, match="branch"):
        sc.parts(x.float(), branch="both")
    old = SelfRefScorer(sc.memory, replace(sc.config, position_classes=0), SIZE, sc.grid, sc.position_scale)
    torch.testing.assert_close(old.self_reference(f, torch.tensor([True, False])), fitted)  # old models: bands only


@pytest.mark.parametrize("n", [1, 2, 7, 64, 65])
def test_lower_median_is_torch_median_for_even_and_odd_counts_and_ties(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    v = torch.randn(3, n, generator=g)
    v[1] = torch.randint(0, 3, (n,), generator=g).float()  # ties
    torch.testing.assert_close(lower_median(v), v.median(dim=1).values, rtol=0, atol=0)
    torch.testing.assert_close(lower_quantile(v, 0.5), lower_median(v), rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 65])
@pytest.mark.parametrize("q", [0.0, 0.1, 0.25, 0.9, 1.0])
def test_lower_quantile_is_torch_quantile_lower(n: int, q: float) -> None:
    g = torch.Generator().manual_seed(n)
    v = torch.randn(3, n, generator=g)
    v[1] = torch.randint(0, 3, (n,), generator=g).float()  # ties
    torch.testing.assert_close(lower_quantile(v, q), torch.quantile(v, q, dim=1, interpolation="lower"), rtol=0, atol=0)


def test_exclusion_mask_is_the_chebyshev_neighbourhood() -> None:
    m = exclusion_mask(4, 5, 1)
    assert m.shape == (20, 20) and m.dtype == torch.bool and bool((m == m.T).all()) and bool(m.diagonal().all())
    assert int(m[0].sum()) == 4 and int(m[6].sum()) == 9  # a corner's 2x2 and an interior position's 3x3
    assert bool(m[6, 0]) and not bool(m[6, 3])  # (1, 1) is next to (0, 0) but two columns from (0, 3)


def test_self_distances_in_the_export_graph_equal_self_distances(det: Detector) -> None:
    from patchloupe.scorers.selfref import SelfRefGraph

    f = torch.randn(2, 16, 6, 7, generator=torch.Generator().manual_seed(0))
    cfg = det.scorer.config
    want = self_distances(f, cfg.k, cfg.exclude)
    torch.testing.assert_close(SelfRefGraph(det.scorer)._self_distances(f), want, atol=1e-5, rtol=1e-5)


def test_the_lighting_trunk_runs_folded_at_inference(det: Detector) -> None:
    mem = det.scorer.memory
    folded = mem._inference_trunk()
    assert folded is not mem.trunk and isinstance(folded, type(mem.trunk)) and folded.normalize == mem.trunk.normalize
    x = torch.rand(2, 3, *SIZE)
    with torch.inference_mode():
        for a, b in zip(folded(x), mem.trunk(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
