"""Image decoding: encoded bytes (JPEG, PNG, ...) to an EXIF-oriented RGB ``uint8`` array.

Only the formats in ``SUPPORTED_FORMATS`` are ever handed to a Pillow plugin. Before a pixel is
decoded, the header tells the size, the mode and the layout, and from them ``inspect_image``
computes what the decode will allocate (``ImageHeader.decoded_bytes``): an image over the pixel
limit or over the decoded-bytes limit is refused from its header alone. The decode itself makes
no full-size copy besides Pillow's own image and the RGB array it returns: the conversion to
8-bit RGB (and the EXIF rotation) is done in tiles written straight into that array.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import re
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from inference_service.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
"""Pillow formats that are decoded (MPO, a JPEG with extra pictures, comes in as JPEG)."""

_SUPPORTED_NAMES = "JPEG, PNG, GIF, BMP, TIFF, WebP"
_UNDECODABLE = "input.content is not a decodable image"
_PILLOW_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})

# Magic bytes, to say what content that cannot be opened is: a supported format with a corrupt
# header, or a format that is not decoded (such content is never handed to its Pillow plugin).
_SUPPORTED_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "WebP"),
)
_UNSUPPORTED_MAGIC = (
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"icns", "ICNS"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"DDS ", "DDS"),
    (b"qoif", "QOI"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML"),
)

# Bytes Pillow keeps per pixel, by mode: 1-byte modes, 2-byte modes, and 4 for every other mode
# (I, F and all multi-band modes, which Pillow stores as 32 bits per pixel).
_PILLOW_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, **dict.fromkeys(_SIXTEEN_BIT_MODES, 2)}
_OUTPUT_PIXEL_BYTES = 3  # the RGB uint8 array the model gets

# The conversion to RGB works on tiles of at most this many pixels; its temporaries (a crop, its
# bytes, float64 copies) are bounded by this many bytes.
TILE_PIXELS = 1 << 18
TILE_OVERHEAD_BYTES = TILE_PIXELS * 64

# Scratch memory of the decoders, per pixel, measured with Pillow 13 on 40-megapixel images:
# WebP decodes into a canvas that Pillow copies twice (about 12 bytes per pixel); a progressive
# (or multi-scan) JPEG keeps every DCT coefficient (2 bytes per sample) until the last scan;
# a run-length BMP is expanded into a bytearray, then copied.
_WEBP_SCRATCH_PIXEL_BYTES = 16
_JPEG_COEFFICIENT_BYTES = 2
_BMP_SCRATCH_PIXEL_BYTES = 3

# EXIF orientation -> a view of the displayed (oriented) array laid out as the stored image, so
# that writing the stored pixels into it orients them (the inverse of each transposition).
_STORED_VIEW: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=1),
    7: lambda a: np.rot90(a, k=2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=-1),
}
# 0xFF then a byte that starts a marker: not 0x00 (stuffing), RST0-7 nor 0xFF (fill).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_TRANSPOSING = frozenset({5, 6, 7, 8})
_ORIENTATION_TAG = 0x0112


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
            orientation = image.getexif().get(_ORIENTATION_TAG, 1)
            if orientation not in _STORED_VIEW:
                orientation = 1
            return _to_rgb(image, orientation)
        except Image.DecompressionBombError as exc:
            raise InvalidArgumentError(_too_large(str(exc), max_pixels)) from None
        except Exception as exc:  # truncated data, corrupt streams, bad EXIF, ...
            if isinstance(exc, MemoryError):
                raise
            logger.debug("cannot decode %s image: %r", image.format, exc)
            raise InvalidArgumentError(
                f"{_UNDECODABLE} (truncated or corrupt {image.format or 'image'} data)"
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
        raise InvalidArgumentError(_unsupported_message(content)) from None


def _unsupported_message(content: bytes) -> str:
    for magic, name in _SUPPORTED_MAGIC:
        if content.startswith(magic):
            return f"{_UNDECODABLE} (corrupt or unsupported {name} header)"
    for magic, name in _UNSUPPORTED_MAGIC:
        if content.startswith(magic):
            return (
                f"input.content is in the {name} format, which is not accepted; the supported "
                f"formats are {_SUPPORTED_NAMES}"
            )
    return _UNDECODABLE


def _checked_header(
    image: Image.Image, content: bytes, max_pixels: int, max_decoded_bytes: int | None
) -> ImageHeader:
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidArgumentError(_UNDECODABLE)
    if width * height > max_pixels:
        raise InvalidArgumentError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    try:
        decoded_bytes = _decoded_bytes(image, content)
    except Exception as exc:  # a header Pillow accepted but whose layout makes no sense
        if isinstance(exc, MemoryError):
            raise
        logger.debug("cannot size %s image: %r", image.format, exc)
        raise InvalidArgumentError(f"{_UNDECODABLE} (corrupt {image.format} header)") from None
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


def _decoded_bytes(image: Image.Image, content: bytes) -> int:
    """An upper bound of the bytes that decoding ``image`` to RGB allocates at once."""
    pixels = image.width * image.height
    held = pixels * _PILLOW_PIXEL_BYTES.get(image.mode, 4)
    output = pixels * _OUTPUT_PIXEL_BYTES
    scratch = _scratch_bytes(image, content)
    return held + scratch + output + TILE_OVERHEAD_BYTES + len(content)


def _scratch_bytes(image: Image.Image, content: bytes) -> int:
    """What the format's decoder allocates besides Pillow's image, from the header."""
    pixels = image.width * image.height
    if image.format == "TIFF":
        return _tiff_scratch_bytes(image)
    if image.format in ("JPEG", "MPO"):
        return _jpeg_coefficient_bytes(image, content)
    if image.format == "WEBP":
        return pixels * _WEBP_SCRATCH_PIXEL_BYTES
    if image.format == "BMP":
        return pixels * _BMP_SCRATCH_PIXEL_BYTES
    return 0  # PNG and GIF decode row by row into the image


def _tiff_scratch_bytes(image: Image.Image) -> int:
    """libtiff decodes a whole strip or tile into a buffer of its own: as large as the header
    says (a tiny image may declare a huge tile), at least 4 bytes per pixel (the RGBA path for
    YCbCr and JPEG-compressed files)."""
    width, height = image.size
    tags = getattr(image, "tag_v2", {})
    try:
        bits = tags.get(258, (8,))
        bits = tuple(bits) if isinstance(bits, tuple | list) else (int(bits),)
        samples = int(tags.get(277, len(bits)))
        bits_per_pixel = sum(bits) if len(bits) > 1 else bits[0] * samples
        pixel_bytes = max(math.ceil(bits_per_pixel / 8), 4)
        if 322 in tags or 323 in tags:  # tiled
            return int(tags.get(322, width)) * int(tags.get(323, height)) * pixel_bytes
        rows = min(max(int(tags.get(278, height)), 1), height)
        return rows * width * pixel_bytes
    except (TypeError, ValueError, IndexError):  # malformed tags: the whole image at once
        return width * height * 8


def _jpeg_coefficient_bytes(image: Image.Image, content: bytes) -> int:
    """A progressive or multi-scan JPEG keeps every DCT coefficient of every component (2 bytes
    per sample, after chroma subsampling) until its last scan; a baseline one decodes rows."""
    progressive = image.info.get("progressive") or image.info.get("progression")
    if not progressive and _count_jpeg_scans(content) == 1:
        return 0
    layers = getattr(image, "layer", None) or [(None, 1, 1, None)] * len(image.getbands())
    max_h = max(int(layer[1]) for layer in layers) or 1
    max_v = max(int(layer[2]) for layer in layers) or 1
    total = 0
    for _, h_sampling, v_sampling, _ in layers:
        columns = math.ceil(image.width * int(h_sampling) / max_h / 8) + 1
        rows = math.ceil(image.height * int(v_sampling) / max_v / 8) + 1
        total += columns * rows * 64 * _JPEG_COEFFICIENT_BYTES
    return total


def _count_jpeg_scans(data: bytes) -> int:
    """The number of scans (SOS segments) of the first picture; 0 when the marker stream is
    broken. libjpeg buffers the coefficients of the whole image unless there is exactly one."""
    position, scans = 2, 0
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return 0
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        position += 2 + length
        if marker == 0xDA:  # SOS: skip the entropy-coded data to the next marker
            scans += 1
            position = _next_jpeg_marker(data, position)
    return scans


def _next_jpeg_marker(data: bytes, position: int) -> int:
    """Position of the first marker at or after ``position`` in entropy-coded data, where
    0xFF is followed by 0x00 (a stuffed byte), a restart marker or fill bytes; or the end."""
    # One regular-expression search (C), not a Python loop over every 0xFF of the scan (a few
    # hundred in a 130 KB photo, searched twice per Invoke: admission, then decode).
    match = _JPEG_MARKER.search(data, position)
    return match.start() if match else len(data)


def _too_large(pillow_message: str, max_pixels: int) -> str:
    match = _PILLOW_BOMB_PIXELS.search(pillow_message)
    size = f"{match.group(1)} pixels" if match else "too large"
    if Image.MAX_IMAGE_PIXELS is not None:  # Pillow refuses over twice its own limit
        max_pixels = min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS)
    return f"image is {size}; the limit is {max_pixels}"


def _tiles(width: int, height: int) -> Iterator[tuple[int, int, int, int]]:
    """Boxes (left, upper, right, lower) of at most ``TILE_PIXELS`` covering the image."""
    columns = min(width, TILE_PIXELS)
    rows = max(1, TILE_PIXELS // columns)
    for top in range(0, height, rows):
        for left in range(0, width, columns):
            yield left, top, min(left + columns, width), min(top + rows, height)


def _to_rgb(image: Image.Image, orientation: int) -> np.ndarray:
    """Convert a loaded image of any mode to an (H, W, 3) ``uint8`` RGB array with its EXIF
    orientation applied, tile by tile, each tile written into a view of the result laid out as
    the stored image (no full-size temporary)."""
    width, height = image.size
    mode = image.mode
    if mode == "RGB" and orientation == 1 and width * height * 3 <= TILE_OVERHEAD_BYTES:
        # The common case (a JPEG of up to ~5 megapixels): nothing to convert or turn, so one
        # copy out of Pillow, without tiles (about 10 % of the decode's CPU). Pillow's copy is
        # transient twice the output at most, within the tiles' share of the estimate.
        return np.asarray(image)
    shape = (width, height, 3) if orientation in _TRANSPOSING else (height, width, 3)
    out = np.empty(shape, dtype=np.uint8)
    target = _STORED_VIEW[orientation](out)
    if mode in _SIXTEEN_BIT_MODES:
        to_grey: Callable[[np.ndarray], np.ndarray] | None = _sixteen_to_uint8
    elif mode == "I":
        to_grey = _int32_to_uint8(_extrema(image, lambda values: values))
    elif mode == "F":
        to_grey = _float_to_uint8(_extrema(image, _finite))
    else:
        to_grey = None
    for box in _tiles(width, height):
        left, top, right, lower = box
        tile = image.crop(box)
        if to_grey is not None:
            target[top:lower, left:right] = to_grey(np.asarray(tile))[:, :, None]
        else:
            target[top:lower, left:right] = _tile_to_rgb(tile)
    return out


def _tile_to_rgb(tile: Image.Image) -> np.ndarray:
    if tile.mode == "RGB":
        return np.asarray(tile)
    if tile.mode == "P" and "transparency" in tile.info:
        # Pillow wants palette transparency resolved through RGBA; the colours are the same.
        tile = tile.convert("RGBA")
    return np.asarray(tile.convert("RGB"))


def _extrema(
    image: Image.Image, prepare: Callable[[np.ndarray], np.ndarray]
) -> tuple[float, float]:
    """(min, max) of ``prepare(samples)`` over the whole image, tile by tile."""
    low, high = math.inf, -math.inf
    for box in _tiles(*image.size):
        values = prepare(np.asarray(image.crop(box)))
        low = min(low, values.min())
        high = max(high, values.max())
    return low, high


def _finite(values: np.ndarray) -> np.ndarray:
    """Float samples as float64 with NaN (signalling ones too) and infinities replaced by 0."""
    with np.errstate(invalid="ignore"):  # casting a signalling NaN raises "invalid"
        wide = values.astype(np.float64)
    return np.nan_to_num(wide, nan=0.0, posinf=0.0, neginf=0.0)


def _sixteen_to_uint8(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.uint16) >> 8).astype(np.uint8)


def _int32_to_uint8(extrema: tuple[float, float]) -> Callable[[np.ndarray], np.ndarray]:
    """32-bit integer samples: 16-bit data (Pillow's older mode for 16-bit files) keeps its high
    byte; any other range is mapped linearly from [min, max] to [0, 255]."""
    low, high = int(extrema[0]), int(extrema[1])
    if low >= 0 and high <= 0xFFFF:
        return lambda values: (values >> 8).astype(np.uint8)
    return lambda values: _stretch(values.astype(np.float64), low, high)


def _float_to_uint8(extrema: tuple[float, float]) -> Callable[[np.ndarray], np.ndarray]:
    """Float samples: [0, 1] is scaled by 255, [0, 255] is kept, any other range is mapped
    linearly from [min, max]; NaN and infinities become 0."""
    low, high = float(extrema[0]), float(extrema[1])
    if low >= 0.0 and high <= 1.0:
        return lambda values: np.rint(_finite(values) * 255.0).astype(np.uint8)
    if low >= 0.0 and high <= 255.0:
        return lambda values: np.rint(_finite(values)).astype(np.uint8)
    return lambda values: _stretch(_finite(values), low, high)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)
