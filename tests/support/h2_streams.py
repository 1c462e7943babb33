"""Hostile HTTP/2 clients on raw sockets (the ``h2`` library): many streams opened and left
unfinished, as a slow or malicious client leaves them. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import dataclasses
import selectors
import socket
import ssl
import struct
import time
from collections.abc import Iterable

import h2.config
import h2.connection
import h2.events

REST_PATH = "/v1/invocations"
GRPC_PATH = "/inference.v1.InferenceService/Invoke"


def rest_headers(authority: str, scheme: str = "http") -> list[tuple[str, str]]:
    """An Invoke over REST whose body (1000 bytes announced) will never be finished."""
    return [
        (":method", "POST"),
        (":scheme", scheme),
        (":authority", authority),
        (":path", REST_PATH),
        ("content-type", "application/json"),
        ("content-length", "1000"),
    ]


def grpc_headers(authority: str, scheme: str = "http") -> list[tuple[str, str]]:
    """A native gRPC Invoke whose message (1000 bytes announced) will never be finished."""
    return [
        (":method", "POST"),
        (":scheme", scheme),
        (":authority", authority),
        (":path", GRPC_PATH),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


REST_BODY_START = b'{"input": {'
GRPC_BODY_START = struct.pack(">BI", 0, 1000) + b"\x0a"  # frame of 1000 bytes, 1 sent


@dataclasses.dataclass
class StreamOutcome:
    """What became of one stream: its response status (``:status``), grpc-status if any,
    whether the server reset it (and with which error code), whether it ended."""

    status: str | None = None
    grpc_status: str | None = None
    reset_code: int | None = None
    ended: bool = False

    @property
    def finished(self) -> bool:
        return self.ended or self.reset_code is not None


class H2Client:
    """One HTTP/2 connection (prior knowledge, or ALPN h2 over TLS) driven by hand."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection((host, port), timeout=10)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=host)
        sock.setblocking(False)
        self.sock = sock
        self.authority = f"{host}:{port}"
        self.scheme = "https" if ssl_context is not None else "http"
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.outcomes: dict[int, StreamOutcome] = {}
        self.remote_max_streams: int | None = None
        self.closed = False

    def open(self, headers: list[tuple[str, str]], body_start: bytes) -> int:
        """Send a request's headers and the start of its body, never its end."""
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers, end_stream=False)
        self.conn.send_data(stream_id, body_start, end_stream=False)
        self.outcomes[stream_id] = StreamOutcome()
        return stream_id

    def flush(self) -> None:
        data = self.conn.data_to_send()
        while data and not self.closed:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                time.sleep(0.001)
                continue
            except OSError:
                self.closed = True
                return
            data = data[sent:]

    def on_readable(self) -> None:
        """Read what arrived and record it (acknowledging settings and pings)."""
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            self._record(event)
        self.flush()

    def _record(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.remote_max_streams = self.conn.remote_settings.max_concurrent_streams
        stream_id = getattr(event, "stream_id", None)
        outcome = self.outcomes.get(stream_id) if stream_id else None
        if outcome is None:
            return
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            headers = dict(event.headers)
            outcome.status = headers.get(":status", outcome.status)
            outcome.grpc_status = headers.get("grpc-status", outcome.grpc_status)
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            outcome.ended = True
        elif isinstance(event, h2.events.StreamReset):
            outcome.reset_code = int(event.error_code)

    def close(self) -> None:
        if not self.closed:
            try:
                self.conn.close_connection()
                self.flush()
            except Exception:  # the peer may be gone already
                pass
        self.closed = True
        self.sock.close()


def pump(clients: Iterable[H2Client], seconds: float, *, until_finished: bool = False) -> None:
    """Read from every client for ``seconds`` (or until all their streams finished)."""
    clients = list(clients)
    selector = selectors.DefaultSelector()
    for client in clients:
        if not client.closed:
            selector.register(client.sock, selectors.EVENT_READ, client)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if until_finished and all(
                outcome.finished for client in clients for outcome in client.outcomes.values()
            ):
                return
            for key, _ in selector.select(timeout=0.05):
                client = key.data
                client.on_readable()
                if client.closed:
                    selector.unregister(client.sock)
            if not selector.get_map():
                return
    finally:
        selector.close()


def open_idle_streams(
    host: str,
    port: int,
    *,
    connections: int,
    streams_per_connection: int,
    ssl_context: ssl.SSLContext | None = None,
) -> list[H2Client]:
    """``connections`` HTTP/2 connections, each with ``streams_per_connection`` requests whose
    bodies never finish: REST and native gRPC Invokes in turn. All are sent before any answer
    is read, so a stream over the server's limit is sent too (and refused)."""
    clients = []
    for _ in range(connections):
        client = H2Client(host, port, ssl_context=ssl_context)
        for index in range(streams_per_connection):
            if index % 2:
                client.open(grpc_headers(client.authority, client.scheme), GRPC_BODY_START)
            else:
                client.open(rest_headers(client.authority, client.scheme), REST_BODY_START)
        client.flush()
        clients.append(client)
    return clients


def grpc_frame(message: bytes) -> bytes:
    """``message`` in gRPC's length-prefixed framing (not compressed)."""
    return struct.pack(">BI", 0, len(message)) + message


@dataclasses.dataclass
class GrpcReply:
    """What one raw gRPC call got: HTTP status, grpc-status and grpc-message (from the
    headers or the trailers), the reset code if the stream was reset, and how long it took.
    ``grpc_status`` is ``None`` when no answer came within the wait."""

    status: str | None = None
    grpc_status: str | None = None
    grpc_message: str | None = None
    reset_code: int | None = None
    seconds: float = 0.0
    body: bytes = b""


class RawGrpcConnection:
    """One HTTP/2 connection (prior knowledge) for native gRPC calls built by hand: any
    header, any body bytes, with or without the end of the stream. Calls run one at a time.
    The server's SETTINGS are read before the first call, as a gRPC client does."""

    def __init__(self, host: str, port: int) -> None:
        self.client = H2Client(host, port)
        self.client.flush()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.client.remote_max_streams is None:
            self._read(0.05)

    def _read(self, timeout: float) -> list[h2.events.Event]:
        client = self.client
        ready = selectors.DefaultSelector()
        ready.register(client.sock, selectors.EVENT_READ)
        try:
            if not ready.select(timeout=timeout):
                return []
        finally:
            ready.close()
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError):
            return []
        except OSError:
            data = b""
        if not data:
            client.closed = True
            return []
        events = client.conn.receive_data(data)
        for event in events:
            client._record(event)
        client.flush()
        return events

    def call(
        self,
        path: str,
        body: bytes,
        headers: Iterable[tuple[str, str]] = (),
        *,
        end_stream: bool = True,
        wait: float = 10.0,
    ) -> GrpcReply:
        """Send one request (``body`` as given: frame it with ``grpc_frame``) and wait up to
        ``wait`` seconds for its end."""
        client = self.client
        stream_id = client.conn.get_next_available_stream_id()
        request = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", client.authority),
            (":path", path),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *headers,
        ]
        client.conn.send_headers(stream_id, request, end_stream=not body and end_stream)
        if body:
            client.conn.send_data(stream_id, body, end_stream=end_stream)
        client.flush()
        reply = GrpcReply()
        start = time.monotonic()
        deadline = start + wait
        done = False
        while not done and not client.closed and time.monotonic() < deadline:
            for event in self._read(0.05):
                if getattr(event, "stream_id", None) != stream_id:
                    continue
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    fields = dict(event.headers)
                    reply.status = fields.get(":status", reply.status)
                    reply.grpc_status = fields.get("grpc-status", reply.grpc_status)
                    reply.grpc_message = fields.get("grpc-message", reply.grpc_message)
                elif isinstance(event, h2.events.DataReceived):
                    reply.body += event.data
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
                elif isinstance(event, h2.events.StreamReset):
                    reply.reset_code = int(event.error_code)
                    done = True
        reply.seconds = time.monotonic() - start
        if not done:
            client.conn.reset_stream(stream_id)
            client.flush()
        return reply

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RawGrpcConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
