"""Which encoded images the service accepts, and what content is, from its first bytes.

``SIGNATURES`` is the one magic-bytes table: it names the content type that an invocation
stores (``sniff_content_type``) and says, in the error of content that cannot be opened, whether
it is a supported format with a corrupt header or a format that is never decoded (such content
is never handed to its Pillow plugin).
"""

from __future__ import annotations

import dataclasses

SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
"""Pillow formats that are decoded (MPO, a JPEG with extra pictures, comes in as JPEG)."""

SUPPORTED_NAMES = "JPEG, PNG, GIF, BMP, TIFF, WebP"
UNDECODABLE = "input.content is not a decodable image"
OCTET_STREAM = "application/octet-stream"


@dataclasses.dataclass(frozen=True, slots=True)
class Signature:
    """The first bytes of one format."""

    name: str
    """The format's name, as messages write it."""
    mime: str | None
    """Its MIME type; ``None`` for a format that is recognised but never decoded."""
    magic: bytes
    """The bytes it starts with."""
    riff_form: bytes = b""
    """For a RIFF container: the form type at byte 8 (``WEBP``)."""

    def matches(self, content: bytes) -> bool:
        if not content.startswith(self.magic):
            return False
        return not self.riff_form or content[8 : 8 + len(self.riff_form)] == self.riff_form


SIGNATURES = (
    Signature("JPEG", "image/jpeg", b"\xff\xd8\xff"),
    Signature("PNG", "image/png", b"\x89PNG\r\n\x1a\n"),
    Signature("GIF", "image/gif", b"GIF87a"),
    Signature("GIF", "image/gif", b"GIF89a"),
    Signature("BMP", "image/bmp", b"BM"),
    Signature("TIFF", "image/tiff", b"II*\x00"),
    Signature("TIFF", "image/tiff", b"MM\x00*"),
    Signature("WebP", "image/webp", b"RIFF", riff_form=b"WEBP"),
    Signature("PSD", None, b"8BPS"),
    Signature("PDF", None, b"%PDF"),
    Signature("ICO", None, b"\x00\x00\x01\x00"),
    Signature("ICNS", None, b"icns"),
    Signature("JPEG 2000", None, b"\x00\x00\x00\x0cjP  "),
    Signature("JPEG 2000", None, b"\xff\x4f\xff\x51"),
    Signature("OpenEXR", None, b"\x76\x2f\x31\x01"),
    Signature("DDS", None, b"DDS "),
    Signature("QOI", None, b"qoif"),
    Signature("SVG", None, b"<svg"),
    Signature("XML", None, b"<?xml"),
)
"""Supported formats first (with a MIME type), then formats that are recognised, never decoded."""


def signature_of(content: bytes) -> Signature | None:
    """The first signature of ``SIGNATURES`` that ``content`` matches."""
    return next((signature for signature in SIGNATURES if signature.matches(content)), None)


def sniff_content_type(content: bytes) -> str:
    """The MIME type of an encoded image from its magic bytes (``application/octet-stream``
    for anything else)."""
    signature = signature_of(content)
    if signature is None or signature.mime is None:
        return OCTET_STREAM
    return signature.mime


def unopenable_message(content: bytes) -> str:
    """The client-safe message for content that Pillow cannot open: a corrupt header of a
    supported format, a format that is not accepted, or not an image."""
    signature = signature_of(content)
    if signature is None:
        return UNDECODABLE
    if signature.mime is not None:
        return f"{UNDECODABLE} (corrupt or unsupported {signature.name} header)"
    return (
        f"input.content is in the {signature.name} format, which is not accepted; the supported "
        f"formats are {SUPPORTED_NAMES}"
    )
