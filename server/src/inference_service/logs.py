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
from typing import Literal

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


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Configure the root logger once, on stderr; every record carries the request id of the
    call being served (``inference_service.grpc.request_id``)."""
    from inference_service.grpc.request_id import RequestIdLogFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdLogFilter())
    handler.addFilter(DriverTracebackFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
