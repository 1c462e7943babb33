"""The service layer's semantics, with the in-memory store and a counting fake detector."""

from __future__ import annotations

import asyncio
import functools
import hashlib

import pytest
from support.fakes import JPEG, NOW, PNG, FakeDetector

from inference_service.domain import (
    Invocation,
    ModelInfo,
    ModelInput,
    State,
)
from inference_service.errors import (
    AlreadyExistsError,
    ContentTooLargeError,
    InvalidArgumentError,
    InvocationPendingError,
    NotFoundError,
)
from inference_service.images.formats import sniff_content_type
from inference_service.images.validation import validate_id
from inference_service.service import FAILED_MESSAGE
from inference_service.stores.memory import InMemoryInvocationStore


@pytest.fixture
def make_service(make_service):
    """The shared builder (tests/unit/conftest.py), with a fixed clock and server-assigned id."""
    return functools.partial(make_service, clock=lambda: NOW, new_id=lambda: "server-assigned")


@pytest.mark.parametrize(
    "good", ["a", "A.b_c~d-9", "x" * 128, "123e4567-e89b-12d3-a456-426614174000"]
)
def test_valid_ids(good: str) -> None:
    validate_id(good)


@pytest.mark.parametrize("bad", ["", "x" * 129, "a/b", "a b", "é", "a?b", "../x", "a%2F"])
def test_invalid_ids(bad: str) -> None:
    with pytest.raises(InvalidArgumentError, match="must be 1 to 128 characters"):
        validate_id(bad)


@pytest.mark.parametrize("bad", [".", ".."])
def test_dot_ids_are_invalid(bad: str) -> None:
    """They match the pattern but no REST path can address them (normalized away)."""
    with pytest.raises(InvalidArgumentError, match="cannot be used in a REST path"):
        validate_id(bad)


@pytest.mark.parametrize("good", ["...", ".a", "a.", "..a"])
def test_ids_with_dots_are_valid(good: str) -> None:
    validate_id(good)


def test_sniff_content_type() -> None:
    assert sniff_content_type(PNG) == "image/png"
    assert sniff_content_type(JPEG) == "image/jpeg"
    assert sniff_content_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_content_type(b"GIF89a...") == "image/gif"
    assert sniff_content_type(b"nothing") == "application/octet-stream"


async def test_invoke_stores_input_and_output(make_service, store, detector, executor) -> None:
    service = make_service()
    result = await service.invoke(ModelInput("img-1", PNG, {"camera": "front"}))

    assert result.state is State.SUCCEEDED
    assert result.output is not None and result.output.image_width == 8
    assert result.output.detections[0].label == "face"
    assert result.content_sha256 == hashlib.sha256(PNG).hexdigest()
    assert result.content_type == "image/png"
    assert result.model == ModelInfo("face-detector", "v-test")
    assert result.create_time == NOW and result.complete_time == NOW

    stored = await service.get_invocation("img-1")
    assert stored == result
    assert stored.input.content == PNG
    assert dict(stored.input.metadata) == {"camera": "front"}


async def test_empty_id_gets_a_server_assigned_one(make_service, store, detector, executor) -> None:
    service = make_service()
    result = await service.invoke(ModelInput("", PNG))
    assert result.id == "server-assigned"
    assert (await store.get("server-assigned")) is not None


async def test_same_id_same_content_returns_stored_without_running_model(
    make_service, store, detector, executor
) -> None:
    service = make_service()
    first = await service.invoke(ModelInput("dup", PNG, {"a": "1"}))
    again = await service.invoke(ModelInput("dup", PNG, {"a": "other metadata is ignored"}))
    assert again == first
    assert detector.calls == 1
    assert (first.replayed, again.replayed) == (False, True)


async def test_same_id_different_content_is_already_exists_and_keeps_data(
    make_service, store, detector, executor
) -> None:
    service = make_service()
    first = await service.invoke(ModelInput("dup", PNG))
    with pytest.raises(AlreadyExistsError, match="different content"):
        await service.invoke(ModelInput("dup", JPEG))
    assert await service.get_invocation("dup") == first
    assert detector.calls == 1


async def test_concurrent_identical_invokes_run_model_once(make_service, store, executor) -> None:
    detector = FakeDetector(delay=0.05)
    service = make_service(detector=detector)
    results = await asyncio.gather(*(service.invoke(ModelInput("same", PNG)) for _ in range(10)))
    assert detector.calls == 1
    assert {r.state for r in results} == {State.SUCCEEDED}


@pytest.mark.parametrize(
    ("model_input", "error", "message"),
    [
        (ModelInput("ok", b""), InvalidArgumentError, "input.content is empty"),
        (ModelInput("ok", b"not an image"), InvalidArgumentError, "not a decodable image"),
        (ModelInput("ok", PNG + b"huge"), InvalidArgumentError, "too large"),
        (ModelInput("bad id!", PNG), InvalidArgumentError, "invalid"),
        (ModelInput("ok", PNG + b"x" * 2000), ContentTooLargeError, "limit is 1000"),
        (ModelInput("ok", PNG, {"k": "v" * 1025}), InvalidArgumentError, "longer than 1024"),
        (ModelInput("ok", PNG, {"": "v"}), InvalidArgumentError, "key"),
        (
            ModelInput("ok", PNG, {f"k{i}": "v" for i in range(65)}),
            InvalidArgumentError,
            "65 entries",
        ),
    ],
)
async def test_invalid_input_is_rejected_and_nothing_is_stored(
    make_service, store, detector, executor, model_input, error, message
) -> None:
    service = make_service()
    with pytest.raises(error, match=message):
        await service.invoke(model_input)
    assert await store.get("ok") is None
    assert detector.calls == 0


async def test_unknown_model_is_not_found(make_service, store, detector, executor) -> None:
    service = make_service()
    with pytest.raises(NotFoundError, match="model 'other' not found"):
        await service.invoke(ModelInput("m", PNG), model="other")
    result = await service.invoke(ModelInput("m", PNG), model="face-detector")
    assert result.state is State.SUCCEEDED


async def test_model_failure_marks_failed_and_hides_details(make_service, store, executor) -> None:
    """One rule for a failed model run: the first caller is answered the stored FAILED
    invocation (OK), as every replay is; the error is client-safe."""
    service = make_service(detector=FakeDetector(fail=True))
    answered = await service.invoke(ModelInput("f", PNG))
    assert answered.state is State.FAILED
    assert answered.error == FAILED_MESSAGE
    assert "secret" not in answered.error
    stored = await service.get_invocation("f")
    assert stored == answered
    assert await service.invoke(ModelInput("f", PNG)) == answered  # a replay: the same
    assert stored.state is State.FAILED
    assert stored.error == FAILED_MESSAGE
    assert stored.input.content == PNG
    assert stored.complete_time == NOW


async def test_get_unknown_and_malformed_ids(make_service, store, detector, executor) -> None:
    service = make_service()
    with pytest.raises(NotFoundError, match="'nope' not found"):
        await service.get_invocation("nope")
    with pytest.raises(InvalidArgumentError):
        await service.get_invocation("no/pe")


async def test_get_without_content_keeps_hash(make_service, store, detector, executor) -> None:
    service = make_service()
    await service.invoke(ModelInput("basic", PNG, {"k": "v"}))
    basic = await service.get_invocation("basic", with_content=False)
    assert basic.input.content == b""
    assert basic.content_sha256 == hashlib.sha256(PNG).hexdigest()
    assert dict(basic.input.metadata) == {"k": "v"}
    assert basic.output is not None


@pytest.mark.parametrize("speculate", [False, True])
async def test_cancelled_invoke_still_stores_its_outcome(
    make_service, store, executor, speculate
) -> None:
    detector = FakeDetector(delay=0.2)
    service = make_service(detector=detector, speculative_model_run=speculate)
    call = asyncio.ensure_future(service.invoke(ModelInput("cancelled", PNG)))
    await asyncio.sleep(0.05)  # claimed, model running
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await service.wait_idle()
    stored = await service.get_invocation("cancelled")
    assert stored.state is State.SUCCEEDED
    assert detector.calls == 1


async def test_a_claim_that_stays_pending_is_unavailable_not_ok(
    make_service, store, detector, executor
) -> None:
    service = make_service(pending_wait_s=0.05)
    stuck = Invocation(
        input=ModelInput("stuck", PNG),
        content_sha256=hashlib.sha256(PNG).hexdigest(),
        state=State.PENDING,
        model=detector.info,
        create_time=NOW,
    )
    assert await store.claim(stuck) is None  # a winner that died before storing an outcome
    with pytest.raises(InvocationPendingError, match="still being processed"):
        await service.invoke(ModelInput("stuck", PNG))
    assert detector.calls == 0


# --- the model run beside the claim (speculative_model_run) -------------------------------------


class SlowClaimStore(InMemoryInvocationStore):
    """The in-memory store whose claims take ``delay`` seconds (a Cassandra round trip), and
    fail when ``fail`` is set (the store unreachable)."""

    def __init__(self, delay: float = 0.1, *, fail: bool = False) -> None:
        super().__init__()
        self.delay = delay
        self.fail = fail
        self.model_calls_at_claim_end: list[int] = []
        self.detector: FakeDetector | None = None

    async def claim(self, pending: Invocation) -> Invocation | None:
        await asyncio.sleep(self.delay)
        if self.detector is not None:
            self.model_calls_at_claim_end.append(self.detector.calls)
        if self.fail:
            from inference_service.errors import StoreUnavailableError

            raise StoreUnavailableError("the store is unreachable")
        return await super().claim(pending)


async def test_speculation_runs_the_model_during_the_claim(make_service, executor) -> None:
    store = SlowClaimStore(0.1)
    detector = FakeDetector()
    store.detector = detector
    service = make_service(store=store, detector=detector, speculative_model_run=True)
    done = await service.invoke(ModelInput("spec", PNG))
    assert done.state is State.SUCCEEDED
    assert store.model_calls_at_claim_end == [1]  # the model ran before the claim answered
    assert detector.calls == 1
    assert await store.get("spec") == done


async def test_without_speculation_the_model_runs_after_the_claim(make_service, executor) -> None:
    store = SlowClaimStore(0.05)
    detector = FakeDetector()
    store.detector = detector
    service = make_service(store=store, detector=detector)
    await service.invoke(ModelInput("serial", PNG))
    assert store.model_calls_at_claim_end == [0]
    assert detector.calls == 1


async def test_speculative_losers_discard_their_runs_and_get_the_one_stored_result(
    make_service,
    executor,
) -> None:
    store = SlowClaimStore(0.01)
    detector = FakeDetector(delay=0.02)
    service = make_service(store=store, detector=detector, speculative_model_run=True)
    results = await asyncio.gather(*(service.invoke(ModelInput("same", PNG)) for _ in range(5)))
    stored = await store.get("same")
    assert stored.state is State.SUCCEEDED
    assert all(result == stored for result in results)  # every caller: the stored result
    assert detector.calls == 5  # each ran the model once; only the owner's run was stored
    await service.wait_idle()
    assert detector.calls == 5


async def test_speculative_run_of_a_replayed_id_is_discarded(make_service, executor) -> None:
    store = SlowClaimStore(0.0)
    detector = FakeDetector()
    service = make_service(store=store, detector=detector, speculative_model_run=True)
    first = await service.invoke(ModelInput("replay", PNG, {"a": "1"}))
    again = await service.invoke(ModelInput("replay", PNG, {"a": "2"}))
    assert again == first
    assert detector.calls == 2
    with pytest.raises(AlreadyExistsError):
        await service.invoke(ModelInput("replay", JPEG))
    assert await store.get("replay") == first


async def test_speculation_with_a_failed_claim_stores_nothing(make_service, executor) -> None:
    from inference_service.errors import StoreUnavailableError

    store = SlowClaimStore(0.0, fail=True)
    detector = FakeDetector(delay=0.05)
    service = make_service(store=store, detector=detector, speculative_model_run=True)
    with pytest.raises(StoreUnavailableError):
        await service.invoke(ModelInput("lost", PNG))
    assert detector.calls == 1  # the run ended before the call did (it holds the image)
    store.fail = False
    assert await store.get("lost") is None


async def test_speculative_model_failure_marks_failed(make_service, executor) -> None:
    store = SlowClaimStore(0.02)
    service = make_service(
        store=store, detector=FakeDetector(fail=True), speculative_model_run=True
    )
    answered = await service.invoke(ModelInput("f", PNG))
    assert answered.state is State.FAILED
    stored = await store.get("f")
    assert stored.state is State.FAILED
    assert stored.input.content == PNG
