"""What decoding really allocates stays within what ``inspect_image`` computes from the header:
each image is decoded in a fresh process whose peak RSS is measured (Linux /proc)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from inference_service.images.decoder import inspect_image

W, H = 4000, 2500  # 10 megapixels: the buffers that matter dwarf the allocator's noise

MEASURE = """
import gc, json, re, sys
from pathlib import Path
from inference_service.images.decoder import decode_image

def status(field):
    text = Path("/proc/self/status").read_text()
    return int(re.search(field + r":\\s+(\\d+) kB", text).group(1)) * 1024

content = Path(sys.argv[1]).read_bytes()
gc.collect()
Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
before = status("VmRSS")
image = decode_image(content, max_pixels=10**9)
print(json.dumps({"peak": status("VmHWM") - before, "shape": list(image.shape)}))
"""


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(5)
    small = Image.fromarray(rng.integers(0, 256, size=(H // 10, W // 10, 3), dtype=np.uint8))
    return small.resize((W, H), Image.Resampling.NEAREST).convert(mode)


def float_tiff(one_strip: bool) -> bytes:
    values = np.asarray(noise("L"), dtype=np.float32) / 255
    strip_size = TiffImagePlugin.STRIP_SIZE
    if one_strip:
        TiffImagePlugin.STRIP_SIZE = 1 << 31
    try:
        return encode(Image.fromarray(values), "TIFF", compression="tiff_deflate")
    finally:
        TiffImagePlugin.STRIP_SIZE = strip_size


def tiled_tiff(size: int, tile: int) -> bytes:
    """A size x size float TIFF in one deflated tile of tile x tile zeros (libtiff inflates it
    whole)."""
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(bytes(tile * 4)) for _ in range(tile)) + compressor.flush()
    entries = [(256, size), (257, size), (258, 32), (259, 8), (262, 1), (277, 1)]
    entries += [(322, tile), (323, tile), (324, None), (325, len(data)), (339, 3)]
    offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, value in entries:
        ifd += struct.pack("<HHII", tag, 4, 1, offset if value is None else value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data


def oriented_jpeg(orientation: int) -> bytes:
    image = noise()
    exif = image.getexif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif, quality=80)


CASES = {
    "tiff-float-strips": lambda: float_tiff(one_strip=False),
    "tiff-float-one-strip": lambda: float_tiff(one_strip=True),
    "tiff-float-huge-tile": lambda: tiled_tiff(100, 8192),
    "png-rgb": lambda: encode(noise(), "PNG", compress_level=1),
    "png-16-bit": lambda: encode(Image.fromarray(np.asarray(noise("L"), np.uint16) * 257), "PNG"),
    "png-palette-transparent": lambda: encode(noise("P"), "PNG", transparency=0),
    "jpeg-progressive-444": lambda: encode(noise(), "JPEG", progressive=True, subsampling=0),
    "jpeg-exif-rotated": lambda: oriented_jpeg(6),
    "jpeg-cmyk": lambda: encode(noise("CMYK"), "JPEG", quality=80),
    "webp": lambda: encode(noise(), "WEBP", quality=50, method=0),
    "gif": lambda: encode(noise("P"), "GIF"),
}


@pytest.mark.parametrize("name", CASES)
def test_decode_peak_is_within_the_header_estimate(name: str, tmp_path: Path) -> None:
    content = CASES[name]()
    path = tmp_path / "content"
    path.write_bytes(content)
    header = inspect_image(content, max_pixels=10**9)
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, check=True
    )
    measured = json.loads(result.stdout)
    pixels = header.width * header.height
    print(f"{name}: estimate {header.decoded_bytes}, peak {measured['peak']}")
    assert measured["peak"] >= pixels * 3  # the RGB array alone: the measure sees the decode
    assert measured["peak"] <= header.decoded_bytes, (measured["peak"], header.decoded_bytes)
