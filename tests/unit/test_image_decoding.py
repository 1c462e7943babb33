"""decode_image: formats, modes, EXIF orientation and every way the content can be refused."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference_service.detection.image import decode_image
from inference_service.errors import InvalidArgumentError

LIMIT = 40_000_000


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` RGB whose pixel data is one short row: only the
    header says how big it is."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(100))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """A small, asymmetric RGB test pattern (48 x 64)."""
    rng = np.random.default_rng(7)
    pattern = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    pattern[:8, :16] = (255, 0, 0)  # a red block in the top-left corner
    return pattern


@pytest.fixture(scope="module")
def grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def test_rgb_png_round_trips_exactly(rgb: np.ndarray) -> None:
    decoded = decode_image(encode(Image.fromarray(rgb)), max_pixels=LIMIT)
    assert decoded.dtype == np.uint8
    assert decoded.shape == (48, 64, 3)
    np.testing.assert_array_equal(decoded, rgb)


def test_jpeg_matches_pillow(images_dir: Path) -> None:
    content = (images_dir / "face-1.jpg").read_bytes()
    decoded = decode_image(content, max_pixels=LIMIT)
    expected = np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))
    assert decoded.shape == (478, 720, 3)
    np.testing.assert_array_equal(decoded, expected)


def test_grey_modes_are_replicated(grey: np.ndarray) -> None:
    for mode in ("L", "LA"):
        decoded = decode_image(encode(Image.fromarray(grey).convert(mode)), max_pixels=LIMIT)
        assert decoded.shape == (48, 64, 3), mode
        for channel in range(3):
            np.testing.assert_array_equal(decoded[:, :, channel], grey, err_msg=mode)


def test_bilevel_becomes_black_and_white(grey: np.ndarray) -> None:
    decoded = decode_image(encode(Image.fromarray(grey).convert("1")), max_pixels=LIMIT)
    assert decoded.shape == (48, 64, 3)
    assert set(np.unique(decoded).tolist()) == {0, 255}


def test_rgba_drops_alpha(rgb: np.ndarray) -> None:
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 10, dtype=np.uint8)])
    decoded = decode_image(encode(Image.fromarray(rgba)), max_pixels=LIMIT)
    np.testing.assert_array_equal(decoded, rgb)


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_uses_palette_colours(rgb: np.ndarray, transparency: bool) -> None:
    palette = Image.fromarray(rgb).convert("P")
    params = {"transparency": 0} if transparency else {}
    content = encode(palette, **params)
    assert ("transparency" in Image.open(io.BytesIO(content)).info) is transparency
    decoded = decode_image(content, max_pixels=LIMIT)
    np.testing.assert_array_equal(decoded, np.asarray(palette.convert("RGB")))


def test_cmyk_jpeg_is_converted(rgb: np.ndarray) -> None:
    content = encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(content)).mode == "CMYK"
    decoded = decode_image(content, max_pixels=LIMIT)
    assert decoded.shape == (48, 64, 3)
    # The red corner survives the CMYK round trip.
    assert decoded[2:6, 2:12, 0].min() > 200
    assert decoded[2:6, 2:12, 1:].max() < 60


def test_16_bit_png_is_scaled_not_clipped(grey: np.ndarray) -> None:
    sixteen = grey.astype(np.uint16) * 257  # 0..65535, the full 16-bit range
    content = encode(Image.fromarray(sixteen))
    assert Image.open(io.BytesIO(content)).mode.startswith("I;16")
    decoded = decode_image(content, max_pixels=LIMIT)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[:, :, channel], grey)


def test_32_bit_integer_in_16_bit_range_is_scaled(grey: np.ndarray) -> None:
    content = encode(Image.fromarray(grey.astype(np.int32) * 257), "TIFF")
    assert Image.open(io.BytesIO(content)).mode == "I"
    np.testing.assert_array_equal(decode_image(content, max_pixels=LIMIT)[:, :, 1], grey)


def test_32_bit_integer_out_of_16_bit_range_is_stretched() -> None:
    values = np.array([[-1000, 0, 1000, 3000]], dtype=np.int32)
    decoded = decode_image(encode(Image.fromarray(values), "TIFF"), max_pixels=LIMIT)
    np.testing.assert_array_equal(decoded[0, :, 0], [0, 64, 128, 255])


@pytest.mark.parametrize(("scale", "offset"), [(1 / 255, 0.0), (1.0, 0.0)])
def test_float_in_unit_or_byte_range(grey: np.ndarray, scale: float, offset: float) -> None:
    values = grey.astype(np.float32) * np.float32(scale) + np.float32(offset)
    content = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(content)).mode == "F"
    np.testing.assert_array_equal(decode_image(content, max_pixels=LIMIT)[:, :, 2], grey)


# Pixels of the displayed image, as a function of the stored pixels, for each EXIF orientation.
ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: np.rot90(a, k=2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(rgb: np.ndarray, orientation: int) -> None:
    stored = Image.fromarray(rgb)
    exif = stored.getexif()
    exif[0x0112] = orientation
    decoded = decode_image(encode(stored, exif=exif), max_pixels=LIMIT)
    np.testing.assert_array_equal(decoded, ORIENTATIONS[orientation](rgb))


def test_exif_orientation_in_jpeg(rgb: np.ndarray) -> None:
    stored = Image.fromarray(rgb)
    exif = stored.getexif()
    exif[0x0112] = 6
    content = encode(stored, "JPEG", exif=exif, quality=95)
    raw = np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))
    decoded = decode_image(content, max_pixels=LIMIT)
    assert decoded.shape == (64, 48, 3)
    np.testing.assert_array_equal(decoded, np.rot90(raw, k=-1))
    assert decoded[:8, -8:, 0].mean() > 200  # the red corner moved to the top right


def test_first_frame_of_an_animation(rgb: np.ndarray) -> None:
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    content = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(decode_image(content, max_pixels=LIMIT), rgb)


def test_empty_content_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^input\.content is empty$"):
        decode_image(b"", max_pixels=LIMIT)


@pytest.mark.parametrize(
    "content", [b"hello", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", bytes(1000)], ids=repr
)
def test_garbage_is_refused(content: bytes) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^input\.content is not a decodable image"):
        decode_image(content, max_pixels=LIMIT)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_content_is_refused(rgb: np.ndarray, fmt: str) -> None:
    big = np.tile(rgb, (4, 4, 1))
    content = encode(Image.fromarray(big), fmt)
    with pytest.raises(InvalidArgumentError, match=f"truncated or corrupt {fmt} data"):
        decode_image(content[: len(content) // 2], max_pixels=LIMIT)


def test_pixel_limit_is_checked_from_the_header() -> None:
    # No pixel data at all: only a header check can report the size instead of truncation.
    with pytest.raises(
        InvalidArgumentError,
        match=r"^image is 8000x6000 = 48000000 pixels; the limit is 40000000$",
    ):
        decode_image(png_header_only(8000, 6000), max_pixels=LIMIT)


def test_pixel_limit_is_inclusive(rgb: np.ndarray) -> None:
    content = encode(Image.fromarray(rgb))
    assert decode_image(content, max_pixels=48 * 64).shape == (48, 64, 3)
    with pytest.raises(InvalidArgumentError, match="= 3072 pixels; the limit is 3071"):
        decode_image(content, max_pixels=48 * 64 - 1)


def test_pillow_decompression_bomb_is_refused() -> None:
    # Over twice Pillow's own limit, Image.open itself raises DecompressionBombError.
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(
        InvalidArgumentError, match=r"^image is 400000000 pixels; the limit is 40000000$"
    ):
        decode_image(png_header_only(20000, 20000), max_pixels=LIMIT)
    assert before == Image.MAX_IMAGE_PIXELS
