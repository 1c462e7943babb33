"""A three-node Cassandra cluster (127.0.0.1..3, replication factor 3, LOCAL_QUORUM) under
Invoke load through a real Envoy and two server replicas: one node is killed (SIGKILL) in the
middle, then restarted. No Invoke may fail (the servers' own retries are allowed, the clients do
not retry), and every acknowledged invocation reads back whole."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import FaultReport, InvokeLoad, read_back
from support.stacks import running_stack, stack_settings

from devstack.cassandra import LocalCassandraCluster
from inference_service.stores.cassandra import CassandraConfig

VICTIM = 2


def test_sigkill_of_a_cassandra_node_under_load_fails_nothing(
    cassandra_cluster: LocalCassandraCluster,
    shared_dir: Path,
    tmp_path: Path,
    load_images: list[bytes],
    fault_report: FaultReport,
) -> None:
    cluster = cassandra_cluster
    endpoint = CassandraConfig(
        contact_points=tuple(cluster.contact_points), port=cluster.native_port, keyspace="faults"
    )
    settings = stack_settings(
        endpoint,
        shared_dir,
        tmp_path,
        server_processes=2,
        cassandra_create_schema=True,
        cassandra_replication_factor=3,
        workers=1,
    )
    with running_stack(settings) as stack:
        load = InvokeLoad(stack.grpc_target, load_images, clients=3, retry_s=0).start()
        try:
            load.wait_for_acks(12, timeout=90)
            cluster.kill(VICTIM)
            killed_at = time.monotonic()
            # Long enough for the survivors' failure detectors to convict the dead node.
            while time.monotonic() - killed_at < 25:
                time.sleep(0.5)
            cluster.start_node(VICTIM)  # waits until it has rejoined: UP on every node
            rejoined_after = time.monotonic() - killed_at
            load.wait_for_acks(load.acked_count() + 12, timeout=90)
        finally:
            result = load.stop()
        back = read_back(stack.grpc_target, result.acked)
    assert cluster.is_running()
    fault_report.add(
        "SIGKILL one of 3 Cassandra nodes (RF 3, LOCAL_QUORUM)",
        "3 clients, no retry, 2 servers",
        f"node {VICTIM} killed, restarted, rejoined after {rejoined_after:.0f} s",
        result,
        back,
    )
    assert result.failed == 0, result.errors
    assert len(result.acked) == result.sent
    assert back.lost == [] and back.pending == []
