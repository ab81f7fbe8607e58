"""Decode untrusted image bytes into an RGB PIL image, or raise :class:`monitor.errors.BadInput` with a dead-letter
reason (empty, truncated, not_an_image, decompression_bomb, unsupported_image) so a stream can skip the item.

Conversion rules (documented in docs/concepts.md):

- alpha (RGBA, LA, PA, palette with a transparent colour) is composited over an opaque background, white by default;
- CMYK goes through PIL's conversion (Adobe-inverted JPEGs are handled by PIL's reader);
- 16-bit integer gray ("I;16*", "I") is mapped linearly from 0..65535 to 0..255 (``round(v / 257)``), values outside
  that range are clipped; 32-bit float gray ("F") is taken as 0..1 when all values lie in it, else as 0..255;
- EXIF orientation is applied; multi-frame files (GIF, TIFF) use their first frame.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from monitor.errors import BadInput

__all__ = ["decode_image", "read_image", "DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES"]

# PIL's own guard (warning above this many pixels, error above twice as many); callers may lower or raise it.
DEFAULT_MAX_PIXELS: int = int(Image.MAX_IMAGE_PIXELS or 89_478_485)

# Suffixes treated as images when walking directories (the CLI and calibrate use them).
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".jfif"}
)

_WHITE = (255, 255, 255)


def decode_image(
    data: bytes | bytearray | memoryview,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = _WHITE,
) -> Image.Image:
    """Decode encoded image bytes to a fully loaded RGB image.

    Raises ``BadInput`` with reason ``empty`` (zero bytes), ``not_an_image`` (no known format), ``truncated``
    (known format, data ends early or is corrupt), ``decompression_bomb`` (width * height > ``max_pixels``, checked
    from the header before any pixel is decoded) or ``unsupported_image`` (decodes but cannot become RGB).

    >>> import io; from PIL import Image
    >>> buf = io.BytesIO(); Image.new("LA", (2, 1), (0, 0)).save(buf, "PNG")
    >>> decode_image(buf.getvalue()).getpixel((0, 0))  # fully transparent -> background
    (255, 255, 255)
    """
    if max_pixels is None or int(max_pixels) < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    max_pixels = int(max_pixels)
    if data is None or len(data) == 0:
        raise BadInput("empty", "zero-byte payload")
    data = bytes(data)

    # Our header check below is the authoritative limit. PIL warns at open() above its own limit, which only matters
    # when the caller allows more than PIL does; catch_warnings swaps process-global state (not thread-safe), so it
    # is entered only in that case. Otherwise an image over PIL's limit is rejected here anyway (PIL may print its
    # warning first).
    pil_limit = Image.MAX_IMAGE_PIXELS
    quiet = pil_limit is not None and max_pixels > pil_limit
    with warnings.catch_warnings() if quiet else contextlib.nullcontext():
        if quiet:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise BadInput("not_an_image", f"{len(data)} bytes in no image format PIL can identify") from None
        except Image.DecompressionBombError as exc:
            raise BadInput("decompression_bomb", str(exc)) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            reason = "truncated" if "truncat" in str(exc).lower() else "not_an_image"
            raise BadInput(reason, f"cannot open image header: {exc}") from None

        fmt = img.format or "image"
        width, height = img.size
        if width * height > max_pixels:
            raise BadInput(
                "decompression_bomb",
                f"{fmt} of {width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}",
            )
        if width == 0 or height == 0:
            raise BadInput("unsupported_image", f"{fmt} has zero size {width}x{height}")
        try:
            img.load()
        except Image.DecompressionBombError as exc:
            raise BadInput("decompression_bomb", str(exc)) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
            msg = str(exc)
            if "not available" in msg or "unsupported" in msg.lower():
                raise BadInput("unsupported_image", f"{fmt} {img.mode} {width}x{height}: {msg}") from None
            raise BadInput("truncated", f"{fmt} {width}x{height} data is truncated or corrupt: {msg}") from None
    return to_rgb(img, background=background)


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read and decode an image file; an unreadable file is ``BadInput("other", ...)`` naming the path."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadInput("other", f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_image(data, max_pixels=max_pixels)


def to_rgb(img: Image.Image, *, background: tuple[int, int, int] = _WHITE) -> Image.Image:
    """Convert a loaded image of any PIL mode to 8-bit RGB following the rules in the module docstring."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost us the pixels
        pass
    mode = img.mode
    try:
        if mode == "RGB":
            return img
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            arr = np.asarray(img, dtype=np.int64)
            gray = np.rint(np.clip(arr, 0, 65535) / 257.0).astype(np.uint8)
            return Image.fromarray(gray, mode="L").convert("RGB")
        if mode == "F":
            arr = np.asarray(img, dtype=np.float64)
            if not np.all(np.isfinite(arr)):
                raise BadInput("unsupported_image", "float image contains NaN or inf pixels")
            scale = 255.0 if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0 else 1.0
            gray = np.rint(np.clip(arr * scale, 0, 255)).astype(np.uint8)
            return Image.fromarray(gray, mode="L").convert("RGB")
        if mode == "P":
            has_alpha = "transparency" in img.info or img.palette is not None and img.palette.mode == "RGBA"
            return _composite(img.convert("RGBA"), background) if has_alpha else img.convert("RGB")
        if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            return _composite(img.convert("RGBA"), background)
        if mode in ("L", "1") and "transparency" in img.info:
            return _composite(img.convert("RGBA"), background)
        out = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, ...
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises several types for exotic modes
        what = f"{img.format or 'image'} mode {mode}"
        raise BadInput("unsupported_image", f"cannot convert {what} to RGB: {exc}") from None
    return out


def _composite(rgba: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    base = Image.new("RGB", rgba.size, tuple(background))
    base.paste(rgba, mask=rgba.getchannel("A"))
    return base
