"""Property-based fuzzing of the gRPC API: random field values and random bytes as messages,
against the real server (real decoder, admission control and model) on the in-memory store.

For every case: the status is one the API documents for it (never INTERNAL or UNKNOWN), a
message that cannot be decoded gets INVALID_ARGUMENT with the fixed message, a refused request
stores nothing, and after every test the server still serves.
"""

from __future__ import annotations

import io
import string
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st
from inference.v1 import inference_service_pb2 as pb
from PIL import Image
from support import wire
from support.fakes import RecordingStore
from support.served import ServedApplication

from inference_service.grpc.errors import UNDECODABLE_REQUEST_MESSAGE
from inference_service.settings import Settings

pytestmark = pytest.mark.fuzz

ID_CHARACTERS = string.ascii_letters + string.digits + "._~-"
INVOKE_CODES = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS"}
GET_CODES = {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}
LIST_CODES = {"OK", "INVALID_ARGUMENT"}
DELETE_CODES = {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}


@pytest.fixture(scope="module")
def store() -> RecordingStore:
    return RecordingStore()


@pytest.fixture(scope="module")
def channel(store: RecordingStore, shared_dir: Path):
    settings = Settings(port=0, store="memory", shared_dir=shared_dir)
    with (
        ServedApplication(settings, store=store) as served,
        grpc.insecure_channel(served.address) as chan,
    ):
        yield chan
        check_serving(chan)


def check_serving(channel: grpc.Channel) -> None:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def call(channel: grpc.Channel, method: str, payload: bytes) -> tuple[str, str, bytes]:
    """(status code name, details, response bytes) of a raw unary call."""
    try:
        response = channel.unary_unary(method)(payload, timeout=60)
    except grpc.RpcError as error:
        return error.code().name, error.details() or "", b""
    return "OK", "", response


# --- strategies ------------------------------------------------------------------------------


# The modes each format can store.
FORMAT_MODES = {
    "PNG": ["1", "L", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["L", "P"],
    "BMP": ["1", "L", "P", "RGB", "RGBA"],
    "TIFF": ["1", "L", "P", "RGB", "RGBA", "CMYK", "I;16", "F"],
    "WEBP": ["RGB", "RGBA"],
}


def small_image(width: int, height: int, format_mode: tuple[str, str], seed: int) -> bytes:
    """A noise image, the same for the same arguments (hypothesis replays cases)."""
    fmt, mode = format_mode
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


images = st.builds(
    small_image,
    width=st.integers(1, 48),
    height=st.integers(1, 48),
    format_mode=st.sampled_from([(f, m) for f, modes in FORMAT_MODES.items() for m in modes]),
    seed=st.integers(0, 1000),
)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with a few bytes flipped, cut short, or with bytes spliced in."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "truncate", "insert"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif action == "truncate":
            del data[position:]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


contents = st.one_of(
    st.binary(max_size=512),
    images,
    mutated(images),
    st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00", b"BM"]),
)
ids = st.one_of(
    st.sampled_from(["a", "b", "c", "d"]),  # a small pool: repeats meet their twins, reads hit
    st.text(ID_CHARACTERS, min_size=1, max_size=8),
    st.text(ID_CHARACTERS, max_size=140),
    st.text(max_size=140),
)
metadata = st.dictionaries(
    st.text(max_size=140), st.text(max_size=1100), max_size=70
) | st.dictionaries(st.text(ID_CHARACTERS, min_size=1, max_size=8), st.text(max_size=16))
models = st.one_of(st.just(""), st.just("face-detector"), st.text(max_size=24))

invoke_requests = st.builds(
    lambda id_, content, meta, model: pb.InvokeRequest(
        input=pb.ModelInput(id=id_, content=content, metadata=meta), model=model
    ),
    ids,
    contents,
    metadata,
    models,
)

raw_strings = st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode))
raw_invokes = st.one_of(
    st.binary(max_size=1024),
    mutated(invoke_requests.map(pb.InvokeRequest.SerializeToString)),
    st.builds(
        lambda id_, content, entries, model: wire.invoke_request(
            id=id_, content=content, metadata=entries, model=model
        ),
        raw_strings,
        contents,
        st.lists(st.tuples(raw_strings, raw_strings), max_size=4),
        raw_strings,
    ),
)
raw_gets = st.one_of(
    st.binary(max_size=256),
    st.builds(
        lambda id_, view: wire.get_invocation_request(id=id_, view=view),
        raw_strings,
        st.integers(0, 2**32 - 1),
    ),
)


# --- properties --------------------------------------------------------------------------------


def check_invoke(channel, store: RecordingStore, payload: bytes, *, decodes: bool) -> str:
    before = len(store.claimed)
    code, details, response = call(channel, wire.INVOKE, payload)
    assert code in INVOKE_CODES, (code, details)
    if not decodes:
        assert (code, details) == ("INVALID_ARGUMENT", UNDECODABLE_REQUEST_MESSAGE)
    if code == "OK":
        invocation = pb.InvokeResponse.FromString(response).invocation
        assert invocation.state == pb.Invocation.STATE_SUCCEEDED
        assert len(store.claimed) - before in (0, 1)  # 0: a repeat of a stored invocation
        assert invocation.id in store.claimed
    else:
        assert len(store.claimed) == before, (code, details)
    return code


def parses(message_type, payload: bytes) -> bool:
    try:
        message_type.FromString(payload)
    except DecodeError:
        return False
    return True


def check_ran_every_case(cases: list[str], name: str) -> None:
    """Hypothesis ran the profile's number of cases (it stops early only on a failure)."""
    wanted = settings.default.max_examples
    codes = {code: cases.count(code) for code in sorted(set(cases))}
    print(f"{name}: {len(cases)} cases, {codes}")  # shown by -rA (make fuzz)
    assert len(cases) >= wanted, (len(cases), wanted)


def test_invoke_with_random_field_values(channel, store: RecordingStore) -> None:
    cases: list[str] = []

    @given(request=invoke_requests)
    def invoke(request: pb.InvokeRequest) -> None:
        cases.append(check_invoke(channel, store, request.SerializeToString(), decodes=True))

    invoke()
    check_serving(channel)
    check_ran_every_case(cases, "Invoke, random field values")


def test_invoke_with_random_bytes_as_the_message(channel, store: RecordingStore) -> None:
    cases: list[str] = []

    @given(payload=raw_invokes)
    def invoke(payload: bytes) -> None:
        decodes = parses(pb.InvokeRequest, payload)
        cases.append(check_invoke(channel, store, payload, decodes=decodes))

    invoke()
    check_serving(channel)
    check_ran_every_case(cases, "Invoke, random bytes")


def test_get_invocation_with_random_fields_and_bytes(channel, store: RecordingStore) -> None:
    @given(
        payload=st.one_of(
            raw_gets,
            st.builds(
                lambda id_, view: pb.GetInvocationRequest(id=id_, view=view).SerializeToString(),
                ids,
                st.integers(-(2**31), 2**31 - 1),
            ),
        )
    )
    def get(payload: bytes) -> None:
        before = len(store.claimed)
        code, details, _ = call(channel, wire.GET_INVOCATION, payload)
        assert code in GET_CODES, (code, details)
        if not parses(pb.GetInvocationRequest, payload):
            assert (code, details) == ("INVALID_ARGUMENT", UNDECODABLE_REQUEST_MESSAGE)
        assert len(store.claimed) == before
        cases.append(code)

    cases: list[str] = []
    get()
    check_serving(channel)
    check_ran_every_case(cases, "GetInvocation, random fields and bytes")


# Pieces of the filter language, so that random filters often come close to valid ones.
filter_pieces = st.sampled_from(
    [
        "create_time",
        "model",
        "state",
        "metadata.k",
        'metadata."a b"',
        ">=",
        "<",
        "=",
        "!=",
        "AND",
        "OR",
        '"2026-01-01T00:00:00Z"',
        '"x"',
        "SUCCEEDED",
        "(",
        ")",
        '"',
        "\\",
        " ",
    ]
)
filter_texts = st.one_of(
    st.lists(filter_pieces, max_size=12).map(" ".join),
    st.text(max_size=64),
)
page_tokens = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + "-_.", max_size=120),
    st.text(max_size=40),
)
raw_lists = st.one_of(
    st.binary(max_size=256),
    st.builds(
        lambda size, token, filter_, view: wire.list_invocations_request(
            page_size=size, page_token=token, filter=filter_, view=view
        ),
        st.integers(0, 2**64 - 1),
        raw_strings,
        raw_strings,
        st.integers(0, 2**32 - 1),
    ),
)


def test_list_invocations_with_random_fields_and_bytes(channel, store: RecordingStore) -> None:
    """Any page size, token, filter and view: OK (at most the page size allows) or
    INVALID_ARGUMENT, never anything else; nothing is stored."""

    @given(
        payload=st.one_of(
            raw_lists,
            st.builds(
                lambda size, token, filter_, view: pb.ListInvocationsRequest(
                    page_size=size, page_token=token, filter=filter_, view=view
                ).SerializeToString(),
                st.integers(-(2**31), 2**31 - 1),
                page_tokens,
                filter_texts,
                st.integers(-(2**31), 2**31 - 1),
            ),
        )
    )
    def list_(payload: bytes) -> None:
        before = len(store.claimed)
        code, details, response = call(channel, wire.LIST_INVOCATIONS, payload)
        assert code in LIST_CODES, (code, details)
        if not parses(pb.ListInvocationsRequest, payload):
            assert (code, details) == ("INVALID_ARGUMENT", UNDECODABLE_REQUEST_MESSAGE)
        if code == "OK":
            size = pb.ListInvocationsRequest.FromString(payload).page_size
            page = pb.ListInvocationsResponse.FromString(response)
            assert len(page.invocations) <= (50 if size == 0 else min(size, 1000))
        assert len(store.claimed) == before
        cases.append(code)

    cases: list[str] = []
    list_()
    check_serving(channel)
    check_ran_every_case(cases, "ListInvocations, random fields and bytes")


def test_delete_invocation_with_random_fields_and_bytes(channel, store: RecordingStore) -> None:
    """Any id and allow_missing: OK, NOT_FOUND or INVALID_ARGUMENT; after an OK the id is gone
    (GetInvocation NOT_FOUND); nothing is stored."""

    @given(
        payload=st.one_of(
            st.binary(max_size=256),
            st.builds(
                lambda id_, allow: wire.delete_invocation_request(id=id_, allow_missing=allow),
                raw_strings,
                st.integers(0, 2**64 - 1),
            ),
            st.builds(
                lambda id_, allow: pb.DeleteInvocationRequest(
                    id=id_, allow_missing=allow
                ).SerializeToString(),
                ids,
                st.booleans(),
            ),
        )
    )
    def delete(payload: bytes) -> None:
        before = len(store.claimed)
        code, details, _ = call(channel, wire.DELETE_INVOCATION, payload)
        assert code in DELETE_CODES, (code, details)
        if not parses(pb.DeleteInvocationRequest, payload):
            assert (code, details) == ("INVALID_ARGUMENT", UNDECODABLE_REQUEST_MESSAGE)
        if code == "OK":
            request = pb.DeleteInvocationRequest.FromString(payload)
            get = pb.GetInvocationRequest(id=request.id).SerializeToString()
            assert call(channel, wire.GET_INVOCATION, get)[0] == "NOT_FOUND"
        assert len(store.claimed) == before
        cases.append(code)

    cases: list[str] = []
    delete()
    check_serving(channel)
    check_ran_every_case(cases, "DeleteInvocation, random fields and bytes")
