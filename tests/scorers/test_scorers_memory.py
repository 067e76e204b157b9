"""The feature-memory scorer: backbone, coreset, blur, FeatureMemory and the Detector's memory mode."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import patchloupe.scorers.memory as memory_module
import pytest
import torch
import torch.nn.functional as F
from patchloupe import Detector
from patchloupe.cli import main
from patchloupe.detector import DetectorConfig, ModelError
from patchloupe.models.backbone import (
    BackboneUnavailable,
    MobileNetV2Features,
    build_trunk,
    default_weights_path,
    load_backbone,
)
from patchloupe.models.comparator import ComparatorConfig, PatternComparator
from patchloupe.models.generator import build_generator
from patchloupe.scorers.memory import (
    IVF_MIN_VECTORS,
    FeatureMemory,
    MemoryConfig,
    MemoryScorer,
    _aggregate,
    _gaussian_blur,
    _pca,
    _rows,
    greedy_coreset,
    rescale_to_peak,
    to_batch,
    upsample_blur_matrix,
)
from patchloupe.scorers.pattern import PatternScorer

SIZE = (64, 64)


def _surface(seed: int, n: int = 64) -> np.ndarray:
    """A stationary striped texture with noise: RGB uint8 (n, n, 3)."""
    rng = np.random.default_rng(seed)
    x = np.arange(n)
    base = 128 + 50 * np.sin(2 * np.pi * (x[None, :] + rng.integers(8)) / 8.0) + rng.normal(0, 6, (n, n))
    return np.repeat(np.clip(base, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _with_hole(img: np.ndarray) -> np.ndarray:
    out = img.copy()
    cv2.circle(out, (40, 24), 6, (10, 10, 10), -1)
    return out


@pytest.fixture(scope="module")
def memory_det() -> Detector:
    torch.manual_seed(0)
    train = [_surface(s) for s in range(12)]
    return Detector.fit(
        train, base=_tiny_base(), scorer="memory", image_size=SIZE, coreset_fraction=0.25, progress=False
    )


def _tiny_base() -> Detector:
    gen = build_generator("tiny")
    comp = PatternComparator(ComparatorConfig())
    cfg = DetectorConfig(image_size=(96, 96), grid=(3, 3))
    return Detector(PatternScorer(gen, comp, (96, 96), (3, 3)), cfg)


# ---------------------------------------------------------------------------------------------- backbone
def test_backbone_loads_imagenet_weights_and_taps_strides() -> None:
    net = load_backbone(taps=(3, 6, 13))
    assert net.channels == (24, 32, 96)
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    # the BatchNorm statistics are the trained ones, not the defaults
    assert not torch.allclose(net.features[0][1].running_var, torch.ones(32))
    outs = net(torch.rand(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 24, 16, 24), (2, 32, 8, 12), (2, 96, 4, 6)]
    assert all(torch.isfinite(o).all() for o in outs)


def test_efficientnet_lite0_trunk() -> None:
    net = load_backbone(name="efficientnet_lite0", taps=(2, 4, 10))
    assert net.channels == (24, 40, 112)
    outs = net(torch.rand(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 24, 16, 24), (1, 40, 8, 12), (1, 112, 4, 6)]


def test_efficientnet_lite0_matches_its_reference_package() -> None:
    """Our layer-for-layer copy gives the reference implementation's block outputs exactly."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    ref = ref_pkg.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(default_weights_path("efficientnet_lite0"))
    )
    ref.eval()
    ours = load_backbone(name="efficientnet_lite0", taps=(2, 4, 10))
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = ref._swish(ref._bn0(ref._conv_stem(x * 2 - 1)))
        want = []
        for i, block in enumerate(ref._blocks[:11]):
            h = block(h, drop_connect_rate=0.0)
            if i in (2, 4, 10):
                want.append(h)
    for w, o in zip(want, ours(x)):
        torch.testing.assert_close(o, w, atol=1e-5, rtol=1e-5)


def test_backbone_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="taps"):
        MobileNetV2Features(taps=(18,))
    with pytest.raises(ValueError, match="backbone"):
        build_trunk("vgg")
    with pytest.raises(BackboneUnavailable, match="not found"):
        load_backbone(tmp_path / "missing.pth")
    torch.save({"features.0.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises((BackboneUnavailable, RuntimeError)):
        load_backbone(tmp_path / "bad.pth")


# ----------------------------------------------------------------------------------------------- coreset
def _coreset_reference(x: np.ndarray, n: int, first: int) -> list[int]:
    picked = [first]
    mind = np.full(len(x), np.inf)
    for _ in range(1, n):
        mind = np.minimum(mind, ((x - x[picked[-1]]) ** 2).sum(1))
        picked.append(int(np.argmax(mind)))
    return picked


def test_greedy_coreset_matches_k_center_reference() -> None:
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(1))
    idx = greedy_coreset(x, 20, seed=4, proj_dim=64)  # no projection: 5 <= 64
    assert idx.tolist() == _coreset_reference(x.numpy().astype(np.float64), 20, int(idx[0]))
    assert len(set(idx.tolist())) == 20
    assert greedy_coreset(x, 300).tolist() == list(range(300))
    with pytest.raises(ValueError):
        greedy_coreset(x, 0)


def test_greedy_coreset_covers_clusters() -> None:
    centres = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]])
    x = torch.cat([c + torch.randn(100, 2, generator=torch.Generator().manual_seed(i)) for i, c in enumerate(centres)])
    idx = greedy_coreset(x, 4)
    assert sorted({int(i) // 100 for i in idx}) == [0, 1, 2, 3]


# -------------------------------------------------------------------------------------------------- blur
@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_gaussian_blur_matches_opencv(sigma: float) -> None:
    img = np.random.default_rng(0).random((37, 53)).astype(np.float32)
    r = int(np.ceil(3 * sigma))
    ref = cv2.GaussianBlur(img, (2 * r + 1, 2 * r + 1), sigma, borderType=cv2.BORDER_REFLECT_101)
    out = _gaussian_blur(torch.from_numpy(img)[None, None], sigma)[0, 0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert _gaussian_blur(torch.from_numpy(img)[None, None], 0.0)[0, 0].numpy() is not None


@pytest.mark.parametrize("sigma", [0.0, 1.5, 8.0])
@pytest.mark.parametrize(("hw", "size"), [((8, 8), (64, 64)), ((9, 7), (72, 56)), ((1, 3), (8, 24))])
def test_upsample_and_blur_as_two_matrices_match_the_convolutions(sigma: float, hw: tuple, size: tuple) -> None:
    d = torch.rand(2, *hw, generator=torch.Generator().manual_seed(0)) * 5
    ref = _gaussian_blur(F.interpolate(d[:, None], size=size, mode="bilinear", align_corners=False), sigma)[:, 0]
    mem = FeatureMemory(MemoryConfig(context_taps=(), blur_sigma=sigma), torch.zeros(1, 152))
    torch.testing.assert_close(mem._blurred(d, size), ref, atol=1e-5, rtol=1e-5)
    assert upsample_blur_matrix(hw[0], size[0], sigma).shape == (size[0], hw[0])


# ------------------------------------------------------------------------------------------ FeatureMemory
def test_memory_of_an_image_finds_it_at_distance_zero() -> None:
    imgs = [_surface(s) for s in range(2)]
    mem = FeatureMemory.build(imgs, SIZE, MemoryConfig(coreset_fraction=1.0))
    d_seen = mem.distances(to_batch(imgs[:1]))
    d_new = mem.distances(to_batch([_with_hole(imgs[0])]))
    assert d_seen.shape == (1, 8, 8)
    torch.testing.assert_close(mem.nearest(mem.features(to_batch(imgs[:1]))), d_seen)
    assert float(d_seen.max()) < 0.15  # exact 0 up to the rounding of |q|^2 + |b|^2 - 2 q.b
    assert float(d_new.max()) > 1.0
    assert mem.set_scale([_surface(9)], SIZE) == mem.config.scale > 0
    amap = mem.anomaly_map(to_batch([_with_hole(imgs[0])]))
    assert amap.shape == (1, *SIZE) and float(amap.min()) >= 0.0 and float(amap.max()) < 1.0
    assert mem.flops(SIZE) > 0
    with pytest.raises(ValueError, match="bank"):
        FeatureMemory(MemoryConfig(), torch.zeros(4, 7))
    mob = FeatureMemory.build(imgs, SIZE, MemoryConfig(backbone="mobilenet_v2", coreset_fraction=1.0))
    assert mob.bank.shape == (128, 32 + 96)


def test_memory_runs_the_folded_trunk_and_rebuilds_it_when_the_weights_change() -> None:
    mem = FeatureMemory.build([_surface(0)], SIZE, MemoryConfig(context_taps=(), coreset_fraction=1.0))
    x = to_batch([_with_hole(_surface(1))])
    fused = mem._inference_trunk()
    assert fused is not mem.trunk and mem._inference_trunk() is fused  # built once
    with torch.inference_mode():
        plain = _rows(_aggregate(mem.trunk(x)))
    torch.testing.assert_close(_rows(mem.features(x)), plain, atol=1e-4, rtol=1e-5)
    state = {k: v * 1.5 if k.endswith("_bn1.weight") else v for k, v in mem.state_dict().items()}
    mem.load_state_dict(state)  # in place: new versions, so a new folded copy
    assert mem._inference_trunk() is not fused
    with torch.inference_mode():
        plain = _rows(_aggregate(mem.trunk(x)))
    torch.testing.assert_close(_rows(mem.features(x)), plain, atol=1e-4, rtol=1e-5)
    second = mem._inference_trunk()
    with torch.no_grad():
        mem.trunk._bn0.weight.mul_(0.5)  # an in-place edit bumps the version: a new folded copy
    assert mem._inference_trunk() is not second
    torch.testing.assert_close(_rows(mem.features(x)), _rows(_aggregate(mem.trunk(x))), atol=1e-4, rtol=1e-5)
    mem.trunk.train()
    assert mem._inference_trunk() is mem.trunk
    mob = FeatureMemory(MemoryConfig(backbone="mobilenet_v2"), None)
    assert mob._inference_trunk() is mob.trunk  # no folded variant: the trunk itself


def test_extend_adds_the_new_images_share_and_only_lowers_distances() -> None:
    mem = FeatureMemory.build([_surface(0)], SIZE, MemoryConfig(coreset_fraction=1.0))
    new = _with_hole(_surface(1))
    before = mem.distances(to_batch([new]))
    assert mem.extend([new], SIZE) is mem and mem.bank.shape[0] == 128
    after = mem.distances(to_batch([new]))
    assert float(after.max()) < 0.15 < float(before.max())
    assert bool((after <= before + 1e-4).all())


def test_extend_counted_keeps_the_memory_size_of_the_counted_images() -> None:
    imgs = [_surface(s) for s in range(4)]
    grown = FeatureMemory.build(imgs[:2], SIZE, MemoryConfig(coreset_fraction=0.5)).extend(imgs[2:], SIZE)
    same = FeatureMemory.build(imgs[:2], SIZE, MemoryConfig(coreset_fraction=0.5))
    n = same.bank.shape[0]
    same.extend(imgs, SIZE, counted=2)  # 4 images compete for 2 images' share
    assert same.bank.shape[0] == 2 * n and grown.bank.shape[0] == 2 * n
    fresh = FeatureMemory(MemoryConfig(coreset_fraction=0.5), None).extend(imgs, SIZE, counted=2)
    assert fresh.bank.shape[0] == n and fresh.context_bank.shape[0] * 2 == same.context_bank.shape[0]


def test_random_sampling_keeps_the_requested_share() -> None:
    imgs = [_surface(s) for s in range(3)]
    mem = FeatureMemory.build(imgs, SIZE, MemoryConfig(coreset_fraction=0.5, sampling="random"))
    full = FeatureMemory.build(imgs, SIZE, MemoryConfig(coreset_fraction=1.0))
    c = mem.channels
    assert c == 40 + 112 and mem.bank.shape == (96, c) and full.bank.shape == (192, c)
    # every kept vector is one of the image features
    d = torch.cdist(mem.bank, full.bank, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    assert float(d.max()) < 1e-4


def test_context_memory_sets_the_peak_and_keeps_the_fine_shape() -> None:
    imgs = [_surface(s) for s in range(3)]
    mem = FeatureMemory.build(imgs, SIZE, MemoryConfig(coreset_fraction=0.5))
    assert mem.has_context and mem.config.context_taps == (4, 10, 13)
    k = 128  # 40 + 112 + 192 = 344 context channels, projected to context_dim
    # 3 images x 4x4 context positions (8x8 stride-8 positions averaged 2x2) x 0.5
    assert mem.context_bank.shape == (24, k) and mem.context_proj.shape == (344, k)
    unpooled = FeatureMemory.build(imgs, SIZE, MemoryConfig(coreset_fraction=0.5, context_pool=1, context_dim=16))
    assert unpooled.context_bank.shape == (96, 16)
    torch.testing.assert_close(mem.context_proj.T @ mem.context_proj, torch.eye(k), atol=1e-4, rtol=0)
    x = to_batch([_with_hole(_surface(20)), _surface(21)])
    raw = mem.raw_map(x)
    f, ctx = mem._tap_features(x)
    fine = mem._blurred(mem.nearest(f), SIZE)
    peak = mem._blurred(mem.nearest(mem._project(ctx), bank=mem.context_bank), SIZE).amax(dim=(1, 2))
    torch.testing.assert_close(raw.amax(dim=(1, 2)), peak)  # height from the context memory
    torch.testing.assert_close(raw / raw.amax(dim=(1, 2), keepdim=True), fine / fine.amax(dim=(1, 2), keepdim=True))
    # extending keeps the projection and grows both banks
    proj = mem.context_proj.clone()
    mem.extend([_surface(30)], SIZE)
    assert mem.context_bank.shape[0] == 24 + 8 and torch.equal(mem.context_proj, proj)
    # a state round trip rebuilds the same memory; a memory without a projection refuses to score
    again = FeatureMemory.from_state(mem.config, mem.state_dict())
    torch.testing.assert_close(again.raw_map(x), mem.raw_map(x))
    with pytest.raises(RuntimeError, match="projection"):
        FeatureMemory(MemoryConfig(), torch.zeros(1, 152)).raw_map(x)
    with pytest.raises(RuntimeError, match="empty"):
        FeatureMemory(MemoryConfig(), torch.zeros(0, 152)).raw_map(x)


def test_rescale_to_peak_keeps_the_shape_and_never_loses_the_peak() -> None:
    b = torch.tensor([[[1.0, 2.0], [0.5, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    c = torch.tensor([[[0.0, 8.0], [1.0, 2.0]], [[0.0, 3.0], [1.0, 0.0]]])
    out = rescale_to_peak(b, c)
    torch.testing.assert_close(out[0], b[0] * 2.0)  # max 4 -> 8
    torch.testing.assert_close(out[1], c[1])  # an all-zero fine map: the context map itself
    assert torch.isfinite(rescale_to_peak(b.half(), c.half())).all()


def test_context_memory_at_odd_sizes() -> None:
    """72 x 56 gives a 9 x 7 stride-8 grid; the 2x2 context pooling keeps the edge rows (ceil)."""
    size = (72, 56)
    mem = FeatureMemory.build([cv2.resize(_surface(s), size[::-1]) for s in range(2)], size, MemoryConfig())
    assert mem.context_bank.shape[0] == round(0.1 * 2 * 5 * 4)
    x = to_batch([cv2.resize(_with_hole(_surface(3)), size[::-1])])
    raw = mem.raw_map(x)
    assert raw.shape == (1, *size) and torch.isfinite(raw).all()
    trunk = load_backbone(None, (4, 10), "efficientnet_lite0")
    fine_only = FeatureMemory(MemoryConfig(context_taps=()), mem.bank, trunk)
    extra = mem.flops(size) - fine_only.flops(size)
    trunk_extra = extra - 2 * 5 * 4 * mem.context_bank.numel()  # blocks 11-13 of the trunk
    assert 0 < trunk_extra < fine_only.flops(size)


def test_pca_finds_the_principal_directions() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 3, generator=g) * torch.tensor([5.0, 2.0, 0.1])
    rot = torch.linalg.qr(torch.randn(3, 3, generator=g))[0]
    mean, proj = _pca(z @ rot.T + 7.0, 2, seed=0, max_rows=3000)
    torch.testing.assert_close(mean, torch.full((3,), 7.0), atol=0.3, rtol=0)
    assert abs(float(proj[:, 0] @ rot[:, 0])) > 0.99 and abs(float(proj[:, 1] @ rot[:, 1])) > 0.99


def test_memory_without_context_scores_as_before() -> None:
    """Models saved before the context memory (no ``context_taps`` key) keep the fine map unscaled."""
    old = MemoryConfig.from_dict({"backbone": "efficientnet_lite0", "taps": [4, 10], "coreset_fraction": 1.0})
    assert old.context_taps == () and MemoryConfig().context_taps == (4, 10, 13)
    assert MemoryConfig(backbone="mobilenet_v2").context_taps == ()
    mem = FeatureMemory.build([_surface(0)], SIZE, old)
    assert not mem.has_context and "context_bank" not in mem.state_dict()
    x = to_batch([_with_hole(_surface(1))])
    torch.testing.assert_close(mem.raw_map(x), mem._blurred(mem.distances(x), SIZE))
    with pytest.raises(ValueError, match="context_dim"):
        MemoryConfig(context_dim=0)
    with pytest.raises(ValueError, match="context_pool"):
        MemoryConfig(context_pool=0)


def test_memory_model_saved_before_the_context_memory_loads_and_scores_as_before(tmp_path: Path) -> None:
    imgs = [_surface(s) for s in range(3)]
    mem = FeatureMemory.build(imgs, SIZE, MemoryConfig(context_taps=(), coreset_fraction=0.5))
    cfg = DetectorConfig(image_size=SIZE, grid=(8, 8), scorer="memory")
    folder = Detector(MemoryScorer(mem, SIZE, (8, 8)), cfg).save(tmp_path / "old")
    meta = json.loads((folder / "detector.json").read_text())
    # what an older release wrote: format 2, the memory settings under "memory", no context keys
    meta["format_version"] = 2
    meta["memory"] = meta.pop("scorer_config")
    for key in ("context_taps", "context_dim", "context_pool"):
        del meta["memory"][key]
    (folder / "detector.json").write_text(json.dumps(meta))
    det = Detector.load(folder)
    assert not det.scorer.memory.has_context and det.scorer.config.context_taps == ()
    img = _with_hole(_surface(9))
    expect = -torch.expm1(-mem._blurred(mem.distances(to_batch([img])), SIZE) / mem.config.scale)
    assert det.inspect(img).score == pytest.approx(float(expect.max()), abs=1e-5)


def test_memory_config_validation_and_roundtrip() -> None:
    assert MemoryConfig().taps == (4, 10) and MemoryConfig(backbone="mobilenet_v2").taps == (6, 13)
    assert MemoryConfig(taps=(10, 4), context_taps=(13, 4)).taps == (4, 10)  # block order, as the trunk returns them
    cfg = MemoryConfig(backbone="mobilenet_v2", taps=(3, 6), coreset_fraction=0.5, scale=2.0)
    assert MemoryConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in (
        {"coreset_fraction": 0.0},
        {"blur_sigma": -1.0},
        {"scale": float("nan")},
        {"sampling": "knn"},
        {"backbone": "vgg"},
    ):
        with pytest.raises(ValueError):
            MemoryConfig(**bad)


# --------------------------------------------------------------------------------------- the search
def _clustered(n: int, c: int = 152, seed: int = 0) -> torch.Tensor:
    """``n`` vectors ``(n, c)`` around 64 random centres (a feature memory's shape, roughly)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(64, c, generator=g) * 4
    return centres[torch.randint(64, (n,), generator=g)] + torch.randn(n, c, generator=g)


def _queries(bank: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Features ``(2, C, 16, 16)``: memory vectors moved a little, and some far from all of them."""
    g = torch.Generator().manual_seed(seed)
    q = bank[torch.randint(bank.shape[0], (512,), generator=g)] + 0.5 * torch.randn(512, bank.shape[1], generator=g)
    q[::17] += 6 * torch.randn(q[::17].shape, generator=g)
    return q.reshape(2, 16, 16, -1).permute(0, 3, 1, 2)


def test_ivf_search_agrees_with_the_exact_search_and_is_cached() -> None:
    pytest.importorskip("faiss")
    bank = _clustered(IVF_MIN_VECTORS + 500)
    f = _queries(bank)
    exact = FeatureMemory(MemoryConfig(context_taps=(), search="exact"), bank.clone())
    mem = FeatureMemory(MemoryConfig(context_taps=()), bank.clone())
    assert mem.config.search == "ivf"
    ref, approx = exact.nearest(f), mem.nearest(f)
    torch.testing.assert_close(mem.nearest(f, exact=True), ref, atol=0, rtol=0)  # exact=True: the torch search
    assert bool((approx >= ref - 1e-3).all())  # an inverted file only skips vectors
    diff = (approx - ref).abs()
    assert float(diff.median()) < 1e-3 and float((diff < 1e-3).float().mean()) > 0.9
    index = mem._ivf_index(mem.bank)
    assert index is not None and index.ntotal == bank.shape[0] and index.nprobe == mem.config.nprobe
    assert mem._ivf_index(mem.bank) is index  # built once
    # every list visited: the exact distances
    mem.config.nprobe = index.nlist
    torch.testing.assert_close(mem.nearest(f), ref, atol=1e-3, rtol=1e-4)
    # the bank changes (extend assigns a new tensor; load_state_dict copies in place): the index is rebuilt
    first = mem._ivf_index(mem.bank)
    mem.bank = torch.cat([mem.bank, f[:1].permute(0, 2, 3, 1).reshape(-1, f.shape[1])]).contiguous()
    rebuilt = mem._ivf_index(mem.bank)
    assert rebuilt is not first and rebuilt.ntotal == bank.shape[0] + 256
    assert float(mem.nearest(f)[0].max()) < 1e-2  # the first image's vectors are in the memory now
    mem.load_state_dict({"bank": torch.zeros_like(mem.bank)}, strict=False)
    assert mem._ivf_index(mem.bank) is not rebuilt
    # a small memory, or a bank that is not the memory's, is searched exactly
    small = FeatureMemory(MemoryConfig(context_taps=()), bank[: IVF_MIN_VECTORS - 1].clone())
    assert small._ivf_index(small.bank) is None and mem._ivf_index(bank) is None
    # the context memory (it sets the image scores) is searched exactly whatever its size
    context = {"context_bank": _clustered(IVF_MIN_VECTORS + 10, 128), "context_mean": torch.zeros(344)}
    ctx = FeatureMemory(MemoryConfig(), bank.clone(), context={**context, "context_proj": torch.zeros(344, 128)})
    assert ctx._ivf_index(ctx.bank) is not None and ctx._ivf_index(ctx.context_bank) is None
    g = _queries(ctx.context_bank)
    assert torch.equal(ctx.nearest(g, bank=ctx.context_bank), ctx.nearest(g, bank=ctx.context_bank, exact=True))
    # the index is not part of a copy (faiss indexes do not pickle): a copy builds its own
    twin = copy.deepcopy(mem)
    assert "_ivf_cache" not in twin.__dict__
    torch.testing.assert_close(twin.nearest(f), mem.nearest(f))


def test_without_faiss_the_ivf_search_warns_once_and_is_exact(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    monkeypatch.setattr(memory_module, "_FAISS", [])
    bank = _clustered(IVF_MIN_VECTORS + 10)
    f = _queries(bank)
    mem = FeatureMemory(MemoryConfig(context_taps=()), bank.clone())
    exact = FeatureMemory(MemoryConfig(context_taps=(), search="exact"), bank.clone())
    with caplog.at_level("WARNING", logger="patchloupe.scorers.memory"):
        out = mem.nearest(f)
        mem.nearest(f)
    assert torch.equal(out, exact.nearest(f))
    warnings = [r for r in caplog.records if "faiss is not installed" in r.getMessage()]
    assert len(warnings) == 1


def test_search_setting_is_validated_saved_and_old_models_search_exactly(tmp_path: Path) -> None:
    assert MemoryConfig().search == "ivf" and MemoryConfig().nprobe >= 1
    for bad in ({"search": "hnsw"}, {"search": None}, {"nprobe": 0}, {"nprobe": 2.5}, {"nprobe": True}):
        with pytest.raises(ValueError, match="search|nprobe"):
            MemoryConfig(**bad)
    cfg = MemoryConfig(search="exact", nprobe=4)
    assert MemoryConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # a detector.json written before the setting existed: no "search" key -> exact, so its scores stay
    mem = FeatureMemory.build([_surface(0), _surface(1)], SIZE, MemoryConfig(context_taps=(), coreset_fraction=0.5))
    cfg = DetectorConfig(image_size=SIZE, grid=(8, 8), scorer="memory")
    folder = Detector(MemoryScorer(mem, SIZE, (8, 8)), cfg).save(tmp_path / "m")
    meta = json.loads((folder / "detector.json").read_text())
    assert meta["scorer_config"]["search"] == "ivf"
    del meta["scorer_config"]["search"], meta["scorer_config"]["nprobe"]
    (folder / "detector.json").write_text(json.dumps(meta))
    det = Detector.load(folder)
    assert det.scorer.config.search == "exact"
    img = _with_hole(_surface(9))
    expect = -torch.expm1(-mem._blurred(mem.distances(to_batch([img])), SIZE) / mem.config.scale)
    assert det.inspect(img).score == pytest.approx(float(expect.max()), abs=1e-6)


# ---------------------------------------------------------------------------------- Detector memory mode
def test_memory_detector_flags_a_hole_and_is_consistent(memory_det: Detector) -> None:
    det = memory_det
    assert det.config.scorer == "memory" and det.config.grid == (8, 8)
    t = det.config.training
    assert t["memory_size"] > t["memory_size_at_calibration"] > 0 and det.num_params() > 0 and det.flops() > 0
    normal = det.inspect(_surface(100))
    bad = det.inspect(_with_hole(_surface(100)))
    assert bad.score > normal.score
    assert bad.is_anomalous and not normal.is_anomalous
    for r in (normal, bad):
        assert r.is_anomalous == (r.score >= r.threshold)
        np.testing.assert_array_equal(r.patch_map, r.patch_scores >= r.threshold)
        assert r.score == pytest.approx(float(r.patch_scores.max()))
        assert r.anomaly_map.shape == (64, 64) and r.anomaly_map.dtype == np.float32
    assert bad.mask[24, 40] and not normal.mask.any()  # the outline covers the hole
    y, x = np.unravel_index(np.argmax(bad.anomaly_map), bad.anomaly_map.shape)
    assert abs(y - 24) <= 12 and abs(x - 40) <= 12  # and the map peaks near it


def test_peak_distances_give_the_inspect_scores(memory_det: Detector) -> None:
    imgs = [_surface(200 + i) for i in range(2)] + [_with_hole(_surface(202))]
    peaks = memory_det.scorer.memory.peak_distances(imgs, SIZE)
    got = (-torch.expm1(-peaks / memory_det.scorer.config.scale)).tolist()
    assert got == pytest.approx([memory_det.inspect(im).score for im in imgs], abs=1e-5)


def test_memory_detector_keeps_input_size_and_batches(memory_det: Detector) -> None:
    img = cv2.resize(_with_hole(_surface(7)), (120, 80))
    single = memory_det.inspect(img)
    assert single.anomaly_map.shape == (80, 120) and single.mask.shape == (80, 120)
    many = list(memory_det.inspect_many([img, "missing.png", img], batch_size=2))
    assert [type(r).__name__ for r in many] == ["InspectionResult", "InspectionError", "InspectionResult"]
    assert many[0].score == pytest.approx(single.score, rel=1e-5)


def test_memory_detector_save_load(memory_det: Detector, tmp_path: Path) -> None:
    folder = memory_det.save(tmp_path / "m", weights_dtype=torch.float16)
    meta = json.loads((folder / "detector.json").read_text())
    assert meta["format_version"] == 3 and meta["scorer"] == "memory" and set(meta["files"]) == {"memory"}
    assert "generator.safetensors" not in meta["sha256"]  # a memory model holds only what its scorer needs
    det = Detector.load(folder)
    img = _with_hole(_surface(5))
    assert det.inspect(img).score == pytest.approx(memory_det.inspect(img).score, abs=2e-3)
    (folder / meta["files"]["memory"]).unlink()
    with pytest.raises(ModelError, match="memory.safetensors"):
        Detector.load(folder)


def test_memory_scorer_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scorer"):
        DetectorConfig(scorer="knn")
    base = _tiny_base()
    with pytest.raises(ValueError, match="scorer"):
        Detector(base.scorer, DetectorConfig(scorer="memory", image_size=(96, 96), grid=(3, 3)))
    folder = base.save(tmp_path / "p")
    meta = json.loads((folder / "detector.json").read_text())
    assert meta["format_version"] == 3 and meta["scorer"] == "pattern"
    meta["scorer"] = "knn"
    (folder / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="scorer"):
        Detector.load(folder)
    with pytest.raises(ValueError, match="scorer"):
        Detector.fit([_surface(s) for s in range(6)], base=base, scorer="knn")


def test_cli_fit_memory_then_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = tmp_path / "good"
    train.mkdir()
    for s in range(8):
        cv2.imwrite(str(train / f"{s}.png"), _surface(s))
    base = _tiny_base().save(tmp_path / "base")
    out = tmp_path / "model"
    rc = main(["fit", str(train), "-o", str(out), "--base", str(base), "--scorer", "memory", "--image-size", "64x64"])
    assert rc == 0 and "memory scorer" in capsys.readouterr().out
    cv2.imwrite(str(tmp_path / "bad.png"), _with_hole(_surface(50)))
    rc = main(["inspect", "--model", str(out), str(tmp_path / "bad.png"), "--out", str(tmp_path / "o"), "--json"])
    assert rc == 0
    (record,) = json.loads((tmp_path / "o" / "results.json").read_text())
    assert record["is_anomalous"] is True and (tmp_path / "o" / "bad.png").is_file()
