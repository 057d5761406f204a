"""The encoded wire: raw bytes or base64 text told apart by content, strict base64, magic bytes."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from client._transport import Payload
from detstack.errors import BadInputError
from detstack.images import decode_for_model, decode_image, working_scale
from detstack.wire import decode_base64, image_file_bytes, is_base64_text, sniff_format


def _file(fmt: str, size=(40, 30), **options) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if fmt == "GIF":
        image = image.convert("P")
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_every_accepted_format_is_named_by_its_signature_and_never_reads_as_base64(fmt):
    data = _file(fmt)
    assert sniff_format(data) == fmt
    assert not is_base64_text(data)
    assert image_file_bytes(data) == data


@pytest.mark.parametrize(
    "wrap",
    [
        lambda t: t,
        lambda t: b"data:image/png;base64," + t,
        lambda t: b"\n".join(t[i : i + 76] for i in range(0, len(t), 76)) + b"\n",
        lambda t: t.decode("ascii"),
    ],
    ids=["plain", "data-url", "line-wrapped", "str"],
)
def test_base64_text_of_a_file_is_decoded_whatever_its_wrapping(wrap):
    data = _file("PNG")
    assert image_file_bytes(wrap(base64.b64encode(data))) == data


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"QUJD====", "padding is allowed only as the last one or two characters"),
        (b"QU=D", "padding is allowed only"),
        (b"QUJ", "not a multiple of 4"),
        ("QUJ-", "'-' at position 3 is not in the standard alphabet"),
        ("QUJD\u00e9", "non-ASCII character"),
        (b"data:image/png,QUJD", "is not base64-encoded"),
    ],
)
def test_malformed_base64_is_refused_with_the_reason(text, expected):
    with pytest.raises(BadInputError, match=expected):
        decode_base64(text)


def test_excess_padding_that_pythons_decoder_accepts_is_refused():
    # Regression (issue 10, defect 15): binascii decodes this to b"ABC" even with validate=True.
    assert base64.b64decode(b"QUJD====", validate=True) == b"ABC"
    with pytest.raises(BadInputError):
        decode_base64(b"QUJD====")


def test_an_empty_payload_is_refused():
    with pytest.raises(BadInputError, match="empty"):
        image_file_bytes(b"")


def test_a_file_travels_with_four_bytes_of_framing_only():
    data = _file("JPEG", size=(640, 480))
    assert Payload.of_file(data).nbytes == len(data) + 4
    assert Payload.of_file(data).nbytes <= 1.05 * len(data)


def test_a_large_jpeg_is_decoded_at_the_smallest_dct_scale_that_covers_the_working_size():
    data = _file("JPEG", size=(1600, 1200), quality=90)
    working = decode_for_model(data, min_size=128, max_size=200, draft=True, margin=1)
    # 1600x1200 resized by 128/1200 -> 171x128: 1/8 scale (200x150) still covers it.
    assert working.pixels.shape == (150, 200, 3)
    assert working.original_size == (1600, 1200)
    assert working.scale == (8.0, 8.0)
    assert working_scale(1600, 1200, 128, 200) == pytest.approx(128 / 1200)


def test_draft_keeps_its_margin_over_the_working_size_and_is_off_by_default():
    jpeg = _file("JPEG", size=(1600, 1200), quality=90)

    def shape(data, **options):
        return decode_for_model(data, draft=True, **options).pixels.shape

    assert shape(jpeg, min_size=800, max_size=1333, margin=1) == (1200, 1600, 3)  # 0.67 > 1/2
    assert shape(jpeg, min_size=500, max_size=1333, margin=1) == (600, 800, 3)  # 1/2 covers it
    assert shape(jpeg, min_size=500, max_size=1333) == (1200, 1600, 3)  # margin 2: twice 667x500
    assert shape(jpeg, min_size=128, max_size=128) == (300, 400, 3)  # 1/4 covers 2 x 171x128
    png = _file("PNG", size=(1600, 1200))
    assert shape(png, min_size=128, max_size=128) == (1200, 1600, 3)
    assert decode_for_model(jpeg, min_size=128, max_size=128).pixels.shape == (
        1200,
        1600,
        3,
    )


def test_working_decode_reports_the_oriented_original_size():
    pixels = np.zeros((1200, 1600, 3), np.uint8)
    pixels[:, :800] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    working = decode_for_model(buffer.getvalue(), min_size=128, max_size=200, draft=True)
    assert working.original_size == (1200, 1600)
    height, width = working.pixels.shape[:2]
    assert height > width
    full = decode_image(buffer.getvalue())
    assert full.shape == (1600, 1200, 3)
