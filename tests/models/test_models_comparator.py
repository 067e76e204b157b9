"""PatternComparator: shapes, ranges, pseudo-siamese weight sharing, config round trip, cost."""

from __future__ import annotations

import json

import pytest
import torch
from patchloupe.models.comparator import ComparatorConfig, ConvBlock, PatternComparator
from torch import nn

SMALL = ComparatorConfig(channels=(4, 8, 8), hidden=8, mask_channels=4)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("hw", [(16, 16), (32, 48), (20, 36), (64, 64)])
def test_shapes_and_ranges(hw: tuple[int, int], residual: bool) -> None:
    torch.manual_seed(0)
    h, w = hw
    cfg = ComparatorConfig(channels=(4, 8, 8), hidden=8, mask_channels=4, residual_input=residual)
    comp = PatternComparator(cfg)
    g, r = torch.rand(3, 3, h, w), torch.rand(3, 3, h, w)
    for mode in (comp.train, comp.eval):
        mode()
        p, mask, logit = comp(g, r)
        assert p.shape == (3,) and logit.shape == (3,)
        assert mask.shape == (3, 1, h // 4, w // 4)
        assert torch.all((p >= 0) & (p <= 1)) and torch.all((mask >= 0) & (mask <= 1))
        torch.testing.assert_close(p, torch.sigmoid(logit))


@pytest.mark.parametrize("hw", [(18, 32), (32, 30), (12, 12), (8, 16)])
def test_bad_sizes_raise(hw: tuple[int, int]) -> None:
    comp = PatternComparator(SMALL)
    with pytest.raises(ValueError):
        comp(torch.rand(1, 3, *hw), torch.rand(1, 3, *hw))
    with pytest.raises(ValueError):
        comp(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 20))


def test_third_block_shared_first_two_not() -> None:
    comp = PatternComparator(SMALL)
    gen, real = comp.branch_blocks("generated"), comp.branch_blocks("real")
    assert gen[2] is real[2]
    for pg, pr in zip(gen[2].parameters(), real[2].parameters(), strict=True):
        assert pg is pr
    for k in (0, 1):
        assert gen[k] is not real[k]
        ids_g = {id(p) for p in gen[k].parameters()}
        assert ids_g.isdisjoint(id(p) for p in real[k].parameters())
    # registered once: no aliased tensors in the state dict (safetensors refuses those)
    ptrs = [t.data_ptr() for t in comp.state_dict().values() if t.numel() > 1]
    assert len(ptrs) == len(set(ptrs))
    # and the shared block really runs once per branch
    calls: list[int] = []
    handle = comp.shared_block3.register_forward_hook(lambda *_: calls.append(1))
    comp(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))
    handle.remove()
    assert len(calls) == 2
    with pytest.raises(ValueError):
        comp.branch_blocks("other")


def test_pseudo_siamese_is_not_symmetric() -> None:
    torch.manual_seed(1)
    comp = PatternComparator(SMALL).eval()
    g, r = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert not torch.allclose(comp(g, r)[2], comp(r, g)[2])


def test_eval_bn_folding_matches_plain_sequential() -> None:
    torch.manual_seed(2)
    block = ConvBlock(3, 5)
    bn = block[1]
    assert isinstance(bn, nn.BatchNorm2d)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    block.eval()
    x = torch.rand(2, 3, 9, 11)
    torch.testing.assert_close(block(x), nn.Sequential.forward(block, x), rtol=1e-5, atol=1e-5)


def test_config_roundtrip_and_validation() -> None:
    cfg = ComparatorConfig(channels=(8, 16, 32), hidden=24, mask_channels=12, residual_input=False)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert ComparatorConfig.from_dict(d) == cfg
    with pytest.raises(ValueError):
        ComparatorConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError):
        ComparatorConfig(channels=(8, 16))  # type: ignore[arg-type]
    # weights load into a model rebuilt from the dict
    a = PatternComparator(cfg)
    b = PatternComparator(ComparatorConfig.from_dict(d))
    b.load_state_dict(a.state_dict())


def _hook_flops(comp: PatternComparator, h: int, w: int) -> int:
    total = 0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += 2 * out[0].numel() * k
        elif isinstance(mod, nn.Linear):
            total += 2 * mod.in_features * mod.out_features

    hs = [m.register_forward_hook(hook) for m in comp.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    comp.train()  # unfused path so each conv module runs
    comp(torch.rand(1, 3, h, w), torch.rand(1, 3, h, w))
    for handle in hs:
        handle.remove()
    return total


@pytest.mark.parametrize("residual", [True, False])
def test_flops_and_params(residual: bool) -> None:
    comp = PatternComparator(ComparatorConfig(residual_input=residual))
    # analytic count = what the layers do (FC biases are the only difference, < 0.01 %)
    assert abs(comp.flops(64, 64) - _hook_flops(comp, 64, 64)) <= 2 * comp.config.hidden + 2
    assert comp.flops(64, 128) > 1.9 * comp.flops(64, 64)
    assert comp.num_parameters() == sum(p.numel() for p in comp.parameters())
    assert comp.num_parameters() < 150_000  # edge-sized
