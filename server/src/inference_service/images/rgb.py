"""The conversion of a loaded Pillow image of any mode to an (H, W, 3) ``uint8`` RGB array with
its EXIF orientation applied, in tiles written straight into the result (no full-size
temporary besides Pillow's image and the array returned).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
ORIENTATION_TAG = 0x0112

# The conversion to RGB works on tiles of at most this many pixels; its temporaries (a crop, its
# bytes, float64 copies) are bounded by this many bytes.
TILE_PIXELS = 1 << 18
TILE_OVERHEAD_BYTES = TILE_PIXELS * 64

# EXIF orientation -> a view of the displayed (oriented) array laid out as the stored image, so
# that writing the stored pixels into it orients them (the inverse of each transposition).
STORED_VIEW: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=1),
    7: lambda a: np.rot90(a, k=2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=-1),
}
_TRANSPOSING = frozenset({5, 6, 7, 8})


def _tiles(width: int, height: int) -> Iterator[tuple[int, int, int, int]]:
    """Boxes (left, upper, right, lower) of at most ``TILE_PIXELS`` covering the image."""
    columns = min(width, TILE_PIXELS)
    rows = max(1, TILE_PIXELS // columns)
    for top in range(0, height, rows):
        for left in range(0, width, columns):
            yield left, top, min(left + columns, width), min(top + rows, height)


def to_rgb(image: Image.Image, orientation: int) -> np.ndarray:
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
    target = STORED_VIEW[orientation](out)
    if mode in SIXTEEN_BIT_MODES:
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
