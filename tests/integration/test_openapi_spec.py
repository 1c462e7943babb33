"""The committed OpenAPI description (api/openapi/) is what the protos generate now, and says
what the REST API through Envoy does: field names as the transcoder prints them, the id pattern,
the error responses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC = REPO_ROOT / "api/openapi/inference/v1/inference_service.swagger.json"
PLUGIN = REPO_ROOT / "build/bin/protoc-gen-openapiv2"
BUF = REPO_ROOT / "node_modules/.bin/buf"


def test_committed_spec_is_up_to_date(tmp_path: Path) -> None:
    if not PLUGIN.is_file() or not BUF.is_file():
        pytest.fail("protoc-gen-openapiv2 or buf missing: run `make setup`")
    subprocess.run(
        [str(BUF), "generate", "--template", "buf.gen.openapi.yaml", "-o", str(tmp_path)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh = tmp_path / SPEC.relative_to(REPO_ROOT)
    # As `make openapi`: the raw upload body described as binary.
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools/openapi_raw_bodies.py"), str(fresh)], check=True
    )
    assert fresh.read_text() == SPEC.read_text(), (
        f"{SPEC.relative_to(REPO_ROOT)} is stale: run `make openapi` and commit it"
    )


def test_spec_documents_routes_errors_and_names() -> None:
    spec = json.loads(SPEC.read_text())
    assert spec["swagger"] == "2.0"
    paths = spec["paths"]
    assert set(paths) == {
        "/v1/invocations",
        "/v1/invocations/{id}",
        "/v1/invocations/{id}:render",
        "/v1/invocations:upload",
        "/v1/models",
        "/v1/models/{name}",
    }
    # The raw upload (issue 21 item 5): the body is the file itself, the rest query parameters.
    upload = paths["/v1/invocations:upload"]["post"]
    (body,) = [p for p in upload["parameters"] if p["in"] == "body"]
    assert body["schema"] == {"type": "string", "format": "binary"}
    assert "application/octet-stream" in upload["consumes"]
    assert {p["name"] for p in upload["parameters"] if p["in"] == "query"} == {
        "id",
        "model",
        "view",
        "metadata",
    }
    # Every operation: the edge's answers (issue 21 item 8).
    edge = {"401", "403", "408", "503", "504"}
    assert set(upload["responses"]) == {"200", "400", "404", "409", "413", "415", "500"} | edge
    assert set(paths["/v1/models"]["get"]["responses"]) == {"200"} | edge
    assert set(paths["/v1/models/{name}"]["get"]["responses"]) == {"200", "404"} | edge
    invoke = paths["/v1/invocations"]["post"]
    assert set(invoke["responses"]) == {"200", "400", "404", "409", "413", "500"} | edge
    for path, method in (("/v1/invocations/{id}", "get"), ("/v1/invocations/{id}:render", "get")):
        operation = paths[path][method]
        assert set(operation["responses"]) == {"200", "400", "404"} | edge
        (id_param,) = [p for p in operation["parameters"] if p["name"] == "id"]
        assert id_param["pattern"] == "^[A-Za-z0-9._~-]{1,128}$"
    for operation in (invoke, paths["/v1/invocations/{id}"]["get"]):
        for code, response in operation["responses"].items():
            if code != "200":
                assert response["schema"] == {"$ref": "#/definitions/rpcStatus"}
    bearer = spec["securityDefinitions"]["BearerJWT"]
    assert (bearer["type"], bearer["in"], bearer["name"]) == ("apiKey", "header", "Authorization")
    status = spec["definitions"]["rpcStatus"]["properties"]
    assert set(status) == {"code", "message", "details"}
    render = paths["/v1/invocations/{id}:render"]["get"]
    assert render["produces"][0] == "image/png"
    assert render["responses"]["200"]["schema"] == {"type": "string", "format": "binary"}
    # Proto field names, as Envoy prints them (preserve_proto_field_names).
    invocation = spec["definitions"]["v1Invocation"]["properties"]
    assert {"model_version", "create_time", "complete_time", "content_sha256"} <= set(invocation)
