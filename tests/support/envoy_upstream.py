"""Envoy in front of a fake upstream, for tests that pin down what Envoy does (routes,
transcoding, status mapping, JSON errors, the edge hardening), not what the service does.

``FakeInferenceService`` answers with canned replies chosen by the input id and records what it
received; ``serve_fake`` runs it (with health and reflection) on a free port; ``make_envoy``
renders an Envoy of the repository's template on free ports in front of it. A test module gets
the whole set-up, module-scoped, from one line::

    fake, envoy, api = envoy_upstream_fixtures("edge", settings=EDGE)

``fake`` is ``(service, port)``, ``envoy`` the started Envoy, ``api`` a REST client of it;
``calls(fake)`` counts the requests that reached the fake.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from devstack.envoy import LocalEnvoy
from devstack.process import free_port
from inference_service.edge.config import EnvoySettings
from inference_service.limits import (
    MAX_METADATA_KEY_BYTES,
    MAX_METADATA_VALUE_BYTES,
    RequestLimits,
)

from .http import RestClient

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
DEFAULT_LIMITS = RequestLimits()
# The buffer filter's max_request_bytes in the rendered envoy.yaml (default limits).
REST_BODY_LIMIT = DEFAULT_LIMITS.rest_request_body_bytes
ERROR_PREFIX = "error-"  # an Invoke input id "error-NOT_FOUND" fails with NOT_FOUND
LARGEST_PREFIX = "largest-"  # GetInvocation of "largest-N": the largest invocation, N bytes
SLOW_PREFIX = "slow-"  # Invoke or GetInvocation of "slow-N": answers after N ms (10 s at most)
MAX_SLOW_S = 10.0


def largest_metadata(entries: int) -> dict[str, str]:
    """The most and largest metadata entries, of a character JSON escapes (six bytes each)."""
    return {
        f"{index:04d}".ljust(MAX_METADATA_KEY_BYTES, "\x01"): "\x01" * MAX_METADATA_VALUE_BYTES
        for index in range(entries)
    }


def content_of(size: int) -> bytes:
    """``size`` bytes that differ from one position to the next (a shifted copy shows)."""
    return bytes(range(256)) * (size // 256) + bytes(range(size % 256))


class FakeInferenceService(pb_grpc.InferenceServiceServicer):
    """Canned answers; records the requests it gets."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.metadata: list[dict[str, str]] = []
        self.time_remaining: list[float | None] = []
        self._lock = threading.Lock()

    def _record(self, request: Any, context: grpc.ServicerContext, request_id: str) -> None:
        with self._lock:
            self.requests.append(request)
            self.metadata.append(dict(context.invocation_metadata()))
            self.time_remaining.append(context.time_remaining())
        if request_id.startswith(SLOW_PREFIX):
            time.sleep(min(int(request_id.removeprefix(SLOW_PREFIX)) / 1000, MAX_SLOW_S))

    def Invoke(self, request: pb.InvokeRequest, context: grpc.ServicerContext) -> Any:
        self._record(request, context, request.input.id)
        if request.input.id.startswith(ERROR_PREFIX):
            code = grpc.StatusCode[request.input.id.removeprefix(ERROR_PREFIX)]
            context.abort(code, f"canned {code.name}")
        detection = pb.Detection(
            box=pb.BoundingBox(x_min=1.5, y_min=2.0, x_max=10.0, y_max=12.25),
            score=0.9,
            label="face",
        )
        invocation = pb.Invocation(
            id=request.input.id,
            input=request.input,
            output=pb.ModelOutput(detections=[detection], image_width=64, image_height=0),
            state=pb.Invocation.STATE_SUCCEEDED,
            model="face-detector",
        )
        return pb.InvokeResponse(invocation=invocation)

    def GetInvocation(self, request: pb.GetInvocationRequest, context: grpc.ServicerContext) -> Any:
        self._record(request, context, request.id)
        if request.id == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no invocation with id missing")
        if request.id.startswith(LARGEST_PREFIX):
            size = int(request.id.removeprefix(LARGEST_PREFIX))
            model_input = pb.ModelInput(
                id=request.id,
                content=content_of(size),
                metadata=largest_metadata(DEFAULT_LIMITS.max_metadata_entries),
            )
            return pb.GetInvocationResponse(
                invocation=pb.Invocation(
                    id=request.id, input=model_input, state=pb.Invocation.STATE_SUCCEEDED
                )
            )
        invocation = pb.Invocation(
            id=request.id, input=pb.ModelInput(id=request.id), state=pb.Invocation.STATE_PENDING
        )
        return pb.GetInvocationResponse(invocation=invocation)

    def ListInvocations(
        self, request: pb.ListInvocationsRequest, context: grpc.ServicerContext
    ) -> Any:
        self._record(request, context, "")
        return pb.ListInvocationsResponse(
            invocations=[pb.Invocation(id="listed", state=pb.Invocation.STATE_SUCCEEDED)],
            next_page_token="next",
        )

    def DeleteInvocation(
        self, request: pb.DeleteInvocationRequest, context: grpc.ServicerContext
    ) -> Any:
        self._record(request, context, request.id)
        if request.id == "missing" and not request.allow_missing:
            context.abort(grpc.StatusCode.NOT_FOUND, "no invocation with id missing")
        return empty_pb2.Empty()


@contextlib.contextmanager
def serve_fake(workers: int = 32) -> Iterator[tuple[FakeInferenceService, int]]:
    """The fake service (with health and reflection) on a free port, in its own threads."""
    service = FakeInferenceService()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        options=[("grpc.max_receive_message_length", 64 * MiB)],
    )
    pb_grpc.add_InferenceServiceServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    reflection.enable_server_reflection(
        [
            pb.DESCRIPTOR.services_by_name["InferenceService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield service, port
    finally:
        server.stop(grace=None)


def make_envoy(
    build_dir: Path,
    upstream_ports: list[int],
    limits: RequestLimits | None = None,
    settings: EnvoySettings | None = None,
) -> LocalEnvoy:
    """An Envoy of the repository's template on free ports (public, internal, admin)."""
    return LocalEnvoy.for_repo(
        REPO,
        build_dir=build_dir,
        listen_port=free_port(),
        internal_port=free_port(),
        admin_port=free_port(),
        upstreams=[("127.0.0.1", port) for port in upstream_ports],
        limits=limits,
        settings=settings,
    )


def running_envoy(
    build_dir: Path,
    upstream_ports: list[int],
    limits: RequestLimits | None = None,
    settings: EnvoySettings | None = None,
) -> Iterator[LocalEnvoy]:
    """For a fixture: ``make_envoy`` started, and stopped when the fixture ends."""
    proxy = make_envoy(build_dir, upstream_ports, limits, settings)
    proxy.start(timeout=60)
    try:
        yield proxy
    finally:
        proxy.stop()


def envoy_upstream_fixtures(
    name: str, *, settings: EnvoySettings | None = None
) -> tuple[Any, Any, Any]:
    """The module-scoped fixtures ``fake`` (the fake service and its port), ``envoy`` (an Envoy
    of ``settings`` in front of it, its files in a temporary folder named after ``name``) and
    ``api`` (a REST client of that Envoy), for a test module to bind at its top level."""

    @pytest.fixture(scope="module")
    def fake() -> Iterator[tuple[FakeInferenceService, int]]:
        with serve_fake() as served:
            yield served

    @pytest.fixture(scope="module")
    def envoy(
        fake: tuple[FakeInferenceService, int], tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[LocalEnvoy]:
        yield from running_envoy(tmp_path_factory.mktemp(name), [fake[1]], settings=settings)

    @pytest.fixture(scope="module")
    def api(envoy: LocalEnvoy) -> RestClient:
        return rest_client(envoy)

    return fake, envoy, api


def calls(fake: tuple[FakeInferenceService, int]) -> int:
    """How many requests reached the fake service so far."""
    return len(fake[0].requests)


def rest_client(proxy: LocalEnvoy, **kwargs: Any) -> RestClient:
    """REST/JSON calls through ``proxy``'s public listener; every reply is checked for leaked
    grpc-* headers."""
    kwargs.setdefault("timeout", 30)
    return RestClient(proxy.listen_host, proxy.listen_port, **kwargs)


def envoy_stats(proxy: LocalEnvoy, pattern: str) -> dict[str, int]:
    """Envoy's counters and gauges whose names match the regex ``pattern`` (admin /stats)."""
    query = urllib.parse.urlencode({"filter": pattern})
    with urllib.request.urlopen(f"{proxy.admin_url}/stats?{query}", timeout=5) as response:
        text = response.read().decode()
    stats = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            stats[name] = int(value)
    return stats
