"""Settings: the limits of issue 10 and how they must relate."""

from __future__ import annotations

import pydantic
import pytest

from inference_service.settings import Settings


def test_the_budget_must_hold_the_largest_image() -> None:
    with pytest.raises(pydantic.ValidationError, match="could never be decoded"):
        Settings(max_decoded_bytes=2048, image_memory_budget_bytes=1024)
    assert Settings(max_decoded_bytes=1024, image_memory_budget_bytes=1024).max_decoded_bytes


def test_defaults_let_admission_answer_before_grpc_limits_calls() -> None:
    defaults = Settings.model_construct()
    assert defaults.max_decoded_bytes <= defaults.image_memory_budget_bytes
    # gRPC's own limit would answer RESOURCE_EXHAUSTED (413 through Envoy) and fail health
    # checks under load: off by default.
    assert defaults.max_concurrent_rpcs is None


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_MAX_DECODED_BYTES", "1000")
    monkeypatch.setenv("INFERENCE_IMAGE_MEMORY_BUDGET_BYTES", "5000")
    monkeypatch.setenv("INFERENCE_WORK_QUEUE_SIZE", "3")
    monkeypatch.setenv("INFERENCE_ADMISSION_WAIT_S", "0.5")
    monkeypatch.setenv("INFERENCE_MAX_CONCURRENT_RPCS", "7")
    settings = Settings()
    assert (settings.max_decoded_bytes, settings.image_memory_budget_bytes) == (1000, 5000)
    assert (settings.work_queue_size, settings.admission_wait_s) == (3, 0.5)
    assert settings.max_concurrent_rpcs == 7


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("forever", 0),
        ("0", 0),
        ("30d", 30 * 86400),
        ("12h", 43200),
        ("90m", 5400),
        ("45s", 45),
        ("2w", 14 * 86400),
        ("3600", 3600),
        (" 7d ", 7 * 86400),
    ],
)
def test_retention_is_a_duration(text: str, seconds: int) -> None:
    settings = Settings(retention=text)
    assert settings.retention_s == seconds
    assert settings.cassandra_default_ttl_s == seconds  # the TTL of every table


@pytest.mark.parametrize("text", ["30 days", "-1d", "1y", "d", "10000000000s"])
def test_a_bad_retention_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="retention"):
        Settings(retention=text)


def test_retention_and_the_ttl_setting_must_agree() -> None:
    assert Settings(retention="60s", cassandra_default_ttl_s=60).cassandra_default_ttl_s == 60
    with pytest.raises(ValueError, match="disagree"):
        Settings(retention="60s", cassandra_default_ttl_s=30)


def test_page_token_secrets_are_comma_separated_and_long_enough(monkeypatch) -> None:
    monkeypatch.setenv(
        "INFERENCE_LIST_PAGE_TOKEN_SECRETS", "new-secret-0123456789, old-secret-0123456789"
    )
    secrets = Settings().list_page_token_secrets
    assert [s.get_secret_value() for s in secrets] == [
        "new-secret-0123456789",
        "old-secret-0123456789",
    ]
    assert "new-secret" not in repr(Settings())
    monkeypatch.setenv("INFERENCE_LIST_PAGE_TOKEN_SECRETS", "short")
    with pytest.raises(ValueError, match="at least 16"):
        Settings()
