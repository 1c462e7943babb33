"""ListInvocations and DeleteInvocation in the service layer: the filter language, the signed
page token, page sizes, and the delete's audit line (in-memory store)."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inference_service.domain import (
    Invocation,
    InvocationFilter,
    ModelInfo,
    ModelInput,
    ModelOutput,
    PageCursor,
    State,
)
from inference_service.errors import InvalidArgumentError, NotFoundError
from inference_service.limits import RequestLimits, list_page_bytes
from inference_service.listing import PageTokens, parameters_digest, parse_filter
from inference_service.service import InferenceService
from inference_service.stores.memory import InMemoryInvocationStore

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
SECRET = b"0123456789abcdef-secret"


class NoDetector:
    info = ModelInfo(name="face-detector", version="v")

    def detect(self, image: np.ndarray) -> ModelOutput:
        return ModelOutput((), 1, 1)

    def close(self) -> None:
        pass


def stored(index: int, **changes: object) -> Invocation:
    content = b"\xff\xd8\xff" + index.to_bytes(4, "big")
    invocation = Invocation(
        input=ModelInput(
            id=f"inv-{index:04d}",
            content=content,
            metadata={"camera": f"cam-{index % 3}", "site": "north" if index % 2 else "south"},
        ),
        content_sha256=hashlib.sha256(content).hexdigest(),
        state=State.SUCCEEDED if index % 5 else State.FAILED,
        model=ModelInfo("face-detector" if index % 4 else "other-model", "v"),
        create_time=T0 + dt.timedelta(seconds=index // 2),  # pairs share a create time
        output=ModelOutput((), 1, 1),
        complete_time=T0,
    )
    return dataclasses.replace(invocation, **changes)


async def fill(store: InMemoryInvocationStore, count: int) -> list[Invocation]:
    invocations = [stored(i) for i in range(count)]
    for invocation in invocations:
        await store.claim(invocation)
        await store.complete(invocation)
    return invocations


def service(store: InMemoryInvocationStore, **kwargs: object) -> InferenceService:
    return InferenceService(
        store=store,
        detector=NoDetector(),
        decode=lambda content, pixels: np.zeros((1, 1, 3), np.uint8),
        executor=ThreadPoolExecutor(1),
        **{"page_tokens": PageTokens(secrets=[SECRET]), **kwargs},
    )


def newest_first(invocations: list[Invocation]) -> list[str]:
    return [i.id for i in sorted(invocations, key=lambda i: (-i.create_time.timestamp(), i.id))]


async def list_all(svc: InferenceService, size: int, filter_text: str = "") -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page, token = await svc.list_invocations(
            page_size=size, page_token=token, filter_text=filter_text
        )
        assert len(page) <= size
        ids += [i.id for i in page]
        if not token:
            return ids


# --- the filter language ----------------------------------------------------------------------


def test_a_filter_of_every_supported_term_parses() -> None:
    parsed = parse_filter(
        'create_time >= "2026-03-01T00:00:10Z" AND create_time < "2026-03-01T01:00:00+01:00"'
        ' AND model = "face-detector" AND state = FAILED AND metadata.camera = "cam-1"'
        ' AND metadata."two words" = "a \\"quoted\\" value"'
    )
    assert parsed == InvocationFilter(
        create_time_min=T0 + dt.timedelta(seconds=10),
        create_time_max=T0,
        models=frozenset({"face-detector"}),
        state=State.FAILED,
        metadata=(("camera", "cam-1"), ("two words", 'a "quoted" value')),
    )
    assert parse_filter("") == InvocationFilter()
    assert parse_filter('state = "succeeded"').state is State.SUCCEEDED


@pytest.mark.parametrize(
    "text",
    [
        'model = "a" OR model = "b"',
        'NOT model = "a"',
        '(model = "a")',
        'model != "a"',
        'create_time > "2026-01-01T00:00:00Z"',
        'create_time <= "2026-01-01T00:00:00Z"',
        'create_time >= "yesterday"',
        'create_time >= "2026-01-01"',
        'create_time >= "2026-01-01T00:00:00"',  # no offset
        "state = DONE",
        "metadata.camera = front",
        'owner = "x"',
        'model = "a" AND model = "b"',
        'model = "a" and state = FAILED',
        'model = "a" AND',
        'model = "a" state = FAILED',
        "x" * 5000,
    ],
)
def test_anything_else_is_invalid_argument_naming_what_is_supported(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="supported: create_time >="):
        parse_filter(text)


def test_a_filter_matches_by_every_term() -> None:
    invocation = stored(6)  # cam-0, south, face-detector, SUCCEEDED, T0+3s
    assert parse_filter('metadata.camera = "cam-0" AND state = SUCCEEDED').matches(invocation)
    assert not parse_filter('metadata.camera = "cam-1"').matches(invocation)
    assert not parse_filter('metadata.nothing = ""').matches(invocation)
    assert not parse_filter('model = "other-model"').matches(invocation)
    assert parse_filter('create_time >= "2026-03-01T00:00:03Z"').matches(invocation)
    assert not parse_filter('create_time < "2026-03-01T00:00:03Z"').matches(invocation)


# --- page tokens --------------------------------------------------------------------------


def test_a_token_round_trips_and_is_url_safe() -> None:
    tokens = PageTokens(secrets=[SECRET])
    cursor = PageCursor(create_time=T0 + dt.timedelta(milliseconds=7), id="a-b.c~d")
    token = tokens.make(cursor, parameters_digest("", "BASIC"))
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert tokens.read(token, parameters_digest("", "BASIC")) == cursor
    empty = PageCursor(create_time=T0, id=None)
    assert tokens.read(tokens.make(empty, "p"), "p") == empty


def test_rotation_signs_with_the_first_secret_and_verifies_with_all() -> None:
    old = PageTokens(secrets=[SECRET])
    rotated = PageTokens(secrets=[b"a-brand-new-secret-0001", SECRET])
    retired = PageTokens(secrets=[b"a-brand-new-secret-0001"])
    cursor = PageCursor(create_time=T0, id="x")
    assert rotated.read(old.make(cursor, "p"), "p") == cursor
    assert retired.read(rotated.make(cursor, "p"), "p") == cursor
    with pytest.raises(InvalidArgumentError, match="page_token is invalid"):
        retired.read(old.make(cursor, "p"), "p")


def _tampered(token: str) -> str:
    payload, mac = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["i"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return f"{forged}.{mac}"


def test_bad_tokens_are_invalid_argument() -> None:
    now = [T0]
    tokens = PageTokens(secrets=[SECRET], lifetime=dt.timedelta(hours=1), clock=lambda: now[0])
    token = tokens.make(PageCursor(create_time=T0, id="x"), "p")
    for bad in (
        token[:-3],
        token[: len(token) // 2],
        _tampered(token),
        "garbage",
        "a.b",
        "!!.??",
        token + "." + token,
        "",
    ):
        with pytest.raises(InvalidArgumentError, match="page_token is invalid"):
            tokens.read(bad, "p")
    with pytest.raises(InvalidArgumentError, match="another filter or view"):
        tokens.read(token, "q")
    now[0] = T0 + dt.timedelta(hours=1)
    with pytest.raises(InvalidArgumentError, match="expired"):
        tokens.read(token, "p")


# --- the service ------------------------------------------------------------------------------


async def test_pages_list_each_invocation_once_newest_first() -> None:
    store = InMemoryInvocationStore()
    invocations = await fill(store, 60)
    svc = service(store)
    assert await list_all(svc, 7) == newest_first(invocations)
    page, token = await svc.list_invocations()
    assert len(page) == 50 and token  # the default page size
    assert all(i.input.content == b"" for i in page)  # BASIC by default


async def test_each_filter_lists_exactly_the_matching_set() -> None:
    store = InMemoryInvocationStore()
    invocations = await fill(store, 60)
    svc = service(store)
    cases = {
        'metadata.camera = "cam-1"': lambda i: i.input.metadata["camera"] == "cam-1",
        'metadata.camera = "cam-1" AND metadata.site = "north"': lambda i: (
            i.input.metadata["camera"] == "cam-1" and i.input.metadata["site"] == "north"
        ),
        'model = "other-model"': lambda i: i.model.name == "other-model",
        "state = FAILED": lambda i: i.state is State.FAILED,
        'create_time >= "2026-03-01T00:00:10Z" AND create_time < "2026-03-01T00:00:20Z"': (
            lambda i: T0 + dt.timedelta(seconds=10) <= i.create_time < T0 + dt.timedelta(seconds=20)
        ),
        'metadata.camera = "nobody"': lambda i: False,
    }
    for text, wanted in cases.items():
        expected = newest_first([i for i in invocations if wanted(i)])
        assert await list_all(svc, 4, text) == expected, text


async def test_model_filter_takes_an_alias() -> None:
    store = InMemoryInvocationStore()
    invocations = await fill(store, 8)
    svc = service(store)
    names = svc._model_names("face-detector")
    assert "face-detector" in names
    assert await list_all(svc, 50, 'model = "face-detector"') == newest_first(
        [i for i in invocations if i.model.name == "face-detector"]
    )


async def test_page_sizes() -> None:
    store = InMemoryInvocationStore()
    await fill(store, 1100)
    svc = service(store)
    page, _ = await svc.list_invocations(page_size=5000)
    assert len(page) == 1000
    with pytest.raises(InvalidArgumentError, match="page_size is -1"):
        await svc.list_invocations(page_size=-1)


async def test_a_token_is_bound_to_its_filter_and_view() -> None:
    store = InMemoryInvocationStore()
    await fill(store, 10)
    svc = service(store)
    _, token = await svc.list_invocations(page_size=2, filter_text="state = SUCCEEDED")
    with pytest.raises(InvalidArgumentError, match="another filter or view"):
        await svc.list_invocations(page_size=2, page_token=token)
    with pytest.raises(InvalidArgumentError, match="another filter or view"):
        await svc.list_invocations(
            page_size=2, page_token=token, filter_text="state = SUCCEEDED", full=True
        )
    other = service(store, page_tokens=None)  # another secret: another deployment
    with pytest.raises(InvalidArgumentError, match="page_token is invalid"):
        await other.list_invocations(page_size=2, page_token=token, filter_text="state = SUCCEEDED")


async def test_full_pages_are_cut_to_the_response_limit() -> None:
    limits = RequestLimits(max_content_bytes=1000, max_metadata_entries=2)
    store = InMemoryInvocationStore()
    big = [stored(i, input=ModelInput(f"big-{i}", b"\xff\xd8\xff" + b"x" * 900)) for i in range(6)]
    for invocation in big:
        await store.claim(invocation)
        await store.complete(invocation)
    svc = service(store, limits=limits)
    seen: list[str] = []
    token = ""
    while True:
        page, token = await svc.list_invocations(page_size=100, page_token=token, full=True)
        assert page, "a FULL page always holds at least one invocation"
        assert sum(len(i.input.content) for i in page) <= list_page_bytes(limits)
        seen += [i.id for i in page]
        if not token:
            break
    assert seen == newest_first(big)


async def test_delete_erases_and_audits_without_the_content(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = InMemoryInvocationStore()
    (invocation,) = await fill(store, 1)
    svc = service(store)
    with caplog.at_level(logging.INFO, logger="inference_service.audit"):
        await svc.delete_invocation(invocation.id, request_id="req-1", caller="alice")
        with pytest.raises(NotFoundError):
            await svc.delete_invocation(invocation.id, request_id="req-2")
        await svc.delete_invocation(invocation.id, allow_missing=True)
    with pytest.raises(NotFoundError):
        await svc.get_invocation(invocation.id)
    assert await list_all(svc, 10) == []
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("audit")]
    assert [(line["outcome"], line["caller"], line["request_id"]) for line in lines] == [
        ("deleted", "alice", "req-1"),
        ("not_found", "", "req-2"),
        ("not_found", "", ""),
    ]
    assert all(line["invocation_id"] == invocation.id for line in lines)
    assert invocation.input.content.hex() not in caplog.text
    with pytest.raises(InvalidArgumentError):
        await svc.delete_invocation("bad id!")


async def test_retention_hides_expired_invocations_from_get_and_list() -> None:
    now = [T0 + dt.timedelta(seconds=10)]
    store = InMemoryInvocationStore(ttl_s=20, clock=lambda: now[0])
    invocations = await fill(store, 40)  # created T0 .. T0+19s
    svc = service(store)
    assert len(await list_all(svc, 100)) == 40
    now[0] = T0 + dt.timedelta(seconds=30)  # those created up to T0+10s have expired
    assert await list_all(svc, 100) == newest_first(
        [i for i in invocations if i.create_time > T0 + dt.timedelta(seconds=10)]
    )
    with pytest.raises(NotFoundError):
        await svc.get_invocation(invocations[0].id)
