"""Stage-1 training: weights/checkpoint I/O, schedule, triplet sampling, training, resume, pretrain.

Everything runs the ``tiny`` generator on 64 x 64 images (4 x 4 grid of 16 px patches).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from patchloupe.train.common import (
    CheckpointError,
    CheckpointManager,
    Progress,
    WeightsError,
    decode_state,
    derive_seed,
    encode_state,
    load_weights,
    save_weights,
    seed_everything,
    warmup_cosine,
)
from patchloupe.train.sampling import TripletSampler, grid_triplets, image_triplets
from torch import nn

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """These tiny models run fastest on one thread (and far faster than 2 threads on a busy CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def stripes(n: int = 4, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Small periodic RGB textures (uint8 ``(size, size, 3)``), different phase/period per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for _ in range(n):
        period, phase, angle = rng.uniform(5, 9), rng.uniform(0, 6.28), rng.uniform(0, 0.6)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period + phase)
        rgb = 127 + 100 * wave[..., None] * np.array([1.0, 0.7, 0.4], dtype=np.float32)
        out.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return out


# ---------------------------------------------------------------------------------------------- weights


def test_save_load_weights_roundtrip_and_atomicity(tmp_path: Path) -> None:
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2, dtype=torch.int64)}
    state["view"] = state["a"][0]  # shares storage with "a"
    save_weights(state, {"preset": "x", "grid": [4, 4]}, tmp_path, "w")
    loaded, cfg = load_weights(tmp_path, "w")
    assert cfg == {"preset": "x", "grid": [4, 4]}
    assert set(loaded) == set(state)
    for k in state:
        assert torch.equal(loaded[k], state[k])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json", "w.safetensors"]  # no temp files left
    doc = json.loads((tmp_path / "w.json").read_text())
    assert doc["__weights__"]["sha256"]
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight  # tied parameters share storage
    save_weights(tied, {}, tmp_path, "tied")
    sd, _ = load_weights(tmp_path, "tied")
    assert torch.equal(sd["0.weight"], tied[0].weight.detach()) and torch.equal(sd["1.weight"], sd["0.weight"])
    lin = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="reserved"):
        save_weights(lin, {"__weights__": 1}, tmp_path, "bad")


def test_load_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(tmp_path, "missing")
    save_weights({"x": torch.ones(8)}, {"k": 1}, tmp_path, "w")
    st = tmp_path / "w.safetensors"
    good = st.read_bytes()
    st.write_bytes(good[:-4])  # truncated
    with pytest.raises(WeightsError, match="truncated"):
        load_weights(tmp_path, "w")
    st.write_bytes(good[:-4] + b"\x00\x00\x80\x7f")  # same size, different content
    with pytest.raises(WeightsError, match="SHA-256"):
        load_weights(tmp_path, "w")
    st.write_bytes(b"garbage!" * 4)
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        load_weights(tmp_path, "w", verify=False)
    st.unlink()
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path, "w")
    (tmp_path / "j.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        load_weights(tmp_path, "j")


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


def test_warmup_cosine_and_seeds() -> None:
    lrs = [warmup_cosine(s, 10, 2, 1.0, 0.1) for s in range(10)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert warmup_cosine(0, 1, 0, 2.0) == 2.0
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 2, 4)
    seed_everything(5)
    a = (np.random.rand(), torch.rand(1))
    seed_everything(5)
    assert (np.random.rand(), torch.rand(1)) == a


def test_progress_logs_without_tty(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="patchloupe.train.common"):
        with Progress(4, log_every=2, enabled=True) as bar:  # stderr is not a TTY under pytest
            for i in range(4):
                bar.update(1, loss=1.0 / (i + 1))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "step 4/4" in lines[-1] and "loss 0.25" in lines[-1] and "ETA" in lines[-1]


# ---------------------------------------------------------------------------------------------- sampling


def test_grid_triplets_contract() -> None:
    assert grid_triplets(2, 4, "ltr").tolist() == [[0, 1, 2], [1, 2, 3], [4, 5, 6], [5, 6, 7]]
    assert grid_triplets(2, 4, "rtl").tolist() == [[2, 1, 0], [3, 2, 1], [6, 5, 4], [7, 6, 5]]
    assert grid_triplets(3, 2, "ttb").tolist() == [[0, 2, 4], [1, 3, 5]]
    assert grid_triplets(3, 2, "btt").tolist() == [[4, 2, 0], [5, 3, 1]]
    assert grid_triplets(4, 2, "ltr").shape == (0, 3)
    try:
        from patchloupe import _native
    except ImportError:  # pragma: no cover - native module not built
        return
    if hasattr(_native, "neighbor_triplets"):
        for d in ("ltr", "rtl", "ttb", "btt"):
            assert np.array_equal(np.asarray(_native.neighbor_triplets(4, 5, d)), grid_triplets(4, 5, d).numpy())


def test_sampler_shapes_determinism_and_aligned_geometry() -> None:
    imgs = [np.random.default_rng(i).integers(0, 256, (70, 90, 3), dtype=np.uint8) for i in range(3)]
    imgs.append(np.random.default_rng(9).integers(0, 256, (50, 50), dtype=np.uint8))  # gray
    s = TripletSampler(imgs, (64, 64), (4, 4), column_wise=True, seed=3, flips=True)
    assert s.images.shape == (4, 3, 64, 64) and s.images.dtype == torch.uint8
    first, second, target = s.sample(32)
    for t in (first, second, target):
        assert t.shape == (32, 3, 16, 16) and t.dtype == torch.float32 and 0 <= float(t.min()) <= float(t.max()) <= 1
    again = TripletSampler(imgs, (64, 64), (4, 4), column_wise=True, seed=3, flips=True).sample(32)
    assert all(torch.equal(a, b) for a, b in zip((first, second, target), again, strict=True))
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert torch.equal(s.sample(4, rng=rng_a)[0], s.sample(4, rng=rng_b)[0])

    from patchloupe.preprocess import image_to_patches

    patches = image_to_patches(s.images.float() / 255, (4, 4))  # (N, 16, 3, 16, 16)
    b = s.sample_aligned(64)
    assert bool(b.aligned.all()) and not bool(b.flipped.any())
    steps = {"ltr": 1, "rtl": -1, "ttb": 4, "btt": -4}
    for i in range(64):
        d, (p0, p1, p2) = b.direction[i], b.patch_index[i].tolist()
        assert p1 - p0 == p2 - p1 == steps[d]
        assert p0 // 4 == p2 // 4 if d in ("ltr", "rtl") else p0 % 4 == p2 % 4
        tr = (lambda x: x.transpose(-1, -2)) if d in ("ttb", "btt") else (lambda x: x)
        img = patches[b.image_index[i]]
        assert torch.equal(b.first[i], tr(img[p0])) and torch.equal(b.second[i], tr(img[p1]))
        assert torch.equal(b.target[i], tr(img[p2]))


def test_sampler_jitter_origins_and_flips() -> None:
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    s = TripletSampler([img], (64, 64), (4, 4), directions=("ltr", "rtl"), offset_jitter=1.0, flips=True, seed=1)
    b = s.sample_batch(64)
    assert not bool(b.aligned.any()) and bool(b.flipped.any()) and not bool(b.flipped.all())
    assert bool((b.patch_index == -1).all())
    full = s.images[0].float() / 255
    for i in range(64):
        (y0, x0), (y1, x1), (y2, x2) = b.origin[i].tolist()
        assert y0 == y1 == y2 and abs(x2 - x0) == 32 and x1 == (x0 + x2) // 2  # adjacent, first farther
        assert (x2 > x0) == (b.direction[i] == "ltr")
        real = full[:, y2 : y2 + 16, x2 : x2 + 16]
        assert torch.equal(b.target[i], real.flip(-2) if b.flipped[i] else real)  # vertical mirror only
    assert TripletSampler([img], (64, 64), (4, 4), offset_jitter=False).sample_batch(16).aligned.all()


def test_sampler_validation() -> None:
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="direction"):
        TripletSampler([img], (64, 64), (4, 4), directions=("up",))
    with pytest.raises(ValueError, match="3 grid columns"):
        TripletSampler([img], (64, 64), (4, 2))
    with pytest.raises(ValueError, match="square patches"):
        TripletSampler([img], (64, 96), (4, 4), column_wise=True)
    with pytest.raises(ValueError, match="uint8"):
        TripletSampler([img.astype(np.float32)], (64, 64), (4, 4))
    with pytest.raises(ValueError, match="at least one image"):
        TripletSampler([], (64, 64), (4, 4))


def test_image_triplets_matches_grid() -> None:
    x = torch.rand(2, 3, 48, 64)
    first, second, target, trip = image_triplets(x, (3, 4), "rtl")
    assert first.shape == (2, 6, 3, 16, 16) and trip.shape == (6, 3)
    assert torch.equal(target[1, 0], x[1, :, 0:16, 0:16]) and torch.equal(first[1, 0], x[1, :, 0:16, 32:48])


# ---------------------------------------------------------------------------------------------- training


def _tiny_generator(seed: int = 0) -> nn.Module:
    from patchloupe.models.generator import build_generator

    torch.manual_seed(seed)
    return build_generator("tiny")


def test_train_generator_learns_and_is_reproducible(tmp_path: Path) -> None:
    from patchloupe.train.stage1 import evaluate_prediction, train_generator

    imgs = stripes(4)
    kw = dict(image_size=(64, 64), grid=(4, 4), steps=24, batch_size=8, lr=3e-3, seed=1, progress=False, log_every=4)
    g1 = _tiny_generator()
    r1 = train_generator(g1, imgs, ckpt_dir=tmp_path / "ck", ckpt_every=10, **kw)
    assert r1.steps == 24 and r1.start_step == 0 and len(r1.history) == 6
    assert r1.history[-1]["loss"] < 0.6 * r1.history[0]["loss"], r1.history
    assert r1.final_loss == r1.history[-1]["loss"] and r1.wall_s > 0
    assert CheckpointManager(tmp_path / "ck").steps() == [20, 24]
    assert r1.checkpoint is not None and r1.checkpoint.name == "ckpt-00000024.json"
    assert g1.training  # mode restored

    g2 = _tiny_generator()
    train_generator(g2, imgs, **kw)
    for (k, a), b in zip(g1.state_dict().items(), g2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k

    # resuming a finished run is a no-op that reports the recorded state
    r3 = train_generator(_tiny_generator(5), imgs, ckpt_dir=tmp_path / "ck", resume=True, **kw)
    assert r3.steps == 24 and r3.start_step == 24 and r3.final_loss == r1.final_loss

    ev = evaluate_prediction(g1, stripes(2, seed=7), image_size=(64, 64), grid=(4, 4), directions=("ltr", "btt"))
    assert ev["n"] == 2 * (8 + 8) and np.isfinite(ev["psnr"]) and np.isfinite(ev["psnr_copy"])


def test_train_generator_argument_errors() -> None:
    from patchloupe.train.stage1 import train_generator

    for loss in ("l1", "mse+ssim"):
        with pytest.raises(ValueError, match="loss"):
            train_generator(_tiny_generator(), stripes(1), image_size=(64, 64), grid=(4, 4), steps=1, loss=loss)
    with pytest.raises(ValueError, match="steps"):
        train_generator(_tiny_generator(), stripes(1), image_size=(64, 64), grid=(4, 4), steps=0)
    with pytest.raises(ValueError, match="fp16"):
        train_generator(
            _tiny_generator(), stripes(1), image_size=(64, 64), grid=(4, 4), steps=1, amp="fp16", device="cpu"
        )


RESUME_KW = dict(image_size=(64, 64), grid=(4, 4), steps=12, batch_size=4, lr=2e-3, seed=11, progress=False)

_RESUME_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_train_stage1 import RESUME_KW, resume_generator, stripes
    from patchloupe.train.stage1 import train_generator

    ckpt, mode = sys.argv[1], sys.argv[2]
    slow = (lambda step, loss: time.sleep(0.5) if step >= 4 else None) if mode == "slow" else None
    g = resume_generator()
    r = train_generator(g, stripes(3), ckpt_dir=ckpt, ckpt_every=2, resume=mode == "resume", callback=slow,
                        **RESUME_KW)
    print("RESULT", r.start_step, r.steps, flush=True)
    """
)


def resume_generator() -> nn.Module:
    """The tiny generator with DropPath on, so in-model randomness must resume exactly too."""
    from patchloupe.models.generator import build_generator

    torch.manual_seed(0)
    return build_generator("tiny", drop_path_rate=0.1)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path) -> None:
    """Kill a checkpointing run mid-way (SIGKILL) in a subprocess, resume it in another, and compare
    the final weights with an uninterrupted run (in this process, same seed, one thread)."""
    from patchloupe.train.stage1 import train_generator

    script = tmp_path / "run.py"
    script.write_text(_RESUME_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error"}
    ckpt = tmp_path / "ckpt"

    def launch(mode: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, str(script), str(ckpt), mode]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    victim = launch("slow")
    mgr = CheckpointManager(ckpt)
    deadline = time.monotonic() + 120
    while (mgr.latest_step() or 0) < 4:
        if victim.poll() is not None:
            out = victim.stdout.read().decode() if victim.stdout else ""
            pytest.fail(f"run ended before a checkpoint appeared:\n{out}")
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    if victim.stdout is not None:
        victim.stdout.close()
    assert victim.returncode == -signal.SIGKILL
    killed_at = mgr.latest_step()
    assert killed_at is not None and 4 <= killed_at < 12

    resumed = launch("resume")
    reference = resume_generator()
    ref = train_generator(reference, stripes(3), **RESUME_KW)  # meanwhile: the uninterrupted run
    out, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out.decode()
    start, steps = (int(v) for v in out.decode().split("RESULT")[1].split())
    assert start == killed_at and steps == 12 == ref.steps
    assert mgr.latest_step() == 12

    resumed_model = resume_generator()
    CheckpointManager(ckpt).load(model=resumed_model)
    # bit-for-bit: same data, same per-step seeds, same AdamW moments and step counts, same thread count
    for (k, a), b in zip(reference.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


# ---------------------------------------------------------------------------------------------- pretrain


def test_pretrain_tiny_writes_loadable_generator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from patchloupe.train.pretrain import add_pretrain_arguments, load_generator, pretrain, run_pretrain

    fams = ["cloth", "mesh"]
    r = pretrain(tmp_path, "tiny", steps=3, batch_size=2, n_images_per_family_style=1, families=fams,
                 progress=False, eval_images_per_family_style=1)  # fmt: skip
    assert r.steps == 3
    g, cfg = load_generator(tmp_path)
    assert cfg["preset"] == "tiny" and cfg["image_size"] == [128, 128] and cfg["grid"] == [4, 4]
    assert cfg["stored_dtype"] == "float16" and not g.training
    t = cfg["training"]
    assert t["steps"] == 3 and t["data"]["families"] == fams and t["data"]["images"] == 5  # cloth 3 + mesh 2 styles
    assert t["final_loss"] == r.final_loss and t["wall_s"] >= 0
    assert set(t["heldout"]) == {"cloth", "mesh", "mean"} and np.isfinite(t["heldout"]["mean"]["psnr"])
    assert next(g.parameters()).dtype == torch.float32

    # resuming a finished run keeps the weights; the CLI handler prints a JSON summary
    parser = add_pretrain_arguments(argparse.ArgumentParser())
    argv = ["--out", str(tmp_path), "--preset", "tiny", "--steps", "3", "--batch-size", "2", "--images", "1"]
    argv += ["--families", *fams, "--resume", "--no-progress", "--eval-images", "0"]
    args = parser.parse_args(argv)
    assert run_pretrain(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["weights"].endswith("generator.safetensors")


def test_load_generator_rejects_foreign_weights(tmp_path: Path) -> None:
    from patchloupe.train.pretrain import load_generator

    save_weights({"x": torch.zeros(2)}, {"format": "something-else"}, tmp_path, "generator")
    with pytest.raises(WeightsError, match="not a generator config"):
        load_generator(tmp_path)


def test_default_generator_is_packaged() -> None:
    from patchloupe.train.pretrain import default_generator_path, load_default_generator

    path = default_generator_path()
    assert path.name == "generator.safetensors" and path.parent.name == "weights"
    if not path.is_file():
        pytest.skip("no packaged default generator in this checkout")
    g, cfg = load_default_generator()
    assert cfg["preset"] == "edge" and cfg["image_size"] == [256, 256] and cfg["grid"] == [4, 4]
    assert cfg["training"]["steps"] > 0
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        y = g(x, x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
