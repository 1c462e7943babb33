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

import pytest

from inference_service.devstack.cassandra import LocalCassandra, default_root
from inference_service.devstack.process import free_port
from inference_service.settings import Settings
from inference_service.stores.cassandra import CassandraConfig, build_cluster
from inference_service.stores.cassandra_schema import create_schema

START_TIMEOUT_S = 180.0
TESTCONTAINERS_IMAGE = "cassandra:5.0"


@contextlib.contextmanager
def _external_cluster() -> Iterator[CassandraConfig]:
    # The service's own settings parse INFERENCE_CASSANDRA_* (hosts, port, DC, credentials).
    yield CassandraConfig.from_settings(Settings())


@contextlib.contextmanager
def _testcontainer() -> Iterator[CassandraConfig]:
    from testcontainers.community.cassandra import CassandraContainer

    with CassandraContainer(TESTCONTAINERS_IMAGE) as container:
        ((host, port),) = container.get_contact_points()
        yield CassandraConfig(
            contact_points=(host,), port=port, local_dc=container.get_local_datacenter()
        )


@contextlib.contextmanager
def _local_node() -> Iterator[CassandraConfig]:
    node = LocalCassandra()
    started = node.start(timeout=START_TIMEOUT_S)
    try:
        yield CassandraConfig(contact_points=(node.host,), port=node.native_port)
    finally:
        if started:  # a node that ran before the session keeps running
            node.stop()


@pytest.fixture(scope="session")
def cassandra_endpoint() -> Iterator[CassandraConfig]:
    """A running Cassandra with a fresh keyspace (schema created) for this session, as the
    store's config (``create_schema`` off: the schema is there)."""
    if os.environ.get("INFERENCE_CASSANDRA_CONTACT_POINTS"):
        source = _external_cluster()
    elif os.environ.get("INFERENCE_TEST_CASSANDRA") == "testcontainers":
        source = _testcontainer()
    else:
        source = _local_node()
    with source as server:
        config = dataclasses.replace(
            server, keyspace=f"it_{uuid.uuid4().hex[:12]}", create_schema=False
        )
        cluster = build_cluster(config)
        try:
            session = cluster.connect()
            create_schema(session, config.keyspace, config.replication, 0)
            yield config
            session.execute(f"DROP KEYSPACE IF EXISTS {config.keyspace}", timeout=60)
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
