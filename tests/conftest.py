"""Fixtures shared by every test suite: where the shared data lives, and what it holds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

# Real-Cassandra fixtures for the integration, e2e and fault tests; the fuzz tests' hypothesis
# profiles; the model tests' SavedModel export and local S3 server; the time each layer took.
pytest_plugins = (
    "support.cassandra_fixtures",
    "support.hypothesis_profiles",
    "support.layer_timing",
    "support.model_fixtures",
)

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = "models/tflite/version-RFB-320_without_postprocessing.tflite"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared read-only data: ``$INFERENCE_SHARED_DIR``, default ``<repo>/../shared``."""
    path = Path(os.environ.get("INFERENCE_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()
    if not (path / "images" / "reference.json").is_file():
        pytest.fail(f"shared data not found at {path}; set INFERENCE_SHARED_DIR")
    return path


@pytest.fixture(scope="session")
def images_dir(shared_dir: Path) -> Path:
    """Folder of the shared test images."""
    return shared_dir / "images"


@pytest.fixture(scope="session")
def reference(images_dir: Path) -> dict[str, Any]:
    """``images/reference.json``: upstream detections (``[x_min, y_min, x_max, y_max, score]``
    in pixels) of every shared image, under ``["images"][file name]``."""
    return json.loads((images_dir / "reference.json").read_text())


@pytest.fixture(scope="session")
def model_path(shared_dir: Path) -> Path:
    """The default TFLite model (RFB-320 without postprocessing)."""
    path = shared_dir / MODEL_FILE
    if not path.is_file():
        pytest.fail(f"model not found at {path}")
    return path
