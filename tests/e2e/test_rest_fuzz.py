"""Property-based fuzzing of the REST/JSON API through the real Envoy and servers: random JSON,
wrong types, huge strings, random paths and query parameters. Every answer is one the README
documents, as JSON shaped like google.rpc.Status, never a 5xx but the documented 503, never an
internal class name; a refused request stores nothing.

``make test`` runs the ``quick`` hypothesis profile; ``make fuzz`` runs 10,000 cases a test.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.http import RestClient

pytestmark = pytest.mark.fuzz

#: HTTP status -> the gRPC code of the JSON body (README's error table).
DOCUMENTED = {400: 3, 404: 5, 409: 6, 413: 8, 503: 14}
ID_PATTERN = re.compile(r"[A-Za-z0-9._~-]{1,128}")
LEAKS = re.compile(r"Traceback|<class|DecodeError|Exception|\.py\b", re.IGNORECASE)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=64),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
huge_strings = st.integers(min_value=1, max_value=300_000).map(lambda n: "A" * n)
ids = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789._~-", min_size=1, max_size=12),
    st.text(max_size=140),
    json_values,
)
contents = st.one_of(
    st.binary(max_size=256).map(lambda b: base64.b64encode(b).decode()),
    st.text(max_size=64),  # not base64
    huge_strings,
    json_values,
)
metadata = st.one_of(
    st.dictionaries(st.text(max_size=140), st.text(max_size=1100), max_size=70),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),  # e.g. {"x": {}}
    json_values,
)
views = st.one_of(
    st.sampled_from(["INVOCATION_VIEW_BASIC", "INVOCATION_VIEW_FULL", "NOPE", 0, 1, 2, 9]),
    json_values,
)
invoke_bodies = st.one_of(
    st.fixed_dictionaries(
        {"input": st.fixed_dictionaries({"id": ids, "content": contents, "metadata": metadata})},
        optional={
            "model": st.one_of(st.just(""), json_values),
            "view": views,
            "extra": json_values,
        },
    ),
    json_values,
)
raw_bodies = st.one_of(
    invoke_bodies.map(lambda body: json.dumps(body).encode()),
    st.binary(max_size=512),  # not JSON at all
)


def assert_documented(reply, what: object) -> dict:
    assert reply.status == 200 or reply.status in DOCUMENTED, (reply.status, reply.body[:300], what)
    body = reply.json()
    if reply.status != 200:
        assert body.get("code") == DOCUMENTED[reply.status], (body, what)
        assert body.get("details") == [], body
        assert not LEAKS.search(body.get("message", "")), body
    return body


def assert_not_stored(api: RestClient, invocation_id: object) -> None:
    if isinstance(invocation_id, str) and ID_PATTERN.fullmatch(invocation_id):
        reply = api.get(f"/v1/invocations/{invocation_id}?view=INVOCATION_VIEW_BASIC")
        assert reply.status == 404, (invocation_id, reply.status, reply.body[:200])


FUZZ_SETTINGS = settings(
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ]
)


@FUZZ_SETTINGS
@given(body=raw_bodies)
def test_random_invoke_bodies_get_documented_json_answers(api: RestClient, body: bytes) -> None:
    reply = api.call("POST", "/v1/invocations", body)
    assert_documented(reply, body[:200])
    if reply.status != 200:
        try:
            sent = json.loads(body)
        except ValueError:
            return
        if isinstance(sent, dict) and isinstance(sent.get("input"), dict):
            assert_not_stored(api, sent["input"].get("id"))


@FUZZ_SETTINGS
@given(
    path_id=st.text(max_size=140),
    query=st.dictionaries(st.text(max_size=12), st.text(max_size=24), max_size=3),
)
def test_random_reads_get_documented_json_answers(
    api: RestClient, path_id: str, query: dict[str, str]
) -> None:
    path = "/v1/invocations/" + urllib.parse.quote(path_id, safe="")
    if query:
        path += "?" + urllib.parse.urlencode(query)
    reply = api.get(path)
    assert_documented(reply, path)
    assert reply.status != 200, path  # nothing was ever stored by these tests


def test_a_metadata_value_that_is_an_object_is_400_not_500(api: RestClient) -> None:
    """Found by schemathesis on an earlier version: Envoy transcoded it into bytes the server
    could not parse, and the server answered 500 with an internal class name."""
    reply = api.post_json(
        "/v1/invocations", {"input": {"id": "", "content": "", "metadata": {"x": {}}}, "model": ""}
    )
    body = assert_documented(reply, "metadata object")
    assert reply.status == 400, body
