"""`inference-service migrate` creates the keyspace and tables on a real Cassandra, idempotently,
with the retention as every table's TTL and TWCS on the list index; `backfill-index` and
`purge --dry-run` run as commands."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from inference_service.stores.cassandra import build_cluster


def test_migrate_creates_schema_idempotently(cassandra_endpoint) -> None:
    keyspace = f"migrate_{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "INFERENCE_CASSANDRA_CONTACT_POINTS": ",".join(cassandra_endpoint.contact_points),
        "INFERENCE_CASSANDRA_PORT": str(cassandra_endpoint.port),
        "INFERENCE_CASSANDRA_KEYSPACE": keyspace,
    }
    for retention in ("forever", "30d"):  # the second run finds everything in place
        done = subprocess.run(
            [sys.executable, "-m", "inference_service", "migrate"],
            env={**env, "INFERENCE_RETENTION": retention},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    backfill = subprocess.run(
        [sys.executable, "-m", "inference_service", "backfill-index"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert backfill.returncode == 0, backfill.stderr
    assert '"event": "done"' in backfill.stdout
    purge = subprocess.run(
        [sys.executable, "-m", "inference_service", "purge", "--dry-run", "--nodetool", "nt -h x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert purge.returncode == 0, purge.stderr
    assert (
        f'"command": "nt -h x compact {keyspace} invocations invocations_by_time"' in purge.stdout
    )
    cluster = build_cluster(cassandra_endpoint)
    try:
        session = cluster.connect()
        columns = {
            row["column_name"]
            for row in session.execute(
                "SELECT column_name FROM system_schema.columns"
                " WHERE keyspace_name = %s AND table_name = 'invocations'",
                (keyspace,),
            )
        }
        assert {"id", "content", "content_sha256", "state", "detections"} <= columns
        tables = {
            row["table_name"]: row
            for row in session.execute(
                "SELECT table_name, default_time_to_live, compaction FROM system_schema.tables"
                " WHERE keyspace_name = %s",
                (keyspace,),
            )
        }
        assert set(tables) >= {"invocations", "invocations_by_time", "invocations_index_state"}
        for table in ("invocations", "invocations_by_time"):
            assert tables[table]["default_time_to_live"] == 30 * 86400, table
        assert (
            "TimeWindowCompactionStrategy" in tables["invocations_by_time"]["compaction"]["class"]
        )
        session.execute(f"DROP KEYSPACE {keyspace}", timeout=60)
    finally:
        cluster.shutdown()
