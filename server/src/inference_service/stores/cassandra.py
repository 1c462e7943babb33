"""The invocation store on Apache Cassandra, and the schema it needs.

Design:

* One row per input id in ``<keyspace>.invocations``. The claim is a lightweight transaction
  (``INSERT ... IF NOT EXISTS``) of the small cells: the first writer wins, everyone else gets
  the stored row back from the same Paxos round. The winner then writes the content, and later
  the outcome (``complete``), with plain updates of columns that nobody else writes and that the
  claim never writes, so no ordering between a Paxos write and a plain one can lose either.
* With a TTL, every write of a row expires at the same moment, counted from its create time.
* Only prepared statements; consistency ``LOCAL_QUORUM`` (configurable), serial consistency
  ``LOCAL_SERIAL``; token-aware, DC-aware routing; fixed protocol version.
* The asyncio event loop is never blocked: each statement runs with ``execute_async`` and its
  callbacks hand the result to the loop with ``call_soon_threadsafe``; connecting (blocking in
  the driver) runs in a worker thread.
* Every driver error that means "unreachable, overloaded or timed out" becomes
  ``StoreUnavailableError``; the driver reconnects by itself (constant 1 s delay), so the same
  store works again once Cassandra is back.

Size limit: a Cassandra mutation must be smaller than half a commit log segment
(``commitlog_segment_size``, default 32 MiB), so 8 MiB of content is fine with the defaults;
``native_transport_max_message_size`` (16 MiB by default with a large enough heap) must exceed
the largest request too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cassandra import (
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
    ConstantReconnectionPolicy,
    DCAwareRoundRobinPolicy,
    TokenAwarePolicy,
)
from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage
from cassandra.query import PreparedStatement, dict_factory

from inference_service.domain import (
    BoundingBox,
    Detection,
    Invocation,
    ModelInfo,
    ModelInput,
    ModelOutput,
    State,
)
from inference_service.errors import StoreUnavailableError

if TYPE_CHECKING:
    from inference_service.settings import Settings

logger = logging.getLogger(__name__)

TABLE = "invocations"
_SERIAL_PROFILE = "serial"
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")

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


@dataclasses.dataclass(frozen=True, slots=True)
class CassandraConfig:
    """How to reach the cluster and how to use it; the app builds it from ``Settings``."""

    contact_points: Sequence[str] = ("127.0.0.1",)
    port: int = 9042
    local_dc: str = "datacenter1"
    keyspace: str = "inference"
    username: str | None = None
    password: str | None = None
    replication: str = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    """CQL map literal used when the keyspace is created."""
    consistency: str = "LOCAL_QUORUM"
    serial_consistency: str = "LOCAL_SERIAL"
    request_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    default_ttl_s: int = 0
    """TTL of every written row, 0 for none; also the table's ``default_time_to_live``."""
    create_schema: bool = True
    protocol_version: int = 5
    reconnect_delay_s: float = 1.0

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
            replication=settings.cassandra_replication,
            consistency=settings.cassandra_consistency,
            serial_consistency=settings.cassandra_serial_consistency,
            protocol_version=settings.cassandra_protocol_version,
            reconnect_delay_s=settings.cassandra_reconnect_delay_s,
            request_timeout_s=settings.cassandra_request_timeout_s,
            connect_timeout_s=settings.cassandra_connect_timeout_s,
            default_ttl_s=settings.cassandra_default_ttl_s,
            create_schema=settings.cassandra_create_schema,
        )


# --- schema ---------------------------------------------------------------------------------


def schema_statements(keyspace: str, replication: str, default_ttl_s: int = 0) -> list[str]:
    """The idempotent CQL that creates the keyspace, the ``detection`` type and the table."""
    _check_identifier(keyspace)
    if not replication.strip().startswith("{"):
        raise ValueError(f"replication must be a CQL map literal, not {replication!r}")
    if default_ttl_s < 0:
        raise ValueError("default_ttl_s must be >= 0")
    return [
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}",
        # The output is stored as typed columns, not as serialized JSON or protobuf: cqlsh shows
        # it as is, Cassandra checks the types, and nothing but the driver is needed to read it.
        # A box is flattened into its detection; ``double`` keeps Python floats exact.
        f"CREATE TYPE IF NOT EXISTS {keyspace}.detection ("
        " x_min double, y_min double, x_max double, y_max double, score double, label text)",
        f"CREATE TABLE IF NOT EXISTS {keyspace}.{TABLE} ("
        " id text PRIMARY KEY,"
        " claim_id uuid,"  # written by the claim: tells a lost claim from a won one after a timeout
        " content blob,"
        " content_sha256 text,"
        " content_type text,"
        " metadata map<text, text>,"
        " model_name text,"
        " model_version text,"
        " state text,"
        " detections frozen<list<frozen<detection>>>,"
        " image_width int,"  # set iff the model produced an output
        " image_height int,"
        " error text,"
        " create_time timestamp,"
        " complete_time timestamp"
        f") WITH default_time_to_live = {int(default_ttl_s)}"
        " AND comment = 'inference-service: one input and its outcome per id'",
    ]


def create_schema(
    session: Session,
    keyspace: str,
    replication: str,
    default_ttl_s: int = 0,
    *,
    timeout_s: float = 30.0,
) -> None:
    """Create the keyspace and table if missing (blocking) and wait for schema agreement."""
    for statement in schema_statements(keyspace, replication, default_ttl_s):
        logger.debug("schema: %s", statement)
        session.execute(statement, timeout=timeout_s)
    if not session.cluster.control_connection.wait_for_schema_agreement(wait_time=timeout_s):
        logger.error("no schema agreement on keyspace %s after %.0fs", keyspace, timeout_s)
        raise StoreUnavailableError("invocation store unavailable")
    logger.info("schema of keyspace %s is in place", keyspace)


async def migrate(settings: Settings) -> None:
    """Create the schema of ``settings`` (``inference-service migrate``), then disconnect."""
    config = dataclasses.replace(CassandraConfig.from_settings(settings), create_schema=True)
    store = await CassandraInvocationStore.connect(config)
    await store.close()


def _check_identifier(name: str) -> None:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a valid unquoted CQL identifier: {name!r}")


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
        self._claim = self._prepare(queries["claim"])
        self._complete = self._prepare(queries["complete"])
        self._complete.is_idempotent = True  # the driver may retry it on another host
        self._store_content_statement = self._prepare(queries["store_content"])
        self._store_content_statement.is_idempotent = True
        self._get_with_content = self._prepare(queries["get_with_content"])
        self._get_without_content = self._prepare(queries["get_without_content"])

    def _prepare(self, query: str) -> PreparedStatement:
        return self._session.prepare(query)

    # --- construction -----------------------------------------------------------------

    @classmethod
    async def connect(cls, config: CassandraConfig) -> CassandraInvocationStore:
        """Connect (in a worker thread), create the schema when asked, prepare statements."""
        return await asyncio.to_thread(cls._connect_blocking, config)

    @classmethod
    async def from_settings(cls, settings: Settings) -> CassandraInvocationStore:
        """``connect`` with the store's part of the service settings."""
        return await cls.connect(CassandraConfig.from_settings(settings))

    @classmethod
    def _connect_blocking(cls, config: CassandraConfig) -> CassandraInvocationStore:
        _check_identifier(config.keyspace)
        cluster = build_cluster(config)
        try:
            session = cluster.connect()
            if config.create_schema:
                create_schema(session, config.keyspace, config.replication, config.default_ttl_s)
            store = cls(cluster, session, config)
        except UNAVAILABLE_ERRORS as exc:
            cluster.shutdown()
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
        # Two steps. The lightweight transaction claims the id with the small cells only (hash,
        # type, metadata, model, times): a Paxos proposal is kept in system.paxos besides the
        # table, so a content blob in it would be written twice and pushed through every Paxos
        # phase. The winner then writes the content with a plain update of a column that only
        # it writes. Until that lands (or if the winner dies in between) the row reads as a
        # PENDING invocation without content; losers compare hashes, which the claim holds.
        claim_id = uuid.uuid4()
        params = (
            invocation.id,
            claim_id,
            invocation.content_sha256,
            invocation.content_type,
            dict(invocation.input.metadata),
            invocation.model.name,
            invocation.model.version,
            invocation.create_time,
            self._claim_ttl(invocation.create_time),
        )
        try:
            rows = await self._execute(self._claim, params)
        except UNAVAILABLE_ERRORS as exc:
            if not _maybe_applied(exc):
                raise _unavailable("claim", exc) from exc
            # CAS uncertainty: the Paxos round may have committed. A serial read settles it.
            logger.warning("claim of %r uncertain (%r); reading it back", invocation.id, exc)
            existing = await self._resolve_uncertain_claim(invocation.id, claim_id, exc)
        else:
            row = rows[0]
            if row["[applied]"]:
                existing = None
            else:
                existing = self._to_invocation(row, with_content=True)
                if existing is None:
                    # The last second of an expiring row (its outcome cells already gone): the
                    # id is free in a moment; the caller may retry.
                    raise _unavailable("claim", RuntimeError(f"row {invocation.id!r} expiring"))
                if row["content"] is None:
                    existing = await self._content_of_fresh_claim(existing)
        if existing is None:
            await self._store_content(invocation)
        return existing

    async def _content_of_fresh_claim(self, existing: Invocation) -> Invocation:
        """The winner of a claim writes its content right after it: wait for it (up to the
        request timeout), so that a loser gets the stored input with its content."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.request_timeout_s
        delay = 0.002
        while loop.time() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            try:
                rows = await self._execute(self._get_with_content, (existing.id,))
            except UNAVAILABLE_ERRORS as exc:
                raise _unavailable("claim", exc) from exc
            if rows and rows[0]["content"] is not None:
                return self._to_invocation(rows[0], with_content=True) or existing
        logger.warning("invocation %r has no content yet; its writer may have died", existing.id)
        return existing

    async def _store_content(self, invocation: Invocation) -> None:
        ttl = self._remaining_ttl(invocation.create_time)
        if ttl is None:
            return
        try:
            await self._execute(
                self._store_content_statement, (ttl, invocation.input.content, invocation.id)
            )
        except UNAVAILABLE_ERRORS as exc:
            raise _unavailable("claim", exc) from exc

    async def _resolve_uncertain_claim(
        self, invocation_id: str, claim_id: uuid.UUID, cause: BaseException
    ) -> Invocation | None:
        try:
            rows = await self._execute(
                self._get_with_content, (invocation_id,), profile=_SERIAL_PROFILE
            )
        except UNAVAILABLE_ERRORS as exc:
            logger.warning("could not read back claim of %r: %s", invocation_id, exc)
            raise _unavailable("claim", cause) from exc
        stored = self._to_invocation(rows[0], with_content=True) if rows else None
        if stored is None:
            raise _unavailable("claim", cause)
        if rows[0]["claim_id"] == claim_id:
            logger.info("uncertain claim of %r had been applied", invocation_id)
            return None
        return stored

    async def complete(self, invocation: Invocation) -> None:
        # A plain (idempotent) UPDATE, not a lightweight transaction: the outcome columns are
        # written by nobody but the one caller that won the claim, and the claim's Paxos write
        # never touches them, so no timestamp ordering between the two can lose the outcome.
        # It saves a Paxos round per Invoke (the most expensive thing Cassandra does here).
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
            return
        params = (
            ttl,
            invocation.state.value,
            detections,
            output.image_width if output is not None else None,
            output.image_height if output is not None else None,
            invocation.error,
            invocation.complete_time,
            invocation.id,
        )
        try:
            await self._execute(self._complete, params)
        except UNAVAILABLE_ERRORS as exc:
            raise _unavailable("complete", exc) from exc

    async def get(self, invocation_id: str, *, with_content: bool = True) -> Invocation | None:
        statement = self._get_with_content if with_content else self._get_without_content
        try:
            rows = await self._execute(statement, (invocation_id,))
        except UNAVAILABLE_ERRORS as exc:
            raise _unavailable("get", exc) from exc
        if not rows:
            return None
        return self._to_invocation(rows[0], with_content=with_content)

    # --- plumbing -----------------------------------------------------------------------

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
        return Invocation(
            input=ModelInput(id=row["id"], content=content, metadata=row["metadata"] or {}),
            content_sha256=row["content_sha256"],
            content_type=row["content_type"] or "application/octet-stream",
            # The claim writes no state: the outcome columns belong to ``complete`` alone.
            state=State(row["state"]) if row["state"] is not None else State.PENDING,
            model=ModelInfo(name=row["model_name"] or "", version=row["model_version"] or ""),
            create_time=_utc(row["create_time"]),
            output=output,
            complete_time=_utc(complete_time) if complete_time is not None else None,
            error=row["error"] or "",
        )


def _queries(table: str) -> dict[str, str]:
    """The store's CQL. ``table`` is ``<keyspace>.invocations`` with a checked keyspace name."""
    outcome = "state, detections, image_width, image_height, error, complete_time"
    columns = (
        "id, claim_id, content_sha256, content_type, metadata, model_name, model_version, "
        f"create_time, {outcome}"
    )
    claim = (
        f"INSERT INTO {table}"  # noqa: S608
        " (id, claim_id, content_sha256, content_type, metadata,"
        " model_name, model_version, create_time)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?"
    )
    store_content = f"UPDATE {table} USING TTL ? SET content = ? WHERE id = ?"  # noqa: S608
    complete = (
        f"UPDATE {table} USING TTL ?"  # noqa: S608
        " SET state = ?, detections = ?, image_width = ?, image_height = ?, error = ?,"
        " complete_time = ?"
        " WHERE id = ?"
    )
    return {
        "claim": claim,
        "store_content": store_content,
        "complete": complete,
        "get_with_content": f"SELECT {columns}, content FROM {table} WHERE id = ?",  # noqa: S608
        "get_without_content": f"SELECT {columns} FROM {table} WHERE id = ?",  # noqa: S608
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
        contact_points=list(config.contact_points),
        port=config.port,
        protocol_version=config.protocol_version,
        execution_profiles={EXEC_PROFILE_DEFAULT: default, _SERIAL_PROFILE: serial_reads},
        auth_provider=auth,
        connect_timeout=config.connect_timeout_s,
        control_connection_timeout=config.connect_timeout_s,
        reconnection_policy=ConstantReconnectionPolicy(delay=config.reconnect_delay_s),
        # Content is compressed images: compressing it again costs CPU for nothing.
        compression=False,
    )


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


def _maybe_applied(exc: BaseException) -> bool:
    """Whether a failed write may still have been applied (timeouts, lost connections)."""
    if isinstance(exc, NoHostAvailable):
        return bool(exc.errors)  # no errors: no host was even tried
    return not isinstance(exc, (Unavailable, OverloadedErrorMessage, IsBootstrappingErrorMessage))


def _unavailable(operation: str, exc: BaseException) -> StoreUnavailableError:
    logger.warning("invocation store %s failed: %s: %s", operation, type(exc).__name__, exc)
    return StoreUnavailableError("invocation store unavailable")


def _utc(value: dt.datetime) -> dt.datetime:
    """The driver returns naive UTC datetimes; the domain uses aware ones."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
