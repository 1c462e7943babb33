"""``Client``: a typed, synchronous client of ``inference.v1.InferenceService`` (native gRPC).

- TLS: ``ca_file`` (a PEM bundle that signed the listener's certificate) or ``tls=True`` (the
  system's roots); plaintext otherwise.
- A token: ``token`` is sent as ``authorization: Bearer <token>`` on every call (the JWT that
  Envoy's public listener checks when authentication is on).
- Retries: a gRPC service config with a ``retryPolicy`` for ``UNAVAILABLE`` (exponential
  backoff, ``max_attempts``) on every method that is safe to repeat (all but
  ``DeleteInvocation``: a retry of a delete that landed would answer ``NOT_FOUND``); and, above
  it, ``invoke``/``get``/``render`` go on retrying ``UNAVAILABLE`` with backoff for
  ``retry_for`` seconds (a server restarting takes longer than the channel's few attempts).
- Idempotency: ``invoke`` without an id gives the input a new UUID *here*, before the first
  attempt, so every retry sends the same id and the service stores one invocation.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from inference_client.listing import Deletion, delete_all, list_pages

DEFAULT_TARGET = "127.0.0.1:8080"
SERVICE = "inference.v1.InferenceService"
# Larger than any message the service sends or takes (about 9.1 MiB by default).
MESSAGE_LIMIT = 64 * 1024 * 1024
RETRIED_METHODS = (
    "Invoke",
    "GetInvocation",
    "RenderInvocation",
    "ListModels",
    "GetModel",
    "ListInvocations",
)
"""Repeating these cannot store or erase anything twice (Invoke: the id is the client's)."""
RETRY_FOR_S = 30.0
FIRST_BACKOFF_S = 0.25
MAX_BACKOFF_S = 4.0

T = TypeVar("T")


def service_config(max_attempts: int = 5) -> dict[str, Any]:
    """The gRPC service config this client's channels use (``grpc.service_config``)."""
    return {
        "methodConfig": [
            {
                "name": [{"service": SERVICE, "method": method} for method in RETRIED_METHODS],
                "retryPolicy": {
                    "maxAttempts": max(2, min(max_attempts, 5)),  # gRPC caps it at 5
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }


def channel_options(max_attempts: int = 5) -> list[tuple[str, object]]:
    return [
        ("grpc.max_send_message_length", MESSAGE_LIMIT),
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(service_config(max_attempts))),
    ]


def channel_credentials(
    *, ca_file: str | Path | None = None, tls: bool = False
) -> grpc.ChannelCredentials | None:
    """TLS credentials (``ca_file``'s roots, else the system's when ``tls``), or None."""
    if ca_file is not None:
        return grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
    if tls:
        return grpc.ssl_channel_credentials()
    return None


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class Client:
    """A client of the service. Use it as a context manager, or call ``close``.

    >>> with Client("127.0.0.1:8080") as client:
    ...     invocation = client.invoke(Path("face.jpg").read_bytes())
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        ca_file: str | Path | None = None,
        tls: bool = False,
        token: str | None = None,
        timeout: float = 60.0,
        max_attempts: int = 5,
        retry_for: float = RETRY_FOR_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry_for = retry_for
        self._sleep = sleep
        self.metadata = call_metadata(token)
        self.options = channel_options(max_attempts)
        self.credentials = channel_credentials(ca_file=ca_file, tls=tls)
        if self.credentials is None:
            self._channel = grpc.insecure_channel(target, options=self.options)
        else:
            self._channel = grpc.secure_channel(target, self.credentials, options=self.options)
        self.stub = pb_grpc.InferenceServiceStub(self._channel)

    def aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel to the same target, with the same TLS and options."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        return grpc.aio.secure_channel(self.target, self.credentials, options=self.options)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retrying(self, call: Callable[[], T]) -> T:
        give_up = time.monotonic() + self.retry_for
        delay = FIRST_BACKOFF_S
        while True:
            try:
                return call()
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                if time.monotonic() + delay > give_up:
                    raise
            self._sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 (jitter)
            delay = min(delay * 2, MAX_BACKOFF_S)

    def invoke(
        self,
        content: bytes,
        *,
        id: str | None = None,
        model: str = "",
        metadata: Mapping[str, str] | None = None,
        full: bool = False,
        timeout: float | None = None,
    ) -> pb.Invocation:
        """Store ``content`` and run the model (``model``: the default when empty). Without
        ``id`` the input gets a new UUID here, so a retry cannot store a second copy."""
        request = pb.InvokeRequest(
            input=pb.ModelInput(id=id or str(uuid.uuid4()), content=content, metadata=metadata),
            model=model,
            view=pb.INVOCATION_VIEW_FULL if full else pb.INVOCATION_VIEW_BASIC,
        )
        response = self._retrying(
            lambda: self.stub.Invoke(
                request, timeout=timeout or self.timeout, metadata=self.metadata
            )
        )
        return cast(pb.Invocation, response.invocation)

    def get(
        self,
        id: str,
        *,
        full: bool = False,
        timeout: float | None = None,
    ) -> pb.Invocation:
        """A stored invocation (with its content when ``full``)."""
        request = pb.GetInvocationRequest(
            id=id, view=pb.INVOCATION_VIEW_FULL if full else pb.INVOCATION_VIEW_BASIC
        )
        response = self._retrying(
            lambda: self.stub.GetInvocation(
                request, timeout=timeout or self.timeout, metadata=self.metadata
            )
        )
        return cast(pb.Invocation, response.invocation)

    def render(self, id: str, *, timeout: float | None = None) -> bytes:
        """The stored image with its boxes and scores drawn: PNG bytes."""
        body = self._retrying(
            lambda: self.stub.RenderInvocation(
                pb.RenderInvocationRequest(id=id),
                timeout=timeout or self.timeout,
                metadata=self.metadata,
            )
        )
        return cast(bytes, body.data)

    def list_models(self, *, timeout: float | None = None) -> list[pb.Model]:
        """The models the service serves."""
        response = self.stub.ListModels(
            pb.ListModelsRequest(), timeout=timeout or self.timeout, metadata=self.metadata
        )
        return list(response.models)

    def list_pages(
        self,
        *,
        filter: str = "",
        page_size: int = 0,
        full: bool = False,
        timeout: float | None = None,
    ) -> Iterator[pb.ListInvocationsResponse]:
        """Every page of ``ListInvocations``, first to last (``UNAVAILABLE`` retried)."""
        return list_pages(
            self.stub,
            filter_text=filter,
            page_size=page_size,
            view=pb.INVOCATION_VIEW_FULL if full else pb.INVOCATION_VIEW_BASIC,
            deadline_s=timeout or self.timeout,
            metadata=self.metadata,
            sleep=self._sleep,
        )

    def list_invocations(
        self,
        *,
        filter: str = "",
        page_size: int = 0,
        full: bool = False,
        timeout: float | None = None,
    ) -> Iterator[pb.Invocation]:
        """The stored invocations, newest first, following every page."""
        for page in self.list_pages(filter=filter, page_size=page_size, full=full, timeout=timeout):
            yield from page.invocations

    def delete(
        self,
        id: str,
        *,
        allow_missing: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Erase an invocation (input, content, result). Not retried: ``NOT_FOUND`` would
        hide a retried delete that landed."""
        self.stub.DeleteInvocation(
            pb.DeleteInvocationRequest(id=id, allow_missing=allow_missing),
            timeout=timeout or self.timeout,
            metadata=self.metadata,
        )

    def delete_many(
        self, ids: Sequence[str], *, allow_missing: bool = False, timeout: float | None = None
    ) -> Iterator[Deletion]:
        """Each id deleted once; yields a ``listing.Deletion`` per id (failures included)."""
        return delete_all(
            self.stub,
            list(ids),
            allow_missing=allow_missing,
            deadline_s=timeout or self.timeout,
            metadata=self.metadata,
        )
