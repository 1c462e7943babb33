"""Fixtures of the model tests, loaded as a pytest plugin by ``tests/conftest.py``:

* ``saved_model_dir``: RFB-320 rebuilt in Keras, the upstream TF checkpoint restored into it and
  exported as a SavedModel, once per session, into a temporary folder (TensorFlow: ~10 s);
* ``s3_server``: a local S3-compatible server (moto's server mode) on a free loopback port,
  with fake credentials in the environment for the session; ``s3_bucket`` makes a bucket;
* ``models_toml``: writes a model configuration file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.process import free_port

RFB_TFLITE = "models/tflite/version-RFB-320_without_postprocessing.tflite"
SLIM_TFLITE = "models/tflite/version-slim-320_without_postprocessing.tflite"
RFB_ONNX = "models/onnx/version-RFB-320.onnx"
RFB_ONNX_RAW = "models/onnx/version-RFB-320_without_postprocessing.onnx"
RFB_CHECKPOINT = "models/tf-checkpoint/RFB-320"
RFB_SHA256 = "2c46b4b60667d11b91adc14074e6196a1ef1d2dbdbabdc65b3bfa18f78de4866"
SLIM_SHA256 = "d0088834c6b68490291f308ff2d388ee83954eac10856abd90e29c7cd9d186fc"
# The models of the e2e stack: every runtime the servers ship, each from the shared folder (the
# SavedModel exported from the upstream checkpoint for the session). RFB-320 on TFLite is the
# default, as without a configuration.
E2E_MODELS = {
    "ultraface-rfb-320": {
        "source": RFB_TFLITE,
        "aliases": ["face-detector"],
        "default": True,
    },
    "ultraface-slim-320": {
        "source": SLIM_TFLITE,
    },
    "ultraface-rfb-320-onnx": {"runtime": "onnx", "source": RFB_ONNX},
    "ultraface-rfb-320-savedmodel": {"runtime": "savedmodel", "source": "<savedmodel>"},
}


S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def saved_model_dir(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The RFB-320 SavedModel exported from the upstream checkpoint (once per session)."""
    from inference_service.export.keras_rfb import export_saved_model

    out = tmp_path_factory.mktemp("savedmodel") / "rfb-320"
    return export_saved_model(shared_dir / RFB_CHECKPOINT, out)


class S3Server:
    """moto's S3-compatible server on 127.0.0.1, and a boto3 client of it."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")

    def bucket(self) -> str:
        name = f"models-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, path: Path) -> str:
        self.client().upload_file(str(path), bucket, key)
        return f"s3://{bucket}/{key}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A local S3 server for the session; fake AWS credentials in the environment (the
    servers the tests start inherit them)."""
    saved = {name: os.environ.get(name) for name in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_models_toml(path: Path, models: list[dict[str, Any]], default: str | None = None) -> Path:
    """Write a model configuration (TOML) of ``models`` (each a dict of ``ModelSpec`` fields)."""
    lines = [] if default is None else [f"default = {toml_value(default)}", ""]
    for model in models:
        lines.append("[[models]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in model.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path
