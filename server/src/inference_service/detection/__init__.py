"""The face detectors: what every Ultra-Light detector shares (``base``: input checks,
``preprocessing``, box ``postprocessing``) and one module per runtime (``tflite``, ``onnx``,
``savedmodel``, and ``python`` for a detector of your own in Python). Images are decoded
in ``inference_service.images``; model artifacts are fetched and loaded in
``inference_service.models``."""

from inference_service.detection.postprocessing import FaceBoxDecoder
from inference_service.detection.preprocessing import Preprocessor
from inference_service.detection.tflite import TFLiteFaceDetector

__all__ = [
    "FaceBoxDecoder",
    "Preprocessor",
    "TFLiteFaceDetector",
]
