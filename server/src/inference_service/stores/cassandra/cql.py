"""The store's CQL: every statement it prepares, as text (the keyspace name is checked before
it gets here; values are always bound, never formatted in).

The claim, the take-over and the fenced content-and-outcome write are the statements of the
claim protocol (docs/architecture.md); reads carry the claim's write time and the coordinator's
now (the lease is measured on Cassandra's clock); the list index (``invocations_by_time``) and
its state row have statements of their own.
"""

from __future__ import annotations

from inference_service.stores.cassandra.schema import INDEX_STATE_TABLE, INDEX_TABLE

#: The row of the list-index state table that the health check writes (it expires by itself).
HEALTH_CHECK_KEY = "health-check"
#: How long the health check's row outlives the last server that wrote it.
HEALTH_CHECK_TTL_S = 60


def queries(table: str) -> dict[str, str]:
    """The store's CQL. ``table`` is ``<keyspace>.invocations`` with a checked keyspace name."""
    outcome = "state, detections, image_width, image_height, error, complete_time"
    columns = (
        "id, claim_id, claim_time, content_sha256, content_type, metadata, model_name,"
        f" model_version, create_time, {outcome}"
    )
    # The claim's age by Cassandra's clocks alone: its write time (a conditional write's is
    # set by Paxos from the coordinator's clock, never by the client) and the read's
    # coordinator's now(). The lease never compares two servers' clocks.
    clock = "WRITETIME(claim_id) AS claim_written, toTimestamp(now()) AS store_now"
    claim = (
        f"INSERT INTO {table}"  # noqa: S608
        " (id, claim_id, claim_time, content_sha256, content_type, metadata,"
        " model_name, model_version, create_time)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?"
    )
    # Moves a claim whose lease has passed, only if nobody moved it or stored an outcome since;
    # with the model (version) that the new owner runs.
    take_over = (
        f"UPDATE {table} USING TTL ?"  # noqa: S608
        " SET claim_id = ?, claim_time = ?, model_name = ?, model_version = ?"
        " WHERE id = ? IF claim_id = ? AND state = null"
    )
    # The content and the outcome in one write: a row with an outcome always has its content.
    # Fenced by the owner's claim: a taken-over (or removed) claim writes nothing.
    complete = (
        f"UPDATE {table} USING TTL ?"  # noqa: S608
        " SET content = ?, state = ?, detections = ?, image_width = ?, image_height = ?,"
        " error = ?, complete_time = ?"
        " WHERE id = ? IF claim_id = ?"
    )
    return {
        "delete": f"DELETE FROM {table} WHERE id = ? IF EXISTS",  # noqa: S608
        "claim": claim,
        "take_over": take_over,
        "complete": complete,
        "get_with_content": f"SELECT {columns}, {clock}, content FROM {table} WHERE id = ?",  # noqa: S608
        "get_without_content": f"SELECT {columns}, {clock} FROM {table} WHERE id = ?",  # noqa: S608
        # The rows of a BASIC listing page, a batch of ids in one request (``list``).
        "get_many_without_content": f"SELECT {columns}, {clock} FROM {table} WHERE id IN ?",  # noqa: S608
    }


def index_queries(keyspace: str) -> dict[str, str]:
    """The CQL of the list index (``keyspace`` is checked)."""
    index = f"{keyspace}.{INDEX_TABLE}"
    entry = "create_time, id, model_name, metadata"
    return {
        "index_insert": (
            f"INSERT INTO {index} (bucket, create_time, id, model_name, metadata)"  # noqa: S608
            " VALUES (?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
        ),
        "index_delete": (
            f"DELETE FROM {index} USING TIMESTAMP ?"  # noqa: S608
            " WHERE bucket = ? AND create_time = ? AND id = ?"
        ),
        "index_same_time": (
            f"SELECT {entry} FROM {index}"  # noqa: S608
            " WHERE bucket = ? AND create_time = ? AND id > ? LIMIT ?"
        ),
        "index_older": (
            f"SELECT {entry} FROM {index}"  # noqa: S608
            " WHERE bucket = ? AND create_time < ? AND create_time >= ? LIMIT ?"
        ),
        "index_floor": (
            f"UPDATE {keyspace}.{INDEX_STATE_TABLE} SET floor = ? WHERE name = ?"  # noqa: S608
        ),
        "index_state": (
            f"SELECT bucket_s, floor FROM {keyspace}.{INDEX_STATE_TABLE} WHERE name = ?"  # noqa: S608
        ),
        "health_write": (
            f"UPDATE {keyspace}.{INDEX_STATE_TABLE} USING TTL {HEALTH_CHECK_TTL_S}"  # noqa: S608
            " SET floor = ? WHERE name = ?"
        ),
    }
