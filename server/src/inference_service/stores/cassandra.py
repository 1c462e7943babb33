"""The invocation store on Apache Cassandra, and the schema it needs.

Design:

* One row per input id in ``<keyspace>.invocations``. The claim is a lightweight transaction
  (``INSERT ... IF NOT EXISTS``) of the small cells: the first writer wins, everyone else gets
  the stored row back from the same Paxos round. The owner then writes the content and the
  outcome together (``complete``), with a lightweight transaction conditional on its own claim
  (``UPDATE ... IF claim_id = <mine>``): a fencing token. An owner that stalled past its lease
  and was taken over (or whose row was deleted) writes nothing when it wakes; it gets the row
  as stored now and answers with that.
* Every claim carries a ``claim_id`` (a UUID per Invoke) and a ``claim_time``. A conditional
  write is never retried blindly (no driver retries): one whose answer was lost (a timeout, a
  dropped connection, "CAS write outcome unknown") is settled by a serial read, and a row that
  holds the caller's own ``claim_id`` (with an outcome, for ``complete``) means the caller's
  write is in (``_conditional``, shared by ``claim``, ``take_over`` and ``complete``). A claim
  whose lease has passed without an outcome is taken over with a conditional update on the old
  ``claim_id`` (``take_over``).
* The content-and-outcome write is retried (by the same rule) with exponential backoff for up
  to ``retry_budget_s``.
* With a TTL, every write of a row expires at the same moment, counted from its create time.
* ListInvocations reads a second table, ``invocations_by_time``: one partition per time bucket
  (``cassandra_list_bucket_s``, recorded by the first ``migrate``), clustered by
  ``(create_time DESC, id ASC)``, holding the id, model name and metadata. The owner of a claim
  writes the entry right after winning it (a take-over writes it again), idempotently, with the
  claim's time as write timestamp. Entries are hints, never the truth: ``list`` reads the row of
  every entry it lists and drops entries whose row is gone, has another create time (deleted
  and invoked afresh) or does not match the filter, so a late or stale entry is never listed.
  One page is bounded (``MAX_BUCKETS_PER_PAGE``, ``MAX_INDEX_ROWS_PER_PAGE``, row reads).
* ``delete`` is a lightweight transaction (``DELETE ... IF EXISTS``), ordered with the claim,
  take-over and (fenced) outcome writes of the id, so an Invoke that claimed before it writes
  nothing after it; then the entry is deleted with the delete's time as write timestamp, which
  beats an entry written late by such an Invoke (stamped with its earlier claim time).
* Only prepared statements; consistency ``LOCAL_QUORUM`` (configurable), serial consistency
  ``SERIAL`` (one winner in the whole cluster); token-aware, DC-aware routing; fixed protocol
  version; ``TCP_NODELAY`` on every connection.
* The asyncio event loop is never blocked: each statement runs with ``execute_async`` and its
  callbacks hand the result to the loop with ``call_soon_threadsafe``; connecting (blocking in
  the driver) runs in a worker thread.
* Every driver error that means "unreachable, overloaded or timed out" becomes
  ``StoreUnavailableError``; the driver reconnects forever (exponential backoff, capped), so the
  same store works again once Cassandra is back.
* The schema belongs to ``inference-service migrate`` (or to a server started with
  ``create_schema``); a server otherwise only checks that it is in place, and warns when the
  keyspace's replication and the consistency levels cannot survive the loss of one node.

Size limit: a Cassandra mutation must be smaller than half a commit log segment
(``commitlog_segment_size``, default 32 MiB), so 8 MiB of content is fine with the defaults;
``native_transport_max_message_size`` (16 MiB by default with a large enough heap) must exceed
the largest request too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import logging
import math
import socket
import ssl
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cassandra import (
    AuthenticationFailed,
    ConsistencyLevel,
    CoordinationFailure,
    OperationTimedOut,
    ReadTimeout,
    Unavailable,
    WriteTimeout,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    ResponseFuture,
    Session,
)
from cassandra.connection import ConnectionException
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    FallthroughRetryPolicy,
    TokenAwarePolicy,
)
from cassandra.protocol import ErrorMessage, IsBootstrappingErrorMessage, OverloadedErrorMessage
from cassandra.query import PreparedStatement, dict_factory

from inference_service.domain import (
    BoundingBox,
    Claim,
    Detection,
    Invocation,
    InvocationPage,
    InvocationQuery,
    ModelInfo,
    ModelInput,
    ModelOutput,
    PageCursor,
    State,
)
from inference_service.errors import InvocationGoneError, StoreUnavailableError
from inference_service.stores.cassandra_schema import (
    DEFAULT_BUCKET_S,
    INDEX_STATE_KEY,
    INDEX_STATE_TABLE,
    INDEX_TABLE,
    TABLE,
    check_identifier,
    create_schema,
    keyspace_replication,
    replication_map,
    replication_warnings,
    verify_schema,
)

if TYPE_CHECKING:
    from inference_service.settings import Settings

logger = logging.getLogger(__name__)

_SERIAL_PROFILE = "serial"
#: Native protocol v5 error "CAS write outcome unknown" (Cassandra 4.0+); the driver has no
#: class for it and raises a plain ``ErrorMessage`` carrying the code.
CAS_WRITE_UNKNOWN = 0x1700
#: The row of the list-index state table that the health check writes (it expires by itself).
_HEALTH_CHECK_KEY = "health-check"
#: How long the health check's row outlives the last server that wrote it.
_HEALTH_CHECK_TTL_S = 60

#: Driver errors that mean the store cannot answer now (down, overloaded or too slow).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    NoHostAvailable,
    OperationTimedOut,
    Unavailable,
    ReadTimeout,
    WriteTimeout,
    CoordinationFailure,  # ReadFailure, WriteFailure, CDCWriteFailure
    ConnectionException,
    OverloadedErrorMessage,
    IsBootstrappingErrorMessage,
)


class _Verdict(enum.Enum):
    """What a row says of a conditional write (``CassandraInvocationStore._conditional``)."""

    WON = "won"
    LOST = "lost"
    AGAIN = "again"


@dataclasses.dataclass(frozen=True, slots=True)
class CassandraConfig:
    """How to reach the cluster and how to use it; the app builds it from ``Settings``."""

    contact_points: Sequence[str] = ("127.0.0.1",)
    port: int = 9042
    local_dc: str = "datacenter1"
    keyspace: str = "inference"
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    replication: str = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    """CQL map literal used when the keyspace is created."""
    consistency: str = "LOCAL_QUORUM"
    serial_consistency: str = "SERIAL"
    request_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    default_ttl_s: int = 0
    """TTL of every written row, 0 for none; also the table's ``default_time_to_live``."""
    create_schema: bool = False
    """Create or upgrade the schema at connect; otherwise only check that it is in place."""
    list_bucket_s: int = DEFAULT_BUCKET_S
    """Bucket width of the list index when ``create_schema`` makes it (the index's own width,
    recorded in ``invocations_index_state``, wins afterwards)."""
    protocol_version: int = 5
    reconnect_delay_s: float = 0.5
    reconnect_max_delay_s: float = 4.0
    retry_budget_s: float = 10.0
    """How long idempotent writes and settling reads are retried before UNAVAILABLE."""
    tls_ca_file: str | None = None
    """CA (PEM) of the nodes' certificates: connect with TLS. None: plain TCP."""
    tls_verify_hostname: bool = True
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> CassandraConfig:
        """The store's part of the service settings."""
        password = settings.cassandra_password
        return cls(
            contact_points=tuple(settings.cassandra_contact_points),
            port=settings.cassandra_port,
            local_dc=settings.cassandra_local_dc,
            keyspace=settings.cassandra_keyspace,
            username=settings.cassandra_username,
            password=password.get_secret_value() if password is not None else None,
            replication=replication_map(
                settings.cassandra_replication_strategy,
                replication_factor=settings.cassandra_replication_factor,
                datacenters=settings.cassandra_datacenters,
            ),
            consistency=settings.cassandra_consistency,
            serial_consistency=settings.cassandra_serial_consistency,
            protocol_version=settings.cassandra_protocol_version,
            reconnect_delay_s=settings.cassandra_reconnect_delay_s,
            reconnect_max_delay_s=settings.cassandra_reconnect_max_delay_s,
            retry_budget_s=settings.cassandra_retry_budget_s,
            request_timeout_s=settings.cassandra_request_timeout_s,
            connect_timeout_s=settings.cassandra_connect_timeout_s,
            default_ttl_s=settings.cassandra_default_ttl_s,
            create_schema=settings.cassandra_create_schema,
            list_bucket_s=settings.cassandra_list_bucket_s,
            tls_ca_file=_path(settings.cassandra_tls_ca_file),
            tls_verify_hostname=settings.cassandra_tls_verify_hostname,
            tls_cert_file=_path(settings.cassandra_tls_cert_file),
            tls_key_file=_path(settings.cassandra_tls_key_file),
        )


# --- schema ---------------------------------------------------------------------------------


async def migrate(settings: Settings) -> None:
    """Create or upgrade the schema of ``settings`` (``inference-service migrate``), then
    disconnect."""
    config = dataclasses.replace(CassandraConfig.from_settings(settings), create_schema=True)
    store = await CassandraInvocationStore.connect(config)
    await store.close()


# --- the store ------------------------------------------------------------------------------


class CassandraInvocationStore:
    """``InvocationStore`` on Cassandra; build it with ``await ....connect(config)``."""

    def __init__(self, cluster: Cluster, session: Session, config: CassandraConfig) -> None:
        """Wrap a connected session (blocking: prepares the statements). Prefer ``connect``."""
        self._cluster = cluster
        self._session = session
        self._config = config
        self._ttl_s = int(config.default_ttl_s)
        queries = _queries(f"{config.keyspace}.{TABLE}")
        queries.update(_index_queries(config.keyspace))
        # Conditional writes are never retried by the driver: a second attempt of a claim that
        # was applied would find its own row. An uncertain answer is settled by a serial read.
        self._claim = self._prepare(queries["claim"], retry=False)
        self._take_over = self._prepare(queries["take_over"], retry=False)
        self._complete = self._prepare(queries["complete"], retry=False)
        self._get_with_content = self._prepare(queries["get_with_content"], idempotent=True)
        self._get_without_content = self._prepare(queries["get_without_content"], idempotent=True)
        self._delete = self._prepare(queries["delete"], retry=False)
        self._index_insert = self._prepare(queries["index_insert"], idempotent=True)
        self._index_delete = self._prepare(queries["index_delete"], idempotent=True)
        self._index_same_time = self._prepare(queries["index_same_time"], idempotent=True)
        self._index_older = self._prepare(queries["index_older"], idempotent=True)
        self._index_state = self._prepare(queries["index_state"], idempotent=True)
        self._index_floor = self._prepare(queries["index_floor"], idempotent=True)
        self._health_write = self._prepare(queries["health_write"], idempotent=True)
        state = session.execute(self._index_state, (INDEX_STATE_KEY,)).one()
        bucket_s = state["bucket_s"] if state is not None and state["bucket_s"] else None
        if bucket_s is not None and bucket_s != config.list_bucket_s:
            logger.warning(
                "the list index of keyspace %s has buckets of %ds (not the configured %ds): "
                "using %ds",
                config.keyspace,
                bucket_s,
                config.list_bucket_s,
                bucket_s,
            )
        self._bucket = dt.timedelta(seconds=bucket_s or config.list_bucket_s)

    def _prepare(
        self, query: str, *, idempotent: bool = False, retry: bool = True
    ) -> PreparedStatement:
        statement = self._session.prepare(query)
        statement.is_idempotent = idempotent  # the driver may then retry it on another host
        if not retry:
            statement.retry_policy = FallthroughRetryPolicy()
        return statement

    # --- construction -----------------------------------------------------------------

    @classmethod
    async def connect(cls, config: CassandraConfig) -> CassandraInvocationStore:
        """Connect (in a worker thread); create the schema when asked, else check it is in
        place; prepare the statements."""
        return await asyncio.to_thread(cls._connect_blocking, config)

    @classmethod
    async def from_settings(cls, settings: Settings) -> CassandraInvocationStore:
        """``connect`` with the store's part of the service settings."""
        return await cls.connect(CassandraConfig.from_settings(settings))

    @classmethod
    def _connect_blocking(cls, config: CassandraConfig) -> CassandraInvocationStore:
        check_identifier(config.keyspace)
        cluster = build_cluster(config)
        try:
            session = cluster.connect()
            if config.create_schema:
                create_schema(
                    session,
                    config.keyspace,
                    config.replication,
                    config.default_ttl_s,
                    bucket_s=config.list_bucket_s,
                )
            else:
                verify_schema(session, config.keyspace)
            _warn_about_replication(session, config)
            store = cls(cluster, session, config)
        except UNAVAILABLE_ERRORS as exc:
            cluster.shutdown()
            if _authentication_failed(exc):
                # Never the password, nor the server's message (it may echo what was sent).
                logger.error(
                    "Cassandra at %s rejected the credentials of user %r",
                    list(config.contact_points),
                    config.username,
                )
            else:
                logger.error("cannot connect to Cassandra at %s: %s", config.contact_points, exc)
            raise StoreUnavailableError("invocation store unavailable") from exc
        except BaseException:
            cluster.shutdown()
            raise
        logger.info(
            "connected to Cassandra %s, keyspace %s", list(config.contact_points), config.keyspace
        )
        return store

    async def close(self) -> None:
        await asyncio.to_thread(self._cluster.shutdown)

    # --- InvocationStore ----------------------------------------------------------------

    async def claim(self, invocation: Invocation) -> Invocation | None:
        # The lightweight transaction claims the id with the small cells only (hash, type,
        # metadata, model, times, claim): a Paxos proposal is kept in system.paxos besides the
        # table, so a content blob in it would be written twice and pushed through every Paxos
        # phase. The owner then writes the content with the outcome (``complete``). Until that
        # lands (or if the owner dies in between) the row reads as a PENDING invocation without
        # content; losers compare hashes, which the claim holds.
        claim = _claim_of(invocation)
        claim_id = uuid.UUID(claim.token)
        params = (
            invocation.id,
            claim_id,
            claim.time,
            invocation.content_sha256,
            invocation.content_type,
            dict(invocation.input.metadata),
            invocation.model.name,
            invocation.model.version,
            invocation.create_time,
            self._claim_ttl(invocation.create_time),
        )

        def judge(row: Mapping[str, Any] | None) -> _Verdict:
            if row is None:  # not applied: the claim may be sent again, unchanged
                return _Verdict.AGAIN
            # The row is ours: applied (maybe by an earlier attempt whose answer was lost).
            return _Verdict.WON if row["claim_id"] == claim_id else _Verdict.LOST

        # ``INSERT ... IF NOT EXISTS`` returns the whole stored row when not applied.
        row = await self._conditional("claim", self._claim, params, invocation.id, judge)
        if row is None:
            await self._index(invocation)
            return None
        existing = self._to_invocation(row, with_content=True)
        if existing is None:
            # The last second of an expiring row (its outcome cells already gone): the id is
            # free in a moment; the caller may retry.
            raise _unavailable("claim", RuntimeError(f"row {invocation.id!r} expiring"))
        return existing

    async def take_over(self, stale: Invocation, invocation: Invocation) -> Invocation | None:
        old = _claim_of(stale)
        old_id = uuid.UUID(old.token)
        new = _claim_of(invocation)
        new_id = uuid.UUID(new.token)
        ttl = self._remaining_ttl(stale.create_time)
        if ttl is None:
            raise _unavailable("take over", RuntimeError(f"row {stale.id!r} expiring"))
        model = invocation.model
        params = (ttl, new_id, new.time, model.name, model.version, stale.id, old_id)

        def judge(row: Mapping[str, Any] | None) -> _Verdict:
            if row is None:
                return _Verdict.LOST
            if row.get("claim_id") == new_id:  # ours, also when an earlier attempt won it
                return _Verdict.WON
            if row.get("claim_id") == old_id and row.get("state") is None:
                return _Verdict.AGAIN  # still stale: the take-over may be sent again
            return _Verdict.LOST

        row = await self._conditional("take over", self._take_over, params, stale.id, judge)
        if row is None:
            await self._index(stale)  # the first owner may have died before it wrote it
            return None
        # The conditional update returns only the columns of its condition: read the row.
        current = await self._serial_read(stale.id, "take over", None)
        stored = self._to_invocation(current, with_content=True) if current is not None else None
        if stored is None:
            raise InvocationGoneError(f"invocation {stale.id!r} was removed; nothing taken over")
        return stored

    async def complete(self, invocation: Invocation) -> Invocation | None:
        # A lightweight transaction on the owner's claim (a fencing token): an owner that
        # stalled past its lease (a GC or VM pause, SIGSTOP, CPU starvation, a slow clock) and
        # was taken over writes nothing when it wakes up, and a row deleted meanwhile is not
        # brought back (an UPDATE without condition would create it again). The Paxos round
        # carries the content, the one price of the fence (docs/performance.md).
        if invocation.claim is None:
            raise ValueError(f"complete of {invocation.id!r} without the owner's claim")
        claim_id = uuid.UUID(invocation.claim.token)
        output = invocation.output
        detections = None
        if output is not None:
            detections = [
                (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max, d.score, d.label)
                for d in output.detections
            ]
        ttl = self._remaining_ttl(invocation.create_time)
        if ttl is None:
            logger.info("invocation %r expires now; its outcome is not stored", invocation.id)
            return None
        params = (
            ttl,
            invocation.input.content,
            invocation.state.value,
            detections,
            output.image_width if output is not None else None,
            output.image_height if output is not None else None,
            invocation.error,
            invocation.complete_time,
            invocation.id,
            claim_id,
        )

        def judge(row: Mapping[str, Any] | None) -> _Verdict:
            if row is None:
                return _Verdict.LOST  # gone: deleted or expired
            if row.get("claim_id") != claim_id:
                return _Verdict.LOST  # taken over
            # Our claim and an outcome: only this owner writes one under its claim.
            return _Verdict.WON if row.get("state") is not None else _Verdict.AGAIN

        # Retried within the budget, as an idempotent write would be: it is one, for its owner.
        row = await self._conditional(
            "complete", self._complete, params, invocation.id, judge, persist=True
        )
        if row is None:
            return None
        current = await self._serial_read(invocation.id, "complete", None)
        stored = self._to_invocation(current, with_content=True) if current is not None else None
        if stored is None:
            raise InvocationGoneError(
                f"invocation {invocation.id!r} was removed while it ran; its outcome is not stored"
            )
        logger.warning(
            "invocation %r: this claim was taken over; its outcome is not stored", invocation.id
        )
        return stored

    async def get(self, invocation_id: str, *, with_content: bool = True) -> Invocation | None:
        # Not retried: the caller (a client) decides; UNAVAILABLE comes within the timeout.
        statement = self._get_with_content if with_content else self._get_without_content
        try:
            rows = await self._execute(statement, (invocation_id,))
        except Exception as exc:
            raise _unavailable_or(exc, "get") from exc
        if not rows:
            return None
        return self._to_invocation(rows[0], with_content=with_content)

    async def delete(self, invocation_id: str) -> bool:
        # A lightweight transaction, so that it is ordered with the claim, take-over and outcome
        # writes of the id (their Paxos rounds), and a row deleted here is never written back by
        # an Invoke that claimed it before (its conditional outcome write finds no claim). The
        # index entry goes after it: a stale entry is never listed (see ``list``).
        try:
            rows = await self._execute(self._get_without_content, (invocation_id,))
        except Exception as exc:
            raise _unavailable_or(exc, "delete") from exc
        if not rows:
            return False
        create_time = rows[0]["create_time"]
        try:
            result = await self._execute(self._delete, (invocation_id,))
            applied = bool(result[0]["[applied]"])
        except Exception as exc:
            if not _outcome_unknown(exc):
                raise _unavailable_or(exc, "delete") from exc
            logger.warning("delete of %r uncertain (%r); reading it back", invocation_id, exc)
            applied = await self._serial_read(invocation_id, "delete", exc) is None
        if applied and create_time is not None:
            create_time = _utc(create_time)
            # Timestamped now: an entry written late by an Invoke that claimed the id before
            # (timestamped with its claim time, see ``_index``) loses to this tombstone.
            await self._retrying(
                "delete",
                self._index_delete,
                (_micros(_utcnow()), self._bucket_of(create_time), create_time, invocation_id),
            )
        return applied

    async def list(self, query: InvocationQuery) -> InvocationPage:
        """Walks the index's buckets from the newest position down, reading at most
        ``MAX_INDEX_ROWS_PER_PAGE`` entries in ``MAX_BUCKETS_PER_PAGE`` buckets and the rows of
        at most ``max(2 * limit, MIN_ROW_READS_PER_PAGE)`` of them, then stops (with a position
        to go on from when there is more). Every listed entry is checked against its row: a row
        that is gone (deleted, expired) or re-created (another create time) is not listed, so
        a late or stale index entry can never bring back an invocation."""
        wanted = query.filter
        lower = await self._lower_bound(wanted.create_time_min)
        if query.after is not None:
            position = query.after
        else:
            upper = wanted.create_time_max or _utcnow() + CLOCK_SKEW
            position = PageCursor(create_time=upper, id=None)
        found: list[Invocation] = []
        content = 0
        rows_left = MAX_INDEX_ROWS_PER_PAGE
        reads_left = max(2 * query.limit, MIN_ROW_READS_PER_PAGE)
        buckets_left = MAX_BUCKETS_PER_PAGE
        bucket = self._bucket_of(_first_time_at_or_after(position))
        while True:
            if bucket + self._bucket <= lower:  # below the oldest bucket (or the filter)
                return InvocationPage(invocations=tuple(found), next=None)
            if rows_left <= 0 or reads_left <= 0 or buckets_left <= 0:
                return InvocationPage(invocations=tuple(found), next=position)
            fetch = min(rows_left, max(2 * (query.limit - len(found)), 64))
            entries = await self._index_entries(bucket, position, lower, fetch)
            rows_left -= len(entries)
            # The rows of the entries the filter's model and metadata terms let through, in
            # batches of what the page still needs (one by one for FULL pages: bounded memory).
            cut = len(entries)
            candidates: list[int] = []
            batch = 1 if query.with_content else query.limit - len(found)
            for index, entry in enumerate(entries):
                if wanted.matches_index(entry["model_name"], entry["metadata"]):
                    if len(candidates) >= reads_left:
                        cut = index  # no reads left for this one: the page stops before it
                        break
                    candidates.append(index)
            rows: dict[int, Invocation | None] = {}
            walked = 0  # entries[:walked] are decided (listed or not), ``position`` the last
            step = max(batch, 1)
            for first in range(0, len(candidates) + 1, step):
                chunk = candidates[first : first + step]
                results = await asyncio.gather(
                    *(self.get(entries[i]["id"], with_content=query.with_content) for i in chunk)
                )
                rows.update(zip(chunk, results, strict=True))
                reads_left -= len(chunk)
                # Decided now: every entry up to the last one read (or all, after the last).
                upto = chunk[-1] + 1 if first + step < len(candidates) else cut
                for index in range(walked, upto):
                    entry = entries[index]
                    position = PageCursor(create_time=_utc(entry["create_time"]), id=entry["id"])
                    invocation = rows.get(index)
                    if invocation is None or not _listed(invocation, position, wanted):
                        continue
                    found.append(invocation)
                    content += len(invocation.input.content)
                    if len(found) == query.limit or (
                        query.max_content_bytes is not None and content >= query.max_content_bytes
                    ):
                        return InvocationPage(invocations=tuple(found), next=position)
                walked = upto
            if cut < len(entries):
                return InvocationPage(invocations=tuple(found), next=position)
            if len(entries) < fetch:  # the bucket is done: on to the one before
                position = PageCursor(create_time=bucket, id=None)
                bucket -= self._bucket
                buckets_left -= 1

    async def check(self) -> None:
        # A write at the configured consistency: it needs as many replicas as real calls do,
        # and, unlike a read, no particular one of them. A read's coordinator asks the replicas
        # it picks; one that was killed and is not yet convicted by the failure detectors
        # (20-40 s) holds the read until the speculative retry or the read timeout, longer than
        # the health check waits, so one dead node of three made every server NOT_SERVING. A
        # write goes to every replica and is answered by the first quorum, as Invoke's are.
        try:
            await self._execute(self._health_write, (_utcnow(), _HEALTH_CHECK_KEY))
        except Exception as exc:
            if not _transient(exc):
                raise
            raise StoreUnavailableError("invocation store unavailable") from exc

    # --- list index helpers -------------------------------------------------------------

    async def lower_index_floor(self, oldest: dt.datetime) -> None:
        """Make listings reach back to ``oldest`` (``backfill-index`` calls it for the rows it
        indexes; the first ``migrate`` set the floor to its own time)."""
        rows = await self._retrying("index floor", self._index_state, (INDEX_STATE_KEY,))
        current = rows[0]["floor"] if rows else None
        if current is None or _utc(current) > _utc(oldest):
            await self._retrying("index floor", self._index_floor, (oldest, INDEX_STATE_KEY))

    def _bucket_of(self, time: dt.datetime) -> dt.datetime:
        """The start of the bucket holding ``time``."""
        offset = (_utc(time) - _EPOCH) // self._bucket
        return _EPOCH + offset * self._bucket

    async def _index(self, invocation: Invocation) -> None:
        """Write the list index entry of an invocation this caller owns (idempotent).

        Its write timestamp is the claim's time, not the time of the write: an entry written
        late (the owner stalled between its claim and this write) by an Invoke whose row was
        deleted meanwhile is older than the delete's tombstone of the entry and never comes
        back (up to the clock skew between the servers; a stale entry is never listed in any
        case: ``list`` checks each entry against its row)."""
        create_time = invocation.create_time
        claimed = invocation.claim.time if invocation.claim is not None else create_time
        params = (
            self._bucket_of(create_time),
            create_time,
            invocation.id,
            invocation.model.name,
            dict(invocation.input.metadata),
            self._claim_ttl(create_time),
            _micros(claimed),
        )
        await self._retrying("index", self._index_insert, params)

    async def _lower_bound(self, create_time_min: dt.datetime | None) -> dt.datetime:
        """The oldest create time a listing must reach: the filter's, the index's oldest bucket
        (``migrate``, ``backfill-index``) and, with a retention, what has not expired."""
        try:
            rows = await self._execute(self._index_state, (INDEX_STATE_KEY,))
        except Exception as exc:
            raise _unavailable_or(exc, "list") from exc
        bounds = [_EPOCH]
        if rows and rows[0]["floor"] is not None:
            bounds.append(self._bucket_of(_utc(rows[0]["floor"])))
        if create_time_min is not None:
            bounds.append(create_time_min)
        if self._ttl_s:
            bounds.append(_utcnow() - dt.timedelta(seconds=self._ttl_s))
        return max(bounds)

    async def _index_entries(
        self, bucket: dt.datetime, position: PageCursor, lower: dt.datetime, limit: int
    ) -> list[Mapping[str, Any]]:
        """Up to ``limit`` entries of ``bucket`` after ``position``, not older than ``lower``."""
        entries: list[Mapping[str, Any]] = []
        try:
            if position.id is not None and self._bucket_of(position.create_time) == bucket:
                entries = await self._execute(
                    self._index_same_time, (bucket, position.create_time, position.id, limit)
                )
                entries = [e for e in entries if _utc(e["create_time"]) >= lower]
            if len(entries) < limit:
                entries += await self._execute(
                    self._index_older,
                    (bucket, position.create_time, lower, limit - len(entries)),
                )
        except Exception as exc:
            raise _unavailable_or(exc, "list") from exc
        return entries

    # --- claim helpers ------------------------------------------------------------------

    async def _conditional(
        self,
        operation: str,
        statement: PreparedStatement,
        params: Sequence[Any],
        invocation_id: str,
        judge: Callable[[Mapping[str, Any] | None], _Verdict],
        *,
        persist: bool = False,
    ) -> Mapping[str, Any] | None:
        """Run a lightweight transaction (never retried blindly); ``None`` when it was applied,
        else the row it returned (not applied: the columns of its condition, or the whole row
        for ``IF NOT EXISTS``), or the row a serial read found.

        ``judge`` tells from a row (``None``: no row) whether this caller's write is in it
        (``WON``), cannot be (``LOST``), or is not there yet and may be sent again (``AGAIN``).
        It rules on every row that is not an applied answer: one whose answer was lost (a
        timeout, a dropped connection, "CAS write outcome unknown") is settled by a serial read
        (the Paxos round may have committed); a definite "not applied" may still show the
        caller's own write (an earlier attempt of it, completed by Paxos since). ``AGAIN`` is
        retried within ``retry_budget_s``, then ``StoreUnavailableError``; with ``persist`` a
        transient error that certainly wrote nothing (unavailable, overloaded) is too, else it
        raises ``StoreUnavailableError`` at once."""
        loop = asyncio.get_running_loop()
        deadline = self._deadline()
        delay = 0.05
        while True:
            cause: BaseException | None = None
            try:
                rows = await self._execute(statement, params)
            except Exception as exc:
                cause = exc
                if not _outcome_unknown(exc):
                    if not (persist and _transient(exc)):
                        raise _unavailable_or(exc, operation) from exc
                    row, verdict = None, _Verdict.AGAIN  # certainly not applied
                else:
                    logger.warning(
                        "%s of %r uncertain (%r); reading it back", operation, invocation_id, exc
                    )
                    row = await self._serial_read(invocation_id, operation, exc)
                    verdict = judge(row)
            else:
                row = rows[0]
                if row["[applied]"]:
                    return None
                verdict = judge(row)
            if verdict is _Verdict.WON:
                return None
            if verdict is _Verdict.LOST:
                return row
            if loop.time() + delay > deadline:
                raise _unavailable(operation, cause or RuntimeError("not applied")) from cause
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _serial_read(
        self, invocation_id: str, operation: str, cause: BaseException | None
    ) -> Mapping[str, Any] | None:
        """The row as the last committed Paxos round left it (retried within the budget)."""
        rows = await self._retrying(
            operation, self._get_with_content, (invocation_id,), profile=_SERIAL_PROFILE
        )
        return rows[0] if rows else None

    # --- plumbing -----------------------------------------------------------------------

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._config.retry_budget_s

    async def _retrying(
        self,
        operation: str,
        statement: PreparedStatement,
        params: Sequence[Any],
        *,
        profile: object = EXEC_PROFILE_DEFAULT,
    ) -> list[Any]:
        """Run an idempotent statement; retry transient failures with exponential backoff for
        up to ``retry_budget_s``, then raise ``StoreUnavailableError``."""
        loop = asyncio.get_running_loop()
        deadline = self._deadline()
        delay = 0.05
        while True:
            try:
                return await self._execute(statement, params, profile=profile)
            except Exception as exc:
                if not _transient(exc):
                    raise
                if loop.time() + delay > deadline:
                    raise _unavailable(operation, exc) from exc
                logger.info(
                    "store %s failed (%s); retrying in %.2fs", operation, type(exc).__name__, delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _execute(
        self,
        statement: PreparedStatement,
        params: Sequence[Any],
        *,
        profile: object = EXEC_PROFILE_DEFAULT,
    ) -> list[Any]:
        """Run one statement without blocking the loop; return its (single page of) rows."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        response: ResponseFuture = self._session.execute_async(
            statement, params, execution_profile=profile
        )
        response.add_callbacks(
            callback=_to_loop, callback_args=(loop, future, True),
            errback=_to_loop, errback_args=(loop, future, False),
        )  # fmt: skip
        return await future

    def _claim_ttl(self, create_time: dt.datetime) -> int:
        """The claim expires with the content and outcome written after it (0: never)."""
        remaining = self._remaining_ttl(create_time)
        return remaining if remaining is not None else 1

    def _remaining_ttl(self, create_time: dt.datetime) -> int | None:
        """TTL for the outcome so that it expires no later than its input; 0 means never.

        The input was written at or after ``create_time`` with the full TTL; Cassandra counts
        TTLs in whole seconds, hence the second taken off. ``None``: the row expires now.
        """
        if self._ttl_s == 0:
            return 0
        elapsed = (dt.datetime.now(dt.UTC) - _utc(create_time)).total_seconds()
        remaining = math.floor(self._ttl_s - elapsed) - 1
        return remaining if remaining >= 1 else None

    @staticmethod
    def _to_invocation(row: Mapping[str, Any], *, with_content: bool) -> Invocation | None:
        """A row as an ``Invocation``; ``None`` for the remains of a partly expired row."""
        if row["content_sha256"] is None:
            return None
        content = (row["content"] or b"") if with_content else b""
        output = None
        if row["image_width"] is not None:
            output = ModelOutput(
                detections=tuple(
                    Detection(
                        box=BoundingBox(x_min=d[0], y_min=d[1], x_max=d[2], y_max=d[3]),
                        score=d[4],
                        label=d[5] or "",
                    )
                    for d in (row["detections"] or ())
                ),
                image_width=row["image_width"],
                image_height=row["image_height"],
            )
        complete_time = row["complete_time"]
        create_time = _utc(row["create_time"])
        claim = None
        if row["claim_id"] is not None:
            claim_time = row["claim_time"]
            claim = Claim(
                token=row["claim_id"].hex,
                time=_utc(claim_time) if claim_time is not None else create_time,
                age=_claim_age(row),
            )
        return Invocation(
            input=ModelInput(id=row["id"], content=content, metadata=row["metadata"] or {}),
            content_sha256=row["content_sha256"],
            content_type=row["content_type"] or "application/octet-stream",
            # The claim writes no state: the outcome columns belong to ``complete`` alone.
            state=State(row["state"]) if row["state"] is not None else State.PENDING,
            model=ModelInfo(name=row["model_name"] or "", version=row["model_version"] or ""),
            create_time=create_time,
            output=output,
            complete_time=_utc(complete_time) if complete_time is not None else None,
            error=row["error"] or "",
            claim=claim,
        )


def _index_queries(keyspace: str) -> dict[str, str]:
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
            f"UPDATE {keyspace}.{INDEX_STATE_TABLE} USING TTL {_HEALTH_CHECK_TTL_S}"  # noqa: S608
            " SET floor = ? WHERE name = ?"
        ),
    }


def _queries(table: str) -> dict[str, str]:
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
    }


def build_cluster(config: CassandraConfig) -> Cluster:
    """A driver ``Cluster`` for ``config`` (not connected yet)."""
    routing = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=config.local_dc))
    consistency = ConsistencyLevel.name_to_value[config.consistency.upper()]
    serial = ConsistencyLevel.name_to_value[config.serial_consistency.upper()]
    default = ExecutionProfile(
        load_balancing_policy=routing,
        row_factory=dict_factory,
        consistency_level=consistency,
        serial_consistency_level=serial,
        request_timeout=config.request_timeout_s,
    )
    serial_reads = ExecutionProfile(
        load_balancing_policy=routing,
        row_factory=dict_factory,
        consistency_level=serial,
        request_timeout=config.request_timeout_s,
    )
    auth = None
    if config.username:
        auth = PlainTextAuthProvider(username=config.username, password=config.password or "")
    return Cluster(
        ssl_context=tls_context(config),
        contact_points=list(config.contact_points),
        port=config.port,
        protocol_version=config.protocol_version,
        execution_profiles={EXEC_PROFILE_DEFAULT: default, _SERIAL_PROFILE: serial_reads},
        auth_provider=auth,
        connect_timeout=config.connect_timeout_s,
        control_connection_timeout=config.connect_timeout_s,
        # Forever (no attempt limit): after a long outage the pools come back by themselves.
        reconnection_policy=ExponentialReconnectionPolicy(
            base_delay=config.reconnect_delay_s,
            max_delay=config.reconnect_max_delay_s,
            max_attempts=None,
        ),
        # Without it a ~100 KB write waits for the peer's delayed ACK (~40 ms) under Nagle.
        sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        # Content is compressed images: compressing it again costs CPU for nothing.
        compression=False,
    )


def tls_context(config: CassandraConfig) -> ssl.SSLContext | None:
    """The client TLS context for ``config``, or ``None`` for plain TCP."""
    if config.tls_ca_file is None:
        return None
    context = ssl.create_default_context(cafile=config.tls_ca_file)
    context.check_hostname = config.tls_verify_hostname
    if config.tls_cert_file is not None:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return context


def _path(value: object) -> str | None:
    return str(value) if value is not None else None


def _authentication_failed(exc: BaseException) -> bool:
    errors = exc.errors.values() if isinstance(exc, NoHostAvailable) else ()
    return any(isinstance(error, AuthenticationFailed) for error in errors)


def _warn_about_replication(session: Session, config: CassandraConfig) -> None:
    replication = keyspace_replication(session, config.keyspace)
    if replication is None:
        return
    for warning in replication_warnings(
        replication,
        local_dc=config.local_dc,
        consistency=config.consistency,
        serial_consistency=config.serial_consistency,
    ):
        logger.warning("keyspace %s: %s", config.keyspace, warning)


def _claim_of(invocation: Invocation) -> Claim:
    if invocation.claim is None:
        # Callers that do not track claims (tests, tools) get one made from the create time.
        return Claim(token=uuid.uuid4().hex, time=invocation.create_time)
    return invocation.claim


def _to_loop(
    result: Any,
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    ok: bool,
) -> None:
    """Driver callback (an I/O thread): settle ``future`` on its own loop."""

    def settle() -> None:
        if future.done():  # cancelled by the caller meanwhile
            return
        if ok:
            future.set_result(result)
        else:
            future.set_exception(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody waits any more
        logger.debug("result for a closed event loop dropped")


def _cas_unknown(exc: BaseException) -> bool:
    return isinstance(exc, ErrorMessage) and getattr(exc, "code", None) == CAS_WRITE_UNKNOWN


def _transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "the store cannot answer now" (retrying may succeed)."""
    return isinstance(exc, UNAVAILABLE_ERRORS) or _cas_unknown(exc)


def _outcome_unknown(exc: BaseException) -> bool:
    """Whether a failed conditional write may still have been applied (timeouts, lost
    connections, "CAS write outcome unknown")."""
    if _cas_unknown(exc):
        return True
    if not isinstance(exc, UNAVAILABLE_ERRORS):
        return False
    if isinstance(exc, NoHostAvailable):
        return bool(exc.errors)  # no errors: no host was even tried
    return not isinstance(exc, (Unavailable, OverloadedErrorMessage, IsBootstrappingErrorMessage))


def _unavailable_or(exc: BaseException, operation: str) -> BaseException:
    """``StoreUnavailableError`` for a transient driver error; any other error as it is."""
    return _unavailable(operation, exc) if _transient(exc) else exc


def _unavailable(operation: str, exc: BaseException) -> StoreUnavailableError:
    logger.warning("invocation store %s failed: %s: %s", operation, type(exc).__name__, exc)
    return StoreUnavailableError("invocation store unavailable")


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: Where a first page starts: a little after now, for servers whose clocks run ahead.
CLOCK_SKEW = dt.timedelta(minutes=5)
#: Bounds of one ListInvocations page (``CassandraInvocationStore.list``).
MAX_BUCKETS_PER_PAGE = 96
MAX_INDEX_ROWS_PER_PAGE = 4000
MIN_ROW_READS_PER_PAGE = 100


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _micros(value: dt.datetime) -> int:
    """A CQL write timestamp (microseconds since the epoch)."""
    return (_utc(value) - _EPOCH) // dt.timedelta(microseconds=1)


def _listed(invocation: Invocation | None, position: PageCursor, wanted: Any) -> bool:
    """Whether the row read for the index entry at ``position`` is listed: it exists, is the
    row the entry was written for (same create time: not one deleted and invoked again) and
    matches the whole filter (the state, which the index does not hold)."""
    return (
        invocation is not None
        and invocation.create_time == position.create_time
        and wanted.matches(invocation)
    )


def _first_time_at_or_after(position: PageCursor) -> dt.datetime:
    """The newest create time that can come after ``position`` (strictly older without an
    id)."""
    if position.id is None:
        return position.create_time - dt.timedelta(milliseconds=1)
    return position.create_time


def _utc(value: dt.datetime) -> dt.datetime:
    """The driver returns naive UTC datetimes; the domain uses aware ones."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _claim_age(row: Mapping[str, Any]) -> dt.timedelta:
    """A claim's age by Cassandra's clocks (``claim_written``, ``store_now`` of a read). A row
    without them (what a conditional write returns) counts as just claimed: its reader reads
    it again before it may take the claim over, and then learns its age."""
    written, now = row.get("claim_written"), row.get("store_now")
    if written is None or now is None:
        return dt.timedelta(0)
    return max(dt.timedelta(0), _utc(now) - dt.datetime.fromtimestamp(written / 1e6, dt.UTC))
