"""A local cluster of N nodes (``LocalCassandraCluster``): its layout and generated configs, and a
real three-node cluster that keeps QUORUM when one node crashes and takes the node back.

Only the last test starts nodes (``cassandra_cluster``: its own nodes on free ports).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import SimpleStatement

from devstack import cassandra as devstack_cassandra
from devstack.cassandra import (
    LocalCassandra,
    LocalCassandraCluster,
    cluster_root,
    default_root,
    ring_tokens,
)
from devstack.stack import LocalStack, StackSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUEST_TIMEOUT_S = 20.0


def config_of(node: LocalCassandra) -> dict:
    node.write_config()
    return yaml.safe_load((node.conf_dir / "cassandra.yaml").read_text())


def test_nodes_share_ports_on_loopback_aliases_and_split_the_ring(tmp_path: Path) -> None:
    cluster = LocalCassandraCluster(3, tmp_path, native_port=19042, storage_port=17000)

    configs = [config_of(node) for node in cluster.nodes]

    assert cluster.contact_points == ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    assert [node.root for node in cluster.nodes] == [tmp_path / f"node{i}" for i in (1, 2, 3)]
    assert {node.dist_dir for node in cluster.nodes} == {default_root() / "dist"}
    for index, config in enumerate(configs, 1):
        assert config["listen_address"] == config["rpc_address"] == f"127.0.0.{index}"
        assert config["native_transport_port"] == 19042
        assert config["storage_port"] == 17000
        assert config["seed_provider"][0]["parameters"][0]["seeds"] == (
            "127.0.0.1:17000,127.0.0.2:17000,127.0.0.3:17000"
        )
        assert config["num_tokens"] == 1
        assert config["hinted_handoff_enabled"] is True
        assert config["auto_bootstrap"] is False
        assert config["block_for_peers_timeout_in_secs"] == 0
        assert all(
            Path(d).is_relative_to(tmp_path / f"node{index}")
            for d in config["data_file_directories"]
        )
    tokens = [config["initial_token"] for config in configs]
    assert tokens == ring_tokens(3) == sorted(tokens)
    assert tokens[0] == -(2**63)
    assert {b - a for a, b in zip(tokens, [*tokens[1:], tokens[0] + 2**64], strict=True)} == {
        2**64 // 3,
        2**64 // 3 + 1,  # the last part takes the remainder
    }


def test_one_node_is_the_single_dev_node(tmp_path: Path) -> None:
    (node,) = LocalCassandraCluster(1, tmp_path / "a").nodes
    lone = LocalCassandra(tmp_path / "b")

    assert node.root == tmp_path / "a"
    assert not node.in_cluster
    assert yaml_text(node) == yaml_text(lone)  # the same config, byte for byte
    assert config_of(node)["initial_token"] == 0
    assert config_of(node)["hinted_handoff_enabled"] is False
    assert "auto_bootstrap" not in config_of(node)
    assert LocalCassandraCluster(1).node(1).root == default_root()
    assert LocalCassandraCluster(3).node(2).root == cluster_root() / "node2"


def yaml_text(node: LocalCassandra) -> str:
    """The node's ``cassandra.yaml`` with its root folder written ``<root>``."""
    node.write_config()
    return (node.conf_dir / "cassandra.yaml").read_text().replace(str(node.root), "<root>")


def test_node_addresses_must_be_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        LocalCassandraCluster(3, base_address="10.0.0.1")
    with pytest.raises(ValueError, match="loopback"):
        LocalCassandraCluster(2, base_address="127.255.255.255")
    with pytest.raises(IndexError):
        LocalCassandraCluster(3).node(4)


def test_cli_status_of_a_stopped_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert devstack_cassandra.main(["status", "--nodes", "3", "--root", str(tmp_path)]) == 3
    out = capsys.readouterr().out
    assert [line.split(" (")[0] for line in out.splitlines()] == ["node 1", "node 2", "node 3"]
    assert out.count("not running") == 3


def test_stack_runs_n_nodes_and_gives_the_servers_every_contact_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INFERENCE_CASSANDRA_CONTACT_POINTS", raising=False)
    monkeypatch.setenv("INFERENCE_CASSANDRA_NODES", "3")

    stack = LocalStack(StackSettings(build_dir=tmp_path), repo_root=REPO_ROOT, base_env={})

    assert isinstance(stack.cassandra, LocalCassandraCluster)
    assert stack.cassandra.root == tmp_path / "cassandra-cluster"
    assert stack.cassandra.node(3).address == "127.0.0.3:7000"
    assert stack.cassandra.node(1).dist_dir == tmp_path / "cassandra" / "dist"
    for server in stack.servers:
        env = server._process.env or {}
        assert env["INFERENCE_CASSANDRA_CONTACT_POINTS"] == "127.0.0.1,127.0.0.2,127.0.0.3"

    monkeypatch.delenv("INFERENCE_CASSANDRA_NODES")
    single = LocalStack(StackSettings(build_dir=tmp_path), repo_root=REPO_ROOT, base_env={})
    assert isinstance(single.cassandra, LocalCassandra)
    assert single.cassandra.root == tmp_path / "cassandra"
    assert "INFERENCE_CASSANDRA_CONTACT_POINTS" not in (single.servers[0]._process.env or {})


@pytest.fixture
def session(cassandra_cluster: LocalCassandraCluster) -> Iterator[Session]:
    """A driver session on every node of the cluster, in a keyspace of RF 3."""
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc="datacenter1")),
        request_timeout=REQUEST_TIMEOUT_S,
    )
    client = Cluster(
        list(cassandra_cluster.contact_points),
        port=cassandra_cluster.native_port,
        protocol_version=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    try:
        session = client.connect()
        keyspace = f"cluster_{uuid.uuid4().hex[:8]}"
        session.execute(
            f"CREATE KEYSPACE {keyspace} "
            "WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}"
        )
        session.set_keyspace(keyspace)
        # A read whose coordinator also asks the killed node (before the failure detectors mark
        # it down) is answered once the speculative retry asks the third replica: after the
        # table's 99th percentile, which a new table puts at half the read timeout (2.5 s) until
        # it has samples. A fixed 50 ms is what a warm table would have.
        session.execute(
            "CREATE TABLE kv (k text PRIMARY KEY, v int) WITH speculative_retry = '50ms'"
        )
        yield session
    finally:
        client.shutdown()


def write(session: Session, key: str, value: int) -> None:
    session.execute(
        SimpleStatement(
            "INSERT INTO kv (k, v) VALUES (%s, %s)", consistency_level=ConsistencyLevel.QUORUM
        ),
        (key, value),
    )


def read(session: Session, key: str, level: int) -> int | None:
    row = session.execute(
        SimpleStatement("SELECT v FROM kv WHERE k = %s", consistency_level=level), (key,)
    ).one()
    return None if row is None else row.v


def claim(session: Session, key: str) -> bool:
    """``INSERT ... IF NOT EXISTS`` (SERIAL): whether this call inserted the row."""
    statement = SimpleStatement(
        "INSERT INTO kv (k, v) VALUES (%s, %s) IF NOT EXISTS",
        consistency_level=ConsistencyLevel.QUORUM,
        serial_consistency_level=ConsistencyLevel.SERIAL,
    )
    return bool(session.execute(statement, (key, 1)).was_applied)


def test_quorum_survives_a_killed_node_which_then_rejoins(
    cassandra_cluster: LocalCassandraCluster, session: Session
) -> None:
    cluster = cassandra_cluster
    victim = cluster.node(1)  # also the first contact point: the client must go elsewhere
    others = [node for node in cluster.nodes if node is not victim]
    options = victim.args_file.read_text().splitlines()
    assert "-Dcassandra.gossip_quarantine_delay_ms=60000" in options
    assert "-Dcassandra.shutdown_announce_in_ms=500" in options
    before = {f"before-{i}": i for i in range(10)}
    for key, value in before.items():
        write(session, key, value)

    assert cluster.kill(1)
    killed = time.monotonic()

    # At once, before the others' failure detectors mark it down: QUORUM (2 of 3) still works.
    during = {f"during-{i}": i for i in range(10)}
    for key, value in during.items():
        write(session, key, value)
    assert {key: read(session, key, ConsistencyLevel.QUORUM) for key in before} == before
    assert claim(session, "claimed-while-down") is True
    assert claim(session, "claimed-while-down") is False
    print(f"QUORUM writes, reads and LWTs with node 1 killed: {time.monotonic() - killed:.1f}s")
    assert victim.pid() is None

    marks = {node.address: node.log_mark() for node in others}
    restarted = time.monotonic()
    assert cluster.start_node(1, timeout=120) is True
    print(f"node 1 restarted and seen UP by the others in {time.monotonic() - restarted:.1f}s")

    for node in others:
        assert node.logged(f"/{victim.address} is now UP", marks[node.address])
    # ALL needs every replica, the restarted one too, and gets what was written without it.
    assert {key: read(session, key, ConsistencyLevel.ALL) for key in during} == during
    assert read(session, "claimed-while-down", ConsistencyLevel.ALL) == 1
    assert cluster.is_running()
