"""The export's cheaper FPN level merge: same values as torchvision's, scoped to the export."""

from __future__ import annotations

import contextlib
import unittest.mock
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import poolers

from export._roi_merge import cheap_level_merge, gather_merge_levels
from tests.fixtures.models import tiny_shape_image


def per_level_results(levels: torch.Tensor, channels: int = 3) -> list[torch.Tensor]:
    """Distinct pooled features for the boxes of each level, in ``where(levels == l)`` order."""
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randn(int((levels == level).sum()), channels, 7, 7, generator=generator)
        for level in range(4)
    ]


@pytest.mark.parametrize(
    "levels",
    [
        [2, 0, 1, 3, 0, 0, 2, 1, 3, 3],
        [1, 1, 1],  # levels 0, 2 and 3 hold no box
        [],  # no box at all
    ],
    ids=["mixed", "one-level", "no-box"],
)
def test_gather_merge_gives_exactly_torchvisions_merge(levels):
    levels = torch.tensor(levels, dtype=torch.int64)
    results = per_level_results(levels)
    expected = poolers._onnx_merge_levels(levels, results)
    merged = gather_merge_levels(levels, results)
    assert merged.shape == expected.shape == (len(levels), 3, 7, 7)
    assert torch.equal(merged, expected)


def test_the_patch_lasts_only_for_the_block_even_when_it_raises():
    original = poolers._onnx_merge_levels
    with cheap_level_merge():
        assert poolers._onnx_merge_levels is gather_merge_levels
    assert poolers._onnx_merge_levels is original
    with pytest.raises(RuntimeError, match="export failed"), cheap_level_merge():
        raise RuntimeError("export failed")
    assert poolers._onnx_merge_levels is original


class Pooler(torch.nn.Module):
    """torchvision's ``MultiScaleRoIAlign`` over four FPN levels, as tensors in and out."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops import MultiScaleRoIAlign

        self.pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *features, boxes = inputs
        levels = {str(level): feature for level, feature in enumerate(features)}
        return self.pool(levels, [boxes], [(512, 512)])


def pooler_inputs(boxes: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Features at strides 4..32 of a 512 px image and boxes of 8..500 px (every level used)."""
    generator = torch.Generator().manual_seed(seed)
    features = [torch.randn(1, 4, 512 // s, 512 // s, generator=generator) for s in (4, 8, 16, 32)]
    sides = torch.logspace(3, 9, boxes, base=2)[torch.randperm(boxes, generator=generator)]
    corners = torch.rand(boxes, 2, generator=generator) * (512 - sides[:, None])
    return (*features, torch.cat([corners, corners + sides[:, None]], dim=1))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_the_exported_pooler_answers_like_eager_pytorch_for_any_number_of_boxes(tmp_path):
    import onnxruntime

    pooler, paths = Pooler().eval(), {}
    names = ["f0", "f1", "f2", "f3", "boxes"]
    for merge, patch in (("scatter", contextlib.nullcontext()), ("gather", cheap_level_merge())):
        paths[merge] = tmp_path / f"{merge}.onnx"
        with patch, torch.no_grad():
            torch.onnx.export(
                pooler,
                pooler_inputs(12, seed=0),
                paths[merge],
                dynamo=False,
                opset_version=15,
                input_names=names,
                output_names=["pooled"],
                dynamic_axes={"boxes": {0: "n"}, "pooled": {0: "n"}},
            )
    sessions = {m: onnxruntime.InferenceSession(str(p)) for m, p in paths.items()}
    for boxes, seed in ((12, 0), (37, 1), (1, 2)):
        inputs = pooler_inputs(boxes, seed)
        feed = {name: tensor.numpy() for name, tensor in zip(names, inputs, strict=True)}
        with torch.no_grad():
            eager = pooler(*inputs).numpy()
            levels = pooler.pool.map_levels([inputs[-1]])
        if boxes > 4:
            assert set(levels.tolist()) == {0, 1, 2, 3}, "the boxes should use every level"
        scattered, gathered = (sessions[m].run(None, feed)[0] for m in ("scatter", "gather"))
        np.testing.assert_array_equal(gathered, scattered)
        np.testing.assert_allclose(gathered, eager, rtol=1e-5, atol=1e-5)


def export_both(tiny_checkpoint: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The tiny model exported as torchvision writes the merge, and as our export does."""
    from export.adapter import adapter_from_checkpoint
    from export.onnx_export import export_onnx
    from training.checkpoint import load_checkpoint

    adapter = adapter_from_checkpoint(load_checkpoint(tiny_checkpoint))
    example = torch.from_numpy(
        np.ascontiguousarray(tiny_shape_image(np.random.default_rng(1))[0].transpose(2, 0, 1))
    )
    scatter, gather = tmp_path / "scatter.onnx", tmp_path / "gather.onnx"
    with unittest.mock.patch("export.onnx_export.cheap_level_merge", contextlib.nullcontext):
        export_onnx(adapter, scatter, example=example)
    export_onnx(adapter, gather, example=example)
    return scatter, gather


def full_size_scatters(path: Path) -> list[str]:
    """``ScatterElements`` nodes of the graph that write more than a 1-D tensor."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    ranks = {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in (*model.graph.value_info, *model.graph.output)
    }
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "ScatterElements" and ranks.get(node.output[0], 4) > 1
    ]


@pytest.mark.slow
def test_exported_graph_merges_levels_without_full_size_scatters_and_answers_identically(
    tiny_checkpoint, tmp_path
):
    from export.validation import onnx_session

    scatter, gather = export_both(tiny_checkpoint, tmp_path)
    assert full_size_scatters(scatter), "torchvision's own merge should scatter N x C x 7 x 7"
    assert full_size_scatters(gather) == []
    before, after = onnx_session(scatter), onnx_session(gather)
    rng = np.random.default_rng(7)
    answered = 0
    for size in (64, 96, 160):
        for _ in range(3):
            image = np.ascontiguousarray(tiny_shape_image(rng, size)[0].transpose(2, 0, 1))
            expected = before.run(None, {"image": image})
            got = after.run(None, {"image": image})
            for name, want, have in zip(("boxes", "scores", "labels"), expected, got, strict=True):
                assert have.dtype == want.dtype and have.shape == want.shape, name
                np.testing.assert_array_equal(have, want, err_msg=name)
            answered += len(expected[0])
    assert answered > 0, "the tiny model should detect some of the rectangles"
