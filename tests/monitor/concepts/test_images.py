"""monitor.concepts.images: every bad-input class becomes BadInput with its dead-letter reason, and every PIL mode we meet
in the wild is converted to the right RGB pixel values."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from monitor.errors import DEAD_LETTER_REASONS, BadInput
from monitor.concepts.images import decode_image, read_image


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(w=48, h=32, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8), "RGB")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels but carries no image data (how bombs look before decoding)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _reason(data: bytes, **kw) -> str:
    with pytest.raises(BadInput) as info:
        decode_image(data, **kw)
    assert info.value.reason in DEAD_LETTER_REASONS
    assert info.value.detail
    return info.value.reason


# -- bad input classes ----------------------------------------------------------------------------------------------


def test_zero_bytes_is_empty():
    assert _reason(b"") == "empty"


def test_random_bytes_and_text_are_not_an_image():
    assert _reason(b"hello, this is a caption, not a picture") == "not_an_image"
    assert _reason(np.random.default_rng(1).bytes(4096)) == "not_an_image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF"])
def test_file_cut_in_half_is_truncated(fmt):
    data = _encode(_noise(), fmt)
    assert _reason(data[: len(data) // 2]) == "truncated"


def test_corrupt_png_stream_is_truncated_not_crash():
    data = bytearray(_encode(_noise(), "PNG"))
    for i in range(len(data) // 3, len(data) // 3 + 64):
        data[i] ^= 0x5A
    assert _reason(bytes(data)) == "truncated"


def test_image_over_max_pixels_is_decompression_bomb_before_decoding():
    data = _encode(_noise(100, 100), "PNG")
    with pytest.raises(BadInput) as info:
        decode_image(data, max_pixels=5_000)
    assert info.value.reason == "decompression_bomb"
    assert "100x100" in info.value.detail and "max_pixels=5000" in info.value.detail
    assert decode_image(data, max_pixels=10_000).size == (100, 100)


def test_header_claiming_a_billion_pixels_is_a_bomb_under_default_limit():
    # PIL itself refuses this at open(); the error must arrive as BadInput, not DecompressionBombError
    assert _reason(_png_header_only(40_000, 40_000)) == "decompression_bomb"


def test_pil_bomb_warning_does_not_escape_when_limit_is_raised(recwarn):
    # between PIL's warning and error thresholds with a caller limit above both: no warning leaks, data is missing
    pixels = int(Image.MAX_IMAGE_PIXELS) + 1_000_000
    side = int(pixels**0.5) + 1
    assert _reason(_png_header_only(side, side), max_pixels=side * side) == "truncated"
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_read_image_of_missing_file_names_the_path(tmp_path):
    with pytest.raises(BadInput) as info:
        read_image(tmp_path / "nope.jpg")
    assert info.value.reason == "other" and "nope.jpg" in info.value.detail


def test_max_pixels_must_be_positive():
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(_encode(_noise(), "PNG"), max_pixels=0)


# -- mode conversions -----------------------------------------------------------------------------------------------


def test_rgb_png_round_trips_exactly():
    img = _noise()
    out = decode_image(_encode(img, "PNG"))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(img))


def test_sixteen_bit_gray_ramp_maps_to_eight_bit_values(tmp_path):
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # 0, 257, ..., 65535
    ramp[0, 1] = 128  # rounds down to 0 (128/257 < 0.5)
    ramp[0, 2] = 129  # rounds up to 1
    img = Image.fromarray(ramp)
    assert img.mode.startswith("I;16")
    data = _encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(decode_image(data))
    expected = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected[0, 1], expected[0, 2] = 0, 1
    assert out.shape == (16, 16, 3)
    assert np.array_equal(out[..., 0], expected) and np.array_equal(out[..., 1], expected)
    assert np.array_equal(out[..., 2], expected)


def test_32_bit_integer_gray_is_clipped_to_sixteen_bit_range():
    arr = np.array([[-5, 0, 257 * 100, 70_000]], dtype=np.int32)
    img = Image.fromarray(arr, mode="I")
    out = np.asarray(decode_image(_encode(img, "TIFF")))
    assert out[0, :, 0].tolist() == [0, 0, 100, 255]


def test_float_gray_in_unit_range_is_scaled():
    img = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    out = np.asarray(decode_image(_encode(img, "TIFF")))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_converts_to_expected_rgb():
    img = Image.new("CMYK", (4, 3), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_encode(img, "TIFF"))
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (255, 0, 0)
    jpeg = decode_image(_encode(Image.new("CMYK", (16, 16), (255, 0, 255, 0)), "JPEG", quality=95))
    r, g, b = jpeg.getpixel((8, 8))  # pure green, within JPEG rounding
    assert r < 10 and g > 245 and b < 10


def test_palette_with_transparent_index_composites_on_white():
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0
    out = decode_image(_encode(img, "PNG", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (200, 100, 50)


def test_palette_without_transparency_keeps_colours():
    img = Image.new("P", (1, 1))
    img.putpalette([12, 34, 56] + [0] * 765)
    assert decode_image(_encode(img, "PNG")).getpixel((0, 0)) == (12, 34, 56)


def test_rgba_alpha_blends_over_background():
    img = Image.new("RGBA", (3, 1))
    img.putpixel((0, 0), (255, 0, 0, 0))  # transparent red -> background
    img.putpixel((1, 0), (255, 0, 0, 255))  # opaque red
    img.putpixel((2, 0), (255, 0, 0, 128))  # half red over white
    data = _encode(img, "PNG")
    out = decode_image(data)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (255, 0, 0)
    r, g, b = out.getpixel((2, 0))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1
    assert decode_image(data, background=(0, 0, 0)).getpixel((0, 0)) == (0, 0, 0)


def test_gray_alpha_transparent_pixel_becomes_background():
    img = Image.new("LA", (2, 1))
    img.putpixel((0, 0), (100, 255))
    img.putpixel((1, 0), (100, 0))
    out = decode_image(_encode(img, "PNG"))
    assert out.getpixel((0, 0)) == (100, 100, 100)
    assert out.getpixel((1, 0)) == (255, 255, 255)


def test_grayscale_and_bilevel_become_equal_channels():
    gray = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8), mode="L")
    out = np.asarray(decode_image(_encode(gray, "PNG")))
    assert out[0].tolist() == [[0, 0, 0], [77, 77, 77], [255, 255, 255]]
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    out = np.asarray(decode_image(_encode(bilevel, "PNG")))
    assert out[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (4, 2), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (2, 4)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("P", (4, 4), i) for i in range(3)]
    for f in frames:
        f.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue())
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 0, 0)
