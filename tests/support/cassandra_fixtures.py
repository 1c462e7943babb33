"""Fixtures for tests that need a real Cassandra (integration, e2e) and a keyspace of their own.

Loaded as a pytest plugin by ``tests/conftest.py``.

Which Cassandra (``cassandra_endpoint``), in this order:

* ``INFERENCE_CASSANDRA_CONTACT_POINTS`` set: that cluster (with ``INFERENCE_CASSANDRA_PORT``,
  ``_LOCAL_DC``, ``_USERNAME``, ``_PASSWORD``); nothing is started.
* ``INFERENCE_TEST_CASSANDRA=testcontainers``: a ``cassandra:5.0`` container (needs Docker).
* otherwise the local dev node (``LocalCassandra``, ``build/cassandra``): reused when it runs,
  else started, and then stopped at the end of the session.

Each session works in a keyspace of its own (``it_<random>``), dropped at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from inference_service.devstack.cassandra import LocalCassandra, default_root
from inference_service.devstack.process import free_port
from inference_service.stores.cassandra import CassandraConfig, build_cluster, create_schema

START_TIMEOUT_S = 180.0
TESTCONTAINERS_IMAGE = "cassandra:5.0"


@dataclasses.dataclass(frozen=True)
class CassandraEndpoint:
    """Where the tests' Cassandra is, and the keyspace this session owns there."""

    contact_points: tuple[str, ...]
    port: int
    local_dc: str
    keyspace: str
    username: str | None = None
    password: str | None = None
    replication: str = "{'class': 'SimpleStrategy', 'replication_factor': 1}"

    def config(self, **overrides: Any) -> CassandraConfig:
        """A store config for this endpoint; ``overrides`` replace any of its fields."""
        base = CassandraConfig(
            contact_points=self.contact_points,
            port=self.port,
            local_dc=self.local_dc,
            keyspace=self.keyspace,
            username=self.username,
            password=self.password,
            replication=self.replication,
            create_schema=False,
        )
        return dataclasses.replace(base, **overrides)


@contextlib.contextmanager
def _external_cluster() -> Iterator[CassandraEndpoint]:
    hosts = os.environ["INFERENCE_CASSANDRA_CONTACT_POINTS"]
    yield CassandraEndpoint(
        contact_points=tuple(host.strip() for host in hosts.split(",") if host.strip()),
        port=int(os.environ.get("INFERENCE_CASSANDRA_PORT", "9042")),
        local_dc=os.environ.get("INFERENCE_CASSANDRA_LOCAL_DC", "datacenter1"),
        keyspace="",
        username=os.environ.get("INFERENCE_CASSANDRA_USERNAME") or None,
        password=os.environ.get("INFERENCE_CASSANDRA_PASSWORD") or None,
        replication=os.environ.get(
            "INFERENCE_CASSANDRA_REPLICATION", CassandraEndpoint.replication
        ),
    )


@contextlib.contextmanager
def _testcontainer() -> Iterator[CassandraEndpoint]:
    from testcontainers.community.cassandra import CassandraContainer

    with CassandraContainer(TESTCONTAINERS_IMAGE) as container:
        ((host, port),) = container.get_contact_points()
        yield CassandraEndpoint(
            contact_points=(host,),
            port=port,
            local_dc=container.get_local_datacenter(),
            keyspace="",
        )


@contextlib.contextmanager
def _local_node() -> Iterator[CassandraEndpoint]:
    node = LocalCassandra()
    started = node.start(timeout=START_TIMEOUT_S)
    try:
        yield CassandraEndpoint(
            contact_points=(node.host,), port=node.native_port, local_dc="datacenter1", keyspace=""
        )
    finally:
        if started:  # a node that ran before the session keeps running
            node.stop()


@pytest.fixture(scope="session")
def cassandra_endpoint() -> Iterator[CassandraEndpoint]:
    """A running Cassandra with a fresh keyspace (schema created) for this session."""
    if os.environ.get("INFERENCE_CASSANDRA_CONTACT_POINTS"):
        source = _external_cluster()
    elif os.environ.get("INFERENCE_TEST_CASSANDRA") == "testcontainers":
        source = _testcontainer()
    else:
        source = _local_node()
    with source as server:
        endpoint = dataclasses.replace(server, keyspace=f"it_{uuid.uuid4().hex[:12]}")
        config = endpoint.config()
        cluster = build_cluster(config)
        try:
            session = cluster.connect()
            create_schema(session, endpoint.keyspace, config.replication, 0)
            yield endpoint
            session.execute(f"DROP KEYSPACE IF EXISTS {endpoint.keyspace}", timeout=60)
        finally:
            cluster.shutdown()


@pytest.fixture(scope="module")
def outage_cassandra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCassandra]:
    """A second local node of its own (fresh data in a temporary folder, free ports) to stop
    and start. It shares the jars of the dev node. Costs one node start (plus restarts)."""
    if shutil.which("java") is None:
        pytest.skip("needs Java 17 to run a local Cassandra node")
    node = LocalCassandra(
        tmp_path_factory.mktemp("cassandra-outage"),
        native_port=free_port(),
        storage_port=free_port(),
        dist_dir=default_root() / "dist",
    )
    started = time.monotonic()
    node.start(timeout=START_TIMEOUT_S)
    print(f"outage node up in {time.monotonic() - started:.1f}s")
    try:
        yield node
    finally:
        node.stop()
