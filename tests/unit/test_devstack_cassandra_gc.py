"""The local node's garbage collector and extra ``cassandra.yaml`` lines (``devstack.cassandra``,
settable for measurements such as ``bench/cassandra_cost.py``). Nothing starts a node here."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.cassandra import CASSANDRA_VERSION, GC_OPTIONS, LocalCassandra


def _node(tmp_path: Path, **options: object) -> LocalCassandra:
    lib = tmp_path / "dist" / f"cassandra-{CASSANDRA_VERSION}" / "lib"
    lib.mkdir(parents=True)
    (lib / f"cassandra-all-{CASSANDRA_VERSION}.jar").write_bytes(b"")
    (lib / ".complete").write_text(CASSANDRA_VERSION)
    return LocalCassandra(
        tmp_path / "node", dist_dir=tmp_path / "dist", class_data_sharing=False, **options
    )


def _jvm_options(node: LocalCassandra) -> list[str]:
    node.jvm_command()
    return node.args_file.read_text().splitlines()


def test_g1_is_the_default_collector(tmp_path: Path) -> None:
    options = _jvm_options(_node(tmp_path))

    assert "-XX:+UseG1GC" in options
    assert "-XX:MaxGCPauseMillis=300" in options
    assert not any(o in options for o in ("-XX:+UseSerialGC", "-XX:+UseZGC"))


@pytest.mark.parametrize("gc", sorted(set(GC_OPTIONS) - {"g1"}))
def test_another_collector_replaces_g1(tmp_path: Path, gc: str) -> None:
    options = _jvm_options(_node(tmp_path, gc=gc))

    selected = [o for o in options if o.startswith("-XX:+Use") and o.endswith("GC")]
    assert selected == [GC_OPTIONS[gc][0]]
    assert "-XX:MaxGCPauseMillis=300" not in options


def test_an_unknown_collector_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gc 'cms'"):
        _node(tmp_path, gc="cms")


def test_memtables_are_off_heap(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.write_config()

    lines = (node.conf_dir / "cassandra.yaml").read_text().splitlines()
    assert "memtable_allocation_type: offheap_objects" in lines


def test_extra_yaml_is_appended_and_overrides_a_generated_setting(tmp_path: Path) -> None:
    node = _node(
        tmp_path, extra_yaml="memtable_allocation_type: heap_buffers\nmemtable_flush_writers: 1"
    )
    node.write_config()

    text = (node.conf_dir / "cassandra.yaml").read_text()
    assert text.rstrip().endswith(
        "memtable_allocation_type: heap_buffers\nmemtable_flush_writers: 1"
    )
    assert text.count("memtable_allocation_type") == 1
    assert "commitlog_sync: periodic" in text


def test_no_extra_yaml_leaves_the_config_as_it_was(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.write_config()

    assert "extra settings" not in (node.conf_dir / "cassandra.yaml").read_text()
