"""The shared image loader: formats, colour modes, EXIF orientation, bombs, truncation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from detstack.errors import ImageDecodeError
from detstack.images import decode_image, probe_image, to_chw


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "I", "I;16", "F", "CMYK"])
def test_decode_image_turns_every_colour_mode_into_rgb_uint8(mode):
    image = Image.new("RGB", (7, 5), (200, 100, 50)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode in ("F", "I", "I;16") else "PNG"
    pixels = decode_image(_encode(image, fmt))
    assert pixels.shape == (5, 7, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags["C_CONTIGUOUS"]


def test_decode_image_keeps_the_top_eight_bits_of_a_16_bit_image():
    image = Image.fromarray(np.full((4, 6), 0xAB12, dtype=np.uint16))
    pixels = decode_image(_encode(image, "PNG"))
    assert pixels.shape == (4, 6, 3)
    assert (pixels == 0xAB).all()


def test_decode_image_applies_exif_orientation_and_probe_reports_the_oriented_size():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # left quarter red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = _encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    pixels = decode_image(data)
    assert pixels.shape == (40, 20, 3)
    assert probe_image(data) == (20, 40)
    assert pixels[2, 10, 0] > 200  # the red band is now on top


def test_decode_image_refuses_bytes_that_are_not_an_image():
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(b"%PDF-1.7 definitely not a picture", source="row 3")


def test_decode_image_refuses_empty_bytes():
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


def test_decode_image_refuses_a_decompression_bomb_before_decoding():
    data = _encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        decode_image(data, max_pixels=1_000_000)


def test_decode_image_detects_a_truncated_file():
    data = _encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], source="photo.jpg")


def test_to_chw_gives_the_contract_layout():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    chw = to_chw(pixels)
    assert chw.shape == (3, 2, 3)
    assert chw[1, 0, 2] == pixels[0, 2, 1]
