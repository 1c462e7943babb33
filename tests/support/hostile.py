"""A corpus of hostile images, generated (never committed), each with the answer it gets from
the service under the default limits (40 megapixels, 384 MiB decoded).

``corpus()`` returns every case; a case's ``code`` is the name of the gRPC status the service
answers (``OK`` or an error), ``message`` a regex the error message matches, and ``size`` the
(width, height) of an accepted image as the model sees it (EXIF orientation applied).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class HostileCase:
    name: str
    content: bytes
    code: str
    message: str = ""
    size: tuple[int, int] | None = None


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def pattern(width: int = 64, height: int = 48) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """An RGB PNG of ``width`` x ``height`` whose data is one short row."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(bytes(100)))
        + png_chunk(b"IEND", b"")
    )


def gif_header_only(width: int, height: int) -> bytes:
    """A GIF whose logical screen is ``width`` x ``height`` around a 1 x 1 frame."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + bytes(6)
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b";"


def tiff_header_only(
    width: int, height: int, *, rows_per_strip: int | None = None, tile: int | None = None
) -> bytes:
    """A deflate-compressed 32-bit float TIFF whose data is 16 zero bytes."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 32), (259, 3, 8), (262, 3, 1)]
    entries += [(277, 3, 1), (339, 3, 3)]
    if tile is not None:
        entries += [(322, 4, tile), (323, 4, tile), (324, 4, None), (325, 4, 16)]
    else:
        entries += [(273, 4, None), (278, 4, rows_per_strip or height), (279, 4, 16)]
    entries.sort()
    data_offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if value is None else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bytes(16)


def psd(width: int = 4, height: int = 3) -> bytes:
    """A minimal uncompressed 8-bit RGB Photoshop file (Pillow could read it)."""
    header = b"8BPS" + struct.pack(">H", 1) + bytes(6)
    header += struct.pack(">HIIHH", 3, height, width, 8, 3)
    return header + struct.pack(">IIIH", 0, 0, 0, 0) + bytes(width * height * 3)


def corrupt_jpeg_huffman(jpeg: bytes) -> bytes:
    """The JPEG with the body of its first Huffman table (DHT) overwritten with 0xFF."""
    start = jpeg.index(b"\xff\xc4")
    length = int.from_bytes(jpeg[start + 2 : start + 4], "big")
    return jpeg[: start + 5] + b"\xff" * (length - 3) + jpeg[start + 2 + length :]


def corrupt_png_crc(png: bytes) -> bytes:
    """The PNG with one byte of its first IDAT chunk changed (its CRC no longer matches)."""
    start = png.index(b"IDAT") + 10
    return png[:start] + bytes([png[start] ^ 0xFF]) + png[start + 1 :]


def png_text_bomb() -> bytes:
    """An 8 x 8 PNG with a zTXt chunk that inflates to 100 MB."""
    png = encode(Image.new("RGB", (8, 8)), "PNG")
    text = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(100_000_000), 9))
    return png[:33] + text + png[33:]


def with_orientation(orientation: int) -> bytes:
    image = pattern()
    exif = image.getexif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif, quality=90)


_UNDECODABLE = r"^input\.content is not a decodable image"
_FORMAT = r"^input\.content is in the {} format, which is not accepted; the supported formats"
_DECODED = r"^decoding this {} image \(mode {}\) would take \d+ bytes of memory; the limit is"


@functools.cache
def corpus() -> tuple[HostileCase, ...]:
    jpeg = encode(pattern(256, 192), "JPEG", quality=90)
    png = encode(pattern(256, 192), "PNG")
    grey = np.asarray(pattern().convert("L"))
    frames = [pattern(), Image.fromarray(255 - np.asarray(pattern()))]
    cases = [
        HostileCase("zero-bytes", b"", "INVALID_ARGUMENT", r"^input\.content is empty"),
        HostileCase("one-pixel", encode(Image.new("RGB", (1, 1), "red"), "PNG"), "OK", size=(1, 1)),
        HostileCase("random-bytes", bytes(range(256)) * 4, "INVALID_ARGUMENT", _UNDECODABLE + "$"),
        HostileCase(
            "truncated-jpeg",
            jpeg[: len(jpeg) // 2],
            "INVALID_ARGUMENT",
            r"truncated or corrupt JPEG data",
        ),
        HostileCase(
            "truncated-png",
            png[: len(png) // 2],
            "INVALID_ARGUMENT",
            r"truncated or corrupt PNG data",
        ),
        HostileCase(
            "jpeg-header-only",
            jpeg[:600],
            "INVALID_ARGUMENT",
            _UNDECODABLE + r" \(corrupt or unsupported JPEG header\)",
        ),
        HostileCase(
            "corrupt-jpeg-huffman-table",
            corrupt_jpeg_huffman(jpeg),
            "INVALID_ARGUMENT",
            r"truncated or corrupt JPEG data",
        ),
        HostileCase(
            "corrupt-png-crc",
            corrupt_png_crc(png),
            "INVALID_ARGUMENT",
            r"truncated or corrupt PNG data",
        ),
        HostileCase(
            "png-zero-width",
            png_header_only(0, 10),
            "INVALID_ARGUMENT",
            _UNDECODABLE + r" \(corrupt or unsupported PNG header\)",
        ),
        HostileCase(
            "png-text-bomb",
            png_text_bomb(),
            "INVALID_ARGUMENT",
            _UNDECODABLE + r" \(corrupt or unsupported PNG header\)",
        ),
        HostileCase(
            "png-30000x30000-header",
            png_header_only(30000, 30000),
            "INVALID_ARGUMENT",
            r"^image is 900000000 pixels; the limit is 40000000$",
        ),
        HostileCase(
            "png-8000x6000-header",
            png_header_only(8000, 6000),
            "INVALID_ARGUMENT",
            r"^image is 8000x6000 = 48000000 pixels; the limit is 40000000$",
        ),
        HostileCase(
            "gif-30000x30000-screen",
            gif_header_only(30000, 30000),
            "INVALID_ARGUMENT",
            r"^image is 900000000 pixels; the limit is 40000000$",
        ),
        HostileCase(
            "tiff-float-40mp-one-strip",
            tiff_header_only(8000, 5000),
            "INVALID_ARGUMENT",
            _DECODED.format("8000x5000 TIFF", "F"),
        ),
        HostileCase(
            "tiff-float-1gib-tile",
            tiff_header_only(100, 100, tile=16384),
            "INVALID_ARGUMENT",
            _DECODED.format("100x100 TIFF", "F"),
        ),
        HostileCase(
            "webp-25mp",
            encode(Image.new("RGB", (5000, 5000), "gray"), "WEBP", lossless=True, method=0),
            "INVALID_ARGUMENT",
            _DECODED.format("5000x5000 WEBP", "RGB"),
        ),
        HostileCase(
            "tiff-32-bit-float",
            encode(Image.fromarray(grey.astype(np.float32) / 255), "TIFF"),
            "OK",
            size=(64, 48),
        ),
        HostileCase(
            "tiff-16-bit",
            encode(Image.fromarray(grey.astype(np.uint16) * 257), "TIFF"),
            "OK",
            size=(64, 48),
        ),
        HostileCase(
            "png-16-bit",
            encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"),
            "OK",
            size=(64, 48),
        ),
        HostileCase(
            "cmyk-jpeg",
            encode(pattern().convert("CMYK"), "JPEG", quality=90),
            "OK",
            size=(64, 48),
        ),
        HostileCase(
            "progressive-jpeg", encode(pattern(), "JPEG", progressive=True), "OK", size=(64, 48)
        ),
        HostileCase(
            "animated-gif",
            encode(
                frames[0].convert("P"), "GIF", save_all=True, append_images=[frames[1].convert("P")]
            ),
            "OK",
            size=(64, 48),
        ),
        *(
            HostileCase(
                f"exif-orientation-{o}",
                with_orientation(o),
                "OK",
                size=(48, 64) if o >= 5 else (64, 48),
            )
            for o in range(1, 9)
        ),
        HostileCase("psd", psd(), "INVALID_ARGUMENT", _FORMAT.format("PSD")),
        HostileCase("ico", encode(pattern(), "ICO"), "INVALID_ARGUMENT", _FORMAT.format("ICO")),
        HostileCase("pdf", encode(pattern(), "PDF"), "INVALID_ARGUMENT", _FORMAT.format("PDF")),
        HostileCase(
            "tga",
            encode(pattern(), "TGA"),
            "INVALID_ARGUMENT",
            _UNDECODABLE + "$",
        ),
    ]
    return tuple(cases)
