"""Fixtures for tests that need a real Cassandra (integration, e2e) and a keyspace of their own.

Loaded as a pytest plugin by ``tests/conftest.py``.

Which Cassandra (``cassandra_endpoint``), in this order:

* ``INFERENCE_CASSANDRA_CONTACT_POINTS`` set: that cluster (with ``INFERENCE_CASSANDRA_PORT``,
  ``_LOCAL_DC``, ``_USERNAME``, ``_PASSWORD``); nothing is started.
* ``INFERENCE_TEST_CASSANDRA=testcontainers``: a Cassandra container (needs Docker): the image
  of ``make docker-images`` on the host's network where it was built (no registry needed), else
  the official ``cassandra:5.0`` with a mapped port; ``INFERENCE_TEST_CASSANDRA_IMAGE`` picks one.
* otherwise the local dev node (``LocalCassandra``, ``build/cassandra``): reused when it runs,
  else started, and then stopped at the end of the session.

Each session works in a keyspace of its own (``it_<random>``), dropped at the end.

Tests that stop or kill nodes get nodes of their own: ``outage_cassandra`` (one node) and
``cassandra_cluster`` (three nodes on 127.0.0.1..3), on free ports in temporary folders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest

from devstack.cassandra import (
    LocalCassandra,
    LocalCassandraCluster,
    cql_answers,
    default_root,
)
from devstack.docker import CASSANDRA_IMAGE, image_exists, wait_for_image_build
from devstack.process import free_port
from inference_service.settings import Settings
from inference_service.stores.cassandra import CassandraConfig, build_cluster
from inference_service.stores.cassandra.schema import create_schema

START_TIMEOUT_S = 180.0
CLUSTER_NODES = 3
CLUSTER_HOSTS = tuple(f"127.0.0.{index}" for index in range(1, CLUSTER_NODES + 1))
DEV_NODE_PORTS = (9042, 7000)  # the dev node's (also another worktree's): never used by a test
TESTCONTAINERS_IMAGE = "cassandra:5.0"


@contextlib.contextmanager
def _external_cluster() -> Iterator[CassandraConfig]:
    # The service's own settings parse INFERENCE_CASSANDRA_* (hosts, port, DC, credentials).
    yield CassandraConfig.from_settings(Settings())


def cassandra_image_for_testcontainers() -> str:
    """The image of the testcontainers path: ``INFERENCE_TEST_CASSANDRA_IMAGE``, else the one of
    ``make docker-images`` when it is there (once a build of it that still runs has ended),
    else the official ``cassandra:5.0``."""
    wait_for_image_build(timeout=1800)  # e.g. CI's `make docker-images` in the background
    return os.environ.get("INFERENCE_TEST_CASSANDRA_IMAGE") or (
        CASSANDRA_IMAGE if image_exists(CASSANDRA_IMAGE) else TESTCONTAINERS_IMAGE
    )


@contextlib.contextmanager
def _testcontainer() -> Iterator[CassandraConfig]:
    """A Cassandra container (testcontainers): the image of ``INFERENCE_TEST_CASSANDRA_IMAGE``,
    else the locally built one of ``make docker-images`` when it is there, else the official
    ``cassandra:5.0`` (from a registry, on a bridge network with a mapped port)."""
    image = cassandra_image_for_testcontainers()
    if image == TESTCONTAINERS_IMAGE:
        from testcontainers.community.cassandra import CassandraContainer

        with CassandraContainer(image) as container:
            ((host, port),) = container.get_contact_points()
            yield CassandraConfig(
                contact_points=(host,), port=port, local_dc=container.get_local_datacenter()
            )
        return
    with _host_network_container(image) as port:
        yield CassandraConfig(contact_points=("127.0.0.1",), port=port)


@contextlib.contextmanager
def _host_network_container(image: str) -> Iterator[int]:
    """The project's Cassandra image on the host's network (where no bridge network may be
    made, mapped ports don't exist), listening on free ports of 127.0.0.1; yields the CQL port.

    Testcontainers' reaper (Ryuk) is an image from a registry: it is turned off here unless
    ``TESTCONTAINERS_RYUK_DISABLED`` says otherwise, and the container is removed on exit."""
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    if "TESTCONTAINERS_RYUK_DISABLED" not in os.environ:
        testcontainers_config.ryuk_disabled = True
    port = free_port_on(("127.0.0.1",))
    storage_port = free_port_on(("127.0.0.1",), exclude=(port,))
    container = (
        DockerContainer(image)
        .with_kwargs(network_mode="host")
        .with_env("CASSANDRA_LISTEN_ADDRESS", "127.0.0.1")
        .with_env("CASSANDRA_NATIVE_PORT", str(port))
        .with_env("CASSANDRA_STORAGE_PORT", str(storage_port))
    )
    with container:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not cql_answers("127.0.0.1", port, timeout=2.0):
            container.get_wrapped_container().reload()
            status = container.get_wrapped_container().status
            if status != "running" or time.monotonic() > deadline:
                stdout, stderr = container.get_logs()
                pytest.fail(
                    f"Cassandra container ({image}) {status}, CQL on 127.0.0.1:{port} does not "
                    f"answer:\n{(stdout + stderr).decode(errors='replace')[-3000:]}"
                )
            time.sleep(0.5)
        yield port


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


@pytest.fixture(scope="module")
def erasure_cassandra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCassandra]:
    """A node of its own, as ``outage_cassandra``, that also serves JMX on a loopback port, so
    that ``nodetool`` (``node.nodetool_command()``) can flush and compact it, and whose files
    (data, commit log, hints, saved caches) a test may scan."""
    if shutil.which("java") is None:
        pytest.skip("needs Java 17 to run a local Cassandra node")
    native_port = free_port()
    storage_port = free_port_on(("127.0.0.1",), exclude=(native_port,))
    node = LocalCassandra(
        tmp_path_factory.mktemp("cassandra-erasure"),
        native_port=native_port,
        storage_port=storage_port,
        jmx_port=free_port_on(("127.0.0.1",), exclude=(native_port, storage_port)),
        dist_dir=default_root() / "dist",
    )
    node.start(timeout=START_TIMEOUT_S)
    try:
        yield node
    finally:
        node.stop()


def free_port_on(hosts: Sequence[str], *, exclude: Sequence[int] = (), attempts: int = 50) -> int:
    """A TCP port that is free right now on every one of ``hosts``, not in ``exclude`` nor one
    of the dev node's ports."""
    for _ in range(attempts):
        port = free_port(hosts[0])
        if port in exclude or port in DEV_NODE_PORTS:
            continue
        with contextlib.ExitStack() as held:
            try:
                for host in hosts:
                    sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no port free on all of {', '.join(hosts)}")


def _loopback_aliases_usable(hosts: Sequence[str]) -> bool:
    """True when a socket can bind to each of ``hosts`` (Linux routes all of 127/8 to ``lo``;
    other systems need aliases, e.g. ``ifconfig lo0 alias 127.0.0.2`` on macOS)."""
    for host in hosts:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, 0))
            except OSError:
                return False
    return True


@pytest.fixture(scope="module")
def cassandra_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalCassandraCluster]:
    """A local cluster of its own: three nodes on 127.0.0.1..3 (fresh data in a temporary
    folder, the same free ports on each address) to kill and restart nodes of. It shares the
    jars of the dev node. Costs three node starts, one after the other; stopped at the end."""
    if shutil.which("java") is None:
        pytest.skip("needs Java 17 to run local Cassandra nodes")
    if not _loopback_aliases_usable(CLUSTER_HOSTS):
        pytest.skip(f"needs the loopback addresses {', '.join(CLUSTER_HOSTS)}")
    native_port = free_port_on(CLUSTER_HOSTS)
    cluster = LocalCassandraCluster(
        CLUSTER_NODES,
        tmp_path_factory.mktemp("cassandra-cluster"),
        native_port=native_port,
        storage_port=free_port_on(CLUSTER_HOSTS, exclude=[native_port]),
        dist_dir=default_root() / "dist",
    )
    try:
        started = time.monotonic()
        cluster.start(timeout=START_TIMEOUT_S)
        print(f"{CLUSTER_NODES}-node cluster up in {time.monotonic() - started:.1f}s")
        yield cluster
    finally:
        cluster.stop()
