"""Small HTTP helpers for REST/JSON calls through Envoy (stdlib ``http.client`` only).

Every reply is read whole; by default each one is checked for leaked ``grpc-*`` headers, which
Envoy's ``rest_responses`` Lua filter must strip from every REST response.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import ssl
from typing import Any

import grpc


@dataclasses.dataclass(frozen=True)
class Reply:
    """An HTTP response, read whole; header names are lower-case."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON; fails unless the content type is JSON."""
        content_type = self.headers.get("content-type", "")
        assert content_type.startswith("application/json"), (content_type, self.body[:300])
        return json.loads(self.body)


def request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    check_grpc_headers: bool = True,
    ssl_context: ssl.SSLContext | None = None,
) -> Reply:
    """One HTTP/1.1 request on a fresh connection (HTTPS with ``ssl_context``); a body is sent
    as ``application/json``."""
    sent = dict(headers or {})
    if body is not None:
        sent.setdefault("content-type", "application/json")
    conn: http.client.HTTPConnection
    if ssl_context is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl_context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        reply = Reply(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()
    if check_grpc_headers:
        assert_no_grpc_headers(reply)
    return reply


def assert_no_grpc_headers(reply: Reply) -> None:
    """REST clients must never see gRPC's own headers (grpc-status, grpc-message, ...)."""
    leaked = sorted(name for name in reply.headers if name.startswith("grpc-"))
    assert not leaked, f"grpc headers in a REST response: {leaked}"


def assert_status_json(reply: Reply, http_status: int, grpc_code: grpc.StatusCode) -> dict:
    """The reply has ``http_status`` and a google.rpc.Status-shaped JSON body with
    ``grpc_code``: ``{"code": <int>, "message": <str>, "details": []}``. Returns the body."""
    assert reply.status == http_status, (reply.status, reply.body[:500])
    body = reply.json()
    assert isinstance(body, dict), body
    assert body.get("code") == grpc_code.value[0], body
    assert isinstance(body.get("message"), str), body
    assert body.get("details") == [], body
    return body


@dataclasses.dataclass(frozen=True)
class RestClient:
    """REST/JSON calls to one HTTP listener (Envoy's)."""

    host: str
    port: int
    timeout: float = 60.0
    """Each request's timeout in seconds, unless a call passes its own ``timeout``."""
    ssl_context: ssl.SSLContext | None = None
    """HTTPS with this context (e.g. one that trusts a test CA); plain HTTP without."""
    headers: dict[str, str] | None = dataclasses.field(default=None, repr=False)
    """Headers sent with every request (e.g. ``authorization``), under a call's own; never in
    the repr (credentials)."""

    def call(self, method: str, path: str, body: bytes | None = None, **kwargs: Any) -> Reply:
        """Any request; see ``request`` for the keyword arguments."""
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("ssl_context", self.ssl_context)
        if self.headers:
            kwargs["headers"] = {**self.headers, **(kwargs.get("headers") or {})}
        return request(self.host, self.port, method, path, body, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.call("GET", path, **kwargs)

    def post_json(self, path: str, payload: Any, **kwargs: Any) -> Reply:
        """POST ``payload`` serialized as JSON."""
        return self.call("POST", path, json.dumps(payload).encode(), **kwargs)
