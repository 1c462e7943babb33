"""Operator commands on the Cassandra store: ``migrate``, ``backfill-index`` and ``purge``.

``migrate`` creates or upgrades the schema (``schema.create_schema``) and disconnects.

``backfill-index`` writes the list index entry of every invocation stored before the index
existed (or under another bucket width). It walks the ``invocations`` table by token range, a
page at a time (bounded work per statement, no ``ALLOW FILTERING``), and records after each page
the last token done in ``invocations_index_state``: run again, it goes on from there
(``--restart`` starts over). Idempotent: an entry written twice is the same entry. Entries keep
their row's remaining TTL. An entry of a row deleted meanwhile is never listed (listings check
each entry against its row).

``purge`` makes erasures physical on one node (run it on every node, after the deletes; see
docs/privacy.md): a deleted row is only shadowed by a tombstone until compaction merges them.
Per node, with ``nodetool``:

1. ``nodetool flush``: every memtable to SSTables, so that no commit log segment holds data that
   is not in an SSTable, and the segments are released (deleted) as they are switched;
2. ``nodetool compact <keyspace> invocations invocations_by_time``: a major compaction merges
   every SSTable of the tables; data shadowed by a tombstone is dropped whatever
   ``gc_grace_seconds`` is (the tombstone itself stays until ``gc_grace_seconds`` has passed,
   holding nothing but the id);
3. ``nodetool compact system paxos``: the Paxos state of the lightweight transactions (the
   claim's cells, and the fenced outcome write with the content) is overwritten by the delete's
   own Paxos round; this compaction drops the overwritten copies;
4. ``nodetool clearsnapshot --all``: snapshots are hard links to SSTables as they were;
   with ``--truncate-hints``, ``nodetool truncatehints`` too (hints hold writes for replicas
   that were down: only after a repair has delivered them);
5. ``nodetool drain``: the commit log's active segment still holds every write since it was
   opened (a flush does not close it; it is deleted once full and flushed, after
   ``commitlog_segment_size`` of further writes). Drain flushes again and releases every
   segment; the node then takes no more writes and must be restarted (one node at a time,
   as a rolling restart; with replication factor 3 and LOCAL_QUORUM the service stays up).
   ``--no-drain`` leaves it out (the commit log copy then goes with the segment).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import shlex
import subprocess
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from inference_service.stores.cassandra.config import CassandraConfig
from inference_service.stores.cassandra.rows import micros, utc
from inference_service.stores.cassandra.schema import (
    INDEX_STATE_KEY,
    INDEX_STATE_TABLE,
    INDEX_TABLE,
    TABLE,
)
from inference_service.stores.cassandra.store import CassandraInvocationStore

if TYPE_CHECKING:
    from inference_service.settings import Settings

logger = logging.getLogger(__name__)

MIN_TOKEN = -(2**63)


async def migrate(settings: Settings) -> None:
    """Create or upgrade the schema of ``settings`` (``inference-service migrate``), then
    disconnect."""
    config = dataclasses.replace(CassandraConfig.from_settings(settings), create_schema=True)
    store = await CassandraInvocationStore.connect(config)
    await store.close()


async def backfill_index(
    config: CassandraConfig,
    *,
    restart: bool = False,
    page_size: int = 500,
    report: Callable[[dict[str, Any]], None] = lambda line: None,
) -> int:
    """Index every stored invocation (module docstring); returns how many entries were
    written. Resumable: goes on after the last page done unless ``restart``."""
    store = await CassandraInvocationStore.connect(config)
    keyspace = config.keyspace
    session = store._session
    try:
        scan = session.prepare(
            "SELECT token(id) AS t, id, create_time, model_name, metadata,"  # noqa: S608
            f" TTL(content_sha256) AS ttl FROM {keyspace}.{TABLE} WHERE token(id) > ? LIMIT ?"
        )
        save = session.prepare(
            f"UPDATE {keyspace}.{INDEX_STATE_TABLE} SET backfill_token = ?"  # noqa: S608
            " WHERE name = ?"
        )
        insert = session.prepare(
            f"INSERT INTO {keyspace}.{INDEX_TABLE}"  # noqa: S608
            " (bucket, create_time, id, model_name, metadata) VALUES (?, ?, ?, ?, ?)"
            " USING TTL ? AND TIMESTAMP ?"
        )
        state = session.prepare(
            f"SELECT backfill_token FROM {keyspace}.{INDEX_STATE_TABLE} WHERE name = ?"  # noqa: S608
        )
        saved = (await asyncio.to_thread(session.execute, state, (INDEX_STATE_KEY,))).one()
        token = MIN_TOKEN
        if not restart and saved is not None and saved["backfill_token"] is not None:
            token = saved["backfill_token"]
            report({"event": "resume", "after_token": token})
        written = 0
        while True:
            rows = list(await asyncio.to_thread(session.execute, scan, (token, page_size)))
            oldest: dt.datetime | None = None
            for row in rows:
                if row["create_time"] is None:  # the remains of an expiring row
                    continue
                create_time = utc(row["create_time"])
                params = (
                    store._bucket_of(create_time),
                    create_time,
                    row["id"],
                    row["model_name"],
                    row["metadata"] or {},
                    int(row["ttl"] or 0),
                    # As old as the row: a delete of the row meanwhile (its tombstone of the
                    # entry, timestamped at the delete) wins over this entry.
                    micros(create_time),
                )
                await asyncio.to_thread(session.execute, insert, params)
                written += 1
                oldest = create_time if oldest is None else min(oldest, create_time)
            if oldest is not None:
                await store.lower_index_floor(oldest)
            if not rows:
                await asyncio.to_thread(session.execute, save, (None, INDEX_STATE_KEY))
                report({"event": "done", "entries": written})
                return written
            token = rows[-1]["t"]
            await asyncio.to_thread(session.execute, save, (token, INDEX_STATE_KEY))
            report({"event": "page", "after_token": token, "entries": written})
    finally:
        await store.close()


def purge_steps(
    keyspace: str, *, truncate_hints: bool = False, drain: bool = True
) -> list[list[str]]:
    """The ``nodetool`` arguments of a purge, in order (module docstring)."""
    steps = [
        ["flush"],
        ["compact", keyspace, TABLE, INDEX_TABLE],
        ["compact", "system", "paxos"],
        ["clearsnapshot", "--all"],
    ]
    if truncate_hints:
        steps.append(["truncatehints"])
    if drain:
        steps.append(["drain"])
    return steps


def purge(
    keyspace: str,
    nodetool: Sequence[str],
    *,
    truncate_hints: bool = False,
    drain: bool = True,
    dry_run: bool = False,
    run: Callable[..., Any] = subprocess.run,
    report: Callable[[dict[str, Any]], None] = lambda line: None,
) -> None:
    """Run the purge's ``nodetool`` steps (``nodetool``: the command, e.g. ``["nodetool",
    "-h", "10.0.0.5"]``); raises ``subprocess.CalledProcessError`` at the first that fails."""
    for step in purge_steps(keyspace, truncate_hints=truncate_hints, drain=drain):
        command = [*nodetool, *step]
        report({"event": "purge-step", "command": shlex.join(command), "dry_run": dry_run})
        if not dry_run:
            run(command, check=True, capture_output=True, text=True, timeout=3600)
    report({"event": "purge-done", "dry_run": dry_run, "restart_node": drain})


def settings_config(settings: Settings) -> CassandraConfig:
    """The store's config for a maintenance command: the schema must be in place."""
    return dataclasses.replace(CassandraConfig.from_settings(settings), create_schema=False)


def print_json(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)
