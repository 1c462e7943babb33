"""Cassandra down for longer than two minutes under a real server and Envoy: health says
NOT_SERVING and REST answers 503 with a JSON body all along; once Cassandra is back the same
server serves again within seconds, without a restart."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import FaultReport
from support.http import RestClient, assert_status_json
from support.stacks import running_stack, stack_settings

from devstack.cassandra import LocalCassandra, cql_answers
from devstack.server import grpc_serving
from devstack.stack import LocalStack
from inference_service.stores.cassandra import CassandraConfig

OUTAGE_S = 125.0
"""Longer than the driver's old reconnection limit (64 attempts, about a minute)."""
BACK_WITHIN_S = 10.0


@pytest.fixture
def stack_on_outage_node(
    outage_cassandra: LocalCassandra, shared_dir: Path, tmp_path: Path
) -> Iterator[LocalStack]:
    node = outage_cassandra
    if not node.is_running():
        node.start()
    endpoint = CassandraConfig(
        contact_points=(node.host,), port=node.native_port, keyspace="outage"
    )
    settings = stack_settings(
        endpoint,
        shared_dir,
        tmp_path,
        cassandra_create_schema=True,
        cassandra_request_timeout_s=2.0,
        workers=1,
    )
    with running_stack(settings) as stack:
        yield stack


def invoke(api: RestClient, invocation_id: str, content: bytes):
    payload = {"input": {"id": invocation_id, "content": base64.b64encode(content).decode()}}
    return api.post_json("/v1/invocations", payload, timeout=30)


def wait_for(condition, timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} not within {timeout:.0f}s"
        time.sleep(0.2)
    return time.monotonic() - started


def test_cassandra_down_two_minutes_then_back(
    stack_on_outage_node: LocalStack,
    outage_cassandra: LocalCassandra,
    images_dir: Path,
    fault_report: FaultReport,
) -> None:
    stack, node = stack_on_outage_node, outage_cassandra
    server = stack.servers[0]
    api = RestClient(stack.envoy.listen_host, stack.envoy.listen_port)
    content = (images_dir / "face-6.jpg").read_bytes()
    sent = failed_503 = 0
    before = invoke(api, f"before-{time.time_ns()}", content)
    assert before.status == 200, before.body[:300]
    before_id = before.json()["invocation"]["id"]

    node.stop()
    down_at = time.monotonic()
    wait_for(lambda: not grpc_serving(server.address), 15, "health NOT_SERVING")
    # Envoy takes the server out of rotation (two failed checks a second apart); until then a
    # read of a finished invocation is still answered from the server's cache.
    wait_for(lambda: api.get(f"/v1/invocations/{before_id}").status == 503, 10, "Envoy 503")
    while time.monotonic() - down_at < OUTAGE_S:
        for reply in (
            invoke(api, f"during-{time.time_ns()}", content),
            api.get(f"/v1/invocations/{before_id}"),
        ):
            sent += 1
            assert_status_json(reply, 503, grpc.StatusCode.UNAVAILABLE)
            failed_503 += 1
        assert server.poll() is None, "the server died"
        time.sleep(5)

    node.start()
    assert cql_answers(node.host, node.native_port)
    back_at = time.monotonic()
    wait_for(lambda: grpc_serving(server.address), BACK_WITHIN_S, "health SERVING")
    # ... and Envoy sends calls to it again (at its next health check).
    wait_for(
        lambda: invoke(api, f"after-{time.time_ns()}", content).status == 200,
        BACK_WITHIN_S - (time.monotonic() - back_at),
        "REST Invoke 200 through Envoy",
    )
    serving_after = time.monotonic() - back_at
    replies = [invoke(api, f"after-{time.time_ns()}", content) for _ in range(3)]
    assert [r.status for r in replies] == [200, 200, 200], [r.body[:300] for r in replies]
    read = api.get(f"/v1/invocations/{before_id}")
    assert read.status == 200
    assert base64.b64decode(read.json()["invocation"]["input"]["content"]) == content
    print(f"served through Envoy {serving_after:.1f}s after CQL answered again")
    fault_report.add_row(
        test="Cassandra down 125 s, then back",
        load="REST Invoke + Get every 5 s",
        fault=f"node stopped; {failed_503} calls got the documented 503 JSON while down; "
        f"SERVING {serving_after:.1f} s after CQL was back",
        sent=sent + 5,
        calls=sent + 5,
        failed=0,
        lost=0,
        pending=0,
    )
