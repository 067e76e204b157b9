"""Swin helpers checked against independent brute-force constructions."""

from __future__ import annotations

import itertools

import pytest
import torch
from patchloupe.models.layers import (
    MASK_VALUE,
    DropPath,
    FinalPatchExpandX4,
    Mlp,
    PatchEmbed,
    PatchExpand,
    PatchMerging,
    num_params,
    padding_key_mask,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)


@pytest.mark.parametrize("window", [4, (2, 3), (3, 1)])
def test_partition_reverse_round_trip(window: int | tuple[int, int]) -> None:
    wh, ww = (window, window) if isinstance(window, int) else window
    x = torch.randn(2, 3 * wh, 2 * ww, 5)
    win = window_partition(x, window)
    assert win.shape == (2 * 6, wh, ww, 5)
    assert torch.equal(window_reverse(win, window, 3 * wh, 2 * ww), x)
    assert torch.equal(window_reverse(win.flatten(1, 2), window, 3 * wh, 2 * ww), x)
    # window j of the result is window (j % nW) in reading order of image j // nW
    j = 6 + 4  # image 1, window row 2, window col 0
    assert torch.equal(win[j], x[1, 2 * wh : 3 * wh, 0:ww])


def test_partition_rejects_non_multiple() -> None:
    with pytest.raises(ValueError):
        window_partition(torch.zeros(1, 5, 4, 1), 4)


def _brute_index(wh: int, ww: int, th: int, tw: int) -> torch.Tensor:
    """Independent construction: enumerate token pairs, encode offsets into a (2th-1) x (2tw-1) table."""
    coords = [(y, x) for y in range(wh) for x in range(ww)]
    table = {
        (dy, dx): (dy + th - 1) * (2 * tw - 1) + (dx + tw - 1) for dy in range(-th + 1, th) for dx in range(-tw + 1, tw)
    }
    return torch.tensor([[table[(qy - ky, qx - kx)] for (ky, kx) in coords] for (qy, qx) in coords])


@pytest.mark.parametrize("window,table", [(7, None), (4, None), ((2, 3), None), (2, 4), ((3, 2), (7, 7)), (1, 3)])
def test_relative_position_index(window: int | tuple[int, int], table: int | tuple[int, int] | None) -> None:
    wh, ww = (window, window) if isinstance(window, int) else window
    t = table if table is not None else window
    th, tw = (t, t) if isinstance(t, int) else t
    idx = relative_position_index(window, table)
    assert idx.dtype == torch.long and idx.shape == (wh * ww, wh * ww)
    assert torch.equal(idx, _brute_index(wh, ww, th, tw))
    assert int(idx.max()) < (2 * th - 1) * (2 * tw - 1)
    if table is None:  # the full window uses every row of its table
        assert idx.unique().numel() == (2 * wh - 1) * (2 * ww - 1)


def test_relative_position_index_rejects_large_window() -> None:
    with pytest.raises(ValueError):
        relative_position_index(5, 4)


def _brute_shift_mask(hp: int, wp: int, wh: int, ww: int, sh: int, sw: int) -> torch.Tensor:
    """Independent construction from geometry: after rolling the grid by (-sh, -sw), two tokens of the same
    window may attend iff they were neighbours before the roll too, i.e. their original coordinates
    differ by less than a window along each axis (the roll did not wrap them together across the border)."""
    nwh, nww = hp // wh, wp // ww
    n = wh * ww
    out = torch.zeros(nwh * nww, n, n)
    for wy, wx in itertools.product(range(nwh), range(nww)):
        toks = [(wy * wh + y, wx * ww + x) for y in range(wh) for x in range(ww)]
        orig = [((y + sh) % hp, (x + sw) % wp) for (y, x) in toks]  # rolled position -> original position
        for i, (qy, qx) in enumerate(orig):
            for j, (ky, kx) in enumerate(orig):
                same = abs(qy - ky) < wh and abs(qx - kx) < ww
                out[wy * nww + wx, i, j] = 0.0 if same else MASK_VALUE
    return out


@pytest.mark.parametrize(
    "hp,wp,window,shift",
    [(8, 8, 4, 2), (12, 8, 4, 2), (14, 14, 7, 3), (6, 8, (3, 4), (1, 2)), (8, 4, 4, (2, 0)), (4, 4, 4, 0)],
)
def test_shifted_window_mask(hp: int, wp: int, window: int | tuple[int, int], shift: int | tuple[int, int]) -> None:
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (shift, shift) if isinstance(shift, int) else shift
    m = shifted_window_mask(hp, wp, window, shift)
    assert m.shape == ((hp // wh) * (wp // ww), wh * ww, wh * ww)
    assert torch.equal(m, _brute_shift_mask(hp, wp, wh, ww, sh, sw))
    assert torch.equal(m, m.transpose(1, 2))
    if sh == 0 and sw == 0:
        assert not m.any()
    else:  # interior windows are unmasked, the last window is masked
        assert not m[0].any() and m[-1].any()


def test_shifted_window_mask_validates() -> None:
    with pytest.raises(ValueError):
        shifted_window_mask(8, 8, 4, 4)
    with pytest.raises(ValueError):
        shifted_window_mask(9, 8, 4, 2)


def test_padding_key_mask_brute_force() -> None:
    h, w, hp, wp, win, sh = 5, 6, 8, 8, 4, 2
    m = padding_key_mask(h, w, hp, wp, win, sh)
    rolled = torch.roll(torch.arange(hp * wp).view(hp, wp), (-sh, -sh), (0, 1))  # original index at rolled pos
    for wy, wx in itertools.product(range(2), range(2)):
        keys = rolled[wy * 4 : wy * 4 + 4, wx * 4 : wx * 4 + 4].flatten()
        valid = torch.tensor([(int(k) // wp) < h and (int(k) % wp) < w for k in keys])
        expect = torch.where(valid, 0.0, MASK_VALUE).expand(16, 16)
        assert torch.equal(m[wy * 2 + wx], expect)


def test_drop_path() -> None:
    torch.manual_seed(0)
    dp = DropPath(0.5)
    x = torch.ones(4000, 3)
    y = dp(x)
    kept = y[:, 0] != 0
    assert torch.all(y[kept] == 2.0) and torch.all(y[~kept] == 0.0)
    assert 0.4 < kept.float().mean() < 0.6
    dp.eval()
    assert torch.equal(dp(x), x)
    assert torch.equal(DropPath(0.0).train()(x), x)


def test_shapes_and_flops_hand_count() -> None:
    x = torch.randn(2, 6, 10, 8)
    mlp = Mlp(8, 32)
    assert mlp(x).shape == x.shape
    assert mlp.flops(60) == 2 * 60 * (8 * 32 + 32 * 8)
    merge = PatchMerging(8)
    assert merge(x).shape == (2, 3, 5, 16)
    assert merge(torch.randn(1, 5, 7, 8)).shape == (1, 3, 4, 16)
    assert merge.flops(6, 10) == 2 * 15 * 32 * 16
    exp = PatchExpand(8)
    assert exp(x).shape == (2, 12, 20, 4)
    assert exp.flops(6, 10) == 2 * 60 * 8 * 16
    fin = FinalPatchExpandX4(8)
    assert fin(x).shape == (2, 24, 40, 8)
    assert fin.flops(6, 10) == 2 * 60 * 8 * 128
    emb = PatchEmbed(3, 8, 4)
    assert emb(torch.randn(2, 3, 24, 40)).shape == (2, 6, 10, 8)
    assert emb.flops(24, 40) == 2 * 60 * 3 * 8 * 16
    assert num_params(mlp) == 8 * 32 + 32 + 32 * 8 + 8


def test_flops_match_flop_counter() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 6, 10, 8)
    for mod, arg, count in [
        (Mlp(8, 32), x, lambda m: m.flops(60)),
        (PatchMerging(8), x, lambda m: m.flops(6, 10)),
        (PatchExpand(8), x, lambda m: m.flops(6, 10)),
        (FinalPatchExpandX4(8), x, lambda m: m.flops(6, 10)),
        (PatchEmbed(3, 8), torch.randn(1, 3, 24, 40), lambda m: m.flops(24, 40)),
    ]:
        with FlopCounterMode(display=False) as fc:
            mod(arg)
        assert fc.get_total_flops() == count(mod), type(mod).__name__


def test_patch_expand_rearrangement() -> None:
    """Channel group (p1, p2) of the expanded vector lands at sub-pixel (p1, p2)."""
    exp = PatchExpand(4)
    with torch.no_grad():
        exp.expand.weight.copy_(torch.eye(8, 4))
    exp.norm = torch.nn.Identity()
    x = torch.zeros(1, 1, 1, 4)
    x[..., 1] = 1.0  # expanded vector = e1 -> channel 1 of group (p1=0, p2=0)
    y = exp(x)
    assert y.shape == (1, 2, 2, 2)
    assert y[0, 0, 0, 1] == 1.0 and y.sum() == 1.0
