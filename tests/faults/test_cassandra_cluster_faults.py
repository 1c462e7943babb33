"""A three-node Cassandra cluster (127.0.0.1..3, replication factor 3, LOCAL_QUORUM) behind a
real Envoy and two server replicas, one node killed (SIGKILL) in the middle, then restarted:

- under Invoke load: no Invoke may fail (the servers' own retries are allowed, the clients do
  not retry), and every acknowledged invocation reads back whole;
- while clients page through ListInvocations: every invocation is listed exactly once, in the
  same order, on every pass; no call fails but with UNAVAILABLE (retried with the same token);
- while a client deletes invocations: each delete either succeeds or fails with UNAVAILABLE, and
  never leaves an invocation half-deleted; after the node is back and the rows are repaired, no
  deleted invocation is served by any server process, listed, or stored on any replica."""

from __future__ import annotations

import collections
import subprocess
import threading
import time
import uuid

import grpc
from cassandra import ConsistencyLevel
from cassandra.cluster import Cluster
from cassandra.query import SimpleStatement
from conftest import GRPC_OPTIONS, ClusterStackFactory, FaultReport, InvokeLoad, read_back
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from devstack.cassandra import LocalCassandraCluster
from devstack.process import free_port
from devstack.stack import LocalStack

VICTIM = 2
LIST_VICTIM = 3
DELETE_VICTIM = 1
"""Node 1: its JMX (local JMX binds 127.0.0.1 only) is where nodetool finds it."""
DOWN_S = 25
"""How long a killed node stays down: long enough for the survivors' failure detectors to
convict it (20-40 s on two busy cores), so calls run both before and after they do."""
READ_VICTIM = 3
READ_BOUND_S = 1.0
"""The slowest Get allowed right after a node kill. A read whose coordinator asks the dead
replica is answered once the speculative retry (50 ms, set by ``migrate``) asks the third one;
the table default (99p, about 2.5 s on a table with few reads) held it past this bound."""
READ_AFTER_KILL_S = 8.0
"""How long Gets run after the kill: well before the failure detectors convict the node."""
RETRY_S = 30.0
"""How long a careful client retries a call that failed with UNAVAILABLE."""
RETRYABLE = {"UNAVAILABLE"}


def test_sigkill_of_a_cassandra_node_under_load_fails_nothing(
    cluster_stack: ClusterStackFactory,
    load_images: list[bytes],
    fault_report: FaultReport,
) -> None:
    with cluster_stack("faults") as cs:
        cluster, stack = cs.cluster, cs.stack
        load = InvokeLoad(stack.grpc_target, load_images, clients=3, retry_s=0).start()
        try:
            load.wait_for_acks(12, timeout=90)
            cluster.kill(VICTIM)
            killed_at = time.monotonic()
            # Long enough for the survivors' failure detectors to convict the dead node.
            while time.monotonic() - killed_at < 25:
                time.sleep(0.5)
            cluster.start_node(VICTIM)  # waits until it has rejoined: UP on every node
            rejoined_after = time.monotonic() - killed_at
            load.wait_for_acks(load.acked_count() + 12, timeout=90)
        finally:
            result = load.stop()
        back = read_back(stack.grpc_target, result.acked)
    assert cluster.is_running()
    fault_report.add(
        "SIGKILL one of 3 Cassandra nodes (RF 3, LOCAL_QUORUM)",
        "3 clients, no retry, 2 servers",
        f"node {VICTIM} killed, restarted, rejoined after {rejoined_after:.0f} s",
        result,
        back,
    )
    assert result.failed == 0, (result.errors, dict(result.details))
    assert len(result.acked) == result.sent
    assert back.lost == [] and back.pending == []


def test_gets_answer_within_a_bound_right_after_a_node_kill(
    cluster_stack: ClusterStackFactory,
    load_images: list[bytes],
    fault_report: FaultReport,
) -> None:
    with cluster_stack("faults_reads") as cs:
        cluster, stack = cs.cluster, cs.stack
        ids = _seed(stack, load_images[0], f"read-{uuid.uuid4().hex[:8]}", 12)
        views = (pb.INVOCATION_VIEW_BASIC, pb.INVOCATION_VIEW_FULL)
        latencies: list[float] = []
        with grpc.insecure_channel(stack.grpc_target, options=GRPC_OPTIONS) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            for invocation_id in ids:  # warm: connections, both servers' caches
                for view in views:
                    stub.GetInvocation(pb.GetInvocationRequest(id=invocation_id, view=view))
            cluster.kill(READ_VICTIM)
            killed_at = time.monotonic()
            try:
                while time.monotonic() - killed_at < READ_AFTER_KILL_S:
                    for invocation_id in ids:
                        for view in views:
                            started = time.monotonic()
                            response = stub.GetInvocation(
                                pb.GetInvocationRequest(id=invocation_id, view=view), timeout=10
                            )
                            latencies.append(time.monotonic() - started)
                            assert response.invocation.input.id == invocation_id
            finally:
                cluster.start_node(READ_VICTIM)  # waits until it has rejoined
    assert cluster.is_running()
    slowest = max(latencies)
    fault_report.add_row(
        test="GetInvocation right after one of 3 Cassandra nodes is SIGKILLed (RF 3)",
        load=f"1 client, 12 ids, BASIC and FULL, for {READ_AFTER_KILL_S:g} s after the kill",
        fault=f"node {READ_VICTIM} killed; slowest Get {slowest * 1000:.0f} ms",
        sent=len(latencies),
        calls=len(latencies),
        failed=0,
        lost="",
        pending="",
    )
    print(
        f"{len(latencies)} Gets after the kill: slowest {slowest * 1000:.0f} ms, "
        f"over {READ_BOUND_S * 1000:.0f} ms: {sum(t > READ_BOUND_S for t in latencies)}"
    )
    assert slowest < READ_BOUND_S, sorted(latencies)[-5:]


def _seed(stack: LocalStack, content: bytes, prefix: str, count: int) -> list[str]:
    """``count`` invocations with ids ``<prefix>-<n>`` and metadata ``half`` = ``a`` or ``b``."""
    ids = [f"{prefix}-{n:03d}" for n in range(count)]
    with grpc.insecure_channel(stack.grpc_target, options=GRPC_OPTIONS) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        for n, invocation_id in enumerate(ids):
            metadata = {"half": "ab"[n % 2]}
            model_input = pb.ModelInput(id=invocation_id, content=content, metadata=metadata)
            response = stub.Invoke(pb.InvokeRequest(input=model_input), timeout=60)
            assert response.invocation.state == pb.Invocation.STATE_SUCCEEDED
    return ids


class PageFailedError(Exception):
    """A page that still failed after ``RETRY_S`` of retries, or with a code not retried."""


def _list_all(
    stub: pb_grpc.InferenceServiceStub,
    *,
    filter_text: str,
    page_size: int,
    errors: collections.Counter[str],
) -> tuple[list[str], int]:
    """Every id of the listing, following the tokens; a page that fails with UNAVAILABLE is
    asked for again with the same token (for up to ``RETRY_S``). Returns the ids and the calls
    made; every failed call's code is counted in ``errors``."""
    ids: list[str] = []
    calls = 0
    token = ""
    while True:
        give_up = time.monotonic() + RETRY_S
        while True:
            calls += 1
            request = pb.ListInvocationsRequest(
                page_size=page_size, page_token=token, filter=filter_text
            )
            try:
                page = stub.ListInvocations(request, timeout=20)
                break
            except grpc.RpcError as error:
                errors[error.code().name] += 1
                if error.code().name not in RETRYABLE or time.monotonic() > give_up:
                    raise PageFailedError(f"{error.code().name}: {error.details()}") from error
                time.sleep(0.2)
        ids.extend(invocation.id for invocation in page.invocations)
        token = page.next_page_token
        if not token:
            return ids, calls


class ListingLoop:
    """A client thread that lists everything again and again (pages of ``page_size``),
    alternating between the listing of every invocation and a filtered one, until ``stop()``."""

    FILTERS = ("", 'metadata.half = "a"')

    def __init__(self, target: str, page_size: int) -> None:
        self.target = target
        self.page_size = page_size
        self.passes: list[tuple[str, list[str]]] = []
        """(filter, the ids listed) of every complete pass."""
        self.failed: list[str] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.calls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ListingLoop:
        self._thread.start()
        return self

    def passes_done(self) -> int:
        return len(self.passes)

    def wait_for_passes(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.passes_done() < count:
            assert time.monotonic() < deadline, f"fewer than {count} listing passes finished"
            assert self._thread.is_alive(), "the listing client stopped"
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=RETRY_S * 4)
        assert not self._thread.is_alive(), "the listing client did not stop"

    def _run(self) -> None:
        with grpc.insecure_channel(self.target, options=GRPC_OPTIONS) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            number = 0
            while not self._stop.is_set():
                filter_text = self.FILTERS[number % len(self.FILTERS)]
                number += 1
                try:
                    ids, calls = _list_all(
                        stub, filter_text=filter_text, page_size=self.page_size, errors=self.errors
                    )
                except PageFailedError as error:
                    self.failed.append(str(error))
                    continue
                self.calls += calls
                self.passes.append((filter_text, ids))
                self._stop.wait(0.2)  # a pause between passes: two cores, three nodes


def test_listing_pages_through_a_sigkill_lists_each_invocation_once(
    cluster_stack: ClusterStackFactory,
    load_images: list[bytes],
    fault_report: FaultReport,
) -> None:
    with cluster_stack("faults_list") as cs:
        cluster, stack = cs.cluster, cs.stack
        ids = _seed(stack, load_images[0], f"list-{uuid.uuid4().hex[:8]}", 40)
        # The order every pass must show (newest first), read before any fault.
        with grpc.insecure_channel(stack.grpc_target, options=GRPC_OPTIONS) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            expected = {
                filter_text: _list_all(
                    stub, filter_text=filter_text, page_size=1000, errors=collections.Counter()
                )[0]
                for filter_text in ListingLoop.FILTERS
            }
        assert sorted(expected[""]) == ids
        assert sorted(expected['metadata.half = "a"']) == ids[::2]

        loop = ListingLoop(stack.grpc_target, page_size=7).start()
        try:
            loop.wait_for_passes(2, timeout=60)
            cluster.kill(LIST_VICTIM)
            killed_at = time.monotonic()
            before = loop.passes_done()
            while time.monotonic() - killed_at < DOWN_S:
                time.sleep(0.5)
            during = loop.passes_done() - before
            cluster.start_node(LIST_VICTIM)  # waits until it has rejoined
            rejoined_after = time.monotonic() - killed_at
            loop.wait_for_passes(loop.passes_done() + 2, timeout=60)
        finally:
            loop.stop()
    assert cluster.is_running()
    wrong = [
        (filter_text, collections.Counter(listed) - collections.Counter(expected[filter_text]))
        for filter_text, listed in loop.passes
        if listed != expected[filter_text]
    ]
    fault_report.add_row(
        test="ListInvocations while one of 3 Cassandra nodes is SIGKILLed (RF 3)",
        load="1 client paging (7 a page) through 40 invocations, UNAVAILABLE retried",
        fault=f"node {LIST_VICTIM} killed, restarted, rejoined after {rejoined_after:.0f} s",
        sent=len(loop.passes) + len(loop.failed),
        calls=loop.calls,
        failed=len(loop.failed),
        lost=len(wrong),
        pending="",
    )
    assert loop.failed == [], (loop.failed, loop.errors)
    assert set(loop.errors) <= RETRYABLE, loop.errors
    assert during >= 1, "no listing pass ran while the node was down"
    # Every pass: every invocation exactly once, newest first, nothing else.
    assert wrong == [], wrong[:3]


def _state_of(stub: pb_grpc.InferenceServiceStub, invocation_id: str) -> str:
    """``present`` or ``gone`` as GetInvocation and RenderInvocation of one server see it."""
    try:
        stub.GetInvocation(pb.GetInvocationRequest(id=invocation_id), timeout=20)
        got = "present"
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, (invocation_id, error)
        got = "gone"
    try:
        stub.RenderInvocation(pb.RenderInvocationRequest(id=invocation_id), timeout=20)
        rendered = "present"
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, (invocation_id, error)
        rendered = "gone"
    assert got == rendered, (invocation_id, got, rendered)
    return got


def _replica_rows(cluster: LocalCassandraCluster, keyspace: str, ids: set[str]) -> list[str]:
    """``table: id`` of every row of ``ids`` left in any table of ``keyspace`` that has an
    ``id`` column, each table read whole at consistency ALL: every replica answers, and the
    read repairs any replica that missed a delete (blocking read repair) before it returns."""
    found = []
    with Cluster(list(cluster.contact_points), port=cluster.native_port) as client:
        session = client.connect()
        tables = [
            row.table_name
            for row in session.execute(
                "SELECT table_name FROM system_schema.columns"
                " WHERE keyspace_name = %s AND column_name = 'id' ALLOW FILTERING",
                (keyspace,),
            )
        ]
        assert "invocations" in tables, tables
        for table in tables:
            statement = SimpleStatement(
                f"SELECT id FROM {keyspace}.{table}",
                consistency_level=ConsistencyLevel.ALL,
                fetch_size=500,
            )
            found += [f"{table}: {row.id}" for row in session.execute(statement, timeout=60)]
    return [row for row in found if row.split(": ", 1)[1] in ids]


def test_deletes_during_a_sigkill_succeed_or_fail_retryably_never_half_done(
    cluster_stack: ClusterStackFactory,
    load_images: list[bytes],
    fault_report: FaultReport,
) -> None:
    keyspace = "faults_delete"
    outcomes: dict[str, str] = {}
    with cluster_stack(keyspace) as cs:
        cluster, stack = cs.cluster, cs.stack
        ids = _seed(stack, load_images[0], f"del-{uuid.uuid4().hex[:8]}", 40)
        doomed, kept = ids[:30], ids[30:]
        with grpc.insecure_channel(stack.grpc_target, options=GRPC_OPTIONS) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            # Warm every server's cache of finished invocations with what will be deleted.
            for server in stack.servers:
                with grpc.insecure_channel(server.address, options=GRPC_OPTIONS) as direct:
                    for invocation_id in doomed:
                        assert _state_of(pb_grpc.InferenceServiceStub(direct), invocation_id) == (
                            "present"
                        )
            cluster.kill(DELETE_VICTIM)
            killed_at = time.monotonic()
            # One delete at a time, no retry, spread over the time the node is down: before
            # and after the survivors convict it.
            for number, invocation_id in enumerate(doomed):
                time.sleep(max(0.0, killed_at + number * DOWN_S / len(doomed) - time.monotonic()))
                try:
                    stub.DeleteInvocation(pb.DeleteInvocationRequest(id=invocation_id), timeout=20)
                    outcomes[invocation_id] = "OK"
                except grpc.RpcError as error:
                    outcomes[invocation_id] = error.code().name
            # It comes back with JMX (local, 127.0.0.1: node 1's own address), for nodetool.
            victim = cluster.node(DELETE_VICTIM)
            victim.jmx_port = free_port()
            cluster.start_node(DELETE_VICTIM)  # waits until it has rejoined
            rejoined_after = time.monotonic() - killed_at

            failed = [i for i, code in outcomes.items() if code != "OK"]
            # Never half-done: each server process sees every id whole or not at all, Get,
            # Render and List agreeing; a delete that answered OK is gone everywhere.
            listed = collections.Counter(
                _list_all(stub, filter_text="", page_size=7, errors=collections.Counter())[0]
            )
            seen = {}
            for server in stack.servers:
                with grpc.insecure_channel(server.address, options=GRPC_OPTIONS) as direct:
                    direct_stub = pb_grpc.InferenceServiceStub(direct)
                    for invocation_id in ids:
                        state = _state_of(direct_stub, invocation_id)
                        seen.setdefault(invocation_id, set()).add(state)
            half_done = {
                invocation_id: (states, listed[invocation_id])
                for invocation_id, states in seen.items()
                if len(states) != 1 or (states == {"present"}) != (listed[invocation_id] == 1)
            }
            resurrected = [i for i in doomed if outcomes[i] == "OK" and seen[i] != {"gone"}]
            lost = [i for i in kept if seen[i] != {"present"}]
            # A careful client retries the failed deletes (allow_missing: one that did land
            # while its answer was lost is not an error).
            for invocation_id in failed:
                stub.DeleteInvocation(
                    pb.DeleteInvocationRequest(id=invocation_id, allow_missing=True), timeout=20
                )
            for server in stack.servers:
                with grpc.insecure_channel(server.address, options=GRPC_OPTIONS) as direct:
                    direct_stub = pb_grpc.InferenceServiceStub(direct)
                    left = [i for i in doomed if _state_of(direct_stub, i) != "gone"]
                    assert left == [], (server.address, left)
            final_listing = _list_all(
                stub, filter_text="", page_size=50, errors=collections.Counter()
            )[0]
        # Anti-entropy: a full repair of the keyspace from the node that was down (RF 3 on 3
        # nodes: every range, with both other replicas), then every table read at ALL.
        repair = subprocess.run(
            [*victim.nodetool_command(), "repair", "--full", keyspace],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert repair.returncode == 0, repair.stdout[-2000:] + repair.stderr[-2000:]
        on_replicas = _replica_rows(cluster, keyspace, set(doomed))
    assert cluster.is_running()
    codes = collections.Counter(outcomes.values())
    fault_report.add_row(
        test="DeleteInvocation while one of 3 Cassandra nodes is SIGKILLed (RF 3)",
        load=f"1 client, {len(doomed)} deletes over {DOWN_S} s, no retry",
        fault=f"node {DELETE_VICTIM} killed, restarted, rejoined after {rejoined_after:.0f} s",
        sent=len(doomed),
        calls=len(doomed),
        failed=len(failed),
        lost=len(half_done) + len(resurrected) + len(lost) + len(on_replicas),
        pending="",
    )
    assert set(codes) - {"OK"} <= RETRYABLE, codes
    assert codes["OK"] > 0, codes
    assert half_done == {}, half_done
    assert resurrected == [], resurrected
    assert lost == [], lost
    assert sorted(final_listing) == kept
    assert on_replicas == [], on_replicas
