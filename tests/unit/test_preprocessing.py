"""Preprocessor: OpenCV INTER_LINEAR resize semantics and (x - 127) / 128 normalisation.

The expected values come from a scalar re-implementation of OpenCV's fixed-point kernel (the
semantics the upstream detector was tuned with), from identities (exact 2x downscale = 2x2
mean), and from hashes of ``cv2.resize`` outputs recorded with opencv-python-headless 4.14.0
and 5.0.0 (identical): an OpenCV build that resized differently would fail here.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference_service.detection.preprocessing import Preprocessor


def opencv_linear_reference(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scalar transcription of OpenCV's uint8 INTER_LINEAR (resize.cpp): float32 source
    coordinates, columns clamped with their weight, rows clamped by index only, 11-bit weights,
    and the SIMD vertical pass ``v = ((h0 >> 4) * b0 >> 16) + ((h1 >> 4) * b1 >> 16)``,
    ``(v + 2) >> 2``."""
    src_h, src_w, channels = image.shape

    def taps(
        dst: int, src_size: int, dst_size: int, clamp_weight: bool
    ) -> tuple[int, int, int, int]:
        scale = 1.0 / (dst_size / src_size)
        pos = float(np.float32((dst + 0.5) * scale - 0.5))
        first = math.floor(pos)
        frac = float(np.float32(pos) - np.float32(first))
        if clamp_weight and first < 0:
            first, frac = 0, 0.0
        if clamp_weight and first >= src_size - 1:
            first, frac = src_size - 1, 0.0
        w0 = int(np.rint(np.float32(1.0 - np.float32(frac)) * np.float32(2048)))
        w1 = int(np.rint(np.float32(frac) * np.float32(2048)))
        return min(max(first, 0), src_size - 1), min(max(first + 1, 0), src_size - 1), w0, w1

    out = np.empty((height, width, channels), dtype=np.uint8)
    for y in range(height):
        r0, r1, b0, b1 = taps(y, src_h, height, clamp_weight=False)
        for x in range(width):
            c0, c1, a0, a1 = taps(x, src_w, width, clamp_weight=True)
            for c in range(channels):
                h0 = int(image[r0, c0, c]) * a0 + int(image[r0, c1, c]) * a1
                h1 = int(image[r1, c0, c]) * a0 + int(image[r1, c1, c]) * a1
                v = (((h0 >> 4) * b0) >> 16) + (((h1 >> 4) * b1) >> 16)
                out[y, x, c] = min(max((v + 2) >> 2, 0), 255)
    return out


@pytest.fixture(scope="module")
def lenna(images_dir: Path) -> np.ndarray:
    return np.asarray(Image.open(images_dir / "lenna.png").convert("RGB"))


def test_hand_computed_pixel() -> None:
    # 2x upscale: output (1, 1) sits at source (0.25, 0.25): weights 1536/512 on both axes.
    # h0 = 100 * 1536 + 200 * 512 = 256000; ((256000 >> 4) * 1536) >> 16 = 375; (375 + 2) >> 2 = 94.
    image = np.zeros((120, 160, 3), dtype=np.uint8)
    image[0, 0] = 100
    image[0, 1] = 200
    assert Preprocessor().resize(image)[1, 1].tolist() == [94, 94, 94]


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((37, 53), (11, 7)),  # downscale, odd ratios
        ((5, 4), (13, 9)),  # upscale: edge clamping on both axes
        ((1, 1), (3, 2)),
        ((9, 31), (10, 6)),  # upscale rows, downscale columns
        ((64, 48), (32, 24)),  # exactly 2x
        ((478, 720), (40, 30)),  # the ratios of face-1.jpg to a small output
        ((3, 200), (57, 41)),
    ],
)
def test_matches_scalar_opencv_kernel(src: tuple[int, int], dst: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(src) * 1000 + sum(dst))
    image = rng.integers(0, 256, size=(*src, 3), dtype=np.uint8)
    width, height = dst
    expected = opencv_linear_reference(image, width, height)
    got = Preprocessor(width=width, height=height).resize(image)
    np.testing.assert_array_equal(got, expected)


def test_exact_2x_downscale_is_rounded_2x2_mean() -> None:
    # OpenCV turns this case into INTER_AREA; the linear kernel gives the same result.
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    blocks = image.reshape(240, 2, 320, 2, 3).astype(np.int32).sum(axis=(1, 3))
    np.testing.assert_array_equal(Preprocessor().resize(image), (blocks + 2) >> 2)


def test_same_size_is_identity() -> None:
    image = np.random.default_rng(4).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    np.testing.assert_array_equal(Preprocessor().resize(image), image)


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (239, 321), (1000, 999), (3000, 17)])
def test_constant_images_stay_constant(shape: tuple[int, int]) -> None:
    image = np.full((*shape, 3), 0, dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 0, 137, 255
    resized = Preprocessor().resize(image)
    assert resized.shape == (240, 320, 3)
    assert resized.reshape(-1, 3).min(axis=0).tolist() == [0, 137, 255]
    assert resized.reshape(-1, 3).max(axis=0).tolist() == [0, 137, 255]


# sha256 of cv2.resize(x, (320, 240), interpolation=cv2.INTER_LINEAR).tobytes() for crops
# (top, bottom, left, right) of lenna.png (RGB), from opencv-python-headless 4.14.0.94 and
# 5.0.0.93 (both gave these values).
CV2_HASHES = {
    (0, 512, 0, 512): "0e691a63e2bf419d938e2b4dd49a6666cbcc7481f623330d63cc2229062cd69d",
    (200, 277, 240, 340): "d0ca3bea7b749e21fb8b3c63a019997338ad70177f7020af8d0b9c846af8f245",
    (13, 492, 1, 512): "5474228fb17c99423a08d06094921b8d36a25b43b21a81b10b3d953cf556754a",
    (0, 512, 100, 133): "28d3e79ce139689bf2f799cf2c107fa4860ebd1743db44404498337db086c17e",
}


@pytest.mark.parametrize("crop", list(CV2_HASHES), ids=["512x512", "100x77", "511x479", "33x512"])
def test_bit_exact_with_recorded_cv2_output(
    lenna: np.ndarray, crop: tuple[int, int, int, int]
) -> None:
    top, bottom, left, right = crop
    resized = Preprocessor().resize(lenna[top:bottom, left:right])  # crops are not contiguous
    assert hashlib.sha256(resized.tobytes()).hexdigest() == CV2_HASHES[crop]


def test_normalisation() -> None:
    image = np.zeros((240, 320, 3), dtype=np.uint8)
    image[0, 0] = (0, 127, 255)
    tensor = Preprocessor()(image)
    assert tensor.dtype == np.float32
    assert tensor.shape == (240, 320, 3)
    assert tensor[0, 0].tolist() == [-127 / 128, 0.0, 1.0]
    assert tensor[1, 1].tolist() == [-127 / 128] * 3


def test_normalisation_matches_resize(lenna: np.ndarray) -> None:
    preprocessor = Preprocessor()
    expected = (preprocessor.resize(lenna).astype(np.float32) - 127) / 128
    np.testing.assert_array_equal(preprocessor(lenna), expected)
    out = np.full((1, 240, 320, 3), np.nan, dtype=np.float32)
    assert preprocessor(lenna, out=out[0]) is not None
    np.testing.assert_array_equal(out[0], expected)


def test_rejects_bad_arrays() -> None:
    preprocessor = Preprocessor()
    with pytest.raises(ValueError, match="uint8"):
        preprocessor(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        preprocessor(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="out must be"):
        preprocessor(np.zeros((10, 10, 3), dtype=np.uint8), out=np.zeros((240, 320, 3)))
