"""The decode-memory estimate: from an opened image's header (no pixel decoded), an upper
bound of the bytes that decoding it to RGB allocates at once (``decoded_bytes``).
"""

from __future__ import annotations

import math
import re

from PIL import Image

from inference_service.images.rgb import SIXTEEN_BIT_MODES, TILE_OVERHEAD_BYTES

# Bytes Pillow keeps per pixel, by mode: 1-byte modes, 2-byte modes, and 4 for every other mode
# (I, F and all multi-band modes, which Pillow stores as 32 bits per pixel).
_PILLOW_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, **dict.fromkeys(SIXTEEN_BIT_MODES, 2)}
_OUTPUT_PIXEL_BYTES = 3  # the RGB uint8 array the model gets

# Scratch memory of the decoders, per pixel, measured with Pillow 13 on 40-megapixel images:
# WebP decodes into a canvas that Pillow copies twice (about 12 bytes per pixel); a progressive
# (or multi-scan) JPEG keeps every DCT coefficient (2 bytes per sample) until the last scan;
# a run-length BMP is expanded into a bytearray, then copied.
_WEBP_SCRATCH_PIXEL_BYTES = 16
_JPEG_COEFFICIENT_BYTES = 2
_BMP_SCRATCH_PIXEL_BYTES = 3

# 0xFF then a byte that starts a marker: not 0x00 (stuffing), RST0-7 nor 0xFF (fill).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def decoded_bytes(image: Image.Image, content: bytes) -> int:
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
            return int(tags.get(322, width)) * int(tags.get(323, height)) * int(pixel_bytes)
        rows = min(max(int(tags.get(278, height)), 1), height)
        return rows * width * int(pixel_bytes)
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
