"""The local dev node (``LocalCassandra``): its generated config, reuse and pid handling.

Nothing here starts a node: the checks of a running node use the session's shared one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from devstack import cassandra as devstack_cassandra
from devstack.cassandra import LocalCassandra, default_root
from devstack.process import ProcessError

LOCAL = not (
    os.environ.get("INFERENCE_CASSANDRA_CONTACT_POINTS")
    or os.environ.get("INFERENCE_TEST_CASSANDRA") == "testcontainers"
)


def test_generated_config_binds_loopback_and_keeps_everything_under_root(tmp_path: Path) -> None:
    node = LocalCassandra(tmp_path, native_port=19042, storage_port=17000)

    node.write_config()

    config = yaml.safe_load((tmp_path / "conf" / "cassandra.yaml").read_text())
    assert config["listen_address"] == config["rpc_address"] == "127.0.0.1"
    assert config["native_transport_port"] == 19042
    assert config["storage_port"] == 17000
    assert config["seed_provider"][0]["parameters"][0]["seeds"] == "127.0.0.1:17000"
    assert config["authenticator"] == "AllowAllAuthenticator"
    assert config["auto_snapshot"] is False
    assert config["commitlog_segment_size"] == "32MiB"  # rows of up to 16 MiB
    for key in ("commitlog_directory", "saved_caches_directory", "hints_directory"):
        assert Path(config[key]).is_relative_to(tmp_path)
    assert all(Path(d).is_relative_to(tmp_path) for d in config["data_file_directories"])
    assert (tmp_path / "conf" / "logback.xml").is_file()


@pytest.mark.skipif(not LOCAL, reason="uses the local dev node's jars")
def test_jvm_command_has_the_java17_options_and_the_jars(
    tmp_path: Path, cassandra_endpoint: object
) -> None:
    node = LocalCassandra(tmp_path, dist_dir=default_root() / "dist")

    argv = node.jvm_command()

    # The JVM itself, or on Linux the launcher that sets its timer slack and then execs it.
    assert argv[-2:] == [node.java, f"@{node.args_file}"]
    assert len(argv) == 2 or argv[:2] == [sys.executable, "-c"]
    options = node.args_file.read_text().splitlines()
    assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in options
    assert "-Dcassandra.skip_wait_for_gossip_to_settle=0" in options
    assert options[-1] == "org.apache.cassandra.service.CassandraDaemon"
    assert "cassandra-all-" in options[options.index("-cp") + 1]


@pytest.mark.skipif(not LOCAL, reason="needs the local dev node")
def test_start_reuses_the_running_node(cassandra_endpoint: object) -> None:
    node = LocalCassandra()

    assert node.start(timeout=30) is False
    assert node.is_running()


@pytest.mark.skipif(not LOCAL, reason="needs the local dev node")
def test_start_refuses_a_running_node_on_other_ports(cassandra_endpoint: object) -> None:
    node = LocalCassandra(native_port=LocalCassandra().native_port + 1)

    with pytest.raises(ProcessError, match="stop it first"):
        node.start(timeout=5)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_pid_file_naming_another_process_is_ignored(tmp_path: Path) -> None:
    node = LocalCassandra(tmp_path)
    node.pid_file.write_text(f"{os.getpid()}\n")  # alive, but not a Cassandra node

    assert node.pid() is None
    assert not node.is_running()
    assert node.stop() is False  # and nothing gets signalled


def test_cli_status_of_a_stopped_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert devstack_cassandra.main(["status", "--root", str(tmp_path)]) == 3
    assert "not running" in capsys.readouterr().out
