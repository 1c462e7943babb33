"""How the Cassandra store is configured: replication, survivability warnings, driver options.
No Cassandra here: these are the pure parts (the real cluster is in tests/integration)."""

from __future__ import annotations

import socket

import pytest
from cassandra.policies import ExponentialReconnectionPolicy

from inference_service.settings import Settings
from inference_service.stores.cassandra import CassandraConfig, build_cluster
from inference_service.stores.cassandra.schema import (
    COLUMNS,
    replication_map,
    replication_warnings,
    schema_statements,
)


def test_replication_map_for_each_strategy() -> None:
    assert replication_map("SimpleStrategy", replication_factor=3) == (
        "{'class': 'SimpleStrategy', 'replication_factor': 3}"
    )
    assert replication_map("NetworkTopologyStrategy", datacenters={"dc1": 3, "dc2": 2}) == (
        "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}"
    )
    with pytest.raises(ValueError, match="per data centre"):
        replication_map("NetworkTopologyStrategy")
    with pytest.raises(ValueError, match="bad data centre"):
        replication_map("NetworkTopologyStrategy", datacenters={"dc'1": 3})
    with pytest.raises(ValueError, match="unknown"):
        replication_map("EverywhereStrategy")


def test_settings_build_the_keyspace_replication(monkeypatch) -> None:
    monkeypatch.setenv("INFERENCE_CASSANDRA_REPLICATION_STRATEGY", "NetworkTopologyStrategy")
    monkeypatch.setenv("INFERENCE_CASSANDRA_DATACENTERS", "eu-west:3, us-east:3")
    config = CassandraConfig.from_settings(Settings())
    assert config.replication == (
        "{'class': 'NetworkTopologyStrategy', 'eu-west': 3, 'us-east': 3}"
    )
    assert config.serial_consistency == "SERIAL"  # one winner in the whole cluster
    assert config.create_schema is False  # migrate owns the schema
    monkeypatch.setenv("INFERENCE_CASSANDRA_DATACENTERS", '{"dc1": 5}')
    assert Settings().cassandra_datacenters == {"dc1": 5}


SIMPLE_1 = {"class": "org.apache.cassandra.locator.SimpleStrategy", "replication_factor": "1"}
SIMPLE_3 = {**SIMPLE_1, "replication_factor": "3"}
NTS = {"class": "org.apache.cassandra.locator.NetworkTopologyStrategy", "dc1": "3", "dc2": "3"}


@pytest.mark.parametrize(
    ("replication", "consistency", "serial", "survives"),
    [
        (SIMPLE_3, "LOCAL_QUORUM", "SERIAL", True),
        (SIMPLE_3, "QUORUM", "LOCAL_SERIAL", True),
        (SIMPLE_3, "ALL", "SERIAL", False),
        (SIMPLE_1, "LOCAL_QUORUM", "SERIAL", False),
        (SIMPLE_1, "ONE", "SERIAL", False),  # the serial quorum of 1 replica is 1
        ({**SIMPLE_1, "replication_factor": "2"}, "ONE", "SERIAL", False),
        (NTS, "LOCAL_QUORUM", "LOCAL_SERIAL", True),
        (NTS, "LOCAL_QUORUM", "SERIAL", True),
        (NTS, "EACH_QUORUM", "SERIAL", True),
        ({**NTS, "dc1": "1"}, "LOCAL_QUORUM", "SERIAL", False),
    ],
)
def test_warns_when_one_lost_node_makes_the_store_unavailable(
    replication, consistency, serial, survives
) -> None:
    warnings = replication_warnings(
        replication, local_dc="dc1", consistency=consistency, serial_consistency=serial
    )
    assert (warnings == []) is survives, warnings


def test_warns_when_the_local_data_centre_has_no_replica() -> None:
    warnings = replication_warnings(
        NTS, local_dc="dc9", consistency="LOCAL_QUORUM", serial_consistency="SERIAL"
    )
    assert warnings == ["the keyspace has no replicas in the local data centre 'dc9'"]


def test_schema_has_the_claim_columns() -> None:
    statements = schema_statements(
        "inference", "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    (table,) = [s for s in statements if "TABLE IF NOT EXISTS inference.invocations (" in s]
    assert "claim_id uuid" in table and "claim_time timestamp" in table
    assert {name for name, _ in COLUMNS} >= {"claim_id", "claim_time", "content", "state"}


def test_password_is_not_in_the_config_repr() -> None:
    config = CassandraConfig(username="svc", password="s3cret-pw")
    assert "s3cret-pw" not in repr(config)
    assert "svc" in repr(config)


def test_driver_reconnects_forever_without_nagle() -> None:
    cluster = build_cluster(CassandraConfig(reconnect_delay_s=0.5, reconnect_max_delay_s=4.0))
    try:
        policy = cluster.reconnection_policy
        assert isinstance(policy, ExponentialReconnectionPolicy)
        assert policy.max_attempts is None
        delays = policy.new_schedule()
        first = [next(delays) for _ in range(200)]  # never runs out
        # The driver adds up to 15 % of jitter to each delay.
        assert 0.5 * 0.85 <= first[0] <= 0.5 * 1.15
        assert 4.0 * 0.85 <= max(first) <= 4.0 * 1.15
        assert (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) in cluster.sockopts
    finally:
        cluster.shutdown()
