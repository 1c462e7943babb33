"""One contract for every ``InvocationStore``: the in-memory one and Cassandra.

Times are given with millisecond precision, the precision of a Cassandra ``timestamp``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from inference_service.domain import (
    BoundingBox,
    Claim,
    Detection,
    Invocation,
    InvocationFilter,
    InvocationQuery,
    ModelInfo,
    ModelInput,
    ModelOutput,
    State,
)
from inference_service.errors import InvocationGoneError
from inference_service.ports import InvocationStore
from inference_service.stores.cache import CachingInvocationStore
from inference_service.stores.cassandra import CassandraInvocationStore
from inference_service.stores.memory import InMemoryInvocationStore

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = ModelInfo(name="face-detector", version="2c46b4b6")
EIGHT_MIB = 8 * 1024 * 1024
JPEG_HEADER = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


def now_ms() -> dt.datetime:
    """Now, in UTC, to the millisecond."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def pending(
    invocation_id: str | None = None,
    content: bytes = JPEG_HEADER + b"pixels",
    metadata: dict[str, str] | None = None,
) -> Invocation:
    """A fresh PENDING invocation with a unique id."""
    return Invocation(
        input=ModelInput(
            id=invocation_id or f"it-{uuid.uuid4()}",
            content=content,
            metadata=metadata if metadata is not None else {"camera": "front", "lang": "ünï"},
        ),
        content_sha256=hashlib.sha256(content).hexdigest(),
        state=State.PENDING,
        model=MODEL,
        create_time=now_ms(),
        # Every owner holds a claim: ``complete`` is fenced by it.
        claim=Claim(uuid.uuid4().hex, now_ms()),
    )


async def own(store: InvocationStore, invocation: Invocation) -> None:
    """Claim ``invocation`` (its owner stores the content later, with the outcome)."""
    assert await store.claim(invocation) is None


def succeeded(invocation: Invocation, detections: tuple[Detection, ...] = ()) -> Invocation:
    return dataclasses.replace(
        invocation,
        state=State.SUCCEEDED,
        output=ModelOutput(detections=detections, image_width=640, image_height=480),
        complete_time=now_ms(),
    )


def without_content(invocation: Invocation) -> Invocation:
    """The expected BASIC read, built independently of the code under test."""
    basic = ModelInput(id=invocation.id, content=b"", metadata=invocation.input.metadata)
    return dataclasses.replace(invocation, input=basic)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def cassandra_store(cassandra_endpoint) -> AsyncIterator[CassandraInvocationStore]:
    store = await CassandraInvocationStore.connect(cassandra_endpoint)
    yield store
    await store.close()


@pytest.fixture(params=["memory", "cassandra", "cached-cassandra"])
def store(request: pytest.FixtureRequest) -> Iterator[InvocationStore]:
    """Each store under test; the Cassandra one is shared by the session. The cache in front
    of Cassandra (what the server runs) must keep the same contract."""
    if request.param == "memory":
        yield InMemoryInvocationStore()
    elif request.param == "cassandra":
        yield request.getfixturevalue("cassandra_store")
    else:
        # Not closed here: closing it would close the shared Cassandra store.
        yield CachingInvocationStore(
            request.getfixturevalue("cassandra_store"), max_bytes=16 * 1024 * 1024
        )


@pytest.mark.parametrize("size", [1, 1000, EIGHT_MIB], ids=["1B", "1kB", "8MiB"])
async def test_complete_then_get_round_trips_content_byte_identical(
    store: InvocationStore, size: int
) -> None:
    content = (JPEG_HEADER + os.urandom(size))[:size]
    invocation = pending(content=content)
    await own(store, invocation)
    done = succeeded(invocation)

    await store.complete(done)

    stored = await store.get(invocation.id)
    assert stored == done
    assert stored.input.content == content
    assert dict(stored.input.metadata) == dict(invocation.input.metadata)


async def test_a_pending_claim_reads_without_content_and_never_a_wrong_one(
    store: InvocationStore,
) -> None:
    """The content comes with the outcome: until then a read has the claim's cells (hash,
    metadata, times) and no content."""
    invocation = pending()
    await own(store, invocation)

    stored = await store.get(invocation.id)

    assert stored == without_content(invocation)
    assert stored.state is State.PENDING
    assert stored.content_sha256 == hashlib.sha256(invocation.input.content).hexdigest()


async def test_get_unknown_id_returns_none(store: InvocationStore) -> None:
    assert await store.get(f"unknown-{uuid.uuid4()}") is None
    assert await store.get(f"unknown-{uuid.uuid4()}", with_content=False) is None


async def test_get_without_content_omits_content_but_keeps_sha256(store: InvocationStore) -> None:
    invocation = pending()
    await own(store, invocation)

    basic = await store.get(invocation.id, with_content=False)

    assert basic == without_content(invocation)
    assert basic.content_sha256 == hashlib.sha256(invocation.input.content).hexdigest()


async def test_empty_metadata_round_trips(store: InvocationStore) -> None:
    invocation = pending(metadata={})
    await own(store, invocation)
    await store.complete(succeeded(invocation))

    assert (await store.get(invocation.id)).input == invocation.input


async def test_complete_records_success_with_output(store: InvocationStore) -> None:
    invocation = pending()
    await own(store, invocation)
    faces = (
        Detection(box=BoundingBox(10.5, 20.25, 110.125, 220.0), score=0.987654321, label="face"),
        Detection(box=BoundingBox(0.0, 0.0, 1.0, 1.0), score=0.71, label="face"),
    )
    done = succeeded(invocation, faces)

    await store.complete(done)

    assert await store.get(invocation.id) == done
    assert await store.get(invocation.id, with_content=False) == without_content(done)


async def test_complete_records_success_without_detections(store: InvocationStore) -> None:
    invocation = pending()
    await own(store, invocation)
    done = succeeded(invocation)

    await store.complete(done)

    stored = await store.get(invocation.id)
    assert stored == done
    assert stored.output is not None and stored.output.detections == ()


async def test_complete_records_failure(store: InvocationStore) -> None:
    invocation = pending()
    await own(store, invocation)
    failed = dataclasses.replace(
        invocation, state=State.FAILED, error="model error: bad input", complete_time=now_ms()
    )

    await store.complete(failed)

    stored = await store.get(invocation.id)
    assert stored == failed
    assert stored.output is None


async def test_complete_never_changes_the_rest_of_the_input(store: InvocationStore) -> None:
    """Complete writes the content (the bytes whose hash the claim holds: the caller checked)
    and the outcome; metadata, hash and create time stay as claimed."""
    invocation = pending()
    await own(store, invocation)
    tampered = ModelInput(id=invocation.id, content=invocation.input.content, metadata={"x": "y"})
    done = dataclasses.replace(
        succeeded(invocation), input=tampered, content_sha256="0" * 64, create_time=now_ms()
    )

    await store.complete(done)

    stored = await store.get(invocation.id)
    assert stored.input == invocation.input
    assert stored.content_sha256 == invocation.content_sha256
    assert stored.create_time == invocation.create_time
    assert stored.state is State.SUCCEEDED


async def test_complete_of_an_unclaimed_or_removed_id_writes_nothing_and_says_so(
    store: InvocationStore,
) -> None:
    """No row (never claimed, or deleted while its owner ran): the outcome never brings it
    back, and the owner learns it (``InvocationGoneError``)."""
    unclaimed = succeeded(pending())
    with pytest.raises(InvocationGoneError):
        await store.complete(unclaimed)
    assert await store.get(unclaimed.id) is None
    assert await store.get(unclaimed.id, with_content=False) is None


async def test_a_taken_over_owner_that_wakes_up_overwrites_nothing(
    store: InvocationStore,
) -> None:
    """The fencing token: an owner that stalled past its lease and was taken over completes
    late; nothing it writes lands, and it gets the invocation as stored now."""
    first = pending()
    await own(store, first)
    stale = await store.get(first.id)
    newer = ModelInfo(name=MODEL.name, version="b" * 64)
    successor = dataclasses.replace(claimed(stale), input=first.input, model=newer)
    assert await store.take_over(stale, successor) is None

    # Woken before the successor stored its outcome: fenced off, the row stays pending.
    late = await store.complete(succeeded(first, (Detection(BoundingBox(0, 0, 9, 9), 0.9, "x"),)))
    assert late is not None
    assert late.state is State.PENDING
    assert late.claim == successor.claim
    assert (await store.get(first.id)).state is State.PENDING

    done = succeeded(successor, (Detection(BoundingBox(1, 1, 5, 5), 0.5, "face"),))
    assert await store.complete(done) is None
    # Woken after it: fenced off again, answered with the successor's outcome.
    failed = dataclasses.replace(first, state=State.FAILED, error="late", complete_time=now_ms())
    late = await store.complete(failed)
    assert late == done
    assert late.claim == successor.claim
    assert late.model == newer
    assert await store.get(first.id) == done
    assert await store.get(first.id, with_content=False) == without_content(done)


async def test_second_claim_returns_the_stored_invocation_unchanged(
    store: InvocationStore,
) -> None:
    first = pending()
    await own(store, first)
    second = pending(first.id, content=JPEG_HEADER + b"different", metadata={"other": "1"})

    existing = await store.claim(second)

    assert existing == without_content(first)  # pending: the content comes with the outcome
    assert await store.get(first.id) == without_content(first)


async def test_second_claim_after_completion_returns_the_outcome(store: InvocationStore) -> None:
    invocation = pending()
    await own(store, invocation)
    done = succeeded(invocation)
    await store.complete(done)

    assert await store.claim(claimed(invocation)) == done  # another Invoke's claim


async def test_first_writer_wins_under_concurrent_claims(store: InvocationStore) -> None:
    invocation_id = f"race-{uuid.uuid4()}"
    contenders = [pending(invocation_id, content=JPEG_HEADER + bytes([i]) * 64) for i in range(20)]

    results = await asyncio.gather(*(store.claim(c) for c in contenders))

    winners = [c for c, result in zip(contenders, results, strict=True) if result is None]
    assert len(winners) == 1
    # Losers get the winner's invocation (pending: without content until the outcome).
    assert all(result == without_content(winners[0]) for result in results if result is not None)
    await store.complete(succeeded(winners[0]))
    assert (await store.get(invocation_id)).input == winners[0].input


def claimed(invocation: Invocation, at: dt.datetime | None = None) -> Invocation:
    """``invocation`` owned by a new claim (a UUID token, as the service makes them)."""
    return dataclasses.replace(invocation, claim=Claim(uuid.uuid4().hex, at or now_ms()))


async def test_a_lost_claim_shows_who_owns_the_id(store: InvocationStore) -> None:
    first = claimed(pending())
    await own(store, first)
    existing = await store.claim(claimed(pending(first.id)))
    assert existing is not None
    assert existing.claim == first.claim
    assert (await store.get(first.id, with_content=False)).claim == first.claim


async def test_of_concurrent_take_overs_exactly_one_wins(store: InvocationStore) -> None:
    content = JPEG_HEADER + b"orphaned pixels"
    orphan = claimed(pending(content=b"", metadata={"first": "owner"}))  # died before its content
    assert await store.claim(orphan) is None
    stale = await store.get(orphan.id)
    assert stale is not None and stale.state is State.PENDING
    successors = [
        dataclasses.replace(claimed(stale), input=dataclasses.replace(stale.input, content=content))
        for _ in range(10)
    ]

    results = await asyncio.gather(*(store.take_over(stale, s) for s in successors))

    winners = [s for s, result in zip(successors, results, strict=True) if result is None]
    assert len(winners) == 1
    assert all(r is not None and r.claim == winners[0].claim for r in results if r is not None)
    stored = await store.get(orphan.id)
    assert stored.claim == winners[0].claim
    assert stored.state is State.PENDING

    done = succeeded(winners[0])
    await store.complete(done)  # the new owner stores the content with the outcome
    stored = await store.get(orphan.id)
    assert stored.input.content == content
    assert dict(stored.input.metadata) == {"first": "owner"}
    assert stored.create_time == orphan.create_time
    late = await store.take_over(stale, claimed(stale))  # the outcome is in: no take-over
    assert late == done
    assert (await store.get(orphan.id)).claim == winners[0].claim


async def test_a_take_over_records_the_model_that_runs_now(store: InvocationStore) -> None:
    """The new owner may run another version of the model (reloaded since the first claim):
    the take-over records it, so the outcome names the version that made it."""
    orphan = claimed(pending())
    assert await store.claim(orphan) is None
    stale = await store.get(orphan.id)
    newer = ModelInfo(name=MODEL.name, version="9" * 64)
    successor = dataclasses.replace(claimed(stale), model=newer)
    assert await store.take_over(stale, successor) is None
    await store.complete(succeeded(successor))
    assert (await store.get(orphan.id)).model == newer
    assert (await store.get(orphan.id, with_content=False)).model == newer


async def test_rows_expire_after_the_configured_ttl(cassandra_endpoint) -> None:
    """Cassandra only (the in-memory store keeps no TTL)."""
    store = await CassandraInvocationStore.connect(
        dataclasses.replace(cassandra_endpoint, default_ttl_s=4)
    )
    try:
        # 4 s: the outcome gets the whole seconds left (at least 2), so that the row is still
        # there for the first read even on a loaded machine.
        invocation = pending()
        await own(store, invocation)
        await store.complete(succeeded(invocation))
        stored = await store.get(invocation.id)
        assert stored is not None and stored.state is State.SUCCEEDED

        await asyncio.sleep(4.5)

        assert await store.get(invocation.id) is None
        assert await store.claim(invocation) is None  # the id is free again
    finally:
        await store.close()


# --- ListInvocations and DeleteInvocation -----------------------------------------------------

LIST_BUCKET_S = 60


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def small_bucket_store(cassandra_endpoint) -> AsyncIterator[CassandraInvocationStore]:
    """A Cassandra store on a keyspace of its own whose list index has 60-second buckets."""
    config = dataclasses.replace(
        cassandra_endpoint,
        keyspace=f"{cassandra_endpoint.keyspace}_l",
        create_schema=True,
        list_bucket_s=LIST_BUCKET_S,
    )
    store = await CassandraInvocationStore.connect(config)
    yield store
    await asyncio.to_thread(
        store._session.execute, f"DROP KEYSPACE IF EXISTS {config.keyspace}", timeout=60
    )
    await store.close()


@pytest.fixture(params=["memory", "cassandra", "cached-cassandra"])
def listing_store(request: pytest.FixtureRequest) -> Iterator[InvocationStore]:
    if request.param == "memory":
        yield InMemoryInvocationStore()
    elif request.param == "cassandra":
        yield request.getfixturevalue("small_bucket_store")
    else:
        yield CachingInvocationStore(
            request.getfixturevalue("small_bucket_store"), max_bytes=16 * 1024 * 1024
        )


async def backdated(store: InvocationStore, count: int, run: str) -> list[Invocation]:
    """``count`` finished invocations created over the last ``count * 1.7`` seconds (several
    60 s buckets), tagged with ``run``; some FAILED, some still PENDING."""
    start = now_ms() - dt.timedelta(milliseconds=1700 * count)
    made = []
    for index in range(count):
        invocation = dataclasses.replace(
            pending(
                f"list-{run}-{index:04d}",
                metadata={"run": run, "camera": f"cam-{index % 3}", "site": str(index % 2)},
            ),
            # pairs share a create time: ties are broken by id
            create_time=start + dt.timedelta(milliseconds=1700 * (index // 2 * 2)),
        )
        await own(store, invocation)
        if index % 7 == 0:
            made.append(invocation)  # PENDING
            continue
        done = succeeded(invocation)
        if index % 5 == 0:
            done = dataclasses.replace(done, state=State.FAILED, output=None, error="failed")
        await store.complete(done)
        made.append(done)
    if isinstance(store, CachingInvocationStore):
        store = store._inner
    if isinstance(store, CassandraInvocationStore):
        await store.lower_index_floor(start)
    return made


def order(invocations: list[Invocation]) -> list[str]:
    return [i.id for i in sorted(invocations, key=lambda i: (-i.create_time.timestamp(), i.id))]


async def list_ids(store: InvocationStore, query_filter: InvocationFilter, size: int) -> list[str]:
    ids: list[str] = []
    after = None
    for _ in range(10_000):
        page = await store.list(InvocationQuery(filter=query_filter, after=after, limit=size))
        assert len(page.invocations) <= size
        assert all(i.input.content == b"" for i in page.invocations)
        ids += [i.id for i in page.invocations]
        if page.next is None:
            return ids
        after = page.next
    raise AssertionError("the listing never ended")


async def test_list_pages_return_each_invocation_once_newest_first_with_every_filter(
    listing_store: InvocationStore,
) -> None:
    run = uuid.uuid4().hex[:8]
    made = await backdated(listing_store, 230, run)
    mine = InvocationFilter(metadata=(("run", run),))
    assert await list_ids(listing_store, mine, 7) == order(made)
    middle = made[100].create_time
    cases = [
        (InvocationFilter(metadata=(("camera", "cam-1"), ("run", run))), None),
        (
            InvocationFilter(metadata=(("camera", "cam-2"), ("run", run), ("site", "0"))),
            None,
        ),
        (InvocationFilter(state=State.FAILED, metadata=(("run", run),)), None),
        (InvocationFilter(state=State.PENDING, metadata=(("run", run),)), None),
        (InvocationFilter(models=frozenset({MODEL.name}), metadata=(("run", run),)), None),
        (InvocationFilter(models=frozenset({"no-such-model"}), metadata=(("run", run),)), None),
        (InvocationFilter(create_time_min=middle, metadata=(("run", run),)), None),
        (InvocationFilter(create_time_max=middle, metadata=(("run", run),)), None),
    ]
    for query_filter, _ in cases:
        expected = order([i for i in made if query_filter.matches(i)])
        assert await list_ids(listing_store, query_filter, 7) == expected, query_filter


async def test_delete_removes_from_get_and_list_and_the_id_starts_afresh(
    listing_store: InvocationStore,
) -> None:
    run = uuid.uuid4().hex[:8]
    first, second = await backdated(listing_store, 2, run)
    mine = InvocationFilter(metadata=(("run", run),))

    assert await listing_store.delete(first.id) is True

    assert await listing_store.get(first.id) is None
    assert await listing_store.get(first.id, with_content=False) is None
    assert await list_ids(listing_store, mine, 10) == [second.id]
    assert await listing_store.delete(first.id) is False
    assert await listing_store.delete(f"unknown-{uuid.uuid4()}") is False
    again = dataclasses.replace(pending(first.id, metadata={"run": run}), create_time=now_ms())
    assert await listing_store.claim(again) is None  # afresh: nothing of the old one
    await listing_store.complete(succeeded(again))
    assert (await listing_store.get(first.id)).create_time == again.create_time
    assert await list_ids(listing_store, mine, 10) == [first.id, second.id]


async def test_a_deleted_pending_invocation_is_gone_for_good(
    listing_store: InvocationStore,
) -> None:
    """Delete while the model runs: the row and its index entry go; a stale index entry
    written late (the claim's, after the delete) never lists it."""
    run = uuid.uuid4().hex[:8]
    invocation = dataclasses.replace(
        pending(metadata={"run": run}), claim=Claim(token=uuid.uuid4().hex, time=now_ms())
    )
    await own(listing_store, invocation)
    assert await listing_store.delete(invocation.id) is True
    inner = getattr(listing_store, "_inner", listing_store)
    if isinstance(inner, CassandraInvocationStore):
        await inner._index(invocation)  # a late index write of the claim
        rows = await asyncio.to_thread(
            inner._session.execute,
            f"SELECT id FROM {inner._config.keyspace}.invocations_by_time"
            " WHERE bucket = %s AND create_time = %s AND id = %s",
            (inner._bucket_of(invocation.create_time), invocation.create_time, invocation.id),
        )
        assert list(rows) == []  # older than the delete's tombstone: not even the metadata
    assert await listing_store.get(invocation.id) is None
    assert await list_ids(listing_store, InvocationFilter(metadata=(("run", run),)), 10) == []


async def test_full_list_pages_carry_the_content(listing_store: InvocationStore) -> None:
    run = uuid.uuid4().hex[:8]
    made = await backdated(listing_store, 5, run)
    page = await listing_store.list(
        InvocationQuery(
            filter=InvocationFilter(metadata=(("run", run),), state=State.SUCCEEDED),
            limit=10,
            with_content=True,
        )
    )
    assert [i.id for i in page.invocations] == order(
        [i for i in made if i.state is State.SUCCEEDED]
    )
    assert all(i.input.content == JPEG_HEADER + b"pixels" for i in page.invocations)


async def test_listings_never_show_expired_rows(cassandra_endpoint) -> None:
    """Cassandra only: with a TTL (the retention) the index entries expire with the rows."""
    store = await CassandraInvocationStore.connect(
        dataclasses.replace(cassandra_endpoint, default_ttl_s=4)
    )
    try:
        run = uuid.uuid4().hex[:8]
        invocation = pending(metadata={"run": run})
        await own(store, invocation)
        await store.complete(succeeded(invocation))
        mine = InvocationFilter(metadata=(("run", run),))
        assert await list_ids(store, mine, 5) == [invocation.id]
        await asyncio.sleep(4.5)
        assert await list_ids(store, mine, 5) == []
        assert await store.get(invocation.id) is None
    finally:
        await store.close()


async def test_pages_are_stable_while_new_invocations_arrive(
    listing_store: InvocationStore,
) -> None:
    """A listing begun before new invocations arrive never repeats nor skips one that existed
    when it began (the token is a position, not an offset); the new ones are newer than it."""
    run = uuid.uuid4().hex[:8]
    made = await backdated(listing_store, 12, run)
    mine = InvocationFilter(metadata=(("run", run),))
    first = await listing_store.list(InvocationQuery(filter=mine, limit=5))
    for _ in range(3):  # arrive between the pages
        newer = dataclasses.replace(pending(metadata={"run": run}), create_time=now_ms())
        await own(listing_store, newer)
        await listing_store.complete(succeeded(newer))
    ids = [i.id for i in first.invocations]
    after = first.next
    while after is not None:
        page = await listing_store.list(InvocationQuery(filter=mine, after=after, limit=5))
        ids += [i.id for i in page.invocations]
        after = page.next
    assert ids == order(made)


async def test_a_page_of_a_filter_that_matches_nothing_is_bounded(cassandra_endpoint) -> None:
    """Cassandra only: over a day of 60-second buckets (1440), a filter that matches nothing
    reads ``MAX_BUCKETS_PER_PAGE`` buckets per page and returns an empty page that goes on."""
    from inference_service.stores.cassandra import store as cassandra_module

    config = dataclasses.replace(
        cassandra_endpoint,
        keyspace=f"{cassandra_endpoint.keyspace}_n",
        create_schema=True,
        list_bucket_s=LIST_BUCKET_S,
    )
    store = await CassandraInvocationStore.connect(config)
    try:
        await store.lower_index_floor(now_ms() - dt.timedelta(days=1))
        nothing = InvocationFilter(metadata=(("run", "matches-nothing"),))
        page = await store.list(InvocationQuery(filter=nothing, limit=50))
        assert page.invocations == ()
        assert page.next is not None and page.next.id is None
        walked = now_ms() + cassandra_module.CLOCK_SKEW - page.next.create_time
        buckets = walked / dt.timedelta(seconds=LIST_BUCKET_S)
        assert buckets >= cassandra_module.MAX_BUCKETS_PER_PAGE - 1
        assert buckets <= cassandra_module.MAX_BUCKETS_PER_PAGE + 1
        second = await store.list(InvocationQuery(filter=nothing, after=page.next, limit=50))
        assert second.invocations == () and second.next < page.next
    finally:
        await asyncio.to_thread(
            store._session.execute, f"DROP KEYSPACE IF EXISTS {config.keyspace}", timeout=60
        )
        await store.close()
