"""A TCP fault proxy for the network-fault tests: listens on a free loopback port and forwards
every connection to one loopback upstream, with faults switched on and off while it runs.

Toxiproxy's faults, in our own asyncio code (no binary to fetch): ``latency_s`` (each chunk
forwarded that much later, both ways), ``blackhole`` (nothing is read or forwarded, nothing is
reset: TCP keeps the bytes and the peers see silence until a timeout notices; on heal the streams
go on intact), ``trickle_bps`` (bytes a second, each way, each connection), ``reset()`` (every
open connection closed with a TCP reset, mid-stream), and ``partition`` (every open connection
reset and new ones reset as they arrive: the upstream is unreachable). Loopback only: the proxy
refuses any other address.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

LOOPBACK = "127.0.0.1"
CHUNK = 16 * 1024


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """``FaultProxy(upstream_port)``; ``port`` is where to connect instead. Faults are plain
    attributes (set from any thread); ``heal()`` clears them all."""

    def __init__(self, upstream_port: int, *, upstream_host: str = LOOPBACK) -> None:
        if upstream_host != LOOPBACK:
            raise ValueError("the fault proxy forwards to loopback only")
        self.upstream = (upstream_host, upstream_port)
        self.latency_s = 0.0
        self.blackhole = False
        self.trickle_bps = 0
        self.partition = False
        self.port = 0
        self.connections = 0
        """Connections accepted so far."""
        self.resets = 0
        """Connections reset by a fault so far."""
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, LOOPBACK, 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for pair in list(self._open):
                for writer in pair:
                    _rst(writer)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def heal(self) -> None:
        self.latency_s = 0.0
        self.blackhole = False
        self.trickle_bps = 0
        self.partition = False

    def reset(self) -> int:
        """Reset every open connection now (mid-stream); how many were reset."""

        async def reset_all() -> int:
            pairs = list(self._open)
            for pair in pairs:
                for writer in pair:
                    _rst(writer)
            self.resets += len(pairs)
            return len(pairs)

        return asyncio.run_coroutine_threadsafe(reset_all(), self._loop).result(10)

    def cut(self) -> None:
        """A partition: every open connection reset, new ones reset as they come."""
        self.partition = True
        self.reset()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.partition:
            _rst(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _rst(writer)
            return
        pair = (writer, up_writer)
        self._open.add(pair)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        finally:
            self._open.discard(pair)
            for w in pair:
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read chunks as they come and write each ``latency_s`` after it arrived (a delay,
        not a throughput limit), at most ``trickle_bps``."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                arrived, data = await queue.get()
                if not data:
                    writer.transport.abort()
                    return
                while self.blackhole:  # noqa: ASYNC110 (set from another thread)
                    await asyncio.sleep(0.05)
                delay = arrived + self.latency_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self.trickle_bps:
                    await asyncio.sleep(len(data) / self.trickle_bps)
                if self.partition or writer.transport.is_closing():
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while not sender.done():
                # Read nothing: the sender's TCP buffers fill, no reset.
                while self.blackhole:  # noqa: ASYNC110 (set from another thread)
                    await asyncio.sleep(0.05)
                size = CHUNK if not self.trickle_bps else max(1, self.trickle_bps // 10)
                data = await reader.read(size)
                queue.put_nowait((loop.time(), data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()


@contextlib.contextmanager
def fault_proxy(upstream_port: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream_port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
