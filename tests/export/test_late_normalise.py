"""Normalising after the resize: the exported graph does the float work on the working size."""

from __future__ import annotations

import contextlib
import unittest.mock
from pathlib import Path

import numpy as np
import pytest
import torch

from detstack.errors import ExportError
from tests.fixtures.models import tiny_shape_image


def tiny_adapter(checkpoint: Path):
    from export.adapter import adapter_from_checkpoint
    from training.checkpoint import load_checkpoint

    return adapter_from_checkpoint(load_checkpoint(checkpoint))


def image_tensor(rng: np.random.Generator, size: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(tiny_shape_image(rng, size)[0].transpose(2, 0, 1)))


@pytest.mark.slow
def test_the_reordered_adapter_answers_as_torchvisions_order_and_is_restored_after(
    tiny_checkpoint,
):
    from export._late_normalise import normalise_after_resize

    adapter = tiny_adapter(tiny_checkpoint)
    transform = adapter.detector.transform
    rng = np.random.default_rng(3)
    images = [image_tensor(rng, size) for size in (64, 150, 257)]
    with torch.no_grad():
        before = [adapter(image) for image in images]
        with normalise_after_resize(adapter):
            assert adapter.scale_first is False
            reordered = [adapter(image) for image in images]
        after = [adapter(image) for image in images]
    assert "normalize" not in vars(transform) and "resize" not in vars(transform)
    assert adapter.scale_first is True
    detected = 0
    for want, have, again in zip(before, reordered, after, strict=True):
        for name, a, b, c in zip(("boxes", "scores", "labels"), want, have, again, strict=True):
            assert torch.equal(a, c), f"{name} changed after the block"
            assert a.shape == b.shape, name
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-3, msg=name)
        detected += len(want[0])
    assert detected > 0, "the tiny model should detect some of the rectangles"


def test_the_reorder_is_undone_when_the_block_raises_and_refuses_nesting(tiny_checkpoint):
    from export._late_normalise import normalise_after_resize

    adapter = tiny_adapter(tiny_checkpoint)
    transform = adapter.detector.transform
    with pytest.raises(RuntimeError, match="export failed"), normalise_after_resize(adapter):
        raise RuntimeError("export failed")
    assert "resize" not in vars(transform) and adapter.scale_first is True
    with (
        normalise_after_resize(adapter),
        pytest.raises(ExportError, match="already reordered"),
        normalise_after_resize(adapter),
    ):
        pass
    assert "resize" not in vars(transform) and adapter.scale_first is True


def float_ops_before_resize(path: Path) -> list[str]:
    """Op types between the graph input and the first ``Resize`` (the full-size work)."""
    import onnx

    graph = onnx.load(str(path)).graph
    producers = {output: node for node in graph.node for output in node.output}
    resize = next(node for node in graph.node if node.op_type == "Resize")
    seen, stack, ops = set(), [resize.input[0]], []
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        ops.append(node.op_type)
        stack.extend(node.input)
    return ops


@pytest.mark.slow
def test_the_exported_graph_resizes_before_it_normalises_and_answers_as_before(
    tiny_checkpoint, tmp_path
):
    from export.onnx_export import export_onnx
    from export.validation import onnx_session

    adapter = tiny_adapter(tiny_checkpoint)
    example = image_tensor(np.random.default_rng(1), 96)
    early, late = tmp_path / "early.onnx", tmp_path / "late.onnx"
    with unittest.mock.patch(
        "export.onnx_export.normalise_after_resize", lambda adapter: contextlib.nullcontext()
    ):
        export_onnx(adapter, early, example=example)
    export_onnx(adapter, late, example=example)
    assert {"Sub", "Div"} <= set(float_ops_before_resize(early)), "torchvision's order"
    # At full size only the cast to float (and the batch axis the resize adds) remain.
    assert set(float_ops_before_resize(late)) <= {"Cast", "Unsqueeze", "Constant"}
    before, after = onnx_session(early), onnx_session(late)
    rng = np.random.default_rng(5)
    for size in (64, 120, 300):
        image = image_tensor(rng, size).numpy()
        want, have = before.run(None, {"image": image}), after.run(None, {"image": image})
        assert [a.shape for a in have] == [a.shape for a in want]
        np.testing.assert_allclose(have[0], want[0], rtol=1e-4, atol=1e-2)
        np.testing.assert_allclose(have[1], want[1], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(have[2], want[2])
