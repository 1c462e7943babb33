"""Two server replicas behind a real Envoy, on the real Cassandra, under a steady Invoke load:
one is killed (SIGKILL) or stopped (SIGTERM) in the middle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FaultReport, InvokeLoad, read_back
from support.stacks import running_two_servers

from devstack.stack import LocalStack
from inference_service.stores.cassandra import CassandraConfig

LEASE_S = 2.0
"""A short claim lease, so that a retry takes over a dead server's claims within its wait."""


@pytest.fixture
def two_servers(
    cassandra_endpoint: CassandraConfig, shared_dir: Path, tmp_path: Path
) -> Iterator[LocalStack]:
    with running_two_servers(
        cassandra_endpoint, shared_dir, tmp_path, claim_lease_s=LEASE_S
    ) as stack:
        yield stack


def test_sigkill_of_a_server_under_load_loses_nothing(
    two_servers: LocalStack, load_images: list[bytes], fault_report: FaultReport
) -> None:
    """Clients retry a failed call with the same id and content: every id ends SUCCEEDED with
    its content, and none stays PENDING (the dead server's claims are taken over)."""
    stack = two_servers
    load = InvokeLoad(stack.grpc_target, load_images, clients=4, retry_s=30).start()
    try:
        load.wait_for_acks(12)
        stack.servers[1].kill()
        load.wait_for_acks(load.acked_count() + 60)
    finally:
        result = load.stop()
    back = read_back(stack.grpc_target, load.result.acked)
    fault_report.add(
        "sigkill one of two servers",
        "4 clients, retry same id",
        "SIGKILL server",
        result,
        back,
    )
    assert result.failed == 0, result.errors
    assert len(result.acked) == result.sent
    assert back.lost == [] and back.pending == []


def test_sigterm_of_a_server_under_load_fails_no_call(
    two_servers: LocalStack, load_images: list[bytes], fault_report: FaultReport
) -> None:
    """A server stopped with SIGTERM says NOT_SERVING, keeps serving until Envoy has taken it
    out of rotation, then drains: no client sees an error (and clients do not retry here)."""
    stack = two_servers
    load = InvokeLoad(stack.grpc_target, load_images, clients=4, retry_s=0).start()
    try:
        load.wait_for_acks(12)
        code = stack.servers[1].stop(grace=30)
        assert code == 0, "the server did not drain and exit cleanly"
        load.wait_for_acks(load.acked_count() + 24)
    finally:
        result = load.stop()
    back = read_back(stack.grpc_target, result.acked)
    fault_report.add(
        "sigterm one of two servers", "4 clients, no retry", "SIGTERM server", result, back
    )
    assert result.failed == 0, result.errors
    assert back.lost == [] and back.pending == []
