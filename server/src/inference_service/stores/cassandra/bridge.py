"""The asyncio bridge: a driver statement run with ``execute_async``, its result handed to the
event loop, which is never blocked.

The driver calls back on its own I/O threads; ``_to_loop`` settles the caller's future on its
loop with ``call_soon_threadsafe``. Connecting (blocking in the driver) runs in a worker thread
instead (``CassandraInvocationStore.connect``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from cassandra.cluster import EXEC_PROFILE_DEFAULT, ResponseFuture, Session
from cassandra.query import PreparedStatement

logger = logging.getLogger(__name__)


async def execute(
    session: Session,
    statement: PreparedStatement,
    params: Sequence[Any],
    *,
    profile: object = EXEC_PROFILE_DEFAULT,
) -> list[Any]:
    """Run one statement without blocking the loop; return its (single page of) rows."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[list[Any]] = loop.create_future()
    response: ResponseFuture = session.execute_async(statement, params, execution_profile=profile)
    response.add_callbacks(
        callback=_to_loop, callback_args=(loop, future, True),
        errback=_to_loop, errback_args=(loop, future, False),
    )  # fmt: skip
    return await future


def _to_loop(
    result: Any,
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    ok: bool,
) -> None:
    """Driver callback (an I/O thread): settle ``future`` on its own loop."""

    def settle() -> None:
        if future.done():  # cancelled by the caller meanwhile
            return
        if ok:
            future.set_result(result)
        else:
            future.set_exception(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody waits any more
        logger.debug("result for a closed event loop dropped")
