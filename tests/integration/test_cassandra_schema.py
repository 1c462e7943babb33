"""The schema on a real node: a server checks it (and refuses to start without it), ``migrate``
creates and upgrades it, and a keyspace that cannot lose a node is warned about."""

from __future__ import annotations

import dataclasses
import logging
import uuid

import pytest

from inference_service.stores.cassandra import CassandraInvocationStore, build_cluster
from inference_service.stores.cassandra.schema import COLUMNS, SchemaError, table_columns

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_server_refuses_to_start_without_the_schema(cassandra_endpoint) -> None:
    config = dataclasses.replace(
        cassandra_endpoint, keyspace=f"absent_{uuid.uuid4().hex[:8]}", create_schema=False
    )
    with pytest.raises(SchemaError, match="inference-service migrate"):
        await CassandraInvocationStore.connect(config)


async def test_migrate_upgrades_an_older_table(cassandra_endpoint, caplog) -> None:
    keyspace = f"old_{uuid.uuid4().hex[:8]}"
    cluster = build_cluster(cassandra_endpoint)
    session = cluster.connect()
    try:
        session.execute(
            f"CREATE KEYSPACE {keyspace} WITH replication ="
            " {'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        session.execute(
            f"CREATE TYPE {keyspace}.detection (x_min double, y_min double, x_max double,"
            " y_max double, score double, label text)"
        )
        old = ", ".join(f"{n} {t}" for n, t in COLUMNS if n not in ("claim_time",))
        session.execute(f"CREATE TABLE {keyspace}.invocations ({old}, PRIMARY KEY (id))")
        config = dataclasses.replace(cassandra_endpoint, keyspace=keyspace, create_schema=False)
        with pytest.raises(SchemaError, match=r"lacks columns \['claim_time'\]"):
            await CassandraInvocationStore.connect(config)

        with caplog.at_level(logging.WARNING, logger="inference_service.stores.cassandra"):
            migrated = await CassandraInvocationStore.connect(
                dataclasses.replace(config, create_schema=True)
            )
        await migrated.close()
        assert "claim_time" in table_columns(session, keyspace)
        options = session.execute(
            "SELECT compression FROM system_schema.tables"
            " WHERE keyspace_name = %s AND table_name = 'invocations'",
            (keyspace,),
        ).one()
        compression = options["compression"] if isinstance(options, dict) else options[0]
        assert compression.get("enabled") == "false", compression  # images: no LZ4 on top
        # Every table, the upgraded one too: a read never waits for a dead replica past 50 ms
        # (the default, 99p, is 2.5 s on a table with few reads).
        retries = {
            row["table_name"]: row["speculative_retry"]
            for row in session.execute(
                "SELECT table_name, speculative_retry FROM system_schema.tables"
                " WHERE keyspace_name = %s",
                (keyspace,),
            )
        }
        assert retries == dict.fromkeys(
            ("invocations", "invocations_by_time", "invocations_index_state"), "50ms"
        ), retries
        # RF 1: losing the node loses the store, and the operator is told so.
        assert any("losing one node" in record.message for record in caplog.records)

        served = await CassandraInvocationStore.connect(config)  # now in place
        await served.close()
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
        cluster.shutdown()
