"""Preprocessing: resize an RGB image to the model's input size and normalise it.

The resize reproduces OpenCV's ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)`` on ``uint8``
images, including its fixed-point arithmetic, because the upstream detector was tuned on it (a
PIL bilinear resize, which antialiases, changes the detections noticeably):

* source coordinate of a destination pixel: ``src = (dst + 0.5) * (src_size / dst_size) - 0.5``
  (half-pixel centres), computed in float32 like OpenCV;
* columns: a negative ``src`` is clamped to 0 and ``src >= src_size - 1`` to the last column
  (weight 0 for the neighbour); rows: the fractional weight is kept and the row indices are
  clamped instead (what OpenCV does);
* weights are rounded to 11 bits (``round(w * 2048)``); the horizontal pass is exact in int32;
  the vertical pass follows OpenCV's SIMD kernel (``VResizeLinearVec_32s8u``):
  ``v = ((h0 >> 4) * b0 >> 16) + ((h1 >> 4) * b1 >> 16)``, then ``(v + 2) >> 2`` saturated to
  ``uint8`` (not the exact ``(h0 * b0 + h1 * b1 + 2**21) >> 22``, which differs by 1 at times);
* no antialiasing (downscales sample two neighbours only).

The result is bit-identical to ``cv2.resize`` of opencv-python-headless 4.14 and 5.0 (x86-64
wheels) on the shared images and on random images of many source and output sizes (see
``tests/unit/test_preprocessing.py``). Other builds (ARM NEON, a custom HAL) were not compared.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np

logger = logging.getLogger(__name__)

MODEL_INPUT_WIDTH = 320
"""Width of the model input, in pixels."""
MODEL_INPUT_HEIGHT = 240
"""Height of the model input, in pixels."""

_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS  # 2048: OpenCV's INTER_RESIZE_COEF_SCALE
_CHUNK_ELEMENTS = 80 * MODEL_INPUT_WIDTH * 3  # int32 temporaries of ~300 KiB stay in L2


@dataclasses.dataclass(frozen=True, slots=True)
class _AxisTable:
    """Source indices and 11-bit fixed-point weights of one axis of a linear resize."""

    index0: np.ndarray
    """First source index of each destination pixel (int64, shape (dst,))."""
    index1: np.ndarray
    """Second source index of each destination pixel (int64, shape (dst,))."""
    weight0: np.ndarray
    """Weight of ``index0``, in 1/2048 (int32)."""
    weight1: np.ndarray
    """Weight of ``index1``, in 1/2048 (int32)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _ResizeTable:
    """Everything a resize from one source size needs, on the image viewed as (H, W * C)."""

    rows0: np.ndarray  # (dst_h,) source rows of the first tap
    rows1: np.ndarray  # (dst_h,) source rows of the second tap
    cols0: np.ndarray  # (dst_w * C,) flat source columns (pixel * C + channel) of the first tap
    cols1: np.ndarray  # (dst_w * C,) flat source columns of the second tap
    col_weight0: np.ndarray  # (dst_w * C,) int32, in 1/2048
    col_weight1: np.ndarray  # (dst_w * C,) int32, in 1/2048
    row_weight0: np.ndarray  # (dst_h, 1) int32, in 1/2048
    row_weight1: np.ndarray  # (dst_h, 1) int32, in 1/2048


def _axis_table(src_size: int, dst_size: int, *, clamp_weights: bool) -> _AxisTable:
    """Taps and weights of OpenCV's INTER_LINEAR along one axis.

    ``clamp_weights`` selects OpenCV's column behaviour (out-of-range taps get weight 0 on the
    neighbour); otherwise the weights are left as computed and only the indices are clamped
    (OpenCV's row behaviour). Both give the same value up to the vertical pass's rounding.
    """
    scale = 1.0 / (dst_size / src_size)  # float64, as OpenCV's 1 / inv_scale
    dst = np.arange(dst_size, dtype=np.float64)
    pos = ((dst + 0.5) * scale - 0.5).astype(np.float32)  # OpenCV rounds to float here
    first = np.floor(pos).astype(np.int64)
    frac = pos - first.astype(np.float32)
    if clamp_weights:
        low = first < 0
        frac[low] = 0.0
        first[low] = 0
        high = first >= src_size - 1
        frac[high] = 0.0
        first[high] = src_size - 1
    second = np.clip(first + 1, 0, src_size - 1)
    first = np.clip(first, 0, src_size - 1)
    # saturate_cast<short>(float) rounds half to even, as np.rint does.
    weight0 = np.rint((np.float32(1.0) - frac) * np.float32(_COEF_SCALE)).astype(np.int32)
    weight1 = np.rint(frac * np.float32(_COEF_SCALE)).astype(np.int32)
    return _AxisTable(first, second, weight0, weight1)


def _build_table(
    src_height: int, src_width: int, channels: int, dst_height: int, dst_width: int
) -> _ResizeTable:
    cols = _axis_table(src_width, dst_width, clamp_weights=True)
    rows = _axis_table(src_height, dst_height, clamp_weights=False)
    channel = np.arange(channels, dtype=np.int64)

    def flat(index: np.ndarray) -> np.ndarray:
        return (index[:, None] * channels + channel).ravel()

    return _ResizeTable(
        rows0=rows.index0,
        rows1=rows.index1,
        cols0=flat(cols.index0),
        cols1=flat(cols.index1),
        col_weight0=np.repeat(cols.weight0, channels),
        col_weight1=np.repeat(cols.weight1, channels),
        row_weight0=rows.weight0[:, None],
        row_weight1=rows.weight1[:, None],
    )


class Preprocessor:
    """Turns an RGB ``uint8`` image of any size into one (H, W, C) slot of the model's NHWC input.

    Index/weight tables are cached per source size (an LRU of ``cache_size`` sizes), so repeated
    sizes cost only the arithmetic. Instances are safe to share between threads.
    """

    def __init__(
        self,
        *,
        width: int = MODEL_INPUT_WIDTH,
        height: int = MODEL_INPUT_HEIGHT,
        cache_size: int = 64,
    ) -> None:
        """``width`` and ``height`` are the model input size in pixels."""
        if width < 1 or height < 1:
            raise ValueError(f"model input size must be positive, got {width}x{height}")
        self._width = width
        self._height = height
        self._table = functools.lru_cache(maxsize=cache_size)(self._table_for)

    @property
    def size(self) -> tuple[int, int]:
        """Model input size as (width, height) in pixels."""
        return self._width, self._height

    def _table_for(self, src_height: int, src_width: int, channels: int) -> _ResizeTable:
        logger.debug(
            "building resize table %dx%d -> %dx%d", src_width, src_height, self._width, self._height
        )
        return _build_table(src_height, src_width, channels, self._height, self._width)

    def _check(self, image: np.ndarray) -> tuple[int, int, int]:
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"expected an (H, W, C) uint8 image, got {image.dtype} {image.shape}")
        src_height, src_width, channels = image.shape
        if src_height < 1 or src_width < 1 or channels < 1:
            raise ValueError(f"image has no pixels: {image.shape}")
        return src_height, src_width, channels

    def _resize_rows(self, flat: np.ndarray, t: _ResizeTable, start: int, stop: int) -> np.ndarray:
        """Output rows ``start:stop`` of the resize as int32 (rows, width * C) in [0, 255]."""
        top = flat[t.rows0[start:stop]]
        bottom = flat[t.rows1[start:stop]]
        # Horizontal pass, exact in int32: values in [0, 255 * 2048].
        top_sum = top[:, t.cols0] * t.col_weight0
        top_sum += top[:, t.cols1] * t.col_weight1
        bottom_sum = bottom[:, t.cols0] * t.col_weight0
        bottom_sum += bottom[:, t.cols1] * t.col_weight1
        # Vertical pass, as OpenCV's SIMD kernel (VResizeLinearVec_32s8u).
        top_sum >>= 4
        top_sum *= t.row_weight0[start:stop]
        top_sum >>= 16
        bottom_sum >>= 4
        bottom_sum *= t.row_weight1[start:stop]
        bottom_sum >>= 16
        top_sum += bottom_sum
        top_sum += 2
        top_sum >>= 2
        np.clip(top_sum, 0, 255, out=top_sum)
        return top_sum

    def _rows_per_chunk(self, channels: int) -> int:
        # Working in blocks of rows keeps the int32 temporaries in cache (about 2x faster).
        return max(1, _CHUNK_ELEMENTS // (self._width * channels))

    def resize(self, image: np.ndarray) -> np.ndarray:
        """Resize an (H, W, C) ``uint8`` image to (height, width, C), as cv2 INTER_LINEAR."""
        src_height, src_width, channels = self._check(image)
        t = self._table(src_height, src_width, channels)
        flat = np.ascontiguousarray(image).reshape(src_height, src_width * channels)
        out = np.empty((self._height, self._width * channels), dtype=np.uint8)
        step = self._rows_per_chunk(channels)
        for start in range(0, self._height, step):
            stop = min(start + step, self._height)
            out[start:stop] = self._resize_rows(flat, t, start, stop)
        return out.reshape(self._height, self._width, channels)

    def __call__(self, image: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Return the model input for one image: float32 (height, width, C), ``(x - 127) / 128``.

        ``out``, when given, is a C-contiguous float32 array of that shape (e.g. one slot of an
        NHWC batch) that receives the result and is returned; else a new array is returned.
        Add the batch axis with ``[None]`` to get NHWC.
        """
        src_height, src_width, channels = self._check(image)
        shape = (self._height, self._width, channels)
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be C-contiguous float32 {shape}, got {out.dtype} {out.shape}"
            )
        t = self._table(src_height, src_width, channels)
        flat = np.ascontiguousarray(image).reshape(src_height, src_width * channels)
        out_rows = out.reshape(self._height, self._width * channels)
        step = self._rows_per_chunk(channels)
        for start in range(0, self._height, step):
            stop = min(start + step, self._height)
            block = out_rows[start:stop]
            np.subtract(self._resize_rows(flat, t, start, stop), 127, out=block, casting="unsafe")
            block *= 1.0 / 128.0  # a power of two: exact, same as dividing by 128
        return out
