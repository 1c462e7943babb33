"""Image decoding: encoded bytes (JPEG, PNG, ...) to an EXIF-oriented RGB ``uint8`` array.

Only the formats in ``SUPPORTED_FORMATS`` are ever handed to a Pillow plugin. Before a pixel is
decoded, the header tells the size, the mode and the layout, and from them ``inspect_image``
computes what the decode will allocate (``ImageHeader.decoded_bytes``, estimated in
``images.memory``): an image over the pixel limit or over the decoded-bytes limit is refused
from its header alone. The decode itself makes no full-size copy besides Pillow's own image and
the RGB array it returns: the conversion to 8-bit RGB (and the EXIF rotation) is done in tiles
written straight into that array (``images.rgb``).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re

import numpy as np
from PIL import Image

from inference_service.errors import InvalidArgumentError
from inference_service.images import memory
from inference_service.images.formats import SUPPORTED_FORMATS, UNDECODABLE, unopenable_message
from inference_service.images.rgb import ORIENTATION_TAG, STORED_VIEW, to_rgb

logger = logging.getLogger(__name__)

_PILLOW_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")


@dataclasses.dataclass(frozen=True, slots=True)
class ImageHeader:
    """What the header of an image says, and what decoding it will allocate."""

    format: str
    mode: str
    width: int
    height: int
    decoded_bytes: int
    """Upper bound of the bytes the decode allocates at once: Pillow's image in its mode, the
    decoder's scratch, the RGB array and the conversion's tiles, plus a copy of the content."""


class PillowImageDecoder:
    """Decodes the supported formats with Pillow, within a pixel and a decoded-bytes limit."""

    def __init__(self, *, max_pixels: int, max_decoded_bytes: int | None = None) -> None:
        self.max_pixels = max_pixels
        self.max_decoded_bytes = max_decoded_bytes

    def inspect(self, content: bytes) -> ImageHeader:
        """The header of ``content`` (no pixel decoded); refuses it like ``decode`` would."""
        return inspect_image(
            content, max_pixels=self.max_pixels, max_decoded_bytes=self.max_decoded_bytes
        )

    def decoded_bytes(self, content: bytes) -> int:
        """What decoding ``content`` allocates at most (raises as ``inspect``)."""
        return self.inspect(content).decoded_bytes

    def decode(
        self, content: bytes, max_pixels: int | None = None, *, min_size: int | None = None
    ) -> np.ndarray:
        """The RGB ``uint8`` array of ``content``; ``max_pixels`` may lower the pixel limit;
        ``min_size``: see ``decode_image`` (for drawing, never for the model)."""
        limit = self.max_pixels if max_pixels is None else min(max_pixels, self.max_pixels)
        return decode_image(
            content, max_pixels=limit, max_decoded_bytes=self.max_decoded_bytes, min_size=min_size
        )


def inspect_image(
    content: bytes, *, max_pixels: int, max_decoded_bytes: int | None = None
) -> ImageHeader:
    """Read the header of an encoded image and check it against the limits; decodes no pixel.

    Raises ``InvalidArgumentError`` (client-safe message) when the content is empty, not in a
    supported format, has no size, or is over ``max_pixels`` or ``max_decoded_bytes``.
    """
    with _open(content, max_pixels) as image:
        return _checked_header(image, content, max_pixels, max_decoded_bytes)


def decode_image(
    content: bytes,
    *,
    max_pixels: int,
    max_decoded_bytes: int | None = None,
    min_size: int | None = None,
) -> np.ndarray:
    """Decode an encoded image into an RGB ``uint8`` array of shape (height, width, 3).

    The EXIF orientation is applied, so (height, width) are those of the image as displayed.
    Every mode Pillow reads is turned into 8-bit RGB: alpha is dropped (as ``cv2.imread`` does),
    grey levels are replicated, 16-bit samples keep their high byte (``v >> 8``, as libpng's
    strip-16 does), 32-bit integer and float samples are rescaled (see ``_int32_to_uint8`` and
    ``_float_to_uint8``). Only the first frame of multi-frame images is used.

    Only ``SUPPORTED_FORMATS`` are decoded. ``max_pixels`` bounds width * height and
    ``max_decoded_bytes`` what the decode allocates (``ImageHeader.decoded_bytes``); both are
    checked from the header, before any pixel is decoded. Raises ``InvalidArgumentError``
    (client-safe message) when the content is empty, not an image in a supported format,
    truncated or corrupt, or over a limit.

    ``min_size`` (for drawing a smaller picture, e.g. a thumbnail; never for the model): a JPEG
    may then be decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, Pillow's
    ``draft``), as long as both of its sides stay at least ``min_size`` pixels: a fraction of the
    work of a full decode. Other formats are decoded whole.
    """
    with _open(content, max_pixels) as image:
        _checked_header(image, content, max_pixels, max_decoded_bytes)
        try:
            if min_size is not None and image.format == "JPEG":
                image.draft(image.mode, (min_size, min_size))
            image.load()
            orientation = image.getexif().get(ORIENTATION_TAG, 1)
            if orientation not in STORED_VIEW:
                orientation = 1
            return to_rgb(image, orientation)
        except Image.DecompressionBombError as exc:
            raise InvalidArgumentError(_too_large(str(exc), max_pixels)) from None
        except Exception as exc:  # truncated data, corrupt streams, bad EXIF, ...
            if isinstance(exc, MemoryError):
                raise
            logger.debug("cannot decode %s image: %r", image.format, exc)
            raise InvalidArgumentError(
                f"{UNDECODABLE} (truncated or corrupt {image.format or 'image'} data)"
            ) from None


def _open(content: bytes, max_pixels: int) -> Image.Image:
    """Open (parse the header of) content in a supported format; no pixel is decoded."""
    if not content:
        raise InvalidArgumentError("input.content is empty")
    try:
        return Image.open(io.BytesIO(content), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (over twice Image.MAX_IMAGE_PIXELS) fires inside open(), before
        # the size can be read; its message holds the pixel count.
        raise InvalidArgumentError(_too_large(str(exc), max_pixels)) from None
    except Exception as exc:  # Pillow raises many types on malformed headers
        if isinstance(exc, MemoryError):
            raise
        logger.debug("cannot identify image: %r", exc)
        raise InvalidArgumentError(unopenable_message(content)) from None


def _checked_header(
    image: Image.Image, content: bytes, max_pixels: int, max_decoded_bytes: int | None
) -> ImageHeader:
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidArgumentError(UNDECODABLE)
    if width * height > max_pixels:
        raise InvalidArgumentError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    try:
        decoded_bytes = memory.decoded_bytes(image, content)
    except Exception as exc:  # a header Pillow accepted but whose layout makes no sense
        if isinstance(exc, MemoryError):
            raise
        logger.debug("cannot size %s image: %r", image.format, exc)
        raise InvalidArgumentError(f"{UNDECODABLE} (corrupt {image.format} header)") from None
    header = ImageHeader(
        format=image.format or "",
        mode=image.mode,
        width=width,
        height=height,
        decoded_bytes=decoded_bytes,
    )
    if max_decoded_bytes is not None and header.decoded_bytes > max_decoded_bytes:
        raise InvalidArgumentError(
            f"decoding this {width}x{height} {header.format} image (mode {header.mode}) would "
            f"take {header.decoded_bytes} bytes of memory; the limit is {max_decoded_bytes}"
        )
    return header


def _too_large(pillow_message: str, max_pixels: int) -> str:
    match = _PILLOW_BOMB_PIXELS.search(pillow_message)
    size = f"{match.group(1)} pixels" if match else "too large"
    if Image.MAX_IMAGE_PIXELS is not None:  # Pillow refuses over twice its own limit
        max_pixels = min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS)
    return f"image is {size}; the limit is {max_pixels}"
