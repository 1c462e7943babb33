"""`inference-service migrate` creates the keyspace and table on a real Cassandra, idempotently."""

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
    for _ in range(2):  # the second run finds everything in place
        done = subprocess.run(
            [sys.executable, "-m", "inference_service", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
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
        session.execute(f"DROP KEYSPACE {keyspace}", timeout=60)
    finally:
        cluster.shutdown()
