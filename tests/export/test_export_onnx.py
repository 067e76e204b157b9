"""patchloupe.export and patchloupe.export.onnx_graph: the graphs, their contract and the refused combinations."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from conftest import random_image, striped_surface
from patchloupe import Detector
from patchloupe.export import export_detector, graph_path
from patchloupe.export.onnx_graph import ALLOWED_OPS

onnx = pytest.importorskip("onnx", reason="export needs the 'export' extra")


@pytest.mark.parametrize("kind", ["pattern", "memory", "selfref"])
def test_graph_passes_the_checker_and_uses_portable_operators_only(exported_graphs, kind: str) -> None:
    model = onnx.load(str(exported_graphs[kind]))
    onnx.checker.check_model(model, full_check=True)
    assert {n.op_type for n in model.graph.node} <= ALLOWED_OPS
    inp = model.graph.input[0]
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[1:] == [96, 96, 3] if kind == "pattern" else dims[1:] == [64, 64, 3]
    assert isinstance(dims[0], str)  # dynamic batch
    names = [o.name for o in model.graph.output]
    assert names[:3] == ["image_score", "patch_scores", "anomaly_map"]
    assert ("field" in names) == (kind == "pattern")


def test_window_attention_is_matmul_add_softmax_matmul_with_the_scale_on_q(exported_graphs) -> None:
    model = onnx.load(str(exported_graphs["pattern"]))
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) >= 8  # one per Swin block of the tiny preset
    for sm in softmaxes:
        n, seen = producer[sm.input[0]], []
        while n.op_type != "MatMul":  # Add(bias) and, in shifted blocks, Reshape -> Add(mask) -> Reshape
            seen.append(n.op_type)
            n = producer[n.input[0]]
        assert "Add" in seen and set(seen) <= {"Add", "Reshape"}, seen
        assert producer[n.input[0]].op_type == "Mul", "the scale must multiply q before q @ k^T"
        assert [c.op_type for c in consumers[sm.output[0]]] == ["MatMul"]


@pytest.mark.slow
def test_shifted_window_blocks_export_the_mask_as_an_add_and_keep_parity(tmp_path) -> None:
    """The tiny preset has one block per stage (never shifted): a 2-block first stage has a shift mask."""
    import torch
    from patchloupe.config import DetectorConfig
    from patchloupe.models.comparator import ComparatorConfig, PatternComparator
    from patchloupe.models.generator import build_generator
    from patchloupe.scorers.pattern import PatternScorer

    torch.manual_seed(1)
    gen = build_generator("tiny", depths=(2, 1, 1, 1))
    ref = Detector(PatternScorer(gen, PatternComparator(ComparatorConfig()), (96, 96), (3, 3)),
                   DetectorConfig(image_size=(96, 96), grid=(3, 3)))  # fmt: skip
    path = ref.export(tmp_path / "s.onnx")
    model = onnx.load(str(path))
    assert "ScatterND" not in {n.op_type for n in model.graph.node}  # masks are constants, not rebuilt per call
    producer = {o: n for n in model.graph.node for o in n.output}
    forms = set()
    for sm in (n for n in model.graph.node if n.op_type == "Softmax"):
        n, seen = producer[sm.input[0]], []
        while n.op_type != "MatMul":
            seen.append(n.op_type)
            n = producer[n.input[0]]
        forms.add(tuple(seen))
    assert ("Reshape", "Add", "Reshape", "Add") in forms and ("Add",) in forms
    img = striped_surface(2, (96, 96), hole=True)
    assert abs(Detector.load(path).inspect(img).score - ref.inspect(img).score) <= 1e-4


def test_artefact_json_describes_the_graph_and_keeps_the_threshold_outside(
    tiny_pattern_detector, exported_graphs
) -> None:
    meta = json.loads(exported_graphs["pattern"].with_suffix(".json").read_text())
    det = tiny_pattern_detector
    assert meta["detector"]["threshold"] == det.threshold
    assert meta["detector"]["false_alarm_rate"] == det.config.false_alarm_rate
    assert meta["detector"]["image_size"] == [96, 96] and meta["detector"]["grid"] == [3, 3]
    assert meta["scorer"] == "pattern" and meta["pixel_rule"] == "stitch"
    assert meta["scorer_config"]["directions"] == list(det.scorer.config.directions)
    assert meta["input"]["channel_order"] == "RGB" and meta["input"]["dtype"] == "uint8"
    assert meta["patchloupe_version"] and meta["artefact_version"] == 1 and len(meta["graph_sha256"]) == 64
    # the threshold is no graph constant: an export at another threshold gives the same graph bytes' numbers
    graph_bytes = exported_graphs["pattern"].read_bytes()
    assert np.float32(det.threshold).tobytes() not in graph_bytes


def test_runtime_threshold_changes_verdicts_without_a_new_graph(exported_graphs) -> None:
    det = Detector.load(exported_graphs["pattern"])
    img = striped_surface(3, (96, 96), hole=True)
    score = det.inspect(img).score
    assert det.inspect(img, threshold=min(1.0, score + 1e-3)).is_anomalous is False
    det.threshold = max(0.0, score - 1e-3)
    assert det.inspect(img).is_anomalous is True


def test_graph_path_rules(tmp_path) -> None:
    assert graph_path(tmp_path / "m.onnx", "onnx") == tmp_path / "m.onnx"
    assert graph_path(tmp_path / "out", "onnx") == tmp_path / "out" / "model.onnx"
    assert graph_path(tmp_path / "out", "openvino") == tmp_path / "out" / "model.xml"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "tflite"}, "format must be one of"),
        ({"batch": 4}, "batch must be 1 or 'dynamic'"),
        ({"opset": 11}, "opset must be"),
        ({"int8": True, "half": True}, "exclude each other"),
        ({"int8": True, "format": "openvino"}, "int8 is ONNX Runtime quantization"),
        ({"calibration": [np.zeros((8, 8, 3), np.uint8)]}, "for int8"),
    ],
)
def test_unsupported_combinations_fail_with_a_clear_message(tiny_pattern_detector, tmp_path, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        export_detector(tiny_pattern_detector, tmp_path / "x", **kwargs)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_a_graph_scorer_cannot_be_exported_again(exported_graphs, tmp_path) -> None:
    det = Detector.load(exported_graphs["memory"])
    with pytest.raises(ValueError, match="cannot be exported"):
        det.export(tmp_path / "again.onnx")


def test_batch_one_graph_has_a_static_input_and_runs_batches_image_by_image(small_memory_detector, tmp_path) -> None:
    path = small_memory_detector.export(tmp_path / "b1.onnx")
    model = onnx.load(str(path))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 64, 64, 3]
    det = Detector.load(path)
    imgs = [striped_surface(s, hole=s == 1) for s in range(3)]
    ref = [r.score for r in small_memory_detector.inspect_many(imgs, batch_size=3)]
    got = [r.score for r in det.inspect_many(imgs, batch_size=3)]
    np.testing.assert_allclose(got, ref, atol=1e-4)


def _selfref_variant(det: Detector, **changes: Any):  # noqa: ANN202 - a SelfRefScorer
    """The fitted self-reference scorer of ``det`` with other ``combine`` / ``normalize`` settings (same memory)."""
    import copy
    from dataclasses import replace

    from patchloupe.scorers.selfref import SelfRefScorer

    sc = det.scorer
    memory = copy.deepcopy(sc.memory)
    memory.trunk.normalize = changes.get("normalize", sc.config.normalize)
    memory.trunk.level = changes.get("level", sc.config.level)
    return SelfRefScorer(
        memory, replace(sc.config, **changes), sc.image_size, sc.grid, sc.position_scale, sc.class_scale
    )


def test_selfref_graph_at_a_size_not_divisible_by_8_matches_infer(tiny_pattern_detector, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="export needs the 'export' extra")
    import torch
    from patchloupe import Detector
    from patchloupe.export.onnx_graph import write_onnx
    from patchloupe.scorers.memory import memory_available

    if not memory_available():
        pytest.skip("the selfref scorer's trunk weights are not installed")
    torch.manual_seed(0)
    train = [striped_surface(s, (76, 100)) for s in range(10)]
    det = Detector.fit(
        train, base=tiny_pattern_detector, image_size=(76, 100), grid=(4, 5), coreset_fraction=0.25, progress=False
    )
    write_onnx(det.scorer, tmp_path / "odd.onnx", batch="dynamic", simplify=False)
    sess = ort.InferenceSession(str(tmp_path / "odd.onnx"), providers=["CPUExecutionProvider"])
    x = np.stack([striped_surface(s + 50, (76, 100), hole=s == 1) for s in range(2)]
                 + [random_image(2, (76, 100, 3)), np.rot90(striped_surface(3, (100, 76))).copy()])  # fmt: skip
    image, patch, amap = sess.run(None, {"images": x})
    want_patch, want_map = det.scorer.infer(x)
    p = det.scorer.parts(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0)
    assert set(det.scorer.near(p.d, p.clipped).tolist()) == {True, False}  # both branches, one batch
    assert np.abs(amap - want_map).max() <= 1e-5 and np.abs(patch - want_patch).max() <= 1e-5


@pytest.mark.parametrize(
    "changes",
    [{}, {"self_gain": 0.8, "self_offset": 0.3}, {"level": 0.6}, {"position_classes": 0}, {"position_classes": 2},
     {"combine": "min"}, {"combine": "mean"},
     {"combine": "self"}, {"combine": "memory"},
     {"normalize": "logplane"}, {"normalize": "plane"}, {"normalize": "none", "combine": "min"},
     {"clip_cells": 1.0}, {"clip_limit": 1.0}, {"gate_quantile": 0.5}, {"gate_quantile": 0.9}],
    ids=lambda c: "-".join(map(str, c.values())) or "default",
)  # fmt: skip
def test_selfref_graph_in_onnxruntime_matches_infer_for_every_combine_and_normalize(
    small_selfref_detector, tmp_path, changes: dict
) -> None:
    ort = pytest.importorskip("onnxruntime", reason="export needs the 'export' extra")
    from patchloupe.export.onnx_graph import write_onnx

    scorer = _selfref_variant(small_selfref_detector, **changes)
    write_onnx(scorer, tmp_path / "v.onnx", batch="dynamic", simplify=False)
    sess = ort.InferenceSession(str(tmp_path / "v.onnx"), providers=["CPUExecutionProvider"])
    # surfaces like the training ones, with and without a hole, noise, a rotated surface and one a gain clips: both
    # sides of the gate
    bright = np.clip(striped_surface(4).astype(np.float32) * 1.7, 0, 255).astype(np.uint8)
    burnt = striped_surface(5)
    burnt[:, :40] = 255  # most of the image saturated: its cells are capped in min(s, m)
    x = np.stack([striped_surface(s + 50, hole=s % 2 == 1) for s in range(3)] + [random_image(1, (64, 64, 3))]
                 + [np.rot90(striped_surface(3)).copy(), burnt, bright])  # fmt: skip
    image, patch, amap = sess.run(None, {"images": x})
    want_patch, want_map = scorer.infer(x)
    assert np.abs(amap - want_map).max() <= 1e-5
    assert np.abs(patch - want_patch).max() <= 1e-5
    assert np.abs(image - want_patch.reshape(len(x), -1).max(1)).max() <= 1e-5
    if not changes:  # the fitted scorer (combine="gate"): the gate is exercised both ways
        import torch

        p = scorer.parts(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0)
        assert set(scorer.near(p.d, p.clipped).tolist()) == {True, False}
        assert scorer.near(p.d)[-1] and not scorer.near(p.d, p.clipped)[-1]  # the clipped image: off by its clipping
        assert p.cells is not None and bool((p.cells[-2] > scorer.config.clip_cells).any())  # the burnt image
        _, uncapped = _selfref_variant(small_selfref_detector, clip_cells=1.0).infer(x)
        assert np.abs(uncapped[-2] - want_map[-2]).max() > 1e-3  # the cap is exercised, and the graph has it
