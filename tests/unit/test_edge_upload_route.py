"""The edge's rendering of the raw upload route (issue 21 item 5): its own body limit (the
content limit, not the JSON one), and the reverse Content-Type guard (JSON, text, multipart ->
415; image types, octet-stream, curl's default pass)."""

from __future__ import annotations

import re

import yaml

from inference_service.edge.config import TEMPLATE_PATH, render_config
from inference_service.edge.guards import NOT_RAW_CONTENT_TYPE, content_type_guards
from inference_service.limits import RequestLimits

REPO_TEMPLATE = TEMPLATE_PATH


def _upload_guards() -> list[dict]:
    return [
        route
        for route in content_type_guards()
        if "upload" in route["match"]["safe_regex"]["regex"]
    ]


def test_the_upload_route_refuses_json_text_and_multipart_only() -> None:
    guards = _upload_guards()
    assert len(guards) == 1
    assert guards[0]["direct_response"]["status"] == 415
    refused = re.compile(NOT_RAW_CONTENT_TYPE)
    for content_type in (
        "application/json",
        "Application/JSON; charset=utf-8",
        "application/problem+json",
        "text/plain",
        "multipart/form-data; boundary=x",
    ):
        assert refused.fullmatch(content_type), content_type
    for content_type in (
        "image/jpeg",
        "image/png",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
    ):
        assert not refused.fullmatch(content_type), content_type


def test_the_json_routes_keep_their_json_guard() -> None:
    others = [r for r in content_type_guards() if "upload" not in r["match"]["safe_regex"]["regex"]]
    assert others and all("JSON" in r["direct_response"]["body"]["inline_string"] for r in others)


def test_the_upload_route_body_limit_is_the_content_limit(tmp_path) -> None:
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    limits = RequestLimits(max_content_bytes=1234567)
    text = render_config(
        (repo / REPO_TEMPLATE).read_text(), descriptor=tmp_path / "d.binpb", limits=limits
    )
    config = yaml.safe_load(text)
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    (upload,) = [r for r in routes if r["match"].get("path") == "/v1/invocations:upload"]
    buffer = upload["typed_per_filter_config"]["envoy.filters.http.buffer"]
    assert buffer["buffer"]["max_request_bytes"] == 1234567
    assert "strict_json" not in upload["typed_per_filter_config"]
    (invoke,) = [
        r
        for r in routes
        if r["match"].get("path") == "/v1/invocations"
        and r["match"]["headers"][0]["string_match"]["exact"] == "POST"
    ]
    assert "strict_json" in invoke["typed_per_filter_config"]
    assert limits.rest_request_body_bytes > 1234567 * 4 // 3
