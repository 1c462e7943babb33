"""Face detection: image decoding, preprocessing, the TFLite model, and box postprocessing."""

from inference_service.detection.image import decode_image
from inference_service.detection.model_source import (
    HttpModelSource,
    LocalFileModelSource,
    ModelFetchError,
    default_model_source,
)
from inference_service.detection.postprocessing import FaceBoxDecoder
from inference_service.detection.preprocessing import Preprocessor
from inference_service.detection.tflite import TFLiteFaceDetector

__all__ = [
    "FaceBoxDecoder",
    "HttpModelSource",
    "LocalFileModelSource",
    "ModelFetchError",
    "Preprocessor",
    "TFLiteFaceDetector",
    "decode_image",
    "default_model_source",
]
