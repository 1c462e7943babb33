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
