"""PatternGenerator: shapes, padding, gradients, shared-encoding predictions, presets, config, FLOPs."""

from __future__ import annotations

import json

import pytest
import torch
from patchloupe.models.attention import attention_backend
from patchloupe.models.generator import (
    PRESETS,
    GeneratorConfig,
    PatternGenerator,
    SwinBlock,
    WindowAttention,
    build_generator,
    window_geometry,
    window_plan,
)
from patchloupe.models.layers import relative_position_index


@pytest.fixture(scope="module")
def tiny() -> PatternGenerator:
    torch.manual_seed(0)
    return build_generator("tiny").eval()


def _row_triplets(rows: int, cols: int) -> torch.Tensor:
    """ltr (i, i+1 -> i+2) then rtl (i+2, i+1 -> i) triplets of a grid, as the integrator builds them."""
    ltr = [(r * cols + c, r * cols + c + 1, r * cols + c + 2) for r in range(rows) for c in range(cols - 2)]
    rtl = [(b, m, a) for (a, m, b) in ltr]
    return torch.tensor(ltr + rtl)


@pytest.mark.parametrize("size", [(32, 32), (40, 56), (64, 96), (8, 12), (33, 31)])
def test_shapes_and_range(tiny: PatternGenerator, size: tuple[int, int]) -> None:
    x1, x2 = torch.rand(2, 2, 3, *size)
    with torch.no_grad():
        out = tiny(x1, x2)
    assert out.shape == (2, 3, *size) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_shapes_224_and_padded_windows() -> None:
    """224 (grids 56/28/14/7) with window 7 divides exactly; 40x56 with window 7 needs in-stage padding."""
    torch.manual_seed(0)
    g = build_generator("tiny", window_size=7).eval()
    with torch.no_grad():
        assert g(torch.rand(1, 3, 224, 224), torch.rand(1, 3, 224, 224)).shape == (1, 3, 224, 224)
        out = g(torch.rand(2, 3, 40, 56), torch.rand(2, 3, 40, 56))
    assert out.shape == (2, 3, 40, 56) and torch.isfinite(out).all()
    feats = g.encode(torch.rand(1, 3, 40, 56), 0)
    assert [tuple(f.shape) for f in feats] == [(1, 16, 16, 16), (1, 8, 8, 32), (1, 4, 4, 64), (1, 2, 2, 128)]


def test_window_geometry_rules() -> None:
    assert window_geometry(56, 56, 7, True) == ((7, 7), (3, 3), (0, 0))
    assert window_geometry(16, 16, 7, False) == ((7, 7), (0, 0), (5, 5))
    assert window_geometry(7, 7, 7, True) == ((7, 7), (0, 0), (0, 0))  # grid == window: one window, no shift
    assert window_geometry(2, 3, 4, True) == ((2, 3), (0, 0), (0, 0))  # grid < window
    assert window_geometry(2, 12, 4, True) == ((2, 4), (0, 2), (0, 0))  # per axis


def test_plans_are_cached(tiny: PatternGenerator) -> None:
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        tiny(x, x)
        before = window_plan.cache_info()
        tiny(x, x)
        after = window_plan.cache_info()
    assert after.misses == before.misses and after.hits > before.hits
    dev = torch.device("cpu")
    assert window_plan(12, 12, 4, True, dev) is window_plan(12, 12, 4, True, dev)


def test_small_window_bias_reads_the_same_table() -> None:
    """A window smaller than M uses the full table: its bias equals the full window's bias on the same offsets."""
    torch.manual_seed(0)
    attn = WindowAttention(8, 2, 4)
    full = attn.relative_bias()  # (2, 16, 16) over the 4x4 window
    small = attn.relative_bias(relative_position_index((2, 3), 4))  # (2, 6, 6) over a 2x3 window
    pos = [y * 4 + x for y in range(2) for x in range(3)]  # the 2x3 window placed top-left in the 4x4 one
    assert torch.equal(small, full[:, pos][:, :, pos])


def test_block_with_padding_and_shift_is_finite_and_backend_independent() -> None:
    torch.manual_seed(0)
    blk = SwinBlock(16, 2, 4, shifted=True).eval()
    x = torch.randn(2, 9, 6, 16)
    with torch.no_grad(), attention_backend(blk, "reference"):
        ref = blk(x)
    with torch.no_grad(), attention_backend(blk, "sdpa"):
        out = blk(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


class _NoisyPadF:
    """Stand-in for ``torch.nn.functional`` whose ``pad`` fills the padding with large noise instead of zeros."""

    def __getattr__(self, name: str) -> object:
        return getattr(torch.nn.functional, name)

    @staticmethod
    def pad(t: torch.Tensor, pad: tuple[int, ...], *args: object, **kwargs: object) -> torch.Tensor:
        out = torch.nn.functional.pad(t, pad, *args, **kwargs)
        is_pad = torch.nn.functional.pad(torch.zeros_like(t), pad, value=1.0)
        return out + 10 * torch.randn_like(out) * is_pad


def test_padding_never_reaches_real_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real tokens of a padded grid attend only to real keys: whatever the padding holds, they do not change."""
    import patchloupe.models.generator as G

    torch.manual_seed(0)
    x = torch.randn(1, 5, 6, 16)
    for shifted in (False, True):
        blk = SwinBlock(16, 2, 4, shifted=shifted).eval()
        plan = window_plan(5, 6, 4, shifted, torch.device("cpu"))
        assert plan.pad == (3, 2) and plan.mask is not None
        with torch.no_grad():
            ref = blk(x)
            with monkeypatch.context() as m:
                m.setattr(G, "F", _NoisyPadF())
                out = blk(x)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_gradients_reach_both_encoders(tiny: PatternGenerator) -> None:
    g = build_generator("tiny").train()
    x1, x2, target = torch.rand(3, 2, 3, 40, 56)
    loss = torch.nn.functional.mse_loss(g(x1, x2), target)
    loss.backward()
    for part in ("encoder1", "encoder2", "decoder", "head"):
        grads = [p.grad for n, p in g.named_parameters() if n.startswith(part)]
        assert all(gr is not None for gr in grads), part
        assert sum(float(gr.abs().sum()) for gr in grads) > 0, part
    tables = [p for n, p in g.named_parameters() if n.endswith("relative_position_bias_table")]
    assert tables and all(t.grad is not None and t.grad.abs().sum() > 0 for t in tables)


def test_plan_built_under_inference_mode_serves_training() -> None:
    g = build_generator("tiny", patch_size=(48, 80))
    x = torch.rand(1, 3, 48, 80)
    window_plan.cache_clear()
    with torch.inference_mode():
        g(x, x)
    g(x, x).sum().backward()  # cached index/mask must not be inference tensors


def test_cached_equals_uncached(tiny: PatternGenerator) -> None:
    torch.manual_seed(1)
    patches = torch.rand(16, 3, 32, 32)
    trip = _row_triplets(4, 4)
    assert trip.shape == (16, 3)
    with torch.no_grad():
        cached = tiny.predict_targets(patches, trip)
        single = torch.cat([tiny(patches[a : a + 1], patches[b : b + 1]) for a, b, _ in trip.tolist()])
        batched = tiny(patches[trip[:, 0]], patches[trip[:, 1]])
    assert cached.shape == (16, 3, 32, 32)
    torch.testing.assert_close(cached, single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached, batched, atol=1e-5, rtol=1e-5)
    # the explicit encode / decode API composes to the same result
    with torch.no_grad():
        f1, f2 = tiny.encode(patches[trip[:, 0]], 0), tiny.encode(patches[trip[:, 1]], 1)
        torch.testing.assert_close(tiny.decode(f1, f2), cached, atol=1e-5, rtol=1e-5)


def test_predict_targets_odd_size_and_validation(tiny: PatternGenerator) -> None:
    patches = torch.rand(6, 3, 40, 56)
    trip = _row_triplets(2, 3)
    with torch.no_grad():
        out = tiny.predict_targets(patches, trip)
        ref = tiny(patches[trip[:, 0]], patches[trip[:, 1]])
        assert tiny.predict_targets(patches, torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3, 40, 56)
    assert out.shape == (4, 3, 40, 56)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        tiny.predict_targets(patches, trip[:, :2])
    with pytest.raises(IndexError):
        tiny.predict_targets(patches, trip + 6)
    with pytest.raises(TypeError):
        tiny.predict_targets(patches, trip.float())
    with pytest.raises(ValueError):
        tiny.encode(patches, 2)
    with pytest.raises(ValueError):
        tiny(patches[:1], patches[:1, :, :32])


def test_backends_agree_on_the_model(tiny: PatternGenerator) -> None:
    x1, x2 = torch.rand(2, 3, 3, 40, 56)
    with torch.no_grad():
        with attention_backend(tiny, "reference"):
            ref = tiny(x1, x2)
        with attention_backend(tiny, "sdpa"):
            out = tiny(x1, x2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_deterministic_under_seed() -> None:
    outs, states = [], []
    x1, x2 = torch.rand(2, 2, 3, 32, 32)
    for _ in range(2):
        torch.manual_seed(123)
        g = build_generator("tiny", drop_path_rate=0.1).eval()
        states.append(g.state_dict())
        with torch.no_grad():
            outs.append(g(x1, x2))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert torch.equal(outs[0], outs[1])


def test_config_round_trip_and_validation() -> None:
    for name, cfg in PRESETS.items():
        d = json.loads(json.dumps(cfg.to_dict()))
        assert GeneratorConfig.from_dict(d) == cfg, name
    assert GeneratorConfig.from_dict(json.loads(PRESETS["edge"].to_json())) == PRESETS["edge"]
    with pytest.raises(ValueError):
        GeneratorConfig.from_dict({**PRESETS["tiny"].to_dict(), "unknown": 1})
    with pytest.raises(ValueError):
        GeneratorConfig(embed_dim=24, num_heads=(5, 4, 8, 16))
    with pytest.raises(ValueError):
        GeneratorConfig(depths=(2, 2, 6))
    with pytest.raises(KeyError):
        build_generator("huge")


def test_presets_build() -> None:
    for name in PRESETS:
        g = build_generator(name)
        assert g.config == PRESETS[name] and g.config is not PRESETS[name]
        assert g.num_params() > 0 and g.flops() > 0
        assert g.encoder1.patch_embed.proj.weight.data_ptr() != g.encoder2.patch_embed.proj.weight.data_ptr()
    p = build_generator("paper").config
    assert (p.embed_dim, p.depths, p.window_size, p.patch_size) == (24, (2, 2, 6, 2), 7, (224, 224))
    g = build_generator("edge").eval()
    with torch.no_grad():
        assert g(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    assert build_generator(PRESETS["tiny"].to_dict()).config == PRESETS["tiny"]


@pytest.mark.parametrize("size", [(32, 32), (40, 56)])
def test_flops_match_flop_counter(size: tuple[int, int]) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    g = build_generator("tiny", window_size=7).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad(), attention_backend(g, "reference"), FlopCounterMode(display=False) as fc:
        g(x, x)
    measured, analytic = fc.get_total_flops(), g.flops(size)
    assert abs(analytic - measured) <= 0.1 * measured, (analytic, measured)
    # predict_targets: distinct encodings + one decode per triplet
    trip = _row_triplets(2, 3)
    with torch.no_grad(), attention_backend(g, "reference"), FlopCounterMode(display=False) as fc:
        g.predict_targets(torch.rand(6, 3, *size), trip)
    assert abs(g.prediction_flops(trip, size) - fc.get_total_flops()) <= 0.1 * fc.get_total_flops()


def test_block_flops_hand_count() -> None:
    """One Swin block, dim 8, 2 heads, 4x4 windows on an 8x8 grid, MLP ratio 4 (counted by hand)."""
    blk = SwinBlock(8, 2, 4, shifted=True, mlp_ratio=4.0)
    tokens, n, nw, c = 64, 16, 4, 8
    qkv, attn, proj, mlp = tokens * c * 3 * c, 2 * nw * n * n * c, tokens * c * c, tokens * (c * 32 + 32 * c)
    assert blk.flops(8, 8) == 2 * (qkv + attn + proj + mlp)
