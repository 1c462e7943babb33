"""decode_image: formats, modes, EXIF orientation and every way the content can be refused."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from inference_service.errors import InvalidArgumentError
from inference_service.images import memory as memory_module
from inference_service.images import rgb as rgb_module
from inference_service.images.decoder import decode_image, inspect_image
from inference_service.images.formats import SUPPORTED_FORMATS
from inference_service.images.memory import _count_jpeg_scans
from inference_service.images.rgb import TILE_OVERHEAD_BYTES

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


# --- formats ------------------------------------------------------------------------------


def psd(width: int = 4, height: int = 3) -> bytes:
    """A minimal uncompressed 8-bit RGB Photoshop file (Pillow can read it)."""
    header = (
        b"8BPS" + struct.pack(">H", 1) + bytes(6) + struct.pack(">HIIHH", 3, height, width, 8, 3)
    )
    sections = struct.pack(">III", 0, 0, 0) + struct.pack(
        ">H", 0
    )  # no colour data, resources, layers
    return header + sections + bytes(width * height * 3)


def other_format(rgb: np.ndarray, fmt: str) -> bytes:
    if fmt == "PSD":
        return psd()
    return encode(Image.fromarray(rgb), fmt)


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("PSD", r"^input\.content is in the PSD format, which is not accepted; the supported "),
        ("ICO", r"^input\.content is in the ICO format, which is not accepted"),
        ("PDF", r"^input\.content is in the PDF format, which is not accepted"),
        ("TGA", r"^input\.content is not a decodable image$"),
        ("PCX", r"^input\.content is not a decodable image$"),
        ("PPM", r"^input\.content is not a decodable image$"),
        ("SGI", r"^input\.content is not a decodable image$"),
    ],
)
def test_only_the_listed_formats_are_decoded(rgb: np.ndarray, fmt: str, message: str) -> None:
    content = other_format(rgb, fmt)
    if fmt != "PDF":  # Pillow only writes PDF; every other one it would decode
        Image.open(io.BytesIO(content)).load()
    with pytest.raises(InvalidArgumentError, match=message):
        decode_image(content, max_pixels=LIMIT)
    with pytest.raises(InvalidArgumentError, match=message):
        inspect_image(content, max_pixels=LIMIT)


def test_other_plugins_never_see_the_content(monkeypatch: pytest.MonkeyPatch) -> None:
    Image.init()
    seen: list[str] = []
    for name, (factory, accept) in list(Image.OPEN.items()):
        if name not in SUPPORTED_FORMATS:

            def spy(fp, filename, _name=name, _factory=factory):
                seen.append(_name)
                return _factory(fp, filename)

            monkeypatch.setitem(Image.OPEN, name, (spy, accept))
    with pytest.raises(InvalidArgumentError):
        decode_image(psd(), max_pixels=LIMIT)
    assert seen == []
    opened = Image.open(io.BytesIO(psd()))  # the spies work: unrestricted, Pillow tries them
    assert opened.format == "PSD"
    assert seen[-1] == "PSD"


def test_supported_format_with_a_broken_header_is_named(rgb: np.ndarray) -> None:
    content = encode(Image.fromarray(rgb))
    broken = content[:16] + b"\x00" * 8 + content[24:]  # width and height 0 in IHDR
    with pytest.raises(
        InvalidArgumentError, match=r"not a decodable image \(corrupt or unsupported PNG"
    ):
        decode_image(broken, max_pixels=LIMIT)


# --- decoded bytes ----------------------------------------------------------------------------


def tiff_header_only(
    width: int,
    height: int,
    *,
    rows_per_strip: int | None = None,
    tile: int | None = None,
    bits: int = 32,
    sample_format: int = 3,
) -> bytes:
    """A deflate-compressed one-sample TIFF header (float by default) whose data is 16 zero
    bytes: only the header says what the decode would allocate."""
    entries = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, bits),
        (259, 3, 8),
        (262, 3, 1),
        (277, 3, 1),
        (339, 3, sample_format),
    ]
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


def test_decoded_bytes_depend_on_the_mode(grey: np.ndarray) -> None:
    sizes = {
        mode: inspect_image(content, max_pixels=LIMIT).decoded_bytes
        for mode, content in {
            "L": encode(Image.fromarray(grey)),
            "I;16": encode(Image.fromarray(grey.astype(np.uint16) * 257)),
            "RGB": encode(Image.fromarray(grey).convert("RGB")),
            "F": encode(Image.fromarray(grey.astype(np.float32)), "TIFF"),
        }.items()
    }
    pixels = grey.size
    assert sizes["L"] < sizes["I;16"] < sizes["RGB"]
    assert sizes["I;16"] - sizes["L"] >= pixels
    assert sizes["RGB"] - sizes["I;16"] >= 2 * pixels
    assert sizes["F"] >= sizes["RGB"]


def test_decoded_bytes_limit_is_checked_from_the_header() -> None:
    # 40 megapixels of floats in one strip: image, strip buffer and RGB copy are 11 bytes a pixel.
    content = tiff_header_only(8000, 5000)
    header = inspect_image(content, max_pixels=LIMIT)
    assert (header.format, header.mode, header.width, header.height) == ("TIFF", "F", 8000, 5000)
    assert header.decoded_bytes >= 8000 * 5000 * 11
    with pytest.raises(
        InvalidArgumentError,
        match=rf"^decoding this 8000x5000 TIFF image \(mode F\) would take {header.decoded_bytes} "
        r"bytes of memory; the limit is 402653184$",
    ):
        decode_image(content, max_pixels=LIMIT, max_decoded_bytes=384 * 1024 * 1024)


def test_decoded_bytes_limit_is_inclusive(rgb: np.ndarray) -> None:
    content = encode(Image.fromarray(rgb))
    needed = inspect_image(content, max_pixels=LIMIT).decoded_bytes
    assert decode_image(content, max_pixels=LIMIT, max_decoded_bytes=needed).shape == (48, 64, 3)
    with pytest.raises(InvalidArgumentError, match=f"would take {needed} bytes"):
        decode_image(content, max_pixels=LIMIT, max_decoded_bytes=needed - 1)


def test_a_huge_tiff_tile_counts_even_on_a_small_image() -> None:
    # libtiff decodes a whole tile at once: 16384 x 16384 floats is 1 GiB for a 100 x 100 image.
    header = inspect_image(tiff_header_only(100, 100, tile=16384), max_pixels=LIMIT)
    assert header.decoded_bytes >= 16384 * 16384 * 4
    small_strips = inspect_image(tiff_header_only(100, 100, rows_per_strip=8), max_pixels=LIMIT)
    assert small_strips.decoded_bytes < 1024 * 1024 + TILE_OVERHEAD_BYTES


def _next_marker_reference(data: bytes, position: int) -> int:
    """The marker search spelled out byte by byte (what ``_next_jpeg_marker`` must find)."""
    while position + 1 < len(data):
        following = data[position + 1]
        if data[position] != 0xFF:
            position += 1
        elif following == 0x00 or 0xD0 <= following <= 0xD7:
            position += 2
        elif following == 0xFF:
            position += 1
        else:
            return position
    return len(data)


def test_the_marker_search_skips_stuffing_restarts_and_fill_bytes() -> None:
    rng = np.random.default_rng(7)
    # Bytes drawn mostly from those the search must tell apart, so that every case occurs.
    alphabet = np.array([0xFF, 0x00, 0xD0, 0xD7, 0xD9, 0xC4, 0xDA, 0x12, 0xFE], dtype=np.uint8)
    for _ in range(200):
        data = rng.choice(alphabet, size=int(rng.integers(0, 40))).tobytes()
        for start in range(len(data) + 1):
            assert memory_module._next_jpeg_marker(data, start) == _next_marker_reference(
                data, start
            ), (data.hex(), start)


def test_progressive_and_multi_scan_jpegs_count_their_coefficients(rgb: np.ndarray) -> None:
    image = Image.fromarray(np.tile(rgb, (4, 4, 1)))  # 192 x 256
    baseline = encode(image, "JPEG", quality=90)
    progressive = encode(image, "JPEG", quality=90, progressive=True)
    assert _count_jpeg_scans(baseline) == 1
    assert _count_jpeg_scans(progressive) > 1
    assert _count_jpeg_scans(baseline[:2] + b"\x00" * 10) == 0  # broken: counted as buffered
    pixels = 192 * 256
    extra = (
        inspect_image(progressive, max_pixels=LIMIT).decoded_bytes
        - inspect_image(baseline, max_pixels=LIMIT).decoded_bytes
    )
    # 4:2:0 subsampling: 1.5 samples a pixel, 2 bytes each (plus block padding and the size
    # difference of the two files, which is counted once).
    assert 3 * pixels <= extra - (len(progressive) - len(baseline)) < 4 * pixels


# --- the tiled conversion is exactly the whole-image one ------------------------------------


def reference_decode(content: bytes) -> np.ndarray:
    """The decode before tiling: Pillow's exif_transpose and whole-image conversions."""
    image = Image.open(io.BytesIO(content))
    ImageOps.exif_transpose(image, in_place=True)
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode.startswith("I;16"):
        grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
    elif mode == "I":
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high <= 0xFFFF:
            grey = (values >> 8).astype(np.uint8)
        else:
            grey = reference_stretch(values.astype(np.float64), low, high)
    elif mode == "F":
        values = np.nan_to_num(
            np.asarray(image).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0
        )
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0:
            grey = np.rint(values * 255.0).astype(np.uint8)
        elif low >= 0.0 and high <= 255.0:
            grey = np.rint(values).astype(np.uint8)
        else:
            grey = reference_stretch(values, low, high)
    else:
        if mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        return np.asarray(image.convert("RGB"))
    return np.repeat(grey[:, :, None], 3, axis=2)


def reference_stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def mode_samples(rgb: np.ndarray) -> dict[str, bytes]:
    rng = np.random.default_rng(11)
    image = Image.fromarray(rgb)
    grey = np.asarray(image.convert("L"))
    floats = rng.normal(0, 1000, size=grey.shape).astype(np.float32)
    floats[3, 5], floats[7, 1], floats[9, 9] = np.nan, np.inf, -np.inf
    return {
        "RGB": encode(image),
        "RGBA": encode(image.convert("RGBA")),
        "L": encode(image.convert("L")),
        "LA": encode(image.convert("LA")),
        "1": encode(image.convert("1")),
        "P": encode(image.convert("P")),
        "P-transparent": encode(image.convert("P"), transparency=3),
        "CMYK": encode(image.convert("CMYK"), "JPEG", quality=90),
        "I;16": encode(Image.fromarray(grey.astype(np.uint16) * 251)),
        "I-16-bit-range": encode(Image.fromarray(grey.astype(np.int32) * 200), "TIFF"),
        "I-wide": encode(Image.fromarray(grey.astype(np.int32) * 70_000 - 9_000_000), "TIFF"),
        "F-unit": encode(Image.fromarray(grey.astype(np.float32) / 255), "TIFF"),
        "F-byte": encode(Image.fromarray(grey.astype(np.float32) * 0.9), "TIFF"),
        "F-wide-nan": encode(Image.fromarray(floats), "TIFF"),
        "GIF": encode(image.convert("P"), "GIF"),
        "WEBP": encode(image, "WEBP", lossless=True),
        "BMP": encode(image, "BMP"),
    }


@pytest.mark.parametrize("tile_pixels", [7, 50, 1 << 18])
def test_tiled_conversion_matches_the_whole_image(
    rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch, tile_pixels: int
) -> None:
    monkeypatch.setattr(rgb_module, "TILE_PIXELS", tile_pixels)
    for name, content in mode_samples(rgb).items():
        expected = reference_decode(content)
        np.testing.assert_array_equal(decode_image(content, max_pixels=LIMIT), expected, name)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("mode", ["RGB", "L", "F"])
def test_orientation_matches_pillow_for_every_mode(
    rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch, orientation: int, mode: str
) -> None:
    monkeypatch.setattr(rgb_module, "TILE_PIXELS", 100)  # many tiles
    stored = Image.fromarray(rgb).convert(mode)
    exif = stored.getexif()
    exif[0x0112] = orientation
    content = encode(stored, "TIFF", exif=exif)
    decoded = decode_image(content, max_pixels=LIMIT)
    assert decoded.shape == ((64, 48, 3) if orientation >= 5 else (48, 64, 3))
    np.testing.assert_array_equal(decoded, reference_decode(content))


def test_a_header_that_cannot_be_sized_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(image: Image.Image, content: bytes) -> int:
        raise TypeError("tile width is a string")

    monkeypatch.setattr(memory_module, "_scratch_bytes", broken)
    content = tiff_header_only(10, 10)
    with pytest.raises(InvalidArgumentError, match=r"decodable image \(corrupt TIFF header\)$"):
        inspect_image(content, max_pixels=LIMIT)


def test_signalling_nans_become_zero_without_warnings() -> None:
    values = np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)
    values.view(np.uint32)[0, 0] = 0x7FA00000  # a signalling NaN
    content = encode(Image.fromarray(values), "TIFF")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoded = decode_image(content, max_pixels=LIMIT)
    np.testing.assert_array_equal(decoded[0, :, 0], [0, 128, 255, 64])


def test_min_size_decodes_a_jpeg_at_a_reduced_scale_oriented_and_never_below_it() -> None:
    picture = Image.new("RGB", (1600, 1200), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    content = encode(picture, "JPEG", exif=exif.tobytes())
    assert decode_image(content, max_pixels=10**8).shape == (1600, 1200, 3)
    small = decode_image(content, max_pixels=10**8, min_size=256)
    assert small.shape == (400, 300, 3)  # 1/4: 1/8 would be under 256 on the short side
    assert abs(int(small[150, 150, 0]) - 200) < 10
    # Other formats, and a size over the image's, decode whole.
    png = encode(picture, "PNG")
    assert decode_image(png, max_pixels=10**8, min_size=256).shape == (1200, 1600, 3)
    assert decode_image(content, max_pixels=10**8, min_size=4096).shape == (1600, 1200, 3)
