"""Training checkpoints (``patchloupe.train.checkpoint``): exact state encoding, save/load/prune, RNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from patchloupe.train.checkpoint import CheckpointError, CheckpointManager, decode_state, encode_state
from patchloupe.train.schedule import warmup_cosine
from torch import nn


def test_encode_decode_state_exact_types() -> None:
    state = {
        "t": torch.arange(3),
        "tup": (1, 2.5, "s", None, True),
        3: {"nested": [torch.ones(2), np.arange(4, dtype=np.uint32)]},
        "__weird__": 1.0000000000000002,
        "big": 2**100 + 7,
    }
    tensors: dict[str, torch.Tensor] = {}
    doc = encode_state(state, tensors)
    doc = json.loads(json.dumps(doc))  # through JSON text
    back = decode_state(doc, tensors)
    assert back["tup"] == state["tup"] and isinstance(back["tup"], tuple)
    assert back["__weird__"] == state["__weird__"] and back["big"] == state["big"]
    assert torch.equal(back[3]["nested"][0], torch.ones(2))
    assert back[3]["nested"][1].dtype == np.uint32 and list(back[3]["nested"][1]) == [0, 1, 2, 3]
    with pytest.raises(TypeError, match="without pickling"):
        encode_state({"f": object()}, {})


def test_checkpoint_manager_roundtrip_prune_and_rng(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 10, 2))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).square().mean().backward()
        opt.step()
        sched.step()
    mgr = CheckpointManager(tmp_path / "ck", keep=2)
    for step in (1, 2, 3):
        mgr.save(step, model=model, optimizer=opt, scheduler=sched, extra={"history": [{"step": step}]})
    assert mgr.steps() == [2, 3] and mgr.latest_step() == 3
    expected_draw = torch.rand(4)  # RNG state was captured before this draw

    model2 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt2 = torch.optim.AdamW(model2.parameters(), lr=5.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0)
    ck = mgr.load(model=model2, optimizer=opt2, scheduler=sched2)
    assert ck.step == 3 and ck.extra == {"history": [{"step": 3}]}
    assert torch.equal(torch.rand(4), expected_draw)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"] and s2["param_groups"][0]["betas"] == (0.8, 0.95)
    for pid, st in s1["state"].items():
        for key, val in st.items():
            assert torch.equal(val, s2["state"][pid][key])
    assert sched2.state_dict()["last_epoch"] == 3

    with pytest.raises(CheckpointError, match="does not fit"):
        mgr.load(model=nn.Linear(2, 2))
    (tmp_path / "ck" / "ckpt-00000003.safetensors").write_bytes(b"0" * 16)
    with pytest.raises(CheckpointError):
        mgr.load()
    with pytest.raises(FileNotFoundError):
        CheckpointManager(tmp_path / "empty").load()
