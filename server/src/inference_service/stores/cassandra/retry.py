"""Which driver errors mean what, and how the store retries: the one place that decides.

* ``UNAVAILABLE_ERRORS`` (unreachable, overloaded, timed out) and "CAS write outcome unknown"
  are transient: they become ``StoreUnavailableError`` (UNAVAILABLE for the client) once the
  retries are spent; any other error goes up as it is.
* ``retrying``: an idempotent statement, retried with exponential backoff for up to the
  budget (``retry_budget_s``).
* ``conditional``: a lightweight transaction, never retried blindly. An answer that was lost
  (a timeout, a dropped connection, "CAS write outcome unknown") may hide a write that was
  applied: it is settled by reading the row back at ``SERIAL`` and judging it. This is the one
  place that handles an uncertain conditional write (claim, take-over, outcome, delete).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from cassandra import (
    CoordinationFailure,
    OperationTimedOut,
    ReadTimeout,
    Unavailable,
    WriteTimeout,
)
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionException
from cassandra.policies import FallthroughRetryPolicy
from cassandra.protocol import ErrorMessage, IsBootstrappingErrorMessage, OverloadedErrorMessage

from inference_service.errors import StoreUnavailableError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Row = Mapping[str, Any]

#: Native protocol v5 error "CAS write outcome unknown" (Cassandra 4.0+); the driver has no
#: class for it and raises a plain ``ErrorMessage`` carrying the code.
CAS_WRITE_UNKNOWN = 0x1700

#: Driver errors that mean the store cannot answer now (down, overloaded or too slow).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    NoHostAvailable,
    OperationTimedOut,
    Unavailable,
    ReadTimeout,
    WriteTimeout,
    CoordinationFailure,  # ReadFailure, WriteFailure, CDCWriteFailure
    ConnectionException,
    OverloadedErrorMessage,
    IsBootstrappingErrorMessage,
)


class ConditionalRetryPolicy(FallthroughRetryPolicy):
    """The driver's policy for lightweight transactions: nothing is retried blindly (a lost
    answer may hide an applied write: ``conditional`` settles it), except ``Unavailable`` once,
    on the next host. A coordinator answers ``Unavailable`` before it starts the Paxos round,
    when it believes too few replicas are alive, so nothing was written; a node that has just
    restarted does so for a second or two, until it sees its peers up, while the others would
    serve the statement."""

    def on_unavailable(
        self,
        query: Any,
        consistency: Any,
        required_replicas: int,
        alive_replicas: int,
        retry_num: int,
    ) -> tuple[int, Any]:
        if retry_num == 0:
            return self.RETRY_NEXT_HOST, None
        return self.RETHROW, None


class Verdict(enum.Enum):
    """What a row says of a conditional write (``conditional``)."""

    WON = "won"
    LOST = "lost"
    AGAIN = "again"


def cas_unknown(exc: BaseException) -> bool:
    return isinstance(exc, ErrorMessage) and getattr(exc, "code", None) == CAS_WRITE_UNKNOWN


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "the store cannot answer now" (retrying may succeed)."""
    return isinstance(exc, UNAVAILABLE_ERRORS) or cas_unknown(exc)


def outcome_unknown(exc: BaseException) -> bool:
    """Whether a failed conditional write may still have been applied (timeouts, lost
    connections, "CAS write outcome unknown")."""
    if cas_unknown(exc):
        return True
    if not isinstance(exc, UNAVAILABLE_ERRORS):
        return False
    if isinstance(exc, NoHostAvailable):
        return bool(exc.errors)  # no errors: no host was even tried
    return not isinstance(exc, (Unavailable, OverloadedErrorMessage, IsBootstrappingErrorMessage))


def unavailable_or(exc: BaseException, operation: str) -> BaseException:
    """``StoreUnavailableError`` for a transient driver error; any other error as it is."""
    return unavailable(operation, exc) if transient(exc) else exc


def unavailable(operation: str, exc: BaseException) -> StoreUnavailableError:
    logger.warning("invocation store %s failed: %s: %s", operation, type(exc).__name__, exc)
    return StoreUnavailableError("invocation store unavailable")


async def retrying(operation: str, attempt: Callable[[], Awaitable[T]], budget_s: float) -> T:
    """Run ``attempt`` (an idempotent statement); retry transient failures with exponential
    backoff for up to ``budget_s``, then raise ``StoreUnavailableError``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    delay = 0.05
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if not transient(exc):
                raise
            if loop.time() + delay > deadline:
                raise unavailable(operation, exc) from exc
            logger.info(
                "store %s failed (%s); retrying in %.2fs", operation, type(exc).__name__, delay
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def conditional(
    operation: str,
    invocation_id: str,
    attempt: Callable[[], Awaitable[list[Any]]],
    read_back: Callable[[BaseException], Awaitable[Row | None]],
    judge: Callable[[Row | None], Verdict],
    *,
    budget_s: float,
    persist: bool = False,
) -> Row | None:
    """Run a lightweight transaction (``attempt``, never retried blindly); ``None`` when it was
    applied, else the row it returned (not applied: the columns of its condition, or the whole
    row for ``IF NOT EXISTS``), or the row the read back found.

    ``judge`` tells from a row (``None``: no row) whether this caller's write is in it
    (``WON``), cannot be (``LOST``), or is not there yet and may be sent again (``AGAIN``).
    It rules on every row that is not an applied answer: one whose answer was lost (a
    timeout, a dropped connection, "CAS write outcome unknown") is settled by ``read_back``, a
    serial read (the Paxos round may have committed); a definite "not applied" may still show
    the caller's own write (an earlier attempt of it, completed by Paxos since). ``AGAIN`` is
    retried within ``budget_s``, then ``StoreUnavailableError``; with ``persist`` a transient
    error that certainly wrote nothing (unavailable, overloaded) is too, else it raises
    ``StoreUnavailableError`` at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    delay = 0.05
    while True:
        cause: BaseException | None = None
        try:
            rows = await attempt()
        except Exception as exc:
            cause = exc
            if not outcome_unknown(exc):
                if not (persist and transient(exc)):
                    raise unavailable_or(exc, operation) from exc
                row, verdict = None, Verdict.AGAIN  # certainly not applied
            else:
                logger.warning(
                    "%s of %r uncertain (%r); reading it back", operation, invocation_id, exc
                )
                row = await read_back(exc)
                verdict = judge(row)
        else:
            row = rows[0]
            if row["[applied]"]:
                return None
            verdict = judge(row)
        if verdict is Verdict.WON:
            return None
        if verdict is Verdict.LOST:
            return row
        if loop.time() + delay > deadline:
            raise unavailable(operation, cause or RuntimeError("not applied")) from cause
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
