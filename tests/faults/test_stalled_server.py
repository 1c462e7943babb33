"""An owner that is slow but not dead: two real server processes on the real Cassandra; clients
Invoke on server A and retry the same id and content on server B; A is paused (SIGSTOP) past
the claim lease, so that B takes its claims over and answers, then resumed (SIGCONT): A's model
runs finish and A tries to store their outcomes late.

The checker compares every acknowledged answer (state, model version, detections, complete
time) with what is stored (read straight from Cassandra, past every cache) and with what every
server's GetInvocation returns. An owner whose late write is not fenced by its claim overwrites
the outcome that B stored and answered (the complete time differs at least), or answers its own
caller with an outcome that is not the stored one.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import GRPC_OPTIONS, FaultReport, LoadResult, ReadBack
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.history import Answer, History, Op, answer_of, check, content_hash
from support.stacks import running_two_servers

from devstack.stack import LocalStack
from inference_service.stores.cassandra import CassandraConfig

LEASE_S = 2.0
"""A short claim lease: B takes A's claims over within its pending wait (5 s)."""
STALLS = 3
"""Pauses of A in one run (each one a chance for the late writes to land)."""
FIRST_CALL_TIMEOUT_S = 3.0
"""How long a client waits for A before it retries on B."""


@dataclasses.dataclass
class Acked:
    answer: Answer
    server: str


class FailoverLoad:
    """``clients`` threads, each invoking fresh ids on A first and, when A does not answer in
    time, the same id and content on B until answered (up to ``retry_s``)."""

    def __init__(
        self, first: str, second: str, images: Sequence[bytes], *, clients: int, retry_s: float
    ) -> None:
        self.targets = (first, second)
        self.images = list(images)
        self.retry_s = retry_s
        self.prefix = f"stall-{uuid.uuid4().hex[:8]}"
        self.result = LoadResult()
        self.acked: dict[str, Acked] = {}
        self.history = History()
        """Every call (``support.history``), for the checker."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)
        ]

    def start(self) -> FailoverLoad:
        for thread in self._threads:
            thread.start()
        return self

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def wait_for_acks(self, count: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while self.acked_count() < count:
            assert time.monotonic() < deadline, f"fewer than {count} Invokes answered"
            time.sleep(0.05)

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.retry_s + 30)
            assert not thread.is_alive(), "a load client did not stop"
        return self.result

    def _client(self, number: int) -> None:
        channels = [grpc.insecure_channel(t, options=GRPC_OPTIONS) for t in self.targets]
        try:
            stubs = [pb_grpc.InferenceServiceStub(c) for c in channels]
            sequence = 0
            while not self._stop.is_set():
                content = self.images[(number + sequence) % len(self.images)]
                self._invoke(stubs, f"{self.prefix}-{number}-{sequence}", content)
                sequence += 1
        finally:
            for channel in channels:
                channel.close()

    def _invoke(self, stubs: list[Any], invocation_id: str, content: bytes) -> None:
        request = pb.InvokeRequest(input=pb.ModelInput(id=invocation_id, content=content))
        give_up = time.monotonic() + self.retry_s
        with self._lock:
            self.result.sent += 1
        attempt = 0
        while True:
            server = 0 if attempt == 0 else 1
            attempt += 1
            with self._lock:
                self.result.calls += 1
            op = self.history.begin(
                Op(
                    "invoke",
                    0,
                    self.targets[server],
                    invocation_id,
                    content_hash(content),
                    self.history.now(),
                )
            )
            try:
                timeout = FIRST_CALL_TIMEOUT_S if server == 0 else 15.0
                response = stubs[server].Invoke(request, timeout=timeout)
            except grpc.RpcError as error:
                self.history.end(op, error.code().name)
                with self._lock:
                    self.result.errors[error.code().name] += 1
                if time.monotonic() < give_up:
                    time.sleep(0.1)
                    continue
                with self._lock:
                    self.result.failed += 1
                return
            self.history.end(op, "OK", answer_of(response.invocation))
            with self._lock:
                if attempt > 1:
                    self.result.retried += 1
                self.acked[invocation_id] = Acked(
                    answer_of(response.invocation), self.targets[server]
                )
                if response.invocation.state == pb.Invocation.STATE_SUCCEEDED:
                    self.result.acked[invocation_id] = content
                else:
                    self.result.failed += 1
            return


@pytest.fixture
def two_servers(
    cassandra_endpoint: CassandraConfig, shared_dir: Path, tmp_path: Path
) -> Iterator[LocalStack]:
    with running_two_servers(
        cassandra_endpoint, shared_dir, tmp_path, claim_lease_s=LEASE_S
    ) as stack:
        yield stack


def test_an_owner_paused_past_its_lease_never_changes_an_acknowledged_answer(
    two_servers: LocalStack,
    load_images: list[bytes],
    cassandra_endpoint: CassandraConfig,
    fault_report: FaultReport,
) -> None:
    """Server A is paused (SIGSTOP) under load, while B answers the retries and takes A's
    claims over after the lease; A resumes (SIGCONT) and its model runs finish late. Every
    acknowledged answer is what is stored and what every server serves: 0 mismatches."""
    stack = two_servers
    server_a, server_b = stack.servers
    pid = server_a.pid
    assert pid is not None
    load = FailoverLoad(
        server_a.address, server_b.address, load_images, clients=6, retry_s=40
    ).start()
    try:
        load.wait_for_acks(12)
        for _ in range(STALLS):
            os.kill(pid, signal.SIGSTOP)
            try:
                # Past the lease, until B has answered the ids that A held.
                time.sleep(LEASE_S + 1.0)
                load.wait_for_acks(load.acked_count() + 8)
            finally:
                os.kill(pid, signal.SIGCONT)
            # A wakes up: its model runs finish and it tries to store them.
            load.wait_for_acks(load.acked_count() + 12)
    finally:
        result = load.stop()
    time.sleep(2.0)  # the last late writes of A land
    # The history checker (support.history): every acknowledged answer is what is stored and
    # what every server serves; one content per id; nothing lost.
    verdict = check(load.history, cassandra_endpoint, [server_a.address, server_b.address])
    mismatches = verdict.violations
    fault_report.add(
        "SIGSTOP an owner past its lease, then SIGCONT",
        "6 clients, A then retry same id on B",
        f"SIGSTOP/SIGCONT server x{STALLS} (lease {LEASE_S:g} s)",
        result,
        ReadBack(lost=mismatches, pending=[]),
    )
    assert result.retried > 0, "no call was retried on B: A was never caught holding a claim"
    assert result.failed == 0, result.errors
    assert mismatches == [], verdict.report
