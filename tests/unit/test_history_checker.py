"""The history checker (tests/support/history.py) finds each kind of broken history it promises
to find, names the id and prints its history; a clean history passes."""

from __future__ import annotations

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
