"""``CassandraInvocationStore``: the invocation store's operations on Apache Cassandra.

Design:

* One row per input id in ``<keyspace>.invocations``; ``claim``, ``take_over``, ``complete`` and
  ``delete`` are the lightweight transactions of the claim protocol, explained once in
  docs/architecture.md ("The claim protocol"); an uncertain answer of any of them is settled
  in one place, ``retry.conditional``.
* With a TTL, every write of a row expires at the same moment, counted from its create time.
* ListInvocations reads a second table, ``invocations_by_time``: one partition per time bucket
  (``cassandra_list_bucket_s``, recorded by the first ``migrate``), clustered by
  ``(create_time DESC, id ASC)``, holding the id, model name and metadata. The owner of a claim
  writes the entry right after winning it (a take-over writes it again), idempotently, with the
  claim's time as write timestamp. Entries are hints, never the truth: ``list`` reads the row of
  every entry it lists and drops entries whose row is gone, has another create time (deleted
  and invoked afresh) or does not match the filter, so a late or stale entry is never listed.
  One page is bounded (``MAX_BUCKETS_PER_PAGE``, ``MAX_INDEX_ROWS_PER_PAGE``, row reads).
* ``delete`` is ``DELETE ... IF EXISTS``, then the list entry with the delete's time as write
  timestamp (docs/architecture.md, "Deletes and the claim").
* Only prepared statements (``cql``). Every statement runs through ``_execute`` (``bridge``:
  the event loop is never blocked); connecting runs in a worker thread
  (``cluster.connect_with_schema``).
* Every driver error that means "unreachable, overloaded or timed out" becomes
  ``StoreUnavailableError`` (``retry``).

Size limit: a Cassandra mutation must be smaller than half a commit log segment
(``commitlog_segment_size``, default 32 MiB), so 8 MiB of content is fine with the defaults;
``native_transport_max_message_size`` (16 MiB by default with a large enough heap) must exceed
the largest request too.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import logging
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, Session
from cassandra.query import PreparedStatement

from inference_service.domain import (
    Claim,
    Invocation,
    InvocationPage,
    InvocationQuery,
    PageCursor,
)
from inference_service.errors import InvocationGoneError, StoreUnavailableError, quote
from inference_service.stores.cassandra import cql
from inference_service.stores.cassandra.bridge import execute
from inference_service.stores.cassandra.cluster import SERIAL_PROFILE, connect_with_schema
from inference_service.stores.cassandra.config import CassandraConfig
from inference_service.stores.cassandra.cql import HEALTH_CHECK_KEY
from inference_service.stores.cassandra.retry import (
    ConditionalRetryPolicy,
    Verdict,
    conditional,
    retrying,
    transient,
    unavailable,
    unavailable_or,
)
from inference_service.stores.cassandra.rows import (
    EPOCH,
    detection_rows,
    micros,
    to_invocation,
    utc,
    utcnow,
)
from inference_service.stores.cassandra.schema import INDEX_STATE_KEY, TABLE

if TYPE_CHECKING:
    from inference_service.settings import Settings

logger = logging.getLogger(__name__)


class CassandraInvocationStore:
    """``InvocationStore`` on Cassandra; build it with ``await ....connect(config)``."""

    def __init__(self, cluster: Cluster, session: Session, config: CassandraConfig) -> None:
        """Wrap a connected session (blocking: prepares the statements). Prefer ``connect``."""
        self._cluster = cluster
        self._session = session
        self._config = config
        self._ttl_s = int(config.default_ttl_s)
        queries = cql.queries(f"{config.keyspace}.{TABLE}")
        queries.update(cql.index_queries(config.keyspace))
        # Conditional writes are never retried by the driver: a second attempt of a claim that
        # was applied would find its own row. An uncertain answer is settled by a serial read.
        self._claim = self._prepare(queries["claim"], retry=False)
        self._take_over = self._prepare(queries["take_over"], retry=False)
        self._complete = self._prepare(queries["complete"], retry=False)
        self._get_with_content = self._prepare(queries["get_with_content"], idempotent=True)
        self._get_without_content = self._prepare(queries["get_without_content"], idempotent=True)
        self._get_many_without_content = self._prepare(
            queries["get_many_without_content"], idempotent=True
        )
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
        if not retry:  # a lightweight transaction: see ConditionalRetryPolicy
            statement.retry_policy = ConditionalRetryPolicy()
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
        return connect_with_schema(config, lambda cluster, session: cls(cluster, session, config))

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

        def judge(row: Mapping[str, Any] | None) -> Verdict:
            if row is None:  # not applied: the claim may be sent again, unchanged
                return Verdict.AGAIN
            # The row is ours: applied (maybe by an earlier attempt whose answer was lost).
            return Verdict.WON if row["claim_id"] == claim_id else Verdict.LOST

        # ``INSERT ... IF NOT EXISTS`` returns the whole stored row when not applied.
        row = await self._conditional("claim", self._claim, params, invocation.id, judge)
        if row is None:
            await self._index(invocation)
            return None
        existing = to_invocation(row, with_content=True)
        if existing is None:
            # The last second of an expiring row (its outcome cells already gone): the id is
            # free in a moment; the caller may retry.
            raise unavailable("claim", RuntimeError(f"row {invocation.id!r} expiring"))
        return existing

    async def take_over(self, stale: Invocation, invocation: Invocation) -> Invocation | None:
        old = _claim_of(stale)
        old_id = uuid.UUID(old.token)
        new = _claim_of(invocation)
        new_id = uuid.UUID(new.token)
        ttl = self._remaining_ttl(stale.create_time)
        if ttl is None:
            raise unavailable("take over", RuntimeError(f"row {stale.id!r} expiring"))
        model = invocation.model
        params = (ttl, new_id, new.time, model.name, model.version, stale.id, old_id)

        def judge(row: Mapping[str, Any] | None) -> Verdict:
            if row is None:
                return Verdict.LOST
            if row.get("claim_id") == new_id:  # ours, also when an earlier attempt won it
                return Verdict.WON
            if row.get("claim_id") == old_id and row.get("state") is None:
                return Verdict.AGAIN  # still stale: the take-over may be sent again
            return Verdict.LOST

        row = await self._conditional("take over", self._take_over, params, stale.id, judge)
        if row is None:
            await self._index(stale)  # the first owner may have died before it wrote it
            return None
        # The conditional update returns only the columns of its condition: read the row.
        stored = await self._stored_now(stale.id, "take over")
        if stored is None:
            raise InvocationGoneError(
                f"invocation {quote(stale.id)} was removed; nothing taken over"
            )
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
        ttl = self._remaining_ttl(invocation.create_time)
        if ttl is None:
            logger.info("invocation %r expires now; its outcome is not stored", invocation.id)
            return None
        params = (
            ttl,
            invocation.input.content,
            invocation.state.value,
            detection_rows(output),
            output.image_width if output is not None else None,
            output.image_height if output is not None else None,
            invocation.error,
            invocation.complete_time,
            invocation.id,
            claim_id,
        )

        def judge(row: Mapping[str, Any] | None) -> Verdict:
            if row is None:
                return Verdict.LOST  # gone: deleted or expired
            if row.get("claim_id") != claim_id:
                return Verdict.LOST  # taken over
            # Our claim and an outcome: only this owner writes one under its claim.
            return Verdict.WON if row.get("state") is not None else Verdict.AGAIN

        # Retried within the budget, as an idempotent write would be: it is one, for its owner.
        row = await self._conditional(
            "complete", self._complete, params, invocation.id, judge, persist=True
        )
        if row is None:
            return None
        stored = await self._stored_now(invocation.id, "complete")
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
            raise unavailable_or(exc, "get") from exc
        if not rows:
            return None
        return to_invocation(rows[0], with_content=with_content)

    async def delete(self, invocation_id: str) -> bool:
        # A lightweight transaction, so that it is ordered with the claim, take-over and outcome
        # writes of the id (their Paxos rounds), and a row deleted here is never written back by
        # an Invoke that claimed it before (its conditional outcome write finds no claim). The
        # index entry goes after it: a stale entry is never listed (see ``list``).
        try:
            rows = await self._execute(self._get_without_content, (invocation_id,))
        except Exception as exc:
            raise unavailable_or(exc, "delete") from exc
        if not rows:
            return False
        create_time = rows[0]["create_time"]

        def judge(row: Mapping[str, Any] | None) -> Verdict:
            # Not applied (no row to delete), or a row still there after an uncertain answer:
            # this delete removed nothing. No row after an uncertain answer: it is gone.
            return Verdict.WON if row is None else Verdict.LOST

        row = await self._conditional(
            "delete", self._delete, (invocation_id,), invocation_id, judge
        )
        applied = row is None
        if applied and create_time is not None:
            create_time = utc(create_time)
            # Timestamped now: an entry written late by an Invoke that claimed the id before
            # (timestamped with its claim time, see ``_index``) loses to this tombstone.
            await self._retrying(
                "delete",
                self._index_delete,
                (micros(utcnow()), self._bucket_of(create_time), create_time, invocation_id),
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
            upper = wanted.create_time_max or utcnow() + CLOCK_SKEW
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
                if query.with_content:
                    results = await asyncio.gather(
                        *(self.get(entries[i]["id"], with_content=True) for i in chunk)
                    )
                else:
                    stored = await self._get_many([entries[i]["id"] for i in chunk])
                    results = [stored.get(entries[i]["id"]) for i in chunk]
                rows.update(zip(chunk, results, strict=True))
                reads_left -= len(chunk)
                # Decided now: every entry up to the last one read (or all, after the last).
                upto = chunk[-1] + 1 if first + step < len(candidates) else cut
                for index in range(walked, upto):
                    entry = entries[index]
                    position = PageCursor(create_time=utc(entry["create_time"]), id=entry["id"])
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

    async def _get_many(self, ids: Sequence[str]) -> dict[str, Invocation | None]:
        """The rows of ``ids`` without their content, by id (absent: no row; ``None``: the
        remains of a partly expired row), read
        ``ROWS_PER_READ`` ids to a request (``id IN ?``), the requests at once. One request per
        batch instead of one per row: the per-request CPU of the driver and the event loop was
        most of a BASIC page's (docs/performance.md, "Listing: CPU per page")."""
        unique = list(dict.fromkeys(ids))
        batches = [unique[i : i + ROWS_PER_READ] for i in range(0, len(unique), ROWS_PER_READ)]
        try:
            results = await asyncio.gather(
                *(self._execute(self._get_many_without_content, (batch,)) for batch in batches)
            )
        except Exception as exc:
            raise unavailable_or(exc, "list") from exc
        return {
            row["id"]: to_invocation(row, with_content=False) for rows in results for row in rows
        }

    async def check(self) -> None:
        # A write at the configured consistency: it needs as many replicas as real calls do,
        # and, unlike a read, no particular one of them. A read's coordinator asks the replicas
        # it picks; one that was killed and is not yet convicted by the failure detectors
        # (20-40 s) held the read until the speculative retry, which the tables' default (99p)
        # put at 2.5 s, longer than the check waits: one dead node of three made every server
        # NOT_SERVING. ``migrate`` now sets a 50 ms speculative retry, so a read would pass
        # too; the write stays because it checks what Invoke needs (a quorum of replicas that
        # accept writes: a node whose commit log cannot be written still answers reads) and
        # does not depend on a table option. It costs one small mutation per server a second.
        try:
            await self._execute(self._health_write, (utcnow(), HEALTH_CHECK_KEY))
        except Exception as exc:
            if not transient(exc):
                raise
            raise StoreUnavailableError("invocation store unavailable") from exc

    # --- list index helpers -------------------------------------------------------------

    async def lower_index_floor(self, oldest: dt.datetime) -> None:
        """Make listings reach back to ``oldest`` (``backfill-index`` calls it for the rows it
        indexes; the first ``migrate`` set the floor to its own time)."""
        rows = await self._retrying("index floor", self._index_state, (INDEX_STATE_KEY,))
        current = rows[0]["floor"] if rows else None
        if current is None or utc(current) > utc(oldest):
            await self._retrying("index floor", self._index_floor, (oldest, INDEX_STATE_KEY))

    def _bucket_of(self, time: dt.datetime) -> dt.datetime:
        """The start of the bucket holding ``time``."""
        offset = (utc(time) - EPOCH) // self._bucket
        return EPOCH + offset * self._bucket

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
            micros(claimed),
        )
        await self._retrying("index", self._index_insert, params)

    async def _lower_bound(self, create_time_min: dt.datetime | None) -> dt.datetime:
        """The oldest create time a listing must reach: the filter's, the index's oldest bucket
        (``migrate``, ``backfill-index``) and, with a retention, what has not expired."""
        try:
            rows = await self._execute(self._index_state, (INDEX_STATE_KEY,))
        except Exception as exc:
            raise unavailable_or(exc, "list") from exc
        bounds = [EPOCH]
        if rows and rows[0]["floor"] is not None:
            bounds.append(self._bucket_of(utc(rows[0]["floor"])))
        if create_time_min is not None:
            bounds.append(create_time_min)
        if self._ttl_s:
            bounds.append(utcnow() - dt.timedelta(seconds=self._ttl_s))
        return max(bounds)

    async def _index_entries(
        self, bucket: dt.datetime, position: PageCursor, lower: dt.datetime, limit: int
    ) -> builtins.list[Mapping[str, Any]]:  # `list` is a method here
        """Up to ``limit`` entries of ``bucket`` after ``position``, not older than ``lower``."""
        entries: list[Mapping[str, Any]] = []
        try:
            if position.id is not None and self._bucket_of(position.create_time) == bucket:
                entries = await self._execute(
                    self._index_same_time, (bucket, position.create_time, position.id, limit)
                )
                entries = [e for e in entries if utc(e["create_time"]) >= lower]
            if len(entries) < limit:
                entries += await self._execute(
                    self._index_older,
                    (bucket, position.create_time, lower, limit - len(entries)),
                )
        except Exception as exc:
            raise unavailable_or(exc, "list") from exc
        return entries

    # --- claim helpers ------------------------------------------------------------------

    async def _conditional(
        self,
        operation: str,
        statement: PreparedStatement,
        params: Sequence[Any],
        invocation_id: str,
        judge: Callable[[Mapping[str, Any] | None], Verdict],
        *,
        persist: bool = False,
    ) -> Mapping[str, Any] | None:
        """``retry.conditional`` of ``statement``: ``None`` when this caller's write is in,
        else the row that says why not; an uncertain answer is settled by ``_serial_read``."""
        return await conditional(
            operation,
            invocation_id,
            lambda: self._execute(statement, params),
            lambda cause: self._serial_read(invocation_id, operation, cause),
            judge,
            budget_s=self._config.retry_budget_s,
            persist=persist,
        )

    async def _serial_read(
        self, invocation_id: str, operation: str, cause: BaseException | None
    ) -> Mapping[str, Any] | None:
        """The row as the last committed Paxos round left it (retried within the budget)."""
        rows = await self._retrying(
            operation, self._get_with_content, (invocation_id,), profile=SERIAL_PROFILE
        )
        return rows[0] if rows else None

    async def _stored_now(self, invocation_id: str, operation: str) -> Invocation | None:
        """The invocation as stored now (a serial read), after a conditional write lost."""
        row = await self._serial_read(invocation_id, operation, None)
        return to_invocation(row, with_content=True) if row is not None else None

    # --- plumbing -----------------------------------------------------------------------

    async def _retrying(
        self,
        operation: str,
        statement: PreparedStatement,
        params: Sequence[Any],
        *,
        profile: object = EXEC_PROFILE_DEFAULT,
    ) -> builtins.list[Any]:
        """``retry.retrying`` of an idempotent statement, within ``retry_budget_s``."""
        return await retrying(
            operation,
            lambda: self._execute(statement, params, profile=profile),
            self._config.retry_budget_s,
        )

    async def _execute(
        self,
        statement: PreparedStatement,
        params: Sequence[Any],
        *,
        profile: object = EXEC_PROFILE_DEFAULT,
    ) -> builtins.list[Any]:
        """Run one statement without blocking the loop (every statement goes through here)."""
        return await execute(self._session, statement, params, profile=profile)

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
        elapsed = (dt.datetime.now(dt.UTC) - utc(create_time)).total_seconds()
        remaining = math.floor(self._ttl_s - elapsed) - 1
        return remaining if remaining >= 1 else None


def _claim_of(invocation: Invocation) -> Claim:
    if invocation.claim is None:
        # Callers that do not track claims (tests, tools) get one made from the create time.
        return Claim(token=uuid.uuid4().hex, time=invocation.create_time)
    return invocation.claim


#: Where a first page starts: a little after now, for servers whose clocks run ahead.
CLOCK_SKEW = dt.timedelta(minutes=5)
#: Bounds of one ListInvocations page (``CassandraInvocationStore.list``).
MAX_BUCKETS_PER_PAGE = 96
MAX_INDEX_ROWS_PER_PAGE = 4000
MIN_ROW_READS_PER_PAGE = 100
ROWS_PER_READ = 50
"""Ids in one ``id IN ?`` read of a BASIC page's rows: a bounded fan-out for the coordinator
(a page of 1000 makes 20 such reads, at once)."""


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
