"""Fault tests: real Cassandra, real Envoy, real server processes, killed for real.

Shared here: a bounded Invoke load (threads of native gRPC clients through Envoy), the check that
every acknowledged invocation reads back SUCCEEDED with its content, two servers behind Envoy on
the three-node cluster (``cluster_stack``), and the run's report (``build/faults/report.md``:
test, load, fault, requests sent, failed, lost, left PENDING), which docs/reliability.md quotes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import grpc
import pytest
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.stacks import running_two_servers

from devstack.cassandra import LocalCassandraCluster
from devstack.stack import LocalStack
from inference_service.stores.cassandra import CassandraConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
REPORT_DIR = REPO_ROOT / "build" / "faults"
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 32 * 1024 * 1024),
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
]


@dataclasses.dataclass
class LoadResult:
    """What a load sent and what came back."""

    sent: int = 0
    """Distinct ids invoked."""
    calls: int = 0
    """RPCs, retries included."""
    failed: int = 0
    """Ids that never got an answer with state SUCCEEDED."""
    retried: int = 0
    """Ids that needed more than one call."""
    acked: dict[str, bytes] = dataclasses.field(default_factory=dict)
    """Id -> content of every id answered SUCCEEDED."""
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    """gRPC status names of failed calls (retried ones included)."""
    details: dict[str, list[str]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(list)
    )
    """Status name -> the messages of the first few calls that failed with it."""


class InvokeLoad:
    """``clients`` threads, each invoking fresh ids (one call at a time) through ``target``
    until ``stop()`` or ``max_seconds``. With ``retry_s`` > 0 a failed call is retried with the
    same id and content for up to that long, as a careful client would."""

    def __init__(
        self,
        target: str,
        images: Sequence[bytes],
        *,
        clients: int = 4,
        max_seconds: float = 120.0,
        retry_s: float = 0.0,
        call_timeout_s: float = 30.0,
    ) -> None:
        self.target = target
        self.images = list(images)
        self.clients = clients
        self.max_seconds = max_seconds
        self.retry_s = retry_s
        self.call_timeout_s = call_timeout_s
        self.prefix = f"load-{uuid.uuid4().hex[:8]}"
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)
        ]

    def start(self) -> InvokeLoad:
        self._deadline = time.monotonic() + self.max_seconds
        for thread in self._threads:
            thread.start()
        return self

    def acked_count(self) -> int:
        with self._lock:
            return len(self.result.acked)

    def wait_for_acks(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.acked_count() < count:
            assert time.monotonic() < deadline, f"fewer than {count} Invokes answered"
            time.sleep(0.1)

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.retry_s + self.call_timeout_s + 10)
            assert not thread.is_alive(), "a load client did not stop"
        return self.result

    def _client(self, number: int) -> None:
        with grpc.insecure_channel(self.target, options=GRPC_OPTIONS) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            sequence = 0
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                content = self.images[(number + sequence) % len(self.images)]
                invocation_id = f"{self.prefix}-{number}-{sequence}"
                sequence += 1
                self._invoke(stub, invocation_id, content)

    def _invoke(
        self, stub: pb_grpc.InferenceServiceStub, invocation_id: str, content: bytes
    ) -> None:
        request = pb.InvokeRequest(input=pb.ModelInput(id=invocation_id, content=content))
        give_up = time.monotonic() + self.retry_s
        attempts = 0
        with self._lock:
            self.result.sent += 1
        while True:
            attempts += 1
            with self._lock:
                self.result.calls += 1
            try:
                response = stub.Invoke(request, timeout=self.call_timeout_s)
            except grpc.RpcError as error:
                with self._lock:
                    self.result.errors[error.code().name] += 1
                    messages = self.result.details[error.code().name]
                    if len(messages) < 5:
                        messages.append(f"{invocation_id}: {error.details()}")
                if time.monotonic() < give_up:
                    time.sleep(0.2)
                    continue
                with self._lock:
                    self.result.failed += 1
                return
            with self._lock:
                if attempts > 1:
                    self.result.retried += 1
                if response.invocation.state == pb.Invocation.STATE_SUCCEEDED:
                    self.result.acked[invocation_id] = content
                else:
                    self.result.failed += 1
            return


@dataclasses.dataclass
class ReadBack:
    lost: list[str]
    pending: list[str]


def read_back(target: str, acked: dict[str, bytes], timeout_s: float = 10.0) -> ReadBack:
    """Every acknowledged id, read back FULL: lost when missing, not SUCCEEDED or not
    byte-identical; pending when still PENDING."""
    lost: list[str] = []
    pending: list[str] = []
    with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        for invocation_id, content in acked.items():
            try:
                stored = stub.GetInvocation(
                    pb.GetInvocationRequest(id=invocation_id), timeout=timeout_s
                ).invocation
            except grpc.RpcError:
                lost.append(invocation_id)
                continue
            if stored.state == pb.Invocation.STATE_PENDING:
                pending.append(invocation_id)
            elif stored.state != pb.Invocation.STATE_SUCCEEDED or stored.input.content != content:
                lost.append(invocation_id)
    return ReadBack(lost=lost, pending=pending)


class FaultReport:
    """Rows of this run, written to ``build/faults/report.{json,md}`` at the end."""

    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []

    def add(self, test: str, load: str, fault: str, result: LoadResult, back: ReadBack) -> None:
        self.rows.append(
            {
                "test": test,
                "load": load,
                "fault": fault,
                "sent": result.sent,
                "calls": result.calls,
                "failed": result.failed,
                "lost": len(back.lost),
                "pending": len(back.pending),
            }
        )

    def add_row(self, **row: object) -> None:
        self.rows.append(row)

    def write(self) -> None:
        if not self.rows:
            return
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        (REPORT_DIR / "report.json").write_text(json.dumps(self.rows, indent=2) + "\n")
        columns = ["test", "load", "fault", "sent", "calls", "failed", "lost", "pending"]
        lines = [
            "| " + " | ".join(columns) + " |",
            "|" + "|".join("---" for _ in columns) + "|",
        ]
        for row in self.rows:
            lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
        (REPORT_DIR / "report.md").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def fault_report() -> Iterator[FaultReport]:
    report = FaultReport()
    yield report
    report.write()


@pytest.fixture(scope="session")
def load_images(images_dir: Path) -> list[bytes]:
    """A few shared photos (100-500 KB JPEGs) to invoke."""
    return [(images_dir / name).read_bytes() for name in ("face-1.jpg", "face-5.jpg", "face-8.jpg")]


@dataclasses.dataclass
class ClusterStack:
    """Two servers behind Envoy on the three-node cluster, in a keyspace of their own."""

    cluster: LocalCassandraCluster
    stack: LocalStack
    endpoint: CassandraConfig
    """The cluster's contact points and the stack's keyspace (e.g. for the history checker)."""


ClusterStackFactory = Callable[..., AbstractContextManager[ClusterStack]]


@pytest.fixture
def cluster_stack(
    cassandra_cluster: LocalCassandraCluster, shared_dir: Path, tmp_path: Path
) -> ClusterStackFactory:
    """``with cluster_stack(keyspace, **overrides) as cs:`` two servers (one worker each) behind
    Envoy on the module's three-node cluster (``cassandra_cluster``), the keyspace created by
    the servers with replication factor 3 (``LOCAL_QUORUM``); stopped when the block ends, no
    server process left. ``overrides`` are further stack settings (e.g. ``claim_lease_s``)."""

    @contextlib.contextmanager
    def start(keyspace: str, **overrides: Any) -> Iterator[ClusterStack]:
        endpoint = CassandraConfig(
            contact_points=tuple(cassandra_cluster.contact_points),
            port=cassandra_cluster.native_port,
            keyspace=keyspace,
        )
        with running_two_servers(
            endpoint,
            shared_dir,
            tmp_path,
            cassandra_create_schema=True,
            cassandra_replication_factor=3,
            **overrides,
        ) as stack:
            yield ClusterStack(cassandra_cluster, stack, endpoint)

    return start
