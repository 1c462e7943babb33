"""Encoded images: which formats are accepted and what content is (``formats``), the checks of
an image's header against the pixel and decode-memory limits (``decoder``, ``memory``), and its
decoding to an RGB array for the models (``decoder``, ``rgb``). The checks of an Invoke's input
before its image is read (id, content size, metadata) are in ``validation``.
"""

from inference_service.images.decoder import (
    ImageHeader,
    PillowImageDecoder,
    decode_image,
    inspect_image,
)
from inference_service.images.formats import SUPPORTED_FORMATS, sniff_content_type

__all__ = [
    "SUPPORTED_FORMATS",
    "ImageHeader",
    "PillowImageDecoder",
    "decode_image",
    "inspect_image",
    "sniff_content_type",
]
