"""Issue 21 item 3: an error message repeats at most 100 bytes of any client input, marked as
cut (``errors.quote``), wherever it quotes one: ids, metadata keys, filters, model names."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.fakes import FakeDetector, fake_decode

from inference_service.errors import (
    CUT_MARK,
    MAX_ECHO_BYTES,
    InferenceError,
    InvalidArgumentError,
    NotFoundError,
    quote,
)
from inference_service.images.validation import check_metadata, validate_id
from inference_service.limits import RequestLimits
from inference_service.listing import parse_filter
from inference_service.models.registry import LoadedModelRegistry
from inference_service.service import InferenceService
from inference_service.stores.memory import InMemoryInvocationStore

LONG = "x" * 3000


def test_quote_keeps_short_input_whole() -> None:
    assert quote("abc") == "'abc'"
    assert quote("y" * MAX_ECHO_BYTES) == repr("y" * MAX_ECHO_BYTES)


def test_quote_cuts_at_100_bytes_with_a_mark() -> None:
    shown = quote(LONG)
    assert shown == repr("x" * MAX_ECHO_BYTES) + CUT_MARK
    assert quote(b"\x00" * 500).endswith(CUT_MARK)


def test_quote_never_splits_a_character() -> None:
    shown = quote("é" * 80)  # 160 bytes; the 100th byte ends the 50th character
    assert shown == repr("é" * 50) + CUT_MARK
    assert quote("ab" + "é" * 80) == repr("ab" + "é" * 49) + CUT_MARK


def _message(error: BaseException) -> str:
    return str(error)


def _assert_cut(message: str) -> None:
    assert CUT_MARK in message
    assert "x" * (MAX_ECHO_BYTES + 1) not in message
    # At most two quotes of the input (a filter term, and its value).
    assert message.count("x") <= 2 * MAX_ECHO_BYTES


def test_invalid_id_is_cut() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        validate_id(LONG + "!")
    _assert_cut(_message(caught.value))


def test_metadata_key_and_value_errors_cut_the_key() -> None:
    limits = RequestLimits()
    with pytest.raises(InvalidArgumentError) as caught:
        check_metadata({LONG: "v"}, limits)
    _assert_cut(_message(caught.value))
    key = "x" * 128  # a valid key, longer than the echo cap
    with pytest.raises(InvalidArgumentError) as caught:
        check_metadata({key: "v" * 2000}, limits)
    _assert_cut(_message(caught.value))


@pytest.mark.parametrize(
    "text",
    [
        "state = " + LONG,
        'create_time >= "' + LONG + '"',
        "state = SUCCEEDED " + LONG,
    ],
)
def test_filter_errors_cut_the_filter(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        parse_filter(text)
    _assert_cut(_message(caught.value))


def test_unknown_model_name_is_cut() -> None:
    registry = LoadedModelRegistry.single(FakeDetector())
    with pytest.raises(NotFoundError) as caught:
        registry.acquire("x" * 128)
    _assert_cut(_message(caught.value))


def test_unknown_invocation_id_is_cut() -> None:
    async def main() -> InferenceError:
        with ThreadPoolExecutor(1) as pool:
            service = InferenceService(
                store=InMemoryInvocationStore(),
                detector=FakeDetector(),
                decode=fake_decode,
                executor=pool,
            )
            try:
                await service.get_invocation("x" * 128)
            except InferenceError as error:
                return error
        raise AssertionError("no error")

    error = asyncio.run(main())
    assert isinstance(error, NotFoundError)
    _assert_cut(_message(error))


def test_the_edge_quotes_with_the_same_cap_and_mark() -> None:
    """Envoy's quote of a refused query (envoy/envoy.yaml) and the strict JSON filter's of a
    key use the server's cap and mark (before: Envoy cut at 100 bytes without a mark)."""
    from pathlib import Path

    from inference_service.edge import strict_json

    template = (Path(__file__).resolve().parents[2] / "envoy/envoy.yaml").read_text()
    assert f"PATH):{MAX_ECHO_BYTES}%{CUT_MARK}" in template
    assert f"{MAX_ECHO_BYTES}) .. {CUT_MARK!r}".replace("'", '"') in strict_json.lua_source()
