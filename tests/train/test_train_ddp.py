"""Stage 1 under ``torchrun`` (2 CPU processes, gloo): both ranks must end with identical weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from patchloupe.train.checkpoint import CheckpointManager
from patchloupe.train.weights import load_weights

_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_train_stage1 import stripes
    from patchloupe.models.generator import build_generator
    from patchloupe.train.weights import save_weights
    from patchloupe.train.stage1 import train_generator

    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    torch.manual_seed(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
    g = build_generator("tiny")
    seen = []
    r = train_generator(g, stripes(3), image_size=(64, 64), grid=(4, 4), steps=4, batch_size=4, seed=5,
                        progress=True, ckpt_dir=os.path.join(out, "ckpt"), ckpt_every=2,
                        callback=lambda step, loss: seen.append(loss))
    save_weights(g, {{"rank": rank, "steps": r.steps, "final_loss": r.final_loss, "losses": seen}}, out,
                 f"rank{{rank}}")
    """
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_two_cpu_ranks_end_identical(tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(_WORKER.format(tests=str(Path(__file__).parent)))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
        "PYTHONWARNINGS": "error",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(worker),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    sd0, cfg0 = load_weights(tmp_path, "rank0")
    sd1, cfg1 = load_weights(tmp_path, "rank1")
    assert cfg0["steps"] == cfg1["steps"] == 4
    assert cfg0["final_loss"] == cfg1["final_loss"]  # the logged loss is the mean over ranks
    assert cfg0["losses"] != cfg1["losses"]  # each rank trained on its own triplets
    for k, v in sd0.items():
        assert torch.equal(v, sd1[k]), k
    # only rank 0 wrote checkpoints, and the last one holds the final weights
    mgr = CheckpointManager(tmp_path / "ckpt")
    assert mgr.steps() == [2, 4]
    ck = mgr.load()
    assert ck.extra["run"]["world_size"] == 2
    for k, v in sd0.items():
        assert torch.equal(v, ck.state["model"][k]), k
