"""The shared image loader: formats, colour modes, EXIF orientation, bombs, truncation."""

from __future__ import annotations

import io
import random
import struct
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

import detstack.images
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


# --------------------------------------------------------------------------- hostile bytes


def _tiff_with_tag_type(tag: int, tiff_type: int) -> bytes:
    """A valid little-endian 16x12 grey TIFF whose ``tag`` entry claims another value type."""
    data = bytearray(_encode(Image.new("L", (16, 12), 7), "TIFF"))
    ifd = struct.unpack_from("<I", data, 4)[0]
    for index in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * index
        if struct.unpack_from("<H", data, entry)[0] == tag:
            struct.pack_into("<H", data, entry + 2, tiff_type)
            return bytes(data)
    raise AssertionError(f"tag {tag} not in the TIFF")  # pragma: no cover - fixture guard


def test_a_tiff_whose_strip_offsets_are_a_float_is_an_image_decode_error_not_a_type_error():
    # Pillow's load() seeks to the float offset and raises TypeError (issue 10, defect 6).
    data = _tiff_with_tag_type(273, 11)  # StripOffsets as FLOAT
    assert probe_image(data) == (16, 12)  # the header alone looks fine
    with pytest.raises(ImageDecodeError, match="TypeError"):
        decode_image(data, source="crafted.tif")


def test_running_out_of_memory_while_decoding_is_an_image_decode_error(monkeypatch):
    def exhausted(image):
        raise MemoryError

    monkeypatch.setattr(detstack.images, "_to_rgb", exhausted)
    with pytest.raises(ImageDecodeError, match="row 7: not enough memory"):
        decode_image(_encode(Image.new("RGB", (4, 4))), source="row 7")


def _fuzz_seeds() -> dict[str, list[bytes]]:
    """Small valid files of every accepted format (several encoders each) to mutate."""
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 255, (12, 16, 3), dtype=np.uint8))
    return {
        "JPEG": [_encode(rgb, "JPEG"), _encode(rgb, "JPEG", progressive=True)],
        "MPO": [_encode(rgb, "MPO", save_all=True, append_images=[rgb])],
        "PNG": [
            _encode(rgb, "PNG"),
            _encode(rgb.convert("P"), "PNG"),
            _encode(rgb, "PNG", optimize=True),
        ],
        "BMP": [_encode(rgb, "BMP"), _encode(rgb.convert("P"), "BMP")],
        "GIF": [_encode(rgb, "GIF"), _encode(rgb, "GIF", save_all=True, append_images=[rgb])],
        "TIFF": [
            _encode(rgb, "TIFF"),
            _encode(rgb, "TIFF", compression="tiff_lzw"),
            _encode(rgb, "TIFF", compression="jpeg"),
            _encode(rgb.convert("1"), "TIFF", compression="group4"),
            _encode(rgb.convert("P"), "TIFF"),
            _encode(rgb.convert("I;16"), "TIFF"),
            _encode(rgb.convert("F"), "TIFF"),
            _encode(rgb.convert("CMYK"), "TIFF"),
        ],
        "WEBP": [_encode(rgb, "WEBP"), _encode(rgb, "WEBP", lossless=True)],
    }


_SPECIAL_WORDS = (
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
)


def _retype_tiff_entry(out: bytearray, rng: random.Random) -> None:
    """Give one IFD entry of a little-endian TIFF another value type, count or offset."""
    ifd = struct.unpack_from("<I", out, 4)[0]
    if ifd + 2 > len(out):
        return
    entry = ifd + 2 + 12 * rng.randrange(max(1, struct.unpack_from("<H", out, ifd)[0]))
    if entry + 12 > len(out):
        return
    if rng.random() < 0.5:
        struct.pack_into("<H", out, entry + 2, rng.randint(1, 13))  # type
    else:
        struct.pack_into("<I", out, entry + rng.choice((4, 8)), rng.choice((0, 2, 3, 2**31)))


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """A few random edits: byte flips, boundary words, deletions, truncation, TIFF tag types."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind, at = rng.random(), rng.randrange(len(out))
        if out[:4] == b"II*\x00" and len(out) >= 8 and kind < 0.5:
            _retype_tiff_entry(out, rng)
        elif kind < 0.55:
            out[at] = rng.randrange(256)
        elif kind < 0.7:
            out[at : at + 4] = rng.choice(_SPECIAL_WORDS)
        elif kind < 0.85:
            del out[at : at + rng.randint(1, 16)]
        elif kind < 0.9:
            del out[at:]
        else:
            out[at] ^= 1 << rng.randrange(8)
        if not out:
            break
    return bytes(out)


#: Mutated files per format; with max_pixels bounding each decode this stays ~1 s per format.
_FUZZ_CASES = 160


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns on corrupt EXIF/tags
@pytest.mark.parametrize("fmt", ["JPEG", "MPO", "PNG", "BMP", "GIF", "TIFF", "WEBP"])
def test_mutated_files_of_every_accepted_format_decode_or_raise_image_decode_error(fmt):
    seeds = _fuzz_seeds()[fmt]
    rng = random.Random(f"detstack-fuzz-{fmt}")
    escaped, decoded, started = [], 0, time.monotonic()
    for case in range(_FUZZ_CASES):
        data = _mutate(rng.choice(seeds), rng)
        try:
            pixels = decode_image(data, source=f"{fmt} case {case}", max_pixels=1 << 16)
        except ImageDecodeError:
            continue
        except Exception as error:  # collecting every escape is the point
            escaped.append(f"case {case} ({len(data)} bytes): {type(error).__name__}: {error}")
            continue
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
        decoded += 1
    assert not escaped, "\n".join(escaped)
    assert time.monotonic() - started < 20, "the fuzz test must stay fast"
    assert decoded < _FUZZ_CASES  # the mutations did break some files


def test_a_16_bit_image_decodes_without_copies_of_itself():
    # 6300x6300 16-bit PNGs took +721 MB through an int64 step (issue 10, defect 7). Now the
    # conversion reads strips of Pillow's buffer: the RGB result plus a few MB of temporaries.
    # (Before the fix: 17 bytes a pixel, here ~24 MB against a bound of ~12 MB.)
    side = 1200
    values = np.arange(side * side, dtype=np.uint32).reshape(side, side) * 7 % 65536
    data = _encode(Image.fromarray(values.astype(np.uint16)), "PNG")
    tracemalloc.start()
    try:
        pixels = decode_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (pixels[:, :, 0] == (values >> 8)).all() and (pixels[:, :, 2] == pixels[:, :, 0]).all()
    assert peak < pixels.nbytes + 8 * 2**20, f"peak {peak / 2**20:.1f} MB"


def test_a_32_bit_integer_image_is_clipped_to_16_bits_then_keeps_its_top_eight_bits():
    values = np.array([[-5, 0, 0x1234, 0xFFFF, 0x7FFFFFFF]], dtype=np.int32)
    pixels = decode_image(_encode(Image.fromarray(values, "I"), "TIFF"))
    assert pixels[0, :, 0].tolist() == [0, 0, 0x12, 0xFF, 0xFF]
