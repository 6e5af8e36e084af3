"""Image decoding shared by the writer (which checks every image) and the reader (which feeds the model)."""

from __future__ import annotations

import io
import struct

from PIL import Image

# What PIL raises for bytes that are not a decodable image: UnidentifiedImageError and "image file is truncated"
# are OSErrors; bad headers give SyntaxError/ValueError/struct.error; bombs give DecompressionBombError.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)


def decode_rgb(data: bytes) -> Image.Image:
    """Encoded image bytes -> fully decoded RGB PIL image (CMYK and greyscale JPEGs converted).

    Raises one of DECODE_ERRORS when the bytes are not a complete, decodable image.
    """
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def describe_decode_error(error: BaseException) -> str:
    """One line naming the error type and PIL's message."""
    return f"{type(error).__name__}: {error}"
