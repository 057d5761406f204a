"""RoIAlign as two matrix products on small maps: torchvision's values, scoped to the export."""

from __future__ import annotations

import contextlib
import io
import unittest.mock
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.ops import poolers

from export._roi_align import MAX_MAP_AREA, matmul_roi_align, small_map_roi_align
from tests.fixtures.models import tiny_shape_image


def random_rois(count: int, extent: float, seed: int) -> torch.Tensor:
    """Boxes across (and beyond) an ``extent``-pixel image, plus the awkward ones."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator) * extent * 1.1 - extent * 0.05
    size = torch.rand(count, 2, generator=generator) * extent * 0.6 + 0.1
    boxes = torch.cat([corner, corner + size], 1)
    awkward = torch.tensor(
        [
            [-extent, -extent, -extent / 2, -extent / 2],  # wholly outside: zeros
            [0.0, 0.0, 0.2, 0.2],  # smaller than a map pixel
            [extent - 1, extent - 1, extent + 40, extent + 40],  # past the last row and column
            [5.0, 5.0, 5.0, 5.0],  # empty box
            [0.0, 0.0, extent, extent],  # the whole image
        ]
    )
    boxes = torch.cat([awkward, boxes])
    return torch.cat([torch.zeros(len(boxes), 1), boxes], 1)


@pytest.mark.parametrize(
    ("channels", "height", "width", "scale", "output", "ratio"),
    [
        (8, 16, 16, 0.125, (7, 7), 2),
        (4, 9, 13, 0.0625, (7, 7), 2),
        (3, 5, 4, 0.25, (3, 5), 1),
        (6, 12, 7, 0.5, (2, 2), 3),
    ],
)
def test_matmul_roi_align_gives_torchvisions_values(channels, height, width, scale, output, ratio):
    features = torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(1))
    rois = random_rois(40, max(height, width) / scale, seed=height)
    expected = torchvision.ops.roi_align(features, rois, output, scale, ratio, aligned=False)
    got = matmul_roi_align(features, rois, output, scale, ratio)
    assert got.shape == expected.shape == (len(rois), channels, *output)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(got[0]) == 0, "a box wholly outside the map pools zeros"


def test_no_box_gives_an_empty_result():
    got = matmul_roi_align(torch.randn(1, 5, 8, 8), torch.zeros(0, 5), (7, 7), 0.125, 2)
    assert got.shape == (0, 5, 7, 7)


def test_the_traced_form_answers_for_other_map_sizes_and_no_box():
    """Map sizes and box counts are dynamic in the exported graph (one trace, any image)."""
    import onnxruntime

    class Pool(torch.nn.Module):
        def forward(self, features, rois):
            return matmul_roi_align(features, rois, (7, 7), 0.125, 2)

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Pool(),
            (torch.randn(1, 4, 16, 14), random_rois(10, 120, 0)),
            buffer,
            dynamo=False,
            opset_version=15,
            input_names=["features", "rois"],
            output_names=["pooled"],
            dynamic_axes={"features": {2: "h", 3: "w"}, "rois": {0: "n"}},
        )
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for height, width, count in [(16, 14, 10), (9, 11, 25), (3, 3, 4), (12, 12, 0)]:
        features = torch.randn(1, 4, height, width)
        rois = random_rois(count, 8 * max(height, width), count)[: max(count, 0) or 0]
        (pooled,) = session.run(None, {"features": features.numpy(), "rois": rois.numpy()})
        expected = torchvision.ops.roi_align(features, rois, (7, 7), 0.125, 2)
        np.testing.assert_allclose(pooled, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_only_levels_whose_map_stays_small_are_swapped_and_the_patch_is_scoped():
    original = poolers.roi_align
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[3] if len(args) > 3 else kwargs.get("spatial_scale"))
        return original(*args, **kwargs)

    features = torch.randn(1, 4, 16, 16)
    rois = random_rois(6, 128, 3)
    with unittest.mock.patch.object(poolers, "roi_align", spy):
        # 128 px images: a 1/8 level is at most 16x16 (matrix form), a 1/2 level 64x64 (not).
        with small_map_roi_align(max_side=128):
            assert poolers.roi_align is not spy
            poolers.roi_align(features, rois, (7, 7), 0.125, 2)
            poolers.roi_align(torch.randn(1, 4, 64, 64), rois, (7, 7), 0.5, 2)
            poolers.roi_align(features, rois, (7, 7), 0.125, -1)  # adaptive sampling: not ours
            poolers.roi_align(features, rois, (7, 7), 0.125, 2, True)  # aligned: not ours
        assert poolers.roi_align is spy
        # 1333 px images: even the 1/32 level (42x42) is past MAX_MAP_AREA.
        assert MAX_MAP_AREA < 42 * 42
        with small_map_roi_align(max_side=1333):
            poolers.roi_align(torch.randn(1, 4, 42, 42), rois, (7, 7), 1 / 32, 2)
    assert calls == [0.5, 0.125, 0.125, 1 / 32]
    assert poolers.roi_align is original
    with pytest.raises(RuntimeError, match="export failed"), small_map_roi_align(128):
        raise RuntimeError("export failed")
    assert poolers.roi_align is original


@pytest.mark.slow
def test_the_exported_tiny_model_pools_without_roialign_and_answers_as_before(
    tiny_checkpoint, tmp_path
):
    import onnx

    from export.adapter import adapter_from_checkpoint
    from export.onnx_export import export_onnx
    from export.validation import onnx_session
    from training.checkpoint import load_checkpoint

    adapter = adapter_from_checkpoint(load_checkpoint(tiny_checkpoint))
    example = torch.from_numpy(
        np.ascontiguousarray(tiny_shape_image(np.random.default_rng(1))[0].transpose(2, 0, 1))
    )
    kernel, products = tmp_path / "kernel.onnx", tmp_path / "products.onnx"
    with unittest.mock.patch(
        "export.onnx_export.small_map_roi_align", lambda max_side: contextlib.nullcontext()
    ):
        export_onnx(adapter, kernel, example=example)
    export_onnx(adapter, products, example=example)

    def roi_aligns(path: Path) -> int:
        return sum(node.op_type == "RoiAlign" for node in onnx.load(str(path)).graph.node)

    assert roi_aligns(kernel) > 0 and roi_aligns(products) == 0
    before, after = onnx_session(kernel), onnx_session(products)
    rng = np.random.default_rng(9)
    answered = 0
    for size in (64, 100, 200):
        for _ in range(3):
            image = np.ascontiguousarray(tiny_shape_image(rng, size)[0].transpose(2, 0, 1))
            want = before.run(None, {"image": image})
            have = after.run(None, {"image": image})
            assert [a.shape for a in have] == [a.shape for a in want]
            np.testing.assert_allclose(have[0], want[0], rtol=1e-4, atol=1e-2)
            np.testing.assert_allclose(have[1], want[1], rtol=1e-4, atol=1e-4)
            np.testing.assert_array_equal(have[2], want[2])
            answered += len(want[0])
    assert answered > 0, "the tiny model should detect some of the rectangles"
    blank = np.full((3, 64, 64), 128, np.uint8)
    assert [a.shape[0] for a in after.run(None, {"image": blank})] == [
        a.shape[0] for a in before.run(None, {"image": blank})
    ]
