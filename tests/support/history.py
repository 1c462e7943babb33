"""Jepsen-style histories for the fault tests: clients that record every call they make
(Invoke, GetInvocation, ListInvocations, DeleteInvocation: start, end, id, content hash, status,
the whole answer) and a checker that reads the history afterwards, with the store and every
server's GetInvocation, and proves for every id:

1. at most one content was ever stored (every answer that carries the input, and the store, agree
   on one content hash);
2. every successful Invoke and every read agree with the stored invocation (state, model version,
   detections, complete time): a read may see PENDING or NOT_FOUND only while an Invoke of the
   id was still unanswered;
3. every ``ALREADY_EXISTS`` saw a content other than the stored one;
4. nothing acknowledged was lost: an id answered ``SUCCEEDED`` is stored at the end, unless a
   delete of it was sent;
5. nothing deleted came back: after an acknowledged delete no read (Get, List) that started
   later finds it, nor does the store at the end; unless an Invoke that had not ended when
   the delete began stored the id afresh (a new invocation, with its own complete time),
   which reads after the delete may then show, and the deleted invocation never.

A violation names the id and prints that id's whole history.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from inference_service.domain import Invocation, State
from inference_service.stores.cassandra import CassandraConfig, CassandraInvocationStore

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 32 * 1024 * 1024),
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
]
RETRYABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
"""What a careful client retries with the same id and content."""

Answer = tuple[Any, ...]


def content_hash(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()[:16]


def _detections(detections: Sequence[Any]) -> tuple[Any, ...]:
    # float32 on the wire: boxes to 0.01 px, scores to 1e-4
    return tuple(
        (
            round(d.box.x_min, 2),
            round(d.box.y_min, 2),
            round(d.box.x_max, 2),
            round(d.box.y_max, 2),
            round(d.score, 4),
            d.label,
        )
        for d in detections
    )


def answer_of(invocation: pb.Invocation) -> Answer:
    """What a caller was told, comparable across processes and the store."""
    complete_ms = (
        invocation.complete_time.seconds * 1000 + invocation.complete_time.nanos // 1_000_000
        if invocation.HasField("complete_time")
        else None
    )
    state = pb.Invocation.State.Name(invocation.state).removeprefix("STATE_")
    return (state, invocation.model_version, _detections(invocation.output.detections), complete_ms)


def stored_answer(invocation: Invocation) -> Answer:
    """The same, of what the store holds."""
    complete_ms = (
        int(invocation.complete_time.timestamp() * 1000)
        if invocation.complete_time is not None
        else None
    )
    state = invocation.state.value if invocation.state is not State.PENDING else "PENDING"
    detections = invocation.output.detections if invocation.output is not None else ()
    return (state, invocation.model.version, _detections(detections), complete_ms)


@dataclasses.dataclass
class Op:
    """One call as its client saw it."""

    kind: str  # invoke, get, list, delete
    client: int
    target: str
    id: str | None
    content: str | None  # hash of the content sent (invoke) or received (get, FULL view)
    start: float
    end: float = 0.0
    code: str = "PENDING_CALL"  # gRPC status name once answered
    answer: Answer | None = None
    listed: tuple[str, ...] = ()  # ids in a listing's first page

    def __str__(self) -> str:
        answer = f" {self.answer}" if self.answer is not None else ""
        listed = f" listed={len(self.listed)}" if self.kind == "list" else ""
        return (
            f"  [{self.start:9.3f} .. {self.end:9.3f}] c{self.client} {self.kind:6} via "
            f"{self.target} id={self.id} content={self.content} -> {self.code}{answer}{listed}"
        )


class History:
    """Every Op of a run, thread-safe; times relative to its start (monotonic seconds)."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def begin(self, op: Op) -> Op:
        with self._lock:
            self.ops.append(op)
        return op

    def end(self, op: Op, code: str, answer: Answer | None = None) -> None:
        op.end = self.now()
        op.code = code
        op.answer = answer

    def of(self, invocation_id: str) -> list[Op]:
        return [o for o in self.ops if o.id == invocation_id or invocation_id in o.listed]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for op in self.ops:
            counts[op.kind] += 1
        return dict(counts)


class HistoryLoad:
    """``clients`` threads through ``targets`` (each call goes to a random one), each looping
    over: Invoke a fresh id (retrying UNAVAILABLE and DEADLINE_EXCEEDED with the same id and
    content for up to ``retry_s``), then now and then a replay of an answered id with the same
    content, one with another content, a Get (FULL view), a listing's first page, a delete."""

    def __init__(
        self,
        targets: Sequence[str],
        images: Sequence[bytes],
        *,
        clients: int = 4,
        retry_s: float = 90.0,
        call_timeout_s: float = 20.0,
        deletes: bool = True,
    ) -> None:
        self.targets = list(targets)
        self.images = list(images)
        self.retry_s = retry_s
        self.call_timeout_s = call_timeout_s
        self.deletes = deletes
        self.prefix = f"hist-{uuid.uuid4().hex[:8]}"
        self.history = History()
        self.unfinished: list[str] = []
        """Ids whose Invoke never got an answer within ``retry_s``."""
        self._answered: list[tuple[str, bytes]] = []
        self._answered_count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)
        ]

    def start(self) -> HistoryLoad:
        for thread in self._threads:
            thread.start()
        return self

    def answered(self) -> int:
        with self._lock:
            return self._answered_count

    def wait_for(self, count: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while self.answered() < count:
            assert time.monotonic() < deadline, f"fewer than {count} Invokes answered"
            time.sleep(0.05)

    def stop(self) -> History:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.retry_s + self.call_timeout_s + 10)
            assert not thread.is_alive(), "a history client did not stop"
        return self.history

    def _client(self, number: int) -> None:
        rng = random.Random(number)
        channels = {t: grpc.insecure_channel(t, options=GRPC_OPTIONS) for t in self.targets}
        stubs = {t: pb_grpc.InferenceServiceStub(c) for t, c in channels.items()}
        try:
            sequence = 0
            while not self._stop.is_set():
                content = self.images[(number + sequence) % len(self.images)]
                invocation_id = f"{self.prefix}-{number}-{sequence}"
                sequence += 1
                if self._invoke(number, stubs, rng, invocation_id, content, retry=True):
                    with self._lock:
                        self._answered.append((invocation_id, content))
                        self._answered_count += 1
                else:
                    self.unfinished.append(invocation_id)
                with self._lock:
                    known = list(self._answered)
                if not known:
                    continue
                old_id, old_content = rng.choice(known)
                roll = rng.random()
                if roll < 0.3:
                    self._invoke(number, stubs, rng, old_id, old_content, retry=False)
                elif roll < 0.45:
                    other = next(i for i in self.images if i != old_content)
                    self._invoke(number, stubs, rng, old_id, other, retry=False)
                elif roll < 0.55:
                    self._list(number, stubs, rng)
                elif roll < 0.6 and self.deletes:
                    self._delete(number, stubs, rng, old_id)
                self._get(number, stubs, rng, rng.choice(known)[0])
        finally:
            for channel in channels.values():
                channel.close()

    def _call(self, op: Op, method: Any, request: Any) -> Any:
        try:
            response = method(request, timeout=self.call_timeout_s)
        except grpc.RpcError as error:
            self.history.end(op, error.code().name)
            return None
        return response

    def _invoke(
        self,
        number: int,
        stubs: dict[str, Any],
        rng: random.Random,
        invocation_id: str,
        content: bytes,
        *,
        retry: bool,
    ) -> bool:
        request = pb.InvokeRequest(input=pb.ModelInput(id=invocation_id, content=content))
        give_up = time.monotonic() + (self.retry_s if retry else 0)
        while True:
            target = rng.choice(self.targets)
            op = self.history.begin(
                Op(
                    "invoke",
                    number,
                    target,
                    invocation_id,
                    content_hash(content),
                    self.history.now(),
                )
            )
            response = self._call(op, stubs[target].Invoke, request)
            if response is not None:
                self.history.end(op, "OK", answer_of(response.invocation))
                return True
            if op.code in RETRYABLE and time.monotonic() < give_up:
                time.sleep(0.2)
                continue
            return op.code == "ALREADY_EXISTS"

    def _get(
        self, number: int, stubs: dict[str, Any], rng: random.Random, invocation_id: str
    ) -> None:
        target = rng.choice(self.targets)
        op = self.history.begin(Op("get", number, target, invocation_id, None, self.history.now()))
        response = self._call(
            op, stubs[target].GetInvocation, pb.GetInvocationRequest(id=invocation_id)
        )
        if response is not None:
            op.content = content_hash(response.invocation.input.content)
            self.history.end(op, "OK", answer_of(response.invocation))

    def _list(self, number: int, stubs: dict[str, Any], rng: random.Random) -> None:
        target = rng.choice(self.targets)
        op = self.history.begin(Op("list", number, target, None, None, self.history.now()))
        response = self._call(
            op, stubs[target].ListInvocations, pb.ListInvocationsRequest(page_size=50)
        )
        if response is not None:
            op.listed = tuple(i.id for i in response.invocations if i.id.startswith(self.prefix))
            self.history.end(op, "OK")

    def _delete(
        self, number: int, stubs: dict[str, Any], rng: random.Random, invocation_id: str
    ) -> None:
        with self._lock:
            self._answered = [a for a in self._answered if a[0] != invocation_id]
        target = rng.choice(self.targets)
        op = self.history.begin(
            Op("delete", number, target, invocation_id, None, self.history.now())
        )
        response = self._call(
            op,
            stubs[target].DeleteInvocation,
            pb.DeleteInvocationRequest(id=invocation_id, allow_missing=True),
        )
        if response is not None:
            self.history.end(op, "OK")


@dataclasses.dataclass
class Verdict:
    ids: int
    ops: int
    violations: list[str]
    report: str
    """The violations, each with its id's whole history."""


def read_store(endpoint: CassandraConfig, ids: Sequence[str]) -> dict[str, Invocation | None]:
    """Each id as stored, read straight from Cassandra (past every cache), with its content."""

    async def read() -> dict[str, Invocation | None]:
        store = await CassandraInvocationStore.connect(endpoint)
        try:
            return {i: await store.get(i, with_content=True) for i in ids}
        finally:
            await store.close()

    return asyncio.run(read())


def read_servers(targets: Sequence[str], ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each id as every server's GetInvocation serves it (an answer or a status name)."""
    served: dict[str, dict[str, Any]] = {}
    for target in targets:
        with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            got: dict[str, Any] = {}
            for invocation_id in ids:
                request = pb.GetInvocationRequest(id=invocation_id, view=pb.INVOCATION_VIEW_BASIC)
                try:
                    got[invocation_id] = answer_of(
                        stub.GetInvocation(request, timeout=10).invocation
                    )
                except grpc.RpcError as error:
                    got[invocation_id] = error.code().name
            served[target] = got
    return served


def check(history: History, endpoint: CassandraConfig, servers: Sequence[str]) -> Verdict:
    """Prove the five properties (module docstring) of ``history`` against the store and the
    GetInvocation of every server in ``servers``."""
    ids = sorted({o.id for o in history.ops if o.id is not None and o.kind == "invoke"})
    return judge(history, read_store(endpoint, ids), read_servers(servers, ids))


def judge(
    history: History,
    stored: dict[str, Invocation | None],
    served: dict[str, dict[str, Any]],
) -> Verdict:
    """The checker proper: ``history`` against ``stored`` (id -> the stored invocation, None
    when absent) and ``served`` (server -> id -> its GetInvocation answer or status name)."""
    servers = list(served)
    ops = [o for o in history.ops if o.code != "PENDING_CALL"]
    ids = sorted({o.id for o in ops if o.id is not None and o.kind == "invoke"})
    by_id: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.id is not None:
            by_id[op.id].append(op)
        for listed in op.listed:
            by_id[listed].append(op)
    violations: dict[str, list[str]] = defaultdict(list)
    for invocation_id in ids:
        mine = by_id[invocation_id]
        row = stored[invocation_id]
        row_answer = stored_answer(row) if row is not None else None
        row_content = content_hash(row.input.content) if row is not None else None
        deletes = [o for o in mine if o.kind == "delete"]
        acked_deletes = [o for o in deletes if o.code == "OK"]
        first_delete_end = min((o.end for o in acked_deletes), default=None)
        first_delete_start = min((o.start for o in deletes), default=None)
        # when the first acknowledged delete began (it took effect between this and its end)
        delete_began = min((o.start for o in acked_deletes), default=None)
        # the first acknowledgement of an Invoke (a read before it may see PENDING)
        invokes = [o for o in mine if o.kind == "invoke"]
        settled_at = min((o.end for o in invokes if o.code == "OK"), default=float("inf"))
        oks = [o for o in invokes if o.code == "OK"]
        # What was acknowledged before the delete: the first OK Invoke that ended before the
        # delete began (else the first OK at all).
        before = [o for o in oks if delete_began is None or o.end < delete_began]
        first_ok = before[0] if before else (oks[0] if oks else None)
        # An Invoke that had not ended when the delete began may have claimed the id after the
        # delete took effect: it re-creates the id, a new invocation (a new complete time) that
        # it answers with. A row after an acknowledged delete is legitimate only then, and only
        # as another invocation than the deleted one (the same one back is a resurrection).
        recreators = [o for o in invokes if delete_began is not None and o.end > delete_began]
        recreated = (
            bool(acked_deletes)
            and row is not None
            and bool(recreators)
            and (first_ok is None or row_answer != first_ok.answer)
        )

        def bad(message: str, _id: str = invocation_id) -> None:
            violations[_id].append(message)

        def after_delete(op: Op, _end: float | None = first_delete_end) -> bool:
            return _end is not None and op.start > _end

        def across_delete(op: Op, _began: float | None = delete_began) -> bool:
            """Overlaps the delete: it may have taken effect before or after it."""
            return _began is not None and not after_delete(op) and op.end > _began

        def after_or_across(op: Op) -> bool:
            return after_delete(op) or across_delete(op)

        # 1. one content: every content seen (stored, read FULL) is one (of each invocation,
        #    when the id was deleted and invoked afresh)
        contents = {
            o.content
            for o in mine
            if o.kind == "get" and o.code == "OK" and not (recreated and after_or_across(o))
        }
        if row_content is not None and not recreated:
            contents.add(row_content)
        if len(contents) > 1:
            bad(f"more than one content seen: {sorted(contents)}")
        # what the acknowledged answer is: the store's, or (deleted since, or re-created) the
        # first OK Invoke's; and after a re-creation, the store's (``new``)
        truth = row_answer if not recreated else None
        truth_content = row_content if not recreated else None
        if truth is None and first_ok is not None:
            truth, truth_content = first_ok.answer, first_ok.content
        new = row_answer if recreated else None
        new_content = row_content if recreated else None
        for op in mine:
            deleted_before = after_delete(op)
            # which answers and contents the op may show: before the delete the first
            # invocation's; after it, the re-created one's; across it, either
            answers: set[Any] = set()
            seen: set[str | None] = set()
            if not deleted_before:
                answers.add(truth)
                seen.add(truth_content)
            if recreated and (deleted_before or across_delete(op)):
                answers.add(new)
                seen.add(new_content)
            unchecked = deleted_before and not recreated  # deleted for good: checked below
            if op.kind == "invoke" and op.code == "OK":
                # 2. an acknowledged Invoke agrees with the stored invocation and its content
                if not unchecked and op.answer not in answers:
                    stored_then = truth if not deleted_before else new
                    bad(f"Invoke answered {op.answer}, stored {stored_then}")
                if not unchecked and op.content not in seen:
                    bad(f"Invoke of content {op.content} acknowledged, stored {truth_content}")
            elif op.kind == "invoke" and op.code == "ALREADY_EXISTS":
                # 3. ALREADY_EXISTS only for another content (than the one stored then)
                if not unchecked and op.content in seen and len(seen) == 1:
                    bad("ALREADY_EXISTS for the stored content")
            elif op.kind == "get" and op.code == "OK":
                pending_ok = op.answer is not None and op.answer[0] == "PENDING"
                if unchecked:
                    bad("read back after its delete was acknowledged")  # 5
                elif deleted_before and op.answer == truth and truth != new:
                    bad("the deleted invocation read back after its delete")  # 5
                elif op.answer not in answers and not (
                    pending_ok and (op.start < settled_at or recreated)
                ):
                    bad(f"Get answered {op.answer}, stored {truth}")  # 2
            elif op.kind == "get" and op.code == "NOT_FOUND":
                if first_delete_start is None and op.start > settled_at:
                    bad("NOT_FOUND after an acknowledged Invoke, never deleted")  # 4
            elif op.kind == "list" and deleted_before and not recreated:
                bad("listed after its delete was acknowledged")  # 5
        # 4. nothing acknowledged lost
        acked = any(o.code == "OK" and o.answer and o.answer[0] == "SUCCEEDED" for o in invokes)
        if acked and row is None and not deletes:
            bad("acknowledged SUCCEEDED, not stored at the end, never deleted")
        if row is not None and row_answer is not None and row_answer[0] == "PENDING":
            bad("still PENDING at the end")
        # 5. nothing deleted came back
        if acked_deletes and row is not None and not recreated:
            bad("stored at the end after an acknowledged delete")
        # every server serves what is stored
        for target in servers:
            got = served[target][invocation_id]
            expected = row_answer if row is not None else "NOT_FOUND"
            if got != expected:
                bad(f"{target} serves {got}, stored {expected}")
    lines = []
    for invocation_id, messages in sorted(violations.items()):
        lines.append(f"VIOLATION {invocation_id}: " + "; ".join(messages))
        lines.extend(str(o) for o in sorted(by_id[invocation_id], key=lambda o: o.start))
    return Verdict(
        ids=len(ids),
        ops=len(ops),
        violations=sorted(violations),
        report="\n".join(lines),
    )
