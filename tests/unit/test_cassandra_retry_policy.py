"""The driver retry policy of the store's lightweight transactions: ``Unavailable`` (nothing was
written: the coordinator refused before its Paxos round) goes once to the next host; nothing else
is retried by the driver (a lost answer is settled by reading back, in ``conditional``)."""

from __future__ import annotations

from cassandra import ConsistencyLevel, WriteType

from inference_service.stores.cassandra.retry import ConditionalRetryPolicy

SERIAL = ConsistencyLevel.SERIAL


def test_unavailable_goes_once_to_the_next_host() -> None:
    policy = ConditionalRetryPolicy()
    assert policy.on_unavailable(None, SERIAL, 2, 1, 0) == (policy.RETRY_NEXT_HOST, None)
    assert policy.on_unavailable(None, SERIAL, 2, 1, 1) == (policy.RETHROW, None)


def test_timeouts_and_request_errors_are_never_retried_by_the_driver() -> None:
    policy = ConditionalRetryPolicy()
    assert policy.on_write_timeout(None, SERIAL, WriteType.CAS, 2, 1, 0) == (policy.RETHROW, None)
    assert policy.on_read_timeout(None, SERIAL, 2, 1, False, 0) == (policy.RETHROW, None)
    assert policy.on_request_error(None, SERIAL, RuntimeError("reset"), 0) == (
        policy.RETHROW,
        None,
    )
