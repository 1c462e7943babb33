"""``inference_client.Client`` against the live stack (through Envoy): an invoke that starts
while every server is down is retried with the id the client chose, through the servers'
restart, and stores exactly one invocation.

Marked ``stops_servers`` (run after the other e2e tests); the servers are running again when it
ends.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from devstack.stack import LocalStack
from inference_client import Client


@pytest.mark.stops_servers
def test_an_invoke_is_retried_through_a_server_restart_and_stored_once(
    e2e_stack: LocalStack, id_prefix: str, images_dir: Path
) -> None:
    content = (images_dir / "face-2.jpg").read_bytes()
    case = f"{id_prefix}-lib-restart"
    for server in e2e_stack.servers:
        if server.poll() is None:
            assert server.stop() == 0
    with Client(e2e_stack.grpc_target, retry_for=0, timeout=10) as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.get("anything")
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # really down

    restarted = threading.Event()

    def restart() -> None:
        time.sleep(2.0)
        for server in e2e_stack.servers:
            server.start()
        restarted.set()

    backoffs: list[float] = []

    def sleep(seconds: float) -> None:
        backoffs.append(seconds)
        time.sleep(seconds)

    starter = threading.Thread(target=restart, daemon=True)
    starter.start()
    try:
        with Client(e2e_stack.grpc_target, retry_for=180, timeout=30, sleep=sleep) as client:
            invocation = client.invoke(content, metadata={"case": case})
            assert restarted.is_set() or any(s.poll() is None for s in e2e_stack.servers)
            assert backoffs, "the first attempts should have met UNAVAILABLE"
            assert invocation.state == invocation.STATE_SUCCEEDED
            assert uuid.UUID(invocation.id).version == 4  # chosen by the client
            stored = list(client.list_invocations(filter=f'metadata.case = "{case}"'))
            assert [item.id for item in stored] == [invocation.id]
            assert client.render(invocation.id).startswith(b"\x89PNG")
    finally:
        starter.join(timeout=180)
    assert restarted.is_set()
