"""ListInvocations and DeleteInvocation on the real stack (two server processes behind Envoy,
the session's Cassandra): paging across time buckets over gRPC and REST, every filter, bad
tokens and sizes; a delete that no server process (both warmed first) serves afterwards."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.http import RestClient, assert_status_json

from devstack.stack import LocalStack
from inference_service.domain import Claim, Invocation, ModelInfo, ModelInput, ModelOutput, State
from inference_service.stores.cassandra import CassandraConfig, CassandraInvocationStore

COUNT = 230
SPACING = dt.timedelta(seconds=97)  # 230 of them span about 6.2 hours: seven 1-hour buckets
MODEL = ModelInfo(name="lifecycle-model", version="v1")
OTHER = ModelInfo(name="lifecycle-other", version="v1")


def _made(run: str, index: int, start: dt.datetime) -> tuple[Invocation, Invocation | None]:
    content = b"\xff\xd8\xff\xe0" + f"{run}-{index}".encode()
    claim = Invocation(
        input=ModelInput(
            id=f"{run}-{index:03d}",
            content=content,
            metadata={"run": run, "camera": f"cam-{index % 3}", "site": f"s{index % 2}"},
        ),
        content_sha256=hashlib.sha256(content).hexdigest(),
        content_type="image/jpeg",
        state=State.PENDING,
        model=MODEL if index % 4 else OTHER,
        create_time=start + SPACING * (index // 2 * 2),  # pairs share a time: ties by id
    )
    claim = dataclasses.replace(claim, claim=Claim(token=uuid.uuid4().hex, time=claim.create_time))
    if index % 11 == 0:
        return claim, None  # stays PENDING
    if index % 5 == 0:
        done = dataclasses.replace(
            claim, state=State.FAILED, error="the model failed", complete_time=claim.create_time
        )
    else:
        done = dataclasses.replace(
            claim,
            state=State.SUCCEEDED,
            output=ModelOutput((), 4, 4),
            complete_time=claim.create_time,
        )
    return claim, done


@pytest.fixture(scope="module")
def stored(cassandra_endpoint: CassandraConfig) -> tuple[str, list[Invocation]]:
    """230 invocations written through the store with create times over the last ~6 hours."""
    run = f"ls{uuid.uuid4().hex[:8]}"

    async def write() -> list[Invocation]:
        store = await CassandraInvocationStore.connect(cassandra_endpoint)
        try:
            start = dt.datetime.now(dt.UTC).replace(microsecond=0) - SPACING * COUNT
            made = []
            for index in range(COUNT):
                claim, done = _made(run, index, start)
                assert await store.claim(claim) is None
                if done is not None:
                    await store.complete(done)
                made.append(done or claim)
            await store.lower_index_floor(start)  # as backfill-index does for older rows
            return made
        finally:
            await store.close()

    return run, asyncio.run(write())


def _query(fields: dict) -> str:
    """A query string with spaces as %20 (the transcoder reads "+" as a plus sign)."""
    return urllib.parse.urlencode(fields, quote_via=urllib.parse.quote)


def newest_first(invocations: list[Invocation]) -> list[str]:
    return [i.id for i in sorted(invocations, key=lambda i: (-i.create_time.timestamp(), i.id))]


def rfc3339(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def filters(run: str, made: list[Invocation]) -> dict[str, Callable[[Invocation], bool]]:
    middle = made[COUNT // 2].create_time
    later = made[COUNT * 3 // 4].create_time
    mine = f'metadata.run = "{run}"'
    return {
        mine: lambda i: True,
        f'{mine} AND metadata.camera = "cam-1"': lambda i: i.input.metadata["camera"] == "cam-1",
        f'{mine} AND metadata.camera = "cam-2" AND metadata.site = "s0"': lambda i: (
            i.input.metadata["camera"] == "cam-2" and i.input.metadata["site"] == "s0"
        ),
        f"{mine} AND state = SUCCEEDED": lambda i: i.state is State.SUCCEEDED,
        f"{mine} AND state = FAILED": lambda i: i.state is State.FAILED,
        f"{mine} AND state = PENDING": lambda i: i.state is State.PENDING,
        f'{mine} AND model = "{OTHER.name}"': lambda i: i.model == OTHER,
        f'{mine} AND create_time >= "{rfc3339(middle)}"': lambda i: i.create_time >= middle,
        f'{mine} AND create_time < "{rfc3339(middle)}"': lambda i: i.create_time < middle,
        (
            f'{mine} AND create_time >= "{rfc3339(middle)}" AND create_time < "{rfc3339(later)}"'
        ): lambda i: middle <= i.create_time < later,
        f'{mine} AND metadata.camera = "nobody"': lambda i: False,
    }


def list_grpc(stub: pb_grpc.InferenceServiceStub, filter_text: str, size: int) -> list[str]:
    ids: list[str] = []
    token = ""
    for _ in range(1000):
        page = stub.ListInvocations(
            pb.ListInvocationsRequest(page_size=size, page_token=token, filter=filter_text),
            timeout=30,
        )
        assert len(page.invocations) <= size
        assert all(not i.input.content for i in page.invocations)  # BASIC by default
        ids += [i.id for i in page.invocations]
        token = page.next_page_token
        if not token:
            return ids
    raise AssertionError("the listing never ended")


def list_rest(api: RestClient, filter_text: str, size: int) -> list[str]:
    ids: list[str] = []
    token = ""
    for _ in range(1000):
        query = {"page_size": str(size), "filter": filter_text}
        if token:
            query["page_token"] = token
        reply = api.get(f"/v1/invocations?{_query(query)}")
        assert reply.status == 200, reply.body[:500]
        body = reply.json()
        assert len(body["invocations"]) <= size
        ids += [i["id"] for i in body["invocations"]]
        token = body["next_page_token"]
        if not token:
            return ids
    raise AssertionError("the listing never ended")


def test_grpc_pages_of_7_list_each_invocation_once_newest_first_for_every_filter(
    channel: grpc.Channel, stored: tuple[str, list[Invocation]]
) -> None:
    run, made = stored
    stub = pb_grpc.InferenceServiceStub(channel)
    for filter_text, wanted in filters(run, made).items():
        expected = newest_first([i for i in made if wanted(i)])
        assert list_grpc(stub, filter_text, 7) == expected, filter_text


def test_rest_pages_of_7_list_each_invocation_once_newest_first_for_every_filter(
    api: RestClient, stored: tuple[str, list[Invocation]]
) -> None:
    run, made = stored
    for filter_text, wanted in filters(run, made).items():
        expected = newest_first([i for i in made if wanted(i)])
        assert list_rest(api, filter_text, 7) == expected, filter_text


def test_bad_tokens_filters_and_sizes_are_400_invalid_argument(
    api: RestClient, channel: grpc.Channel, stored: tuple[str, list[Invocation]]
) -> None:
    run, _ = stored
    mine = f'metadata.run = "{run}"'
    first = api.get(f"/v1/invocations?{_query({'page_size': 7, 'filter': mine})}")
    token = first.json()["next_page_token"]
    assert token
    payload, mac = token.split(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    bad = {
        "tampered": {"filter": mine, "page_token": f"{flipped}.{mac}"},
        "truncated": {"filter": mine, "page_token": token[:-5]},
        "garbled": {"filter": mine, "page_token": "not-a-token"},
        "another filter": {"filter": f"{mine} AND state = FAILED", "page_token": token},
        "another view": {"filter": mine, "page_token": token, "view": "INVOCATION_VIEW_FULL"},
        "negative page size": {"filter": mine, "page_size": "-1"},
        "unsupported filter": {"filter": 'model = "a" OR model = "b"'},
    }
    for name, query in bad.items():
        reply = api.get(f"/v1/invocations?{_query(query)}")
        body = assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)
        assert body["message"], name
    unsupported = api.get("/v1/invocations?" + _query(bad["unsupported filter"]))
    assert "supported:" in unsupported.json()["message"]

    stub = pb_grpc.InferenceServiceStub(channel)
    for request in (
        pb.ListInvocationsRequest(page_size=-1),
        pb.ListInvocationsRequest(filter=mine, page_token=token[:-5]),
        pb.ListInvocationsRequest(filter="colour = blue"),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            stub.ListInvocations(request, timeout=10)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_page_size_5000_returns_at_most_1000(
    channel: grpc.Channel, stored: tuple[str, list[Invocation]]
) -> None:
    stub = pb_grpc.InferenceServiceStub(channel)
    page = stub.ListInvocations(pb.ListInvocationsRequest(page_size=5000), timeout=60)
    assert 0 < len(page.invocations) <= 1000


def _invoke(api: RestClient, invocation_id: str, content: bytes) -> dict:
    payload = {
        "input": {"id": invocation_id, "content": base64.b64encode(content).decode()},
        "view": "INVOCATION_VIEW_BASIC",
    }
    reply = api.post_json("/v1/invocations", payload)
    assert reply.status == 200, reply.body[:500]
    return reply.json()["invocation"]


def test_after_a_delete_through_envoy_no_server_process_serves_it(
    api: RestClient, stack: LocalStack, id_prefix: str, images_dir: Path
) -> None:
    invocation_id = f"{id_prefix}-deleted"
    content = (images_dir / "face-2.jpg").read_bytes()
    created = _invoke(api, invocation_id, content)
    stubs = []
    for server in stack.servers:  # each process directly: both have it in their cache
        channel = grpc.insecure_channel(
            server.address, options=[("grpc.max_receive_message_length", 32 * 1024 * 1024)]
        )
        stubs.append(pb_grpc.InferenceServiceStub(channel))
    assert len(stubs) == 2
    for stub in stubs:
        for _ in range(2):
            read = stub.GetInvocation(pb.GetInvocationRequest(id=invocation_id), timeout=10)
            assert read.invocation.input.content == content
        stub.RenderInvocation(pb.RenderInvocationRequest(id=invocation_id), timeout=30)

    deleted = api.call("DELETE", f"/v1/invocations/{invocation_id}", b"")
    assert deleted.status == 200, deleted.body
    assert deleted.json() == {}

    for stub in stubs:
        for request, method in (
            (pb.GetInvocationRequest(id=invocation_id), stub.GetInvocation),
            (
                pb.GetInvocationRequest(id=invocation_id, view=pb.INVOCATION_VIEW_BASIC),
                stub.GetInvocation,
            ),
            (pb.RenderInvocationRequest(id=invocation_id), stub.RenderInvocation),
        ):
            with pytest.raises(grpc.RpcError) as raised:
                method(request, timeout=10)
            assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        listed = stub.ListInvocations(pb.ListInvocationsRequest(page_size=1000), timeout=30)
        assert invocation_id not in [i.id for i in listed.invocations]
    for path in (f"/v1/invocations/{invocation_id}", f"/v1/invocations/{invocation_id}:render"):
        for _ in range(2):  # both servers, round robin
            assert_status_json(api.get(path), 404, grpc.StatusCode.NOT_FOUND)
    again = api.call("DELETE", f"/v1/invocations/{invocation_id}", b"")
    assert_status_json(again, 404, grpc.StatusCode.NOT_FOUND)
    allowed = api.call("DELETE", f"/v1/invocations/{invocation_id}?allow_missing=true", b"")
    assert allowed.status == 200, allowed.body

    # Invoked again, the id starts afresh (a new create time), and every process serves it.
    fresh = _invoke(api, invocation_id, content)
    assert fresh["create_time"] != created["create_time"]
    for stub in stubs:
        read = stub.GetInvocation(pb.GetInvocationRequest(id=invocation_id), timeout=10)
        assert read.invocation.create_time.ToJsonString() == fresh["create_time"]


def test_delete_of_a_malformed_id_is_400(api: RestClient) -> None:
    reply = api.call("DELETE", "/v1/invocations/bad%20id", b"")
    assert_status_json(reply, 400, grpc.StatusCode.INVALID_ARGUMENT)
