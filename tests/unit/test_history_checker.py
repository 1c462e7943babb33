"""The history checker (tests/support/history.py) finds each kind of broken history it promises
to find, names the id and prints its history; a clean history passes."""

from __future__ import annotations

import dataclasses
import datetime as dt

from support.history import History, Op, content_hash, judge, stored_answer

from inference_service.domain import (
    BoundingBox,
    Detection,
    Invocation,
    ModelInfo,
    ModelInput,
    ModelOutput,
    State,
)

A = b"\xff\xd8 first content"
B = b"\xff\xd8 other content"
T0 = dt.datetime(2026, 12, 7, 6, 0, tzinfo=dt.UTC)


def stored(invocation_id: str, content: bytes = A, score: float = 0.9) -> Invocation:
    return Invocation(
        input=ModelInput(id=invocation_id, content=content),
        content_sha256="0" * 64,
        state=State.SUCCEEDED,
        model=ModelInfo("faces", "v1"),
        create_time=T0,
        output=ModelOutput(
            (Detection(BoundingBox(1, 2, 3, 4), score, "face"),), image_width=10, image_height=10
        ),
        complete_time=T0 + dt.timedelta(seconds=1),
    )


def op(kind: str, invocation_id: str | None, start: float, end: float, code: str, **kw: object):
    kw.setdefault("content", None)
    return Op(kind, 0, "envoy", invocation_id, start=start, end=end, code=code, **kw)  # type: ignore[arg-type]


def history_of(*ops: Op) -> History:
    history = History()
    history.ops.extend(ops)
    return history


def test_a_clean_history_has_no_violation() -> None:
    row = stored("x")
    truth = stored_answer(row)
    history = history_of(
        op("invoke", "x", 0, 1, "UNAVAILABLE", content=content_hash(A)),
        op("invoke", "x", 1, 2, "OK", content=content_hash(A), answer=truth),
        op("invoke", "x", 3, 4, "ALREADY_EXISTS", content=content_hash(B)),
        op("get", "x", 5, 6, "OK", content=content_hash(A), answer=truth),
        op("list", None, 6, 7, "OK", listed=("x",)),
    )
    verdict = judge(history, {"x": row}, {"a": {"x": truth}, "b": {"x": truth}})
    assert verdict.violations == [], verdict.report


def test_an_overwritten_outcome_is_a_violation_with_its_history() -> None:
    answered = stored_answer(stored("x", score=0.9))
    row = stored("x", score=0.5)  # a late write replaced what was acknowledged
    history = history_of(op("invoke", "x", 1, 2, "OK", content=content_hash(A), answer=answered))
    verdict = judge(history, {"x": row}, {"a": {"x": stored_answer(row)}})
    assert verdict.violations == ["x"]
    assert "VIOLATION x: Invoke answered" in verdict.report
    assert "invoke" in verdict.report and "-> OK" in verdict.report


def test_lost_two_contents_wrong_already_exists_and_a_resurrection_are_violations() -> None:
    row = stored("kept")
    truth = stored_answer(row)
    history = history_of(
        # lost: acknowledged, never deleted, not stored
        op("invoke", "lost", 0, 1, "OK", content=content_hash(A), answer=truth),
        # a read of another content than the stored one
        op("invoke", "kept", 0, 1, "OK", content=content_hash(A), answer=truth),
        op("get", "kept", 2, 3, "OK", content=content_hash(B), answer=truth),
        # ALREADY_EXISTS for the stored content itself
        op("invoke", "kept", 3, 4, "ALREADY_EXISTS", content=content_hash(A)),
        # deleted, then read back
        op("invoke", "gone", 0, 1, "OK", content=content_hash(A), answer=truth),
        op("delete", "gone", 2, 3, "OK"),
        op("get", "gone", 4, 5, "OK", content=content_hash(A), answer=truth),
        op("list", None, 4, 5, "OK", listed=("gone",)),
    )
    verdict = judge(
        history,
        {"lost": None, "kept": row, "gone": None},
        {"a": {"lost": "NOT_FOUND", "kept": truth, "gone": "NOT_FOUND"}},
    )
    assert verdict.violations == ["gone", "kept", "lost"], verdict.report
    assert "more than one content" in verdict.report
    assert "ALREADY_EXISTS for the stored content" in verdict.report
    assert "not stored at the end" in verdict.report
    assert "read back after its delete" in verdict.report
    assert "listed after its delete" in verdict.report


def test_a_server_serving_other_than_the_store_is_a_violation() -> None:
    row = stored("x")
    truth = stored_answer(row)
    history = history_of(op("invoke", "x", 0, 1, "OK", content=content_hash(A), answer=truth))
    verdict = judge(history, {"x": row}, {"a": {"x": truth}, "b": {"x": "NOT_FOUND"}})
    assert verdict.violations == ["x"]
    assert "b serves NOT_FOUND" in verdict.report


def recreated(invocation_id: str) -> Invocation:
    """The id invoked afresh after its delete: the same content, a later complete time."""
    return dataclasses.replace(
        stored(invocation_id), complete_time=T0 + dt.timedelta(seconds=2, milliseconds=878)
    )


def test_a_replay_across_a_delete_may_create_the_id_afresh() -> None:
    """The history of a network-fault run (hist-27b52d4a-1-1): a replay sent just before a
    delete claimed the id after the delete took effect and ran the model again; it answered
    with the new invocation, which is stored. No violation (the checker before flagged it)."""
    first = stored_answer(stored("x"))
    again = recreated("x")
    new = stored_answer(again)
    history = history_of(
        op("invoke", "x", 0.137, 0.211, "OK", content=content_hash(A), answer=first),
        op("get", "x", 0.215, 0.249, "OK", content=content_hash(A), answer=first),
        op("invoke", "x", 0.246, 1.476, "OK", content=content_hash(A), answer=new),
        op("delete", "x", 0.249, 0.280, "OK"),
        op("get", "x", 1.476, 1.516, "OK", content=content_hash(A), answer=new),
        op("list", None, 5.6, 5.7, "OK", listed=("x",)),
    )
    verdict = judge(history, {"x": again}, {"a": {"x": new}, "b": {"x": new}})
    assert verdict.violations == [], verdict.report


def test_a_slow_replay_across_a_delete_may_answer_the_old_invocation_or_the_new() -> None:
    """Across the delete a replay may take effect before it (the old answer) or after it
    (the new one), both with a re-created row stored at the end (hist-27b52d4a-2-72)."""
    first = stored_answer(stored("x"))
    again = recreated("x")
    new = stored_answer(again)
    for answer in (first, new):
        history = history_of(
            op("invoke", "x", 16.09, 16.10, "OK", content=content_hash(A), answer=first),
            op("invoke", "x", 17.04, 25.19, "OK", content=content_hash(A), answer=new),
            op("invoke", "x", 23.0, 24.5, "OK", content=content_hash(A), answer=answer),
            op("delete", "x", 24.11, 24.12, "OK"),
        )
        verdict = judge(history, {"x": again}, {"a": {"x": new}})
        assert verdict.violations == [], verdict.report


def test_the_deleted_invocation_back_is_a_violation_even_with_a_replay_across_the_delete() -> None:
    """The row stored at the end is the deleted one itself (same complete time): it came back,
    whatever replay overlapped the delete; and a read after the delete that shows the deleted
    invocation while a new one is stored is a violation too."""
    row = stored("back")
    first = stored_answer(row)
    again = recreated("new")
    new = stored_answer(again)
    history = history_of(
        op("invoke", "back", 0, 1, "OK", content=content_hash(A), answer=first),
        op("invoke", "back", 1.5, 2.5, "OK", content=content_hash(A), answer=first),
        op("delete", "back", 2, 3, "OK"),
        op("invoke", "new", 0, 1, "OK", content=content_hash(A), answer=first),
        op("invoke", "new", 1.5, 4, "OK", content=content_hash(A), answer=new),
        op("delete", "new", 2, 3, "OK"),
        op("get", "new", 5, 6, "OK", content=content_hash(A), answer=first),
    )
    verdict = judge(
        history,
        {"back": row, "new": again},
        {"a": {"back": first, "new": new}},
    )
    assert verdict.violations == ["back", "new"], verdict.report
    assert "stored at the end after an acknowledged delete" in verdict.report
    assert "the deleted invocation read back after its delete" in verdict.report
