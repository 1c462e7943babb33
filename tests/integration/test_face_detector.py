"""TFLiteFaceDetector with the real model on the shared images, against the upstream reference:
what these tests add for the TFLite detector (its default name, EXIF and image modes through the
decoder, every image twice on 4 threads, a name and score threshold of its own). What every
runtime must do (each reference image, odd sizes, non-RGB arrays) is test_detector_contract.py's."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from support.reference import MIN_IOU, mismatches

from inference_service.detection.tflite import TFLiteFaceDetector, load_interpreter_class
from inference_service.domain import Detection, ModelOutput
from inference_service.errors import ModelNotReadyError
from inference_service.images.decoder import decode_image

MODEL_SHA256 = "2c46b4b60667d11b91adc14074e6196a1ef1d2dbdbabdc65b3bfa18f78de4866"
MAX_PIXELS = 40_000_000


@pytest.fixture(scope="module", params=["litert", "tensorflow"])
def detector(request: pytest.FixtureRequest, model_path: Path) -> Iterator[TFLiteFaceDetector]:
    """The detector on each TFLite runtime: both must give the reference detections."""
    detector = TFLiteFaceDetector(model_path, runtime=request.param)
    detector.warm_up()
    yield detector
    detector.close()


@pytest.mark.parametrize(
    ("runtime", "module"),
    [("litert", "ai_edge_litert"), ("tensorflow", "tensorflow"), ("auto", "ai_edge_litert")],
)
def test_runtime_selects_the_interpreter_package(runtime: str, module: str) -> None:
    assert load_interpreter_class(runtime).__module__.startswith(module)


def load(images_dir: Path, name: str) -> np.ndarray:
    return decode_image((images_dir / name).read_bytes(), max_pixels=MAX_PIXELS)


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def as_rows(detections: Sequence[Detection]) -> list[tuple[float, float, float, float, float]]:
    return [(d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max, d.score) for d in detections]


def test_info_names_the_model_and_its_hash(detector: TFLiteFaceDetector) -> None:
    assert detector.info.name == "face-detector"
    assert detector.info.version == MODEL_SHA256


def test_exif_orientation_gives_the_rotated_pixels(
    detector: TFLiteFaceDetector, images_dir: Path, reference: dict[str, Any]
) -> None:
    upright = load(images_dir, "face-1.jpg")
    stored = Image.fromarray(np.rot90(upright, k=1))  # stored turned left ...
    exif = stored.getexif()
    exif[0x0112] = 6  # ... and tagged "rotate 90 degrees clockwise to display"
    decoded = decode_image(encode(stored, exif=exif), max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(decoded, upright)
    output = detector.detect(decoded)
    assert (output.image_width, output.image_height) == (720, 478)
    expected = reference["images"]["face-1.jpg"]["boxes"]
    assert mismatches(as_rows(output.detections), expected, min_iou=MIN_IOU) == []


def test_exif_orientation_in_jpeg(
    detector: TFLiteFaceDetector, images_dir: Path, reference: dict[str, Any]
) -> None:
    upright = Image.fromarray(load(images_dir, "face-3.jpg"))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # turned left
    exif = stored.getexif()
    exif[0x0112] = 6
    content = encode(stored, "JPEG", quality=95, exif=exif)
    raw = np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))
    decoded = decode_image(content, max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(decoded, np.rot90(raw, k=-1))
    output = detector.detect(decoded)
    assert output == detector.detect(np.ascontiguousarray(np.rot90(raw, k=-1)))
    assert (output.image_width, output.image_height) == upright.size
    expected = reference["images"]["face-3.jpg"]["boxes"]
    assert mismatches(as_rows(output.detections), [box[:4] for box in expected], min_iou=0.8) == []


@pytest.mark.parametrize("variant", ["L", "LA", "RGBA", "P", "I;16"])
def test_other_modes_still_find_the_faces(
    detector: TFLiteFaceDetector, images_dir: Path, reference: dict[str, Any], variant: str
) -> None:
    source = Image.fromarray(load(images_dir, "face-3.jpg"))
    if variant == "I;16":
        grey = np.asarray(source.convert("L")).astype(np.uint16) * 257
        image = Image.fromarray(grey)
    else:
        image = source.convert(variant)
    content = encode(image)
    assert Image.open(io.BytesIO(content)).mode == variant
    output = detector.detect(decode_image(content, max_pixels=MAX_PIXELS))
    expected = reference["images"]["face-3.jpg"]["boxes"]
    assert mismatches(as_rows(output.detections), [box[:4] for box in expected], min_iou=0.8) == []


def test_alpha_and_16_bit_lose_nothing(detector: TFLiteFaceDetector, images_dir: Path) -> None:
    rgb = load(images_dir, "face-1.jpg")
    source = Image.fromarray(rgb)
    rgba = decode_image(encode(source.convert("RGBA")), max_pixels=MAX_PIXELS)
    assert detector.detect(rgba) == detector.detect(rgb)
    grey = np.asarray(source.convert("L"))
    sixteen = decode_image(
        encode(Image.fromarray(grey.astype(np.uint16) * 257)), max_pixels=MAX_PIXELS
    )
    assert detector.detect(sixteen) == detector.detect(np.repeat(grey[:, :, None], 3, axis=2))


def test_concurrent_detects_match_serial(
    detector: TFLiteFaceDetector, images_dir: Path, reference: dict[str, Any]
) -> None:
    images = [load(images_dir, name) for name in reference["images"]] * 2
    serial = [detector.detect(image) for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel: list[ModelOutput] = list(pool.map(detector.detect, images))
    assert parallel == serial
    assert sum(len(output.detections) for output in serial) > 100


def test_closed_detector_refuses_work(model_path: Path) -> None:
    detector = TFLiteFaceDetector(model_path, name="other", score_threshold=0.9)
    assert detector.info.name == "other"
    image = np.zeros((240, 320, 3), dtype=np.uint8)
    assert detector.detect(image).detections == ()
    detector.close()
    with pytest.raises(ModelNotReadyError):
        detector.detect(image)
