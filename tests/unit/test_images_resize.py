"""The server-side resize to the working size: torchvision's own, oriented, any colour mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional

from detstack.errors import ImageDecodeError
from detstack.images import (
    decode_for_model,
    decode_image,
    linear_taps,
    resize_bilinear,
    resize_for_graph,
    server_working_size,
    working_scale,
    working_size,
)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _torchvision_resize(pixels: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """What ``GeneralizedRCNNTransform`` (eager) does to an HWC image, in 0..255 floats."""
    height, width = pixels.shape[:2]
    tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float()[None]
    resized = functional.interpolate(
        tensor,
        scale_factor=working_scale(width, height, min_size, max_size),
        mode="bilinear",
        recompute_scale_factor=True,
        align_corners=False,
    )
    return resized[0].permute(1, 2, 0).numpy()


def test_resize_matches_torch_interpolate_within_half_a_grey_level_on_random_images():
    rng = np.random.default_rng(7)
    for _ in range(40):
        height, width = (int(v) for v in rng.integers(40, 900, 2))
        min_size = int(rng.integers(16, 200))
        max_size = int(rng.integers(min_size, 400))
        size = working_size(width, height, min_size, max_size)
        if min(size) < 1:
            continue
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = _torchvision_resize(pixels, min_size, max_size)
        resized = resize_bilinear(pixels, size)
        assert resized.shape == expected.shape == (size[1], size[0], 3)
        assert resized.dtype == np.uint8
        assert np.abs(resized.astype(np.float32) - expected).max() <= 0.5 + 3e-3


def test_the_graphs_halving_of_the_blocks_gives_torchvisions_resize_within_an_eighth_level():
    rng = np.random.default_rng(11)
    for _ in range(30):
        height, width = (int(v) for v in rng.integers(600, 1500, 2))
        min_size = int(rng.integers(16, 120))
        max_size = int(rng.integers(min_size, 200))
        size = server_working_size(width, height, min_size, max_size)
        if size is None:
            continue
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        blocks = resize_for_graph(pixels, size)
        assert blocks.shape == (2 * size[1], 2 * size[0], 3) and blocks.dtype == np.uint8
        # what the exported graph's own resize does to the blocks: bilinear to half the size
        tensor = torch.from_numpy(blocks.transpose(2, 0, 1).astype(np.float32))[None]
        halved = functional.interpolate(
            tensor, size=size[::-1], mode="bilinear", align_corners=False
        )
        expected = _torchvision_resize(pixels, min_size, max_size)
        assert (
            np.abs(halved[0].permute(1, 2, 0).numpy() - expected).max() <= 0.125 + 3e-3
        )  # float32 sums differ in the last bits


def test_resize_of_a_chw_array_equals_the_resize_of_its_hwc_form():
    pixels = np.random.default_rng(1).integers(0, 256, (301, 517, 3), dtype=np.uint8)
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    resized = resize_bilinear(chw, (97, 56), channels_first=True)
    assert resized.shape == (3, 56, 97) and resized.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(resized.transpose(1, 2, 0), resize_bilinear(pixels, (97, 56)))
    blocks = resize_for_graph(chw, (97, 56), channels_first=True)
    assert blocks.shape == (3, 112, 194) and blocks.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(blocks.transpose(1, 2, 0), resize_for_graph(pixels, (97, 56)))


def test_linear_taps_read_two_neighbours_and_stay_inside_the_source():
    taps = linear_taps(3000, 96)
    assert taps.first.min() >= 0 and taps.second.max() <= 2999
    assert ((taps.second - taps.first) <= 1).all()
    assert ((taps.weight >= 0) & (taps.weight <= 1)).all()
    enlarged = linear_taps(10, 25)  # the clamped edges of an enlargement
    assert enlarged.first[0] == 0 and enlarged.weight[0] == 0
    assert enlarged.first[-1] == enlarged.second[-1] == 9


def test_the_server_resizes_only_images_the_detector_shrinks():
    assert server_working_size(4000, 3000, 128, 128) == (128, 96)
    assert server_working_size(4000, 3000, 800, 1333) == (1066, 800)
    assert server_working_size(64, 48, 128, 128) is None  # an enlargement: the graph does it
    assert server_working_size(128, 96, 128, 128) is None  # already at the working size
    assert server_working_size(1600, 1200, 800, 1333) is None  # blocks would outnumber it
    assert server_working_size(741, 500, 128, 128) is None  # spares the graph too little
    assert server_working_size(1000, 872, 128, 128) == (128, 111)
    assert server_working_size(4000, 3000, 0, 0) is None  # no recorded resize
    assert server_working_size(100000, 10, 128, 128) is None  # would shrink a side to 0


def test_the_traced_transform_halves_the_blocks_of_every_server_size_back_to_that_size():
    f32 = np.float32
    checked = 0
    for min_size, max_size in ((128, 128), (800, 1333), (64, 64), (512, 683)):
        for width in range(2 * min_size + 1, 6000, 37):
            for height in (2 * min_size + 3, 2001, 3001):
                size = server_working_size(width, height, min_size, max_size)
                if size is None:
                    continue
                checked += 1
                assert size == working_size(width, height, min_size, max_size)
                # the float32 arithmetic of the traced GeneralizedRCNNTransform on (2w, 2h)
                shorter, longer = f32(2 * min(size)), f32(2 * max(size))
                scale = min(f32(1) / shorter * f32(min_size), f32(1) / longer * f32(max_size))
                assert (int(f32(2 * size[0]) * scale), int(f32(2 * size[1]) * scale)) == size
    assert checked > 300


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_resized_decode_equals_resizing_the_oriented_full_decode(orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (720, 960, 3), dtype=np.uint8)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    data = _encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    full = decode_image(data)
    working = decode_for_model(data, min_size=64, max_size=100, resize=True)
    height, width = full.shape[:2]
    assert working.original_size == (width, height)
    size = working_size(width, height, 64, 100)
    np.testing.assert_array_equal(working.pixels, resize_for_graph(full, size))
    assert working.scale == (width / (2 * size[0]), height / (2 * size[1]))


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("I;16", "PNG"), ("CMYK", "JPEG"), ("F", "TIFF")],
)
def test_a_resized_decode_applies_the_colour_policy_of_a_full_decode(mode, fmt):
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (720, 990, 3), dtype=np.uint8)).convert(mode)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (720, 990), dtype=np.uint16))
    if mode == "P":
        image.info["transparency"] = 0
    data = _encode(image, fmt)
    full = decode_image(data)
    working = decode_for_model(data, min_size=50, max_size=80, resize=True)
    assert working.pixels.shape == (100, 136, 3)
    np.testing.assert_array_equal(working.pixels, resize_for_graph(full, (68, 50)))


def test_a_truncated_file_is_refused_by_the_resized_decode_too():
    data = _encode(Image.new("RGB", (800, 600), (10, 200, 30)), "JPEG")
    with pytest.raises(ImageDecodeError, match="row 4: truncated or corrupt"):
        decode_for_model(
            data[: len(data) // 2], min_size=64, max_size=64, resize=True, source="row 4"
        )


def test_without_resize_or_with_a_draft_the_decode_keeps_its_former_size():
    data = _encode(Image.new("RGB", (1600, 1200), (90, 120, 200)), "JPEG")
    assert decode_for_model(data, min_size=128, max_size=128).pixels.shape == (1200, 1600, 3)
    drafted = decode_for_model(data, min_size=128, max_size=128, resize=True, draft=True, margin=1)
    assert drafted.pixels.shape == (150, 200, 3)  # the 1/8 DCT scale; the graph resizes
    blocks = decode_for_model(data, min_size=128, max_size=128, resize=True).pixels
    assert blocks.shape == (192, 256, 3)  # 2x2 blocks of the 128x96 working size
