"""The compose stack for real: ``docker compose -f compose.yaml -f compose.airgap.yaml up --wait``
with the images of ``make docker-images`` (host networking, free ports, a project of its own),
torn down with its volumes at the end.

Every test here is marked ``docker``. Without a Docker engine (or without the images) they are
skipped, unless ``INFERENCE_TEST_DOCKER=required`` (CI sets it), which makes that a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.compose_stack import ComposeStack

from devstack.docker import (
    CASSANDRA_IMAGE,
    ENVOY_CONFIG_IMAGE,
    ENVOY_IMAGE,
    SERVER_IMAGE,
    compose_available,
    engine_answers,
    image_exists,
    wait_for_image_build,
)
from devstack.process import free_ports

HERE = Path(__file__).resolve().parent
IMAGE_BUILD_WAIT_S = 1800
PORT_NAMES = ("HTTP", "INTERNAL", "ADMIN", "SERVER", "METRICS", "CQL", "STORAGE")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests here ``docker`` and run them after every other test (CI builds the images
    in the background meanwhile)."""
    ours = [item for item in items if item.path.is_relative_to(HERE)]
    for item in ours:
        item.add_marker(pytest.mark.docker)
        items.remove(item)
    items.extend(ours)


def docker_required() -> bool:
    return os.environ.get("INFERENCE_TEST_DOCKER") == "required"


def skip_or_fail(reason: str) -> None:
    if docker_required():
        pytest.fail(f"{reason} (INFERENCE_TEST_DOCKER=required)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_images() -> None:
    """An engine answers and every image of ``make docker-images`` is there (once a build of
    them that still runs, e.g. CI's in the background, has ended)."""
    wait_for_image_build(timeout=IMAGE_BUILD_WAIT_S)
    if not engine_answers():
        skip_or_fail("no Docker engine answers; run `make docker-images`")
    if not compose_available():
        skip_or_fail("`docker compose` is missing; run `make docker-images`")
    missing = [
        name
        for name in (SERVER_IMAGE, ENVOY_CONFIG_IMAGE, CASSANDRA_IMAGE, ENVOY_IMAGE)
        if not image_exists(name)
    ]
    if missing:
        skip_or_fail(f"images missing: {', '.join(missing)}; run `make docker-images`")


@pytest.fixture(scope="package")
def compose_stack(docker_images: None, shared_dir: Path) -> Iterator[ComposeStack]:
    """The whole stack up and healthy; ``down -v`` at the end (containers and volumes)."""
    first = free_ports(len(PORT_NAMES))
    ports = {name: first + offset for offset, name in enumerate(PORT_NAMES)}
    stack = ComposeStack(f"inference-test-{uuid.uuid4().hex[:8]}", ports, shared_dir)
    try:
        stack.up()
        yield stack
    finally:
        stack.compose("down", "-v", "--timeout", "30", timeout=180, check=False)
