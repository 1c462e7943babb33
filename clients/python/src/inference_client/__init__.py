"""The Python client of the face-detection inference service: ``Client`` (the library) and the
``inference-client`` CLI (``inference_client.cli``) built on it. Not used by the server."""

from inference_client.client import Client

__all__ = ["Client"]
