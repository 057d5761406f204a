"""The soak's inputs: good images the tiny model detects, and every hostile kind of issue 10.

Each input is built once (seeded) and named by its *kind*, so the soak can count answers by
kind and check each answer against what that kind must get:

* good kinds (:data:`GOOD_KINDS`) must be answered, with the same detections every time (the
  reference is computed once before the load starts);
* bad kinds (:data:`BAD_KINDS`) must fail only their own row (client) or get a 4xx (demo page),
  with a reason matching :attr:`Input.reason`.

Example:
    >>> inputs = build_inputs()
    >>> inputs["bomb_header"].data[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tests.fixtures.models import TINY_BACKGROUND, tiny_shape_image
from tests.unit.test_images import _tiff_with_tag_type

__all__ = [
    "BAD_KINDS",
    "CLIENT_REQUEST_LIMIT",
    "DEMO_UPLOAD_MB",
    "GOOD_KINDS",
    "Input",
    "build_inputs",
]

#: ``max_request_bytes`` of the soak's clients: the ``over_client_limit`` file is larger.
CLIENT_REQUEST_LIMIT = 512 * 1024
#: ``max_upload_mb`` of the soak's demo page: the ``over_upload_limit`` file is larger.
DEMO_UPLOAD_MB = 1.0


@dataclass(frozen=True)
class Input:
    """One input of the soak.

    Attributes:
        kind: its name in the figures.
        data: the image file's bytes (what the demo uploads, what the client base64-encodes).
        cell: the ``image_data`` cell the client sends (``None``: base64 of ``data``).
        reason: for a bad kind, a regular expression the row's reason (client) must match.
        demo_status: the demo page's answer status; 200 for the good kinds.
        demo_reason: a regular expression the demo page's error message must match.
    """

    kind: str
    data: bytes
    cell: str | None = None
    reason: str = ""
    demo_status: int = 200
    demo_reason: str = ""

    @property
    def good(self) -> bool:
        return not self.reason


def _encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _rectangles(seed: int) -> np.ndarray:
    image, _, _ = tiny_shape_image(np.random.default_rng(seed))
    return image


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A well-formed PNG that claims ``width``×``height`` RGB pixels but holds one row of data.

    The header is valid (CRCs right), so only a pixel limit checked before decoding stops it.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


def _sixteen_bit_png(side: int = 1200) -> bytes:
    """A grey 16-bit PNG with a bright square (values above 255, decoded to their top 8 bits)."""
    values = np.full((side, side), TINY_BACKGROUND * 257, dtype=np.uint16)
    values[side // 4 : side // 2, side // 3 : 2 * side // 3] = 220 * 257 + 31
    return _encode(values, "PNG")


def _huge_valid_png(width: int = 4000, height: int = 3000) -> bytes:
    """12 MP of rectangles, within every limit (40 MP server, 1 MB upload): a costly decode."""
    small = Image.fromarray(_rectangles(11))
    large = small.resize((width, height), Image.Resampling.NEAREST)
    return _encode(np.asarray(large), "PNG", compress_level=9)


def _noise_png(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    return _encode(pixels, "PNG", compress_level=1)


#: Kinds answered with detections.
GOOD_KINDS = ("good_png", "good_jpeg", "good_png_b", "sixteen_bit_png", "huge_valid_png")
#: Kinds that must fail only their own row / get a 4xx with a reason.
BAD_KINDS = (
    "not_base64",
    "empty",
    "not_an_image",
    "truncated_png",
    "truncated_jpeg",
    "bomb_header",
    "corrupt_tiff",
    "over_client_limit",
    "over_upload_limit",
)

_CORRUPT = r"truncated|corrupt|cannot be decoded"


def build_inputs() -> dict[str, Input]:
    """Every kind of input, by kind (seeded: the same bytes on every run)."""
    good_png = _encode(_rectangles(1), "PNG")
    good_jpeg = _encode(_rectangles(2), "JPEG", quality=95)
    inputs = [
        Input("good_png", good_png),
        Input("good_jpeg", good_jpeg),
        Input("good_png_b", _encode(_rectangles(3), "PNG")),
        Input("sixteen_bit_png", _sixteen_bit_png()),
        Input("huge_valid_png", _huge_valid_png()),
        Input(
            "not_base64",
            b"not base64!",
            cell="not base64!",
            reason="invalid base64",
            demo_status=422,
            demo_reason="cannot be decoded|not an image",
        ),
        Input(
            "empty",
            b"",
            cell="",
            reason="empty",
            demo_status=422,
            demo_reason="no image was uploaded",
        ),
        Input(
            "not_an_image",
            b"%PDF-1.7 plainly a document, not a picture",
            reason="not an image in an accepted format",
            demo_status=422,
            demo_reason="cannot be decoded|not an image",
        ),
        Input(
            "truncated_png",
            good_png[: len(good_png) - 40],
            reason=_CORRUPT,
            demo_status=422,
            demo_reason=_CORRUPT,
        ),
        Input(
            "truncated_jpeg",
            good_jpeg[: len(good_jpeg) // 2],
            reason=_CORRUPT,
            demo_status=422,
            demo_reason=_CORRUPT,
        ),
        Input(
            "bomb_header",
            png_bomb_header(),
            reason="exceeds the limit|decompression bomb",
            demo_status=422,
            demo_reason="exceeds the limit|decompression bomb",
        ),
        Input(
            "corrupt_tiff",
            _tiff_with_tag_type(273, 11),  # StripOffsets typed FLOAT: TypeError in Pillow
            reason=_CORRUPT,
            demo_status=422,
            demo_reason=_CORRUPT,
        ),
        Input(
            "over_client_limit",
            _noise_png(512, 5),  # ~790 kB: over CLIENT_REQUEST_LIMIT, under the upload limit
            reason="over the (grpc|http) request limit",
            demo_status=200,  # the page's limit is 1 MB: it is a good image there
        ),
        Input(
            "over_upload_limit",
            _noise_png(700, 6),  # ~1.5 MB: over DEMO_UPLOAD_MB
            reason="over the (grpc|http) request limit",
            demo_status=413,
            demo_reason=r"accepts images up to 1\.0 MB",
        ),
    ]
    built = {item.kind: item for item in inputs}
    assert set(built) == set(GOOD_KINDS) | set(BAD_KINDS)
    assert len(built["over_client_limit"].data) > CLIENT_REQUEST_LIMIT
    assert len(built["over_client_limit"].data) < DEMO_UPLOAD_MB * 2**20
    assert len(built["over_upload_limit"].data) > DEMO_UPLOAD_MB * 2**20
    assert len(built["huge_valid_png"].data) < DEMO_UPLOAD_MB * 2**20
    return built
