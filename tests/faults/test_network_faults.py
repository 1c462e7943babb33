"""A bad network, for real: two server processes on the real Cassandra node behind a real Envoy;
server A reaches Cassandra through a fault proxy (``support.faultproxy``), and Envoy reaches A
through another one; B is connected directly. Clients (``support.history``) Invoke, replay, Get,
list and delete through Envoy, recording every call, while each fault is on for a while and then
healed:

- A <-> Cassandra: 200 ms latency, 2 s latency, a black hole, resets mid-stream, a trickle
  (2 KB/s), a partition (A cannot reach its store while Envoy still reaches A);
- Envoy <-> A: 2 s latency, a black hole, resets mid-stream;
- client <-> Envoy (every client connects through a third proxy): resets mid-stream, 2 s latency,
  a black hole (the clients' calls hang, unanswered and unreset, until the heal), a partition
  (every client connection reset, new ones refused).

Each fault ends with: the history checker's five properties hold (no acknowledged invocation
lost, nothing deleted came back, every answer agrees with the store), every Invoke that the
clients retried (UNAVAILABLE, DEADLINE_EXCEEDED, same id and content) ended answered, nothing
PENDING, every successful call answered within the route timeouts (Invoke 60 s, reads 30 s;
the store's request timeout is 5 s), A's health ``NOT_SERVING`` while it cannot reach its store
(Envoy then routes around it: calls keep succeeding on B), and full service within
``RECOVERY_S`` of the heal: A serves an Invoke itself, and the clients, through their link and
Envoy, get an Invoke answered.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from conftest import GRPC_OPTIONS, FaultReport
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.faultproxy import FaultProxy, fault_proxy
from support.history import HistoryLoad, check
from support.stacks import running_two_servers

from devstack.stack import LocalStack
from inference_service.stores.cassandra import CassandraConfig

LEASE_S = 4.0
FAULT_S = 8.0
"""How long each fault stays on (past the 3 s after which an unreachable store is unhealthy)."""
RECOVERY_S = 15.0
"""A serves an Invoke of its own, and the clients through Envoy get one answered, within this long
after a heal (the driver reconnects within 4 s; health is checked every second; a gRPC client's
channel reconnects with its own backoff, 1 s growing by 1.6 times a try, so after 8 s of a
partition its next try comes at most about 7 s after the heal)."""
ROUTE_TIMEOUT_S = 60.0


class Net:
    def __init__(
        self,
        stack: LocalStack,
        to_store: FaultProxy,
        from_envoy: FaultProxy,
        from_clients: FaultProxy,
    ) -> None:
        self.stack = stack
        self.to_store = to_store
        self.from_envoy = from_envoy
        self.from_clients = from_clients
        self.a, self.b = stack.servers

    def proxy(self, link: str) -> FaultProxy:
        return {
            "A<->Cassandra": self.to_store,
            "Envoy<->A": self.from_envoy,
            "client<->Envoy": self.from_clients,
        }[link]

    def heal(self) -> None:
        for proxy in (self.to_store, self.from_envoy, self.from_clients):
            proxy.heal()


@pytest.fixture
def net(cassandra_endpoint: CassandraConfig, shared_dir: Path, tmp_path: Path) -> Iterator[Net]:
    with contextlib.ExitStack() as stack_of:
        to_store = stack_of.enter_context(fault_proxy(cassandra_endpoint.port))
        envoy_links: list[FaultProxy] = []

        def through_proxies(stack: LocalStack) -> None:
            """A reaches Cassandra through ``to_store``; Envoy reaches A through a proxy."""
            a, b = stack.servers
            a._process.env = {
                **(a._process.env or {}),
                "INFERENCE_CASSANDRA_PORT": str(to_store.port),
            }
            from_envoy = stack_of.enter_context(fault_proxy(a.port))
            envoy_links.append(from_envoy)
            stack.envoy.upstreams = [("127.0.0.1", from_envoy.port), (b.host, b.port)]

        stack = stack_of.enter_context(
            running_two_servers(
                cassandra_endpoint,
                shared_dir,
                tmp_path,
                prepare=through_proxies,
                claim_lease_s=LEASE_S,
            )
        )
        from_clients = stack_of.enter_context(fault_proxy(stack.envoy.listen_port))
        net = Net(stack, to_store, envoy_links[0], from_clients)
        try:
            yield net
        finally:
            net.heal()  # before anything stops: nothing waits on a black hole


def health(target: str) -> str:
    with grpc.insecure_channel(target) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status.status)


def invoke_directly(target: str, image: bytes, invocation_id: str) -> str:
    with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        try:
            response = stub.Invoke(
                pb.InvokeRequest(input=pb.ModelInput(id=invocation_id, content=image)), timeout=10
            )
        except grpc.RpcError as error:
            return error.code().name
    return pb.Invocation.State.Name(response.invocation.state)


Fault = tuple[str, str, Callable[[Net], None], bool]
"""(name, link, switch on, A's store unreachable: health must turn NOT_SERVING)."""

FAULTS: list[Fault] = [
    ("latency 200 ms", "A<->Cassandra", lambda n: setattr(n.to_store, "latency_s", 0.2), False),
    ("latency 2 s", "A<->Cassandra", lambda n: setattr(n.to_store, "latency_s", 2.0), False),
    ("black hole", "A<->Cassandra", lambda n: setattr(n.to_store, "blackhole", True), True),
    ("resets mid-stream", "A<->Cassandra", lambda n: n.to_store.reset(), False),
    ("trickle 2 KB/s", "A<->Cassandra", lambda n: setattr(n.to_store, "trickle_bps", 2048), False),
    ("partition", "A<->Cassandra", lambda n: n.to_store.cut(), True),
    ("latency 2 s", "Envoy<->A", lambda n: setattr(n.from_envoy, "latency_s", 2.0), False),
    ("black hole", "Envoy<->A", lambda n: setattr(n.from_envoy, "blackhole", True), False),
    ("resets mid-stream", "Envoy<->A", lambda n: n.from_envoy.reset(), False),
    ("resets mid-stream", "client<->Envoy", lambda n: n.from_clients.reset(), False),
    ("latency 2 s", "client<->Envoy", lambda n: setattr(n.from_clients, "latency_s", 2.0), False),
    ("black hole", "client<->Envoy", lambda n: setattr(n.from_clients, "blackhole", True), False),
    ("partition", "client<->Envoy", lambda n: n.from_clients.cut(), False),
]


def test_network_faults_under_load_keep_every_promise(
    net: Net,
    load_images: list[bytes],
    cassandra_endpoint: CassandraConfig,
    fault_report: FaultReport,
) -> None:
    """Each fault of FAULTS in turn under a recorded load through Envoy; the checker reads the
    whole history at the end: 0 violations."""
    clients_target = f"127.0.0.1:{net.from_clients.port}"  # Envoy, through the clients' link
    load = HistoryLoad([clients_target], load_images, clients=4, retry_s=LEASE_S + 60)
    load.start()
    notes: list[str] = []
    phases: list[tuple[str, float, float, float, int, bool]] = []
    rows: list[dict[str, object]] = []
    try:
        load.wait_for(8, timeout=120)
        for number, (name, link, switch_on, unreachable) in enumerate(FAULTS):
            before = load.answered()
            on_at = load.history.now()
            switch_on(net)
            seen_not_serving = False
            deadline = time.monotonic() + FAULT_S
            while time.monotonic() < deadline:
                if name == "resets mid-stream":
                    net.proxy(link).reset()
                if health(net.a.address) == "NOT_SERVING":
                    seen_not_serving = True
                time.sleep(1.0)
            during = load.answered() - before
            if unreachable:
                assert seen_not_serving, f"{link} {name}: A never reported NOT_SERVING"
                # Envoy routed around A: the load went on on B
                assert during > 0, f"{link} {name}: no Invoke answered while A was cut off"
            answered_at_heal = load.answered()
            net.heal()
            healed = time.monotonic()
            healed_at = load.history.now()
            while True:
                state = invoke_directly(net.a.address, load_images[0], f"{load.prefix}-a{number}")
                if state == "STATE_SUCCEEDED":
                    break
                assert time.monotonic() - healed < RECOVERY_S, (
                    f"{link} {name}: A not serving {RECOVERY_S} s after the heal ({state})"
                )
                time.sleep(0.5)
            recovered = time.monotonic() - healed
            # Full service: the clients (through their link and Envoy) get Invokes answered.
            load.wait_for(
                answered_at_heal + 1, timeout=max(0.0, healed + RECOVERY_S - time.monotonic())
            )
            phases.append(
                (f"{link} {name}", on_at, healed_at, load.history.now(), during, seen_not_serving)
            )
            notes.append(
                f"{link} {name}: {during} answered during, NOT_SERVING seen {seen_not_serving},"
                f" A recovered {recovered:.1f} s after heal"
            )
        load.wait_for(load.answered() + 4, timeout=60)
    finally:
        history = load.stop()
    for label, on_at, healed_at, off_at, during, seen in phases:
        # every call that overlapped the fault: how many, how many failed, the slowest answer
        overlapping = [o for o in history.ops if o.start < off_at and o.end > on_at]
        answered = [o.end - o.start for o in overlapping if o.code in ("OK", "ALREADY_EXISTS")]
        failed = collections.Counter(
            o.code for o in overlapping if o.code not in ("OK", "ALREADY_EXISTS", "NOT_FOUND")
        )
        # the first Invoke the clients got answered after the heal
        served_again = (
            min(
                (
                    o.end
                    for o in history.ops
                    if o.kind == "invoke" and o.code == "OK" and o.end > healed_at
                ),
                default=float("inf"),
            )
            - healed_at
        )
        notes.append(
            f"{label}: {len(overlapping)} calls overlapped, slowest answer"
            f" {max(answered, default=0):.1f} s, failed (retried) {dict(failed)},"
            f" {during} Invokes answered while on, clients served again {served_again:.1f} s"
            " after the heal"
        )
        rows.append(
            dict(
                test=f"network: {label}",
                load="4 clients via Envoy, history recorded",
                fault=f"{label} for {FAULT_S:g} s (A NOT_SERVING seen: {seen}; clients served"
                f" again {served_again:.1f} s after the heal; slowest answer"
                f" {max(answered, default=0):.1f} s)",
                sent=len(overlapping),
                calls=len(overlapping),
                failed=sum(failed.values()),
            )
        )
    print("\n".join(notes))
    verdict = check(history, cassandra_endpoint, [net.a.address, net.b.address])
    for row in rows:
        fault_report.add_row(**row, lost=len(verdict.violations), pending=0)
    slow = [o for o in history.ops if o.code == "OK" and o.end - o.start > ROUTE_TIMEOUT_S]
    counts = history.counts()
    fault_report.add_row(
        test="network faults, history checked",
        load="4 clients via Envoy: invoke (retry), replay, other content, get, list, delete",
        fault="; ".join(f"{link} {name}" for name, link, _, _ in FAULTS),
        sent=verdict.ids,
        calls=verdict.ops,
        failed=len(load.unfinished),
        lost=len(verdict.violations),
        pending=0,
    )
    print(f"history: {counts}, ids {verdict.ids}, violations {len(verdict.violations)}")
    assert verdict.violations == [], verdict.report
    assert load.unfinished == [], f"Invokes never answered: {load.unfinished}"
    assert slow == [], "\n".join(str(o) for o in slow)
