"""A delete that races an Invoke of the same id (claim made, model running, outcome not yet
written), on the memory store and on Cassandra.

The defined outcome: the delete wins and returns; the Invoke's outcome write (fenced on its
claim) finds no row and writes nothing, and the Invoke answers ABORTED ("removed while it
ran"). The row never comes back (no content, no cells, no listing), and a new Invoke of the id
starts afresh.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import pytest_asyncio

from inference_service.domain import ModelInfo, ModelInput, ModelOutput, State
from inference_service.errors import InvocationGoneError, NotFoundError
from inference_service.ports import InvocationStore
from inference_service.service import InferenceService
from inference_service.stores.cache import CachingInvocationStore
from inference_service.stores.cassandra import CassandraInvocationStore
from inference_service.stores.memory import InMemoryInvocationStore

pytestmark = pytest.mark.asyncio(loop_scope="module")

JPEG = b"\xff\xd8\xff\xe0" + b"delete-race"


class GatedDetector:
    """Blocks in ``detect`` until ``gate`` is set; ``running`` is set once it is in."""

    info = ModelInfo(name="face-detector", version="v-race")

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.running = threading.Event()
        self.calls = 0

    def detect(self, image: np.ndarray) -> ModelOutput:
        self.calls += 1
        self.running.set()
        assert self.gate.wait(30)
        return ModelOutput((), 1, 1)

    def close(self) -> None:
        self.gate.set()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cassandra(cassandra_endpoint) -> AsyncIterator[CassandraInvocationStore]:
    store = await CassandraInvocationStore.connect(cassandra_endpoint)
    yield store
    await store.close()


@pytest.fixture(params=["memory", "cached-cassandra"])
def store(request: pytest.FixtureRequest) -> InvocationStore:
    if request.param == "memory":
        return InMemoryInvocationStore()
    return CachingInvocationStore(request.getfixturevalue("cassandra"), max_bytes=1 << 20)


def make_service(store: InvocationStore, detector: GatedDetector) -> InferenceService:
    return InferenceService(
        store=store,
        detector=detector,
        decode=lambda content, pixels: np.zeros((2, 2, 3), np.uint8),
        executor=ThreadPoolExecutor(2),
        speculative_model_run=False,
    )


async def test_a_delete_while_the_model_runs_wins_and_the_late_write_never_brings_it_back(
    store: InvocationStore,
) -> None:
    detector = GatedDetector()
    service = make_service(store, detector)
    invocation_id = f"race-{uuid.uuid4().hex[:12]}"
    run = uuid.uuid4().hex[:8]
    model_input = ModelInput(id=invocation_id, content=JPEG, metadata={"run": run})

    invoke = asyncio.ensure_future(service.invoke(model_input))
    assert await asyncio.to_thread(detector.running.wait, 10), "the model never started"
    pending = await service.get_invocation(invocation_id)
    assert pending.state is State.PENDING

    await service.delete_invocation(invocation_id)
    detector.gate.set()  # the model finishes now: its outcome write comes after the delete

    with pytest.raises(InvocationGoneError, match="removed while it ran"):
        await invoke
    with pytest.raises(NotFoundError):
        await service.get_invocation(invocation_id)
    with pytest.raises(NotFoundError):
        await service.get_invocation(invocation_id, with_content=False)
    page, _ = await service.list_invocations(filter_text=f'metadata.run = "{run}"')
    assert page == []
    inner = getattr(store, "_inner", store)
    if isinstance(inner, CassandraInvocationStore):  # not a cell of the row left, content none
        rows = await asyncio.to_thread(
            inner._session.execute,
            f"SELECT * FROM {inner._config.keyspace}.invocations WHERE id = %s",
            (invocation_id,),
        )
        assert list(rows) == []

    # Invoked again after the delete, the id starts afresh: the model runs, a new create time
    # (times are kept to the millisecond: the in-memory store can get here within the same one).
    await asyncio.sleep(0.005)
    again = await service.invoke(model_input)
    assert again.state is State.SUCCEEDED
    assert again.create_time > pending.create_time
    assert detector.calls == 2
    stored = await service.get_invocation(invocation_id)
    assert stored.input.content == JPEG and stored.create_time == again.create_time
    page, _ = await service.list_invocations(filter_text=f'metadata.run = "{run}"')
    assert [i.id for i in page] == [invocation_id]
