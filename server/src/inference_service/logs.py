"""Logging set-up for the entry points: plain text (the default) or one JSON object a line.

JSON lines carry ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``request_id``
(``-`` outside a call), the traceback as ``exception`` when there is one, and the ``fields`` a
caller passed with ``extra={"fields": {...}}`` as keys of their own (e.g. the line of each
call: ``method``, ``status``, ``latency_ms``, ``invocation_id``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading
from typing import Literal, TextIO

LogFormat = Literal["text", "json"]
# [request id]: Envoy's x-request-id of the call being served, "-" outside a call.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


# The Cassandra driver's errors of reaching a node: logged with their traceback by the driver,
# which says nothing its one-line message does not.
_DRIVER_CONNECTION_ERRORS = ("NoHostAvailable", "ConnectionException", "OperationTimedOut")


class DriverTracebackFilter(logging.Filter):
    """A Cassandra driver record of a failed connection (``OSError`` or the driver's own
    connection errors) keeps the error's type and message in one line, without the traceback:
    an unreachable store at start-up ends in one clear line (issue 21), not pages of
    tracebacks from the driver's threads."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("cassandra") or not record.exc_info:
            return True
        error = record.exc_info[1]
        if error is None or not (
            isinstance(error, OSError) or type(error).__name__ in _DRIVER_CONNECTION_ERRORS
        ):
            return True
        record.msg = f"{record.getMessage().rstrip(': ')}: {type(error).__name__}: {error}"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` that writes its lines in batches: a record below WARNING waits at
    most ``interval_s`` (a daemon thread writes what is pending that often), a WARNING or worse
    is written at once with every line before it, and so is everything at exit
    (``logging.shutdown`` flushes and closes the handlers). Lines keep their order.

    Under load, one ``write`` per line (what ``StreamHandler`` does on a line-buffered stderr)
    costs the event loop far more than formatting the line: the system call lets go of the GIL,
    and taking it back from the busy worker threads is the cost (issue 24: about 0.09 ms of the
    event loop's CPU per Invoke on a loaded machine, none measurable on a quieter one). A
    process killed outright (SIGKILL, out of memory) loses the lines of its last
    ``interval_s``."""

    def __init__(self, stream: TextIO, interval_s: float) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._stop = threading.Event()
        self._interval_s = interval_s
        self._writer = threading.Thread(target=self._write_periodically, name="log-writer")
        self._writer.daemon = True
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        # Called with the handler's lock held (Handler.handle).
        try:
            self._pending.append(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self._write_pending()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # set by Handler.__init__
            self._write_pending()

    def close(self) -> None:
        self._stop.set()
        self.flush()
        super().close()

    def _write_pending(self) -> None:
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self.stream.write(text)
        if hasattr(self.stream, "flush"):
            self.stream.flush()

    def _write_periodically(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.flush()
            except Exception:  # noqa: S112 - a closed stream at exit: nothing left to do
                continue


def configure_logging(
    level: str, log_format: LogFormat = "text", *, flush_interval_s: float = 0.0
) -> None:
    """Configure the root logger once, on stderr; every record carries the request id of the
    call being served (``inference_service.grpc.request_id``). ``flush_interval_s`` > 0: lines
    below WARNING are written in batches at most that much later (``BatchingStreamHandler``);
    0: each line at once."""
    from inference_service.grpc.request_id import RequestIdLogFilter

    handler = (
        BatchingStreamHandler(sys.stderr, flush_interval_s)
        if flush_interval_s > 0
        else logging.StreamHandler(sys.stderr)
    )
    handler.addFilter(RequestIdLogFilter())
    handler.addFilter(DriverTracebackFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
