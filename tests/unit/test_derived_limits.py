"""The size limits derived from the content and metadata limits (``inference_service.limits``),
and how they reach Envoy's rendered config.

Each derived limit is checked against the real encoding of the largest valid request and
response: protobuf sizes from the generated messages, JSON as Python's ``json`` writes a request
and as ``json_format`` prints an invocation with the transcoder's print options.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from inference.v1 import inference_service_pb2 as pb

from inference_service.edge.config import EnvoyError, render_config
from inference_service.limits import (
    MAX_DETECTIONS,
    MAX_ID_CHARS,
    MAX_METADATA_KEY_BYTES,
    MAX_METADATA_VALUE_BYTES,
    RequestLimits,
    base64_length,
)
from inference_service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
# A float that prints as long as any float32 does.
LONGEST_FLOAT = -1.17549435e-38


def largest_metadata(entries: int) -> dict[str, str]:
    """``entries`` keys and values of the largest size, of a control character that JSON
    writes as ``\\u0001``: six bytes of JSON for each byte."""
    return {
        f"{index:04d}".ljust(MAX_METADATA_KEY_BYTES, "\x01"): "\x01" * MAX_METADATA_VALUE_BYTES
        for index in range(entries)
    }


def largest_input(limits: RequestLimits) -> pb.ModelInput:
    return pb.ModelInput(
        id="x" * MAX_ID_CHARS,
        content=b"\xff" * limits.max_content_bytes,
        metadata=largest_metadata(limits.max_metadata_entries),
    )


def largest_invocation(limits: RequestLimits) -> pb.Invocation:
    model_input = largest_input(limits)
    detection = pb.Detection(
        box=pb.BoundingBox(
            x_min=LONGEST_FLOAT, y_min=LONGEST_FLOAT, x_max=LONGEST_FLOAT, y_max=LONGEST_FLOAT
        ),
        score=LONGEST_FLOAT,
        label="face",
    )
    invocation = pb.Invocation(
        id=model_input.id,
        input=model_input,
        output=pb.ModelOutput(
            detections=[detection] * MAX_DETECTIONS, image_width=2**31 - 1, image_height=2**31 - 1
        ),
        state=pb.Invocation.STATE_SUCCEEDED,
        model="m" * 64,  # the longest model name
        model_version="f" * 64,
        error="the model failed on this input",
        content_sha256="f" * 64,
    )
    invocation.create_time.FromJsonString("9999-12-31T23:59:59.999999999Z")
    invocation.complete_time.FromJsonString("9999-12-31T23:59:59.999999999Z")
    return invocation


def request_json(model_input: pb.ModelInput) -> bytes:
    """A REST Invoke body as a Python client writes it (every non-ASCII byte escaped)."""
    body = {
        "input": {
            "id": model_input.id,
            "content": base64.b64encode(model_input.content).decode(),
            "metadata": dict(model_input.metadata),
        },
        "model": "m" * 64,  # the longest model name
    }
    return json.dumps(body).encode()


def response_json(invocation: pb.Invocation) -> bytes:
    """The invocation printed as the transcoder prints it (proto names, defaults printed)."""
    printed = json_format.MessageToDict(
        pb.InvokeResponse(invocation=invocation),
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return json.dumps(printed, separators=(",", ":")).encode()


LIMITS = [
    RequestLimits(),
    RequestLimits(max_content_bytes=1, max_metadata_entries=0),
    RequestLimits(max_content_bytes=3 * MiB + 1, max_metadata_entries=200),
]


@pytest.mark.parametrize("limits", LIMITS, ids=["defaults", "smallest", "other"])
def test_each_limit_holds_the_largest_valid_message(limits: RequestLimits) -> None:
    model_input = largest_input(limits)
    invocation = largest_invocation(limits)
    request = pb.InvokeRequest(input=model_input, model="m" * 64)
    responses = [
        pb.InvokeResponse(invocation=invocation),
        pb.GetInvocationResponse(invocation=invocation),
    ]
    assert request.ByteSize() <= limits.grpc_message_bytes
    assert all(response.ByteSize() <= limits.grpc_message_bytes for response in responses)
    assert len(request_json(model_input)) <= limits.rest_request_body_bytes
    assert len(response_json(invocation)) <= limits.rest_response_body_bytes
    # The transcoder holds the gRPC response against the response limit too.
    assert limits.grpc_message_bytes <= limits.rest_response_body_bytes


def test_the_default_limits_fit_8_mib_of_content_with_headroom() -> None:
    limits = RequestLimits()
    assert limits.max_content_bytes == 8 * MiB
    assert 9 * MiB <= limits.grpc_message_bytes <= 10 * MiB
    # 8 MiB in base64 is 10.67 MiB; plus the largest metadata, escaped, and 1 MiB of headroom.
    assert base64_length(8 * MiB) == 11_184_812
    assert 12 * MiB <= limits.rest_request_body_bytes <= 13 * MiB
    assert 12 * MiB <= limits.rest_response_body_bytes <= 13 * MiB


@pytest.mark.parametrize(
    "raised",
    [
        {"max_content_bytes": 16 * MiB},
        {"max_content_bytes": 8 * MiB + 3},  # +1 may not change the base64 length; +3 does
        {"max_metadata_entries": 65},
    ],
    ids=["content-16MiB", "content+3", "metadata-entries+1"],
)
def test_raising_a_limit_raises_every_derived_limit(raised: dict[str, int]) -> None:
    before = RequestLimits()
    after = dataclasses.replace(before, **raised)
    added_content = after.max_content_bytes - before.max_content_bytes
    assert after.grpc_message_bytes - before.grpc_message_bytes >= added_content
    assert after.rest_request_body_bytes > before.rest_request_body_bytes
    assert after.rest_response_body_bytes > before.rest_response_body_bytes
    added_base64 = base64_length(after.max_content_bytes) - base64_length(before.max_content_bytes)
    assert after.rest_request_body_bytes - before.rest_request_body_bytes >= added_base64
    assert after.rest_response_body_bytes - before.rest_response_body_bytes >= added_base64


def test_limits_come_from_the_settings() -> None:
    settings = Settings(max_content_bytes=123_456, max_image_pixels=789, max_metadata_entries=5)
    assert RequestLimits.from_settings(settings) == RequestLimits(
        max_content_bytes=123_456, max_image_pixels=789, max_metadata_entries=5
    )
    assert RequestLimits.from_settings(Settings()) == RequestLimits()


def test_settings_from_the_environment_reach_the_limits(monkeypatch) -> None:
    monkeypatch.setenv("INFERENCE_MAX_CONTENT_BYTES", str(16 * MiB))
    monkeypatch.setenv("INFERENCE_MAX_METADATA_ENTRIES", "8")
    limits = RequestLimits.from_settings(Settings())
    assert (limits.max_content_bytes, limits.max_metadata_entries) == (16 * MiB, 8)


def _http_filters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The HTTP filters of the public listener (the internal one buffers nothing)."""
    (listener,) = [
        entry for entry in config["static_resources"]["listeners"] if entry["name"] == "public"
    ]
    ((manager,),) = [chain["filters"] for chain in listener["filter_chains"]]
    filters = manager["typed_config"]["http_filters"]
    return {entry["name"]: entry.get("typed_config", {}) for entry in filters}


def render(limits: RequestLimits | None) -> dict[str, Any]:
    template = (REPO / "envoy" / "envoy.yaml").read_text()
    return yaml.safe_load(render_config(template, descriptor=Path("d.binpb"), limits=limits))


@pytest.mark.parametrize(
    "limits",
    [RequestLimits(), RequestLimits(max_content_bytes=32 * MiB, max_metadata_entries=10)],
    ids=["defaults", "raised"],
)
def test_rendered_envoy_config_takes_its_body_limits_from_the_limits(
    limits: RequestLimits,
) -> None:
    filters = _http_filters(render(limits))
    assert filters["envoy.filters.http.buffer"]["max_request_bytes"] == (
        limits.rest_request_body_bytes
    )
    transcoder = filters["envoy.filters.http.grpc_json_transcoder"]
    assert transcoder["max_request_body_size"] == limits.rest_request_body_bytes
    assert transcoder["max_response_body_size"] == limits.rest_response_body_bytes


def test_rendered_envoy_config_defaults_to_the_default_limits() -> None:
    assert render(None) == render(RequestLimits())


def test_render_refuses_limits_envoy_cannot_hold() -> None:
    template = (REPO / "envoy" / "envoy.yaml").read_text()
    with pytest.raises(EnvoyError, match="REST request body"):
        render_config(
            template, descriptor=Path("d.binpb"), limits=RequestLimits(max_content_bytes=2**32)
        )


def test_render_command_takes_the_limits_from_the_servers_settings(monkeypatch, tmp_path) -> None:
    """`python -m inference_service.edge render` (compose.yaml's `envoy-config`) reads
    INFERENCE_MAX_CONTENT_BYTES and INFERENCE_MAX_METADATA_ENTRIES as the server does."""
    from inference_service.edge.__main__ import main

    monkeypatch.setenv("INFERENCE_MAX_CONTENT_BYTES", str(20 * MiB))
    monkeypatch.setenv("INFERENCE_MAX_METADATA_ENTRIES", "3")
    out = tmp_path / "envoy.yaml"
    template = REPO / "envoy" / "envoy.yaml"
    assert main(["render", "--template", str(template), "--out", str(out)]) == 0
    limits = RequestLimits(max_content_bytes=20 * MiB, max_metadata_entries=3)
    transcoder = _http_filters(yaml.safe_load(out.read_text()))[
        "envoy.filters.http.grpc_json_transcoder"
    ]
    assert transcoder["max_request_body_size"] == limits.rest_request_body_bytes
    assert transcoder["max_response_body_size"] == limits.rest_response_body_bytes


def test_api_docs_state_the_default_derived_limits() -> None:
    readme = (REPO / "docs" / "api.md").read_text()
    limits = RequestLimits()
    for size in (
        limits.grpc_message_bytes,
        limits.rest_request_body_bytes,
        limits.rest_response_body_bytes,
    ):
        assert f"{size:,} bytes" in readme, size
