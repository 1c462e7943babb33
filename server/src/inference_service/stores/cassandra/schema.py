"""The Cassandra schema of the invocation store: create, upgrade, check, and judge replication.

``inference-service migrate`` owns the schema (``create_schema``: idempotent, and it adds the
columns a newer version needs to an existing table). A server started without
``create_schema`` only runs ``verify_schema`` and refuses to start when the schema is missing or
out of date, so that servers starting together never race to create it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from cassandra.cluster import Session

from inference_service.errors import StoreUnavailableError

logger = logging.getLogger(__name__)

TABLE = "invocations"
INDEX_TABLE = "invocations_by_time"
"""The list index: one row per invocation in a partition per time bucket, newest first."""
INDEX_STATE_TABLE = "invocations_index_state"
"""One row (``name = 'by_time'``): the bucket width of the index and its oldest bucket."""
INDEX_STATE_KEY = "by_time"
DEFAULT_BUCKET_S = 3600
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")

#: Every column of the table with its CQL type, in creation order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "text"),
    # Which Invoke owns the id (a UUID per Invoke) and since when: tells a won claim from a lost
    # one after an uncertain answer, and starts the lease after which a retry may take over.
    ("claim_id", "uuid"),
    ("claim_time", "timestamp"),
    ("content", "blob"),
    ("content_sha256", "text"),
    ("content_type", "text"),
    ("metadata", "map<text, text>"),
    ("model_name", "text"),
    ("model_version", "text"),
    ("state", "text"),
    ("detections", "frozen<list<frozen<detection>>>"),
    ("image_width", "int"),  # set iff the model produced an output
    ("image_height", "int"),
    ("error", "text"),
    ("create_time", "timestamp"),
    ("complete_time", "timestamp"),
)


#: When a replica of a read is slow, the coordinator asks another one after this long
#: (``speculative_retry``), on every table of the store. The default, ``99p``, is the table's
#: 99th percentile read latency, which a table with few reads puts at half the read timeout
#: (about 2.5 s): a replica killed and not yet convicted by the failure detectors (20-40 s)
#: held every LOCAL_QUORUM read that picked it that long. A fixed 50 ms is ten times a healthy
#: read here (a few ms at the 99th percentile) and far under any call's deadline: only reads
#: already slower than that cost one extra replica read.
SPECULATIVE_RETRY = "speculative_retry = '50ms'"

#: Options ``migrate`` sets on the table, new or existing. The content is an encoded image,
#: already compressed: compressing it again (LZ4 by default, at every flush, compaction and
#: read) costs CPU and saves nothing.
TABLE_OPTIONS = f"compression = {{'enabled': 'false'}} AND {SPECULATIVE_RETRY}"


#: Options of the list index, new or existing: TWCS (the table is written in time order and
#: expires by TTL: whole SSTables of one window are dropped once expired), one window per day.
INDEX_OPTIONS = (
    "compaction = {'class': 'TimeWindowCompactionStrategy',"
    " 'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}"
    f" AND {SPECULATIVE_RETRY}"
)


class SchemaError(RuntimeError):
    """The keyspace or table is missing or out of date: run ``inference-service migrate``."""


def check_identifier(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a valid unquoted CQL identifier: {name!r}")
    return name


def replication_map(
    strategy: str, *, replication_factor: int = 1, datacenters: Mapping[str, int] | None = None
) -> str:
    """The CQL replication map of a keyspace: ``SimpleStrategy`` with one factor, or
    ``NetworkTopologyStrategy`` with a factor per data centre."""
    if strategy == "SimpleStrategy":
        if replication_factor < 1:
            raise ValueError("replication_factor must be >= 1")
        return f"{{'class': 'SimpleStrategy', 'replication_factor': {int(replication_factor)}}}"
    if strategy == "NetworkTopologyStrategy":
        if not datacenters:
            raise ValueError(
                "NetworkTopologyStrategy needs a replication factor per data centre "
                "(INFERENCE_CASSANDRA_DATACENTERS, e.g. dc1:3,dc2:3)"
            )
        pairs = []
        for dc, factor in datacenters.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", dc) or int(factor) < 1:
                raise ValueError(f"bad data centre replication {dc!r}: {factor!r}")
            pairs.append(f"'{dc}': {int(factor)}")
        return "{'class': 'NetworkTopologyStrategy', " + ", ".join(pairs) + "}"
    raise ValueError(f"unknown replication strategy {strategy!r}")


def schema_statements(keyspace: str, replication: str, default_ttl_s: int = 0) -> list[str]:
    """The idempotent CQL that creates the keyspace, the ``detection`` type and the table."""
    check_identifier(keyspace)
    if not replication.strip().startswith("{"):
        raise ValueError(f"replication must be a CQL map literal, not {replication!r}")
    if default_ttl_s < 0:
        raise ValueError("default_ttl_s must be >= 0")
    columns = ", ".join(f"{name} {cql_type}" for name, cql_type in COLUMNS)
    return [
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}",
        # The output is stored as typed columns, not as serialized JSON or protobuf: cqlsh shows
        # it as is, Cassandra checks the types, and nothing but the driver is needed to read it.
        # A box is flattened into its detection; ``double`` keeps Python floats exact.
        f"CREATE TYPE IF NOT EXISTS {keyspace}.detection ("
        " x_min double, y_min double, x_max double, y_max double, score double, label text)",
        f"CREATE TABLE IF NOT EXISTS {keyspace}.{TABLE} ({columns}, PRIMARY KEY (id))"
        f" WITH default_time_to_live = {int(default_ttl_s)}"
        f" AND {TABLE_OPTIONS}"
        " AND comment = 'inference-service: one input and its outcome per id'",
        # The list index (ListInvocations): one partition per time bucket (bounded: a bucket's
        # width), newest first, ties by id. Its model and metadata let a filter skip rows
        # without reading the invocation; the state and everything else come from the
        # invocation's own row, which each listed entry is checked against (deleted, expired
        # or re-created rows are never listed from a stale entry).
        f"CREATE TABLE IF NOT EXISTS {keyspace}.{INDEX_TABLE} ("
        " bucket timestamp, create_time timestamp, id text, model_name text,"
        " metadata map<text, text>,"
        " PRIMARY KEY ((bucket), create_time, id))"
        " WITH CLUSTERING ORDER BY (create_time DESC, id ASC)"
        f" AND default_time_to_live = {int(default_ttl_s)}"
        f" AND {INDEX_OPTIONS}"
        " AND comment = 'inference-service: invocations by time bucket (ListInvocations)'",
        f"CREATE TABLE IF NOT EXISTS {keyspace}.{INDEX_STATE_TABLE} ("
        " name text PRIMARY KEY, bucket_s int, floor timestamp, backfill_token bigint)"
        f" WITH {SPECULATIVE_RETRY}"
        " AND comment = 'inference-service: bucket width and oldest bucket of the list index'",
    ]


def table_columns(
    session: Session, keyspace: str, *, timeout_s: float = 30.0, table: str = TABLE
) -> set[str]:
    """The columns the table has now (empty when it does not exist)."""
    rows = session.execute(
        "SELECT column_name FROM system_schema.columns"
        " WHERE keyspace_name = %s AND table_name = %s",
        (keyspace, table),
        timeout=timeout_s,
    )
    return {_column(row) for row in rows}


def keyspace_replication(
    session: Session, keyspace: str, *, timeout_s: float = 30.0
) -> dict[str, str] | None:
    """The keyspace's replication map as Cassandra stores it, or ``None`` when it is missing."""
    row = session.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
        (keyspace,),
        timeout=timeout_s,
    ).one()
    if row is None:
        return None
    replication = row["replication"] if isinstance(row, Mapping) else row.replication
    return dict(replication)


def create_schema(
    session: Session,
    keyspace: str,
    replication: str,
    default_ttl_s: int = 0,
    *,
    bucket_s: int = DEFAULT_BUCKET_S,
    timeout_s: float = 30.0,
) -> None:
    """Create the keyspace and tables if missing, add the columns an older table lacks, set
    the retention (``default_ttl_s``) and compaction of every table (blocking), and wait for
    schema agreement. ``bucket_s``: the list index's bucket width, if it has none yet."""
    for statement in schema_statements(keyspace, replication, default_ttl_s):
        logger.debug("schema: %s", statement)
        session.execute(statement, timeout=timeout_s)
    _wait_for_agreement(session, keyspace, timeout_s)
    present = table_columns(session, keyspace, timeout_s=timeout_s)
    for name, cql_type in COLUMNS:
        if name not in present:
            logger.info("schema: adding column %s.%s.%s", keyspace, TABLE, name)
            alter = f"ALTER TABLE {keyspace}.{TABLE} ADD {name} {cql_type}"
            session.execute(alter, timeout=timeout_s)
    ttl = f"default_time_to_live = {int(default_ttl_s)}"
    session.execute(
        f"ALTER TABLE {keyspace}.{TABLE} WITH {TABLE_OPTIONS} AND {ttl}", timeout=timeout_s
    )
    session.execute(
        f"ALTER TABLE {keyspace}.{INDEX_TABLE} WITH {INDEX_OPTIONS} AND {ttl}", timeout=timeout_s
    )
    session.execute(
        f"ALTER TABLE {keyspace}.{INDEX_STATE_TABLE} WITH {SPECULATIVE_RETRY}", timeout=timeout_s
    )
    # The index's bucket width is fixed by the first migrate; its oldest bucket is now (the
    # servers write the index from here on; ``backfill-index`` lowers it for older rows).
    session.execute(
        f"INSERT INTO {keyspace}.{INDEX_STATE_TABLE} (name, bucket_s, floor)"  # noqa: S608
        " VALUES (%s, %s, toTimestamp(now())) IF NOT EXISTS",
        (INDEX_STATE_KEY, int(bucket_s)),
        timeout=timeout_s,
    )
    _wait_for_agreement(session, keyspace, timeout_s)
    logger.info("schema of keyspace %s is in place", keyspace)


def verify_schema(session: Session, keyspace: str, *, timeout_s: float = 30.0) -> None:
    """Raise ``SchemaError`` unless the keyspace and an up-to-date table exist."""
    check_identifier(keyspace)
    if keyspace_replication(session, keyspace, timeout_s=timeout_s) is None:
        raise SchemaError(
            f"keyspace {keyspace!r} does not exist: run `inference-service migrate` first "
            "(or set INFERENCE_CASSANDRA_CREATE_SCHEMA=true where this server may create it)"
        )
    present = table_columns(session, keyspace, timeout_s=timeout_s)
    if not present:
        raise SchemaError(
            f"table {keyspace}.{TABLE} does not exist: run `inference-service migrate` first"
        )
    missing = [name for name, _ in COLUMNS if name not in present]
    if missing:
        raise SchemaError(
            f"table {keyspace}.{TABLE} lacks columns {missing}: it is older than this server; "
            "run `inference-service migrate`"
        )
    for table in (INDEX_TABLE, INDEX_STATE_TABLE):
        if not table_columns(session, keyspace, timeout_s=timeout_s, table=table):
            raise SchemaError(
                f"table {keyspace}.{table} does not exist: it is older than this server; "
                "run `inference-service migrate` (then `inference-service backfill-index`)"
            )


# --- can it survive the loss of a node? -----------------------------------------------------


def replication_factors(replication: Mapping[str, str]) -> tuple[dict[str, int] | None, int]:
    """Replication factors of a keyspace's map: ``(per data centre or None, total)``.

    ``SimpleStrategy`` has no data centres (``None``): its one factor counts everywhere.
    """
    strategy = replication.get("class", "").rsplit(".", 1)[-1]
    if strategy == "SimpleStrategy":
        factor = int(replication.get("replication_factor", "1"))
        return None, factor
    factors = {
        dc: int(value)
        for dc, value in replication.items()
        if dc != "class" and str(value).isdigit()
    }
    return factors, sum(factors.values())


def _required(level: str, local: int, total: int, factors: dict[str, int] | None) -> int | None:
    """Replicas that must answer in the local data centre for ``level`` (None: unknown)."""
    level = level.upper()
    if level in ("ANY", "ONE", "LOCAL_ONE"):
        return 1
    if level == "TWO":
        return 2
    if level == "THREE":
        return 3
    if level in ("LOCAL_QUORUM", "LOCAL_SERIAL"):
        return local // 2 + 1
    if level in ("QUORUM", "SERIAL"):
        # Counted over every data centre; the local one can lose a node iff the total can.
        return total // 2 + 1 - (total - local)
    if level == "EACH_QUORUM":
        return local // 2 + 1
    if level == "ALL":
        return local
    return None


def replication_warnings(
    replication: Mapping[str, str],
    *,
    local_dc: str,
    consistency: str,
    serial_consistency: str,
) -> list[str]:
    """Why the keyspace's replication and these consistency levels cannot survive the loss of
    one node of the local data centre; empty when they can."""
    factors, total = replication_factors(replication)
    local = total if factors is None else factors.get(local_dc, 0)
    if local == 0:
        return [f"the keyspace has no replicas in the local data centre {local_dc!r}"]
    warnings = []
    for what, level in (("consistency", consistency), ("serial consistency", serial_consistency)):
        needed = _required(level, local, total, factors)
        if needed is not None and local - 1 < needed:
            warnings.append(
                f"{what} {level.upper()} needs {needed} of the {local} replicas in {local_dc!r}: "
                "losing one node makes the store unavailable (use replication factor 3 and "
                "LOCAL_QUORUM)"
            )
    return warnings


def _column(row: object) -> str:
    column = row["column_name"] if isinstance(row, Mapping) else row.column_name  # type: ignore[attr-defined]
    return str(column)


def _wait_for_agreement(session: Session, keyspace: str, timeout_s: float) -> None:
    if not session.cluster.control_connection.wait_for_schema_agreement(wait_time=timeout_s):
        logger.error("no schema agreement on keyspace %s after %.0fs", keyspace, timeout_s)
        raise StoreUnavailableError("invocation store unavailable")
