"""The invocation store on Apache Cassandra, one job per module:

* ``store``: ``CassandraInvocationStore``, the store's operations (claim, take-over, complete,
  get, list, delete, check) and their design;
* ``cql``: the text of every statement the store prepares;
* ``rows``: rows as domain objects, and the driver's values and times;
* ``retry``: which driver errors mean what, retries, and the one handling of an uncertain
  conditional write (read back at ``SERIAL``);
* ``bridge``: driver futures to asyncio (the event loop is never blocked);
* ``config``: ``CassandraConfig``, built from ``Settings``;
* ``cluster``: the driver's ``Cluster`` and ``Session`` from a config, connecting with the
  schema in place;
* ``schema``: the schema (create, upgrade, check) and what the replication can survive;
* ``maintenance``: the operator commands ``migrate``, ``backfill-index`` and ``purge``.

The names below are the package's public ones.
"""

from inference_service.stores.cassandra.cluster import build_cluster, tls_context
from inference_service.stores.cassandra.config import CassandraConfig
from inference_service.stores.cassandra.maintenance import migrate
from inference_service.stores.cassandra.retry import CAS_WRITE_UNKNOWN, UNAVAILABLE_ERRORS
from inference_service.stores.cassandra.store import (
    CLOCK_SKEW,
    MAX_BUCKETS_PER_PAGE,
    MAX_INDEX_ROWS_PER_PAGE,
    MIN_ROW_READS_PER_PAGE,
    CassandraInvocationStore,
)

__all__ = [
    "CAS_WRITE_UNKNOWN",
    "CLOCK_SKEW",
    "MAX_BUCKETS_PER_PAGE",
    "MAX_INDEX_ROWS_PER_PAGE",
    "MIN_ROW_READS_PER_PAGE",
    "UNAVAILABLE_ERRORS",
    "CassandraConfig",
    "CassandraInvocationStore",
    "build_cluster",
    "migrate",
    "tls_context",
]
