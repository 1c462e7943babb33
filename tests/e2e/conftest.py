"""End-to-end fixtures: ONE real stack (gRPC server + Envoy) on the session's Cassandra.

The stack (``e2e_stack``) is started once for the ``tests/e2e`` package and reuses the
Cassandra of ``cassandra_endpoint`` (its keyspace and schema), so no second node is started.
Tests talk to it through Envoy: REST/JSON (``api``) or native gRPC (``channel``); the limit tests
also straight to a server (``direct_channel``).

Tests that stop the stack's servers are marked ``stops_servers``; they are moved after every
other e2e test, and the ``stack`` fixture restarts stopped servers should a test still need
them afterwards (e.g. under a plugin that reorders tests).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.http import RestClient
from support.model_fixtures import E2E_MODELS, write_models_toml
from support.stacks import stack_settings
from test_limits import check_png, noise_png, png_of_size

from devstack.process import pid_alive
from devstack.stack import LocalStack
from inference_service.limits import RequestLimits
from inference_service.stores.cassandra import CassandraConfig

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
STOPS_SERVERS = "stops_servers"
# Two servers behind Envoy (ports `port` and `port + 1`): Envoy round-robins between them, so a
# read often lands on another process than the write, and one server can be stopped while the
# other still serves.
SERVER_PROCESSES = 2
# The client's limit for native gRPC calls: larger than the server's and Envoy's (about 9.1 and
# 12.1 MiB by default), so that only those are tested.
GRPC_MESSAGE_LIMIT = 32 * 1024 * 1024


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{STOPS_SERVERS}: the test stops the e2e stack's gRPC servers (runs after the other "
        "e2e tests)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move the e2e tests that stop the servers right after the last other e2e test."""
    ours = [item for item in items if item.path.is_relative_to(HERE)]
    last = [item for item in ours if item.get_closest_marker(STOPS_SERVERS)]
    if not last:
        return
    others = [item for item in ours if not item.get_closest_marker(STOPS_SERVERS)]
    if not others:
        return
    for item in last:
        items.remove(item)
    position = items.index(others[-1]) + 1
    items[position:position] = last


@pytest.fixture(scope="package")
def e2e_models_file(
    shared_dir: Path, saved_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    models = []
    for name, fields in E2E_MODELS.items():
        source = fields["source"]
        source = str(saved_model_dir if source == "<savedmodel>" else shared_dir / source)
        models.append({"name": name, **fields, "source": source})
    return write_models_toml(tmp_path_factory.mktemp("e2e-models") / "models.toml", models)


@pytest.fixture(scope="package")
def e2e_stack(
    cassandra_endpoint: CassandraConfig,
    shared_dir: Path,
    e2e_models_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalStack]:
    """``SERVER_PROCESSES`` servers and Envoy on free ports, storing in the session's keyspace,
    serving ``E2E_MODELS``."""
    settings = stack_settings(
        cassandra_endpoint,
        shared_dir,
        tmp_path_factory.mktemp("e2e-stack"),
        server_processes=SERVER_PROCESSES,
        models_file=e2e_models_file,
    )
    stack = LocalStack(settings, repo_root=REPO_ROOT, base_env=os.environ)
    assert stack.cassandra is None, "the e2e stack must reuse the session's Cassandra"
    stack.start()
    pids = [pid for pid in (stack.envoy.pid, *(s.pid for s in stack.servers)) if pid]
    logger.info("e2e stack up: REST %s, servers %s", stack.rest_url, pids)
    try:
        yield stack
    finally:
        stack.stop()
        pids += [s.pid for s in stack.servers if s.pid and s.pid not in pids]
        left = [pid for pid in pids if pid_alive(pid)]
        assert not left, f"processes of the e2e stack still run: {left}"


@pytest.fixture
def stack(e2e_stack: LocalStack) -> LocalStack:
    """The e2e stack with its servers running (a server stopped by an earlier test is
    started again)."""
    for server in e2e_stack.servers:
        if server.poll() is not None:
            logger.warning("restarting stopped server %s", server.address)
            server.start()
    return e2e_stack


@pytest.fixture
def api(stack: LocalStack) -> RestClient:
    """REST/JSON client of the running stack."""
    return RestClient(stack.envoy.listen_host, stack.envoy.listen_port)


@pytest.fixture
def channel(stack: LocalStack) -> Iterator[grpc.Channel]:
    """A native gRPC channel to the stack, through Envoy's public listener."""
    limits = [
        ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
        ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
    ]
    with grpc.insecure_channel(stack.grpc_target, options=limits) as chan:
        yield chan


@pytest.fixture
def internal_channel(stack: LocalStack) -> Iterator[grpc.Channel]:
    """A native gRPC channel to Envoy's internal (loopback) listener: health and reflection."""
    with grpc.insecure_channel(stack.internal_target) as chan:
        yield chan


@pytest.fixture
def direct_channel(stack: LocalStack) -> Iterator[grpc.Channel]:
    """A native gRPC channel straight to the first server (not through Envoy)."""
    limits = [
        ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
        ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
    ]
    with grpc.insecure_channel(stack.servers[0].address, options=limits) as chan:
        yield chan


@pytest.fixture(scope="package")
def id_prefix() -> str:
    """A prefix for input ids unique to this run: the keyspace is shared with other suites."""
    return f"e2e-{uuid.uuid4().hex[:8]}"


# -- the content limit, shared by the limit and upload tests (made once: about 8 MiB each) ------


@pytest.fixture(scope="package")
def limits(e2e_stack: LocalStack) -> RequestLimits:
    """The limits of the stack's servers (and of its Envoy, rendered from the same settings)."""
    return RequestLimits.from_settings(e2e_stack.settings)


@pytest.fixture(scope="package")
def noise(limits: RequestLimits) -> bytes:
    return noise_png(limits.max_content_bytes - 12)


@pytest.fixture(scope="package")
def content_at_limit(limits: RequestLimits, noise: bytes) -> bytes:
    content = png_of_size(noise, limits.max_content_bytes)
    check_png(content)
    return content


@pytest.fixture(scope="package")
def content_over_limit(limits: RequestLimits, noise: bytes) -> bytes:
    content = png_of_size(noise, limits.max_content_bytes + 1)
    check_png(content)
    return content
