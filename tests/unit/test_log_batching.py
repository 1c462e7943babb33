"""BatchingStreamHandler: lines below WARNING are written in batches, within the interval;
WARNING and worse at once with what was pending; everything at close; order kept."""

from __future__ import annotations

import io
import logging
import time

from inference_service.logs import BatchingStreamHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test-batching-{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger


def test_info_lines_wait_then_go_out_in_one_write() -> None:
    stream = CountingStream()
    handler = BatchingStreamHandler(stream, interval_s=0.2)
    logger = _logger(handler)
    try:
        for number in range(5):
            logger.info("call %d", number)
        assert stream.getvalue() == ""  # not written yet
        deadline = time.monotonic() + 5
        while not stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stream.getvalue() == "".join(f"call {n}\n" for n in range(5))
        assert stream.writes == 1
    finally:
        handler.close()


def test_a_warning_is_written_at_once_after_the_pending_lines() -> None:
    stream = CountingStream()
    handler = BatchingStreamHandler(stream, interval_s=60)
    logger = _logger(handler)
    try:
        logger.info("first")
        logger.warning("second")
        assert stream.getvalue() == "first\nsecond\n"
        logger.info("third")
        assert stream.getvalue() == "first\nsecond\n"
    finally:
        handler.close()
    assert stream.getvalue() == "first\nsecond\nthird\n"  # close writes what is pending
