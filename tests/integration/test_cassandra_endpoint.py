"""Which Cassandra the session's tests run against (``cassandra_endpoint``): with
``INFERENCE_TEST_CASSANDRA=testcontainers``, a container of the project's image (``make
test-testcontainers``), never the local dev node."""

from __future__ import annotations

import os
import subprocess

import pytest
from support.cassandra_fixtures import TESTCONTAINERS_IMAGE, cassandra_image_for_testcontainers

from inference_service.stores.cassandra import CassandraConfig


@pytest.mark.skipif(
    os.environ.get("INFERENCE_TEST_CASSANDRA") != "testcontainers"
    or bool(os.environ.get("INFERENCE_CASSANDRA_CONTACT_POINTS")),
    reason="runs in the testcontainers path (make test-testcontainers)",
)
def test_the_endpoint_is_a_container_of_the_projects_image(
    cassandra_endpoint: CassandraConfig,
) -> None:
    image = cassandra_image_for_testcontainers()
    running = subprocess.run(
        ["docker", "ps", "--filter", f"ancestor={image}", "--format", "{{.ID}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(running) >= 1, f"no running container of {image}"
    assert cassandra_endpoint.port != 9042  # not the dev node
    if image == TESTCONTAINERS_IMAGE:
        return  # the official image: a mapped port, on a bridge network
    ports = subprocess.run(
        ["docker", "inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", *running],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"CASSANDRA_NATIVE_PORT={cassandra_endpoint.port}" in ports  # on the host network
