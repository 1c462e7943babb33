"""The detector contract, the same for every runtime: TFLite on LiteRT and on tf.lite, the
SavedModel exported from the upstream checkpoint on TensorFlow, both upstream ONNX models on
ONNX Runtime, and a custom Python detector (OpenCV DNN) plugged in by import path. Each is made
by the model loader from a model configuration, as a server makes it, and must find the
upstream detections of every shared image (``images/reference.json``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.model_fixtures import RFB_ONNX, RFB_ONNX_RAW, RFB_SHA256, RFB_TFLITE, SLIM_TFLITE
from support.reference import MIN_IOU, iou, mismatches

from inference_service.artifacts import file_sha256, tree_sha256
from inference_service.domain import Detection, ModelOutput
from inference_service.errors import ModelNotReadyError
from inference_service.images.decoder import decode_image
from inference_service.models.config import ModelSpec
from inference_service.models.loader import LoadOptions, load_model
from inference_service.models.registry import LoadedModel

MAX_PIXELS = 40_000_000

# id: (model configuration fields, expected runtime)
RUNTIMES: dict[str, tuple[dict[str, Any], str]] = {
    "tflite-litert": (
        {"runtime": "tflite", "source": RFB_TFLITE, "interpreter": "litert"},
        "tflite/litert",
    ),
    "tflite-tensorflow": (
        {"runtime": "tflite", "source": RFB_TFLITE, "interpreter": "tensorflow"},
        "tflite/tensorflow",
    ),
    "savedmodel": ({"runtime": "savedmodel", "source": "<savedmodel>"}, "savedmodel/tensorflow"),
    "onnx-decoded": ({"runtime": "onnx", "source": RFB_ONNX}, "onnx/onnxruntime"),
    "onnx-raw": ({"runtime": "onnx", "source": RFB_ONNX_RAW}, "onnx/onnxruntime"),
    "python-opencv-dnn": (
        {
            "runtime": "python",
            "source": RFB_ONNX,
            "detector": "support.custom_detector:opencv_dnn",
        },
        "python/support.custom_detector:opencv_dnn",
    ),
}


def spec_for(kind: str, shared_dir: Path, request: pytest.FixtureRequest) -> ModelSpec:
    fields, _ = RUNTIMES[kind]
    source = fields["source"]
    if source == "<savedmodel>":
        source = str(request.getfixturevalue("saved_model_dir"))
    else:
        source = str(shared_dir / source)
    return ModelSpec(name=f"contract-{kind}", **{**fields, "source": source})


@pytest.fixture(scope="module", params=list(RUNTIMES))
def loaded(
    request: pytest.FixtureRequest, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LoadedModel]:
    spec = spec_for(request.param, shared_dir, request)
    options = LoadOptions(cache_dir=tmp_path_factory.mktemp("cache"))
    model = load_model(spec, options)
    yield model
    model.retire()


def load(images_dir: Path, name: str) -> np.ndarray:
    return decode_image((images_dir / name).read_bytes(), max_pixels=MAX_PIXELS)


def as_rows(detections: Sequence[Detection]) -> list[tuple[float, float, float, float, float]]:
    return [(d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max, d.score) for d in detections]


def test_names_version_and_runtime(loaded: LoadedModel) -> None:
    spec = loaded.spec
    assert spec is not None
    assert loaded.info.name == spec.name
    path = Path(spec.source or "")
    assert loaded.info.version == (tree_sha256(path) if path.is_dir() else file_sha256(path))
    kind = spec.name.removeprefix("contract-")
    assert loaded.description.runtime == RUNTIMES[kind][1]
    if kind.startswith("tflite"):
        assert loaded.info.version == RFB_SHA256


def test_every_reference_image(
    loaded: LoadedModel, images_dir: Path, reference: dict[str, Any]
) -> None:
    detector = loaded.detector
    assert len(reference["images"]) >= 16
    problems = {}
    for name, expected in reference["images"].items():
        output = detector.detect(load(images_dir, name))
        assert (output.image_width, output.image_height) == (expected["width"], expected["height"])
        scores = [d.score for d in output.detections]
        assert scores == sorted(scores, reverse=True), name
        assert all(d.label == "face" and d.score > 0.7 for d in output.detections), name
        if found := mismatches(as_rows(output.detections), expected["boxes"], min_iou=MIN_IOU):
            problems[name] = found
    assert problems == {}


def test_concurrent_detects_match_serial(
    loaded: LoadedModel, images_dir: Path, reference: dict[str, Any]
) -> None:
    images = [load(images_dir, name) for name in list(reference["images"])[:8]] * 2
    serial = [loaded.detector.detect(image) for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel: list[ModelOutput] = list(pool.map(loaded.detector.detect, images))
    assert parallel == serial


def test_small_and_odd_images(loaded: LoadedModel) -> None:
    for shape in [(1, 1, 3), (17, 3, 3), (2000, 31, 3)]:
        output = loaded.detector.detect(np.full(shape, 128, dtype=np.uint8))
        assert (output.image_height, output.image_width) == shape[:2]
        assert output.detections == ()


def test_rejects_arrays_that_are_not_rgb(loaded: LoadedModel) -> None:
    with pytest.raises(ValueError, match="uint8"):
        loaded.detector.detect(np.zeros((10, 10, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        loaded.detector.detect(np.zeros((10, 10, 3), dtype=np.float32))


def test_closed_detector_refuses_work(
    request: pytest.FixtureRequest, shared_dir: Path, tmp_path: Path
) -> None:
    for kind in RUNTIMES:
        model = load_model(spec_for(kind, shared_dir, request), LoadOptions(cache_dir=tmp_path))
        model.retire()  # nobody holds it: closed now
        assert model.closed
        with pytest.raises(ModelNotReadyError):
            model.detector.detect(np.zeros((240, 320, 3), dtype=np.uint8))


def test_slim_finds_the_reference_faces(
    shared_dir: Path, images_dir: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    """The slim model is another network: not the RFB reference boxes exactly, but the same
    faces, mostly (the reference is RFB-320's)."""
    spec = ModelSpec(name="slim", source=str(shared_dir / SLIM_TFLITE))
    model = load_model(spec, LoadOptions(cache_dir=tmp_path))
    try:
        found = expected_total = 0
        for name, expected in reference["images"].items():
            output = model.detector.detect(load(images_dir, name))
            rows = as_rows(output.detections)
            assert all(d.score > 0.7 for d in output.detections)
            expected_total += len(expected["boxes"])
            found += sum(1 for box in expected["boxes"] if any(iou(r, box) > 0.5 for r in rows))
        assert found >= 0.8 * expected_total, (found, expected_total)
    finally:
        model.retire()
