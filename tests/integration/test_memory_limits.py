"""Eight 40-megapixel 32-bit float TIFFs sent at once to a real server process (default
settings, in-memory store): it stays alive, its peak RSS stays below 600 MB, and every client
gets a clear answer. A resource assertion, not a timing one.

Before issue 10 one such TIFF (a 230 KB file) raised the server's RSS by about 1 GB while it
was decoded, and eight at once took it to 2.8 GB.
"""

from __future__ import annotations

import io
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from PIL import Image, TiffImagePlugin

from devstack.process import free_port
from devstack.server import LocalServer, grpc_serving
from inference_service.admission import BUSY_MEMORY_MESSAGE, BUSY_QUEUE_MESSAGE

CLIENTS = 8
PEAK_RSS_LIMIT = 600 * 1000 * 1000
WIDTH, HEIGHT = 8000, 5000  # 40 megapixels


def float_tiff(*, one_strip: bool) -> bytes:
    """A deflate-compressed 40-megapixel 32-bit float TIFF of one grey level: about 230 KB (in
    strips of 64 KB, Pillow's default) or 150 KB (one strip)."""
    image = Image.fromarray(np.full((HEIGHT, WIDTH), 0.25, dtype=np.float32))
    buffer = io.BytesIO()
    strip_size = TiffImagePlugin.STRIP_SIZE
    if one_strip:
        TiffImagePlugin.STRIP_SIZE = 1 << 31  # one strip of the whole image: a 160 MB buffer
    try:
        image.save(buffer, "TIFF", compression="tiff_deflate")
    finally:
        TiffImagePlugin.STRIP_SIZE = strip_size
    return buffer.getvalue()


def peak_rss(pid: int) -> int:
    """VmHWM of the process, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
    server = LocalServer(
        host="127.0.0.1",
        port=free_port(),
        settings_env={
            "INFERENCE_STORE": "memory",
            "INFERENCE_SHARED_DIR": str(shared_dir),
            "INFERENCE_METRICS_PORT": "0",  # a free port for /metrics
        },
        run_dir=tmp_path_factory.mktemp("memory-server"),
        base_env=env,
    )
    server.start()
    yield server
    assert server.stop() == 0


def send_at_once(address: str, contents: list[bytes], prefix: str) -> list[tuple[str, str]]:
    """Invoke every content at the same moment, each from its own thread; (code, details)."""
    start = threading.Barrier(len(contents))
    with grpc.insecure_channel(
        address, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)

        def invoke(index: int) -> tuple[str, str]:
            request = pb.InvokeRequest(
                input=pb.ModelInput(id=f"{prefix}-{index}", content=contents[index])
            )
            start.wait()
            try:
                stub.Invoke(request, timeout=300)
            except grpc.RpcError as error:
                return error.code().name, error.details()
            return "OK", ""

        with ThreadPoolExecutor(len(contents)) as pool:
            return list(pool.map(invoke, range(len(contents))))


def test_eight_float_tiffs_at_once_stay_within_memory(server: LocalServer) -> None:
    content = float_tiff(one_strip=False)
    before = peak_rss(server.pid)
    answers = send_at_once(server.address, [content] * CLIENTS, "tiff")
    peak = peak_rss(server.pid)
    print(f"{len(content)} byte TIFF x {CLIENTS}: peak RSS {before} -> {peak} bytes; {answers}")

    assert server.poll() is None and grpc_serving(server.address)
    assert peak < PEAK_RSS_LIMIT, peak
    for code, details in answers:
        assert code in ("OK", "UNAVAILABLE"), (code, details)
        if code == "UNAVAILABLE":
            assert details in (BUSY_MEMORY_MESSAGE, BUSY_QUEUE_MESSAGE)
    assert ("OK", "") in answers  # the budget lets them through one at a time, not none


def test_eight_float_tiffs_in_one_strip_are_refused_from_their_header(
    server: LocalServer,
) -> None:
    content = float_tiff(one_strip=True)
    answers = send_at_once(server.address, [content] * CLIENTS, "one-strip")
    peak = peak_rss(server.pid)
    print(f"{len(content)} byte one-strip TIFF x {CLIENTS}: peak RSS {peak} bytes; {answers}")

    assert server.poll() is None and grpc_serving(server.address)
    assert peak < PEAK_RSS_LIMIT, peak
    for code, details in answers:
        assert code == "INVALID_ARGUMENT", (code, details)
        assert re.fullmatch(
            r"decoding this 8000x5000 TIFF image \(mode F\) would take \d+ bytes of memory; "
            r"the limit is 402653184",
            details,
        )
