"""``inference-service backfill-index``: invocations stored before the list index existed are
listed once it ran; it is resumable (a run stopped half-way goes on after its last page)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid

import pytest

from inference_service.domain import InvocationFilter, InvocationQuery
from inference_service.stores.cassandra import CassandraInvocationStore, maintenance


class StopError(Exception):
    pass


async def listed(store: CassandraInvocationStore, run: str) -> list[str]:
    ids, after = [], None
    while True:
        page = await store.list(
            InvocationQuery(filter=InvocationFilter(metadata=(("run", run),)), after=after)
        )
        ids += [i.id for i in page.invocations]
        if page.next is None:
            return ids
        after = page.next


async def test_backfill_indexes_older_rows_and_resumes(cassandra_endpoint) -> None:
    keyspace = f"{cassandra_endpoint.keyspace}_b"
    config = dataclasses.replace(cassandra_endpoint, keyspace=keyspace, create_schema=True)
    store = await CassandraInvocationStore.connect(config)
    try:
        run = uuid.uuid4().hex[:8]
        old = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=3)
        ids = [f"old-{run}-{index:02d}" for index in range(20)]
        for index, invocation_id in enumerate(ids):  # rows as an index-less version wrote them
            await asyncio.to_thread(
                store._session.execute,
                f"INSERT INTO {keyspace}.invocations (id, content_sha256, content_type, metadata,"
                " model_name, model_version, state, create_time, content)"
                " VALUES (%s, %s, 'image/jpeg', %s, 'm', 'v', 'SUCCEEDED', %s, 0xffd8ff)",
                (invocation_id, "0" * 64, {"run": run}, old + dt.timedelta(hours=index)),
            )
        assert await listed(store, run) == []

        pages = []

        def stop_after_two_pages(line: dict) -> None:
            pages.append(line)
            if line["event"] == "page" and len(pages) == 2:
                raise StopError

        with pytest.raises(StopError):
            await maintenance.backfill_index(
                dataclasses.replace(config, create_schema=False),
                page_size=7,
                report=stop_after_two_pages,
            )
        lines: list[dict] = []
        await maintenance.backfill_index(
            dataclasses.replace(config, create_schema=False), page_size=7, report=lines.append
        )
        assert lines[0] == {"event": "resume", "after_token": pages[-1]["after_token"]}
        assert lines[-1]["event"] == "done"
        assert lines[-1]["entries"] == 20 - 14  # the two pages done before were not redone

        assert await listed(store, run) == list(reversed(ids))  # newest first
    finally:
        await asyncio.to_thread(
            store._session.execute, f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60
        )
        await store.close()
