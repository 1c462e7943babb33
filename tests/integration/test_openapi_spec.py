"""The committed OpenAPI description (api/openapi/) is what the protos generate now, and says
what the REST API through Envoy does: field names as the transcoder prints them, the id pattern,
the error responses, and examples that are valid for their schemas."""

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
    assert render["produces"][:2] == ["image/png", "image/jpeg"]  # format=RENDER_FORMAT_JPEG
    assert render["responses"]["200"]["schema"] == {"type": "string", "format": "binary"}
    # Proto field names, as Envoy prints them (preserve_proto_field_names).
    invocation = spec["definitions"]["v1Invocation"]["properties"]
    assert {"model_version", "create_time", "complete_time", "content_sha256"} <= set(invocation)


# The examples (issue 21 item 8): every request body and every JSON response has one, and each
# is valid against its schema (strictly: no property the schema lacks) and is what the
# transcoder would print or parse for that message (proto field names, enum names, base64
# bytes, RFC 3339 timestamps).

# Which proto message each definition of the spec is (the rest are enums or google.api.HttpBody).
MESSAGES = {
    "rpcStatus": "google.rpc.Status",
    **{
        f"v1{name}": f"inference.v1.{name}"
        for name in (
            "InvokeRequest",
            "InvokeResponse",
            "GetInvocationResponse",
            "ListInvocationsResponse",
            "ListModelsResponse",
            "GetModelResponse",
            "Invocation",
            "Model",
        )
    },
}


def _strict(schema: object) -> object:
    """The schema with ``additionalProperties: false`` on every object that lists its
    properties and says nothing else (protoc-gen-openapiv2 leaves them open; a misspelt field in
    an example would pass an open schema)."""
    if isinstance(schema, dict):
        strict = {key: _strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            strict["additionalProperties"] = False
        return strict
    if isinstance(schema, list):
        return [_strict(value) for value in schema]
    return schema


def _format_checker():
    """Swagger's formats that the examples use: base64 bytes, RFC 3339 times, int64 strings."""
    import base64
    import binascii
    from datetime import datetime

    import jsonschema

    checker = jsonschema.FormatChecker()

    @checker.checks("byte", raises=(binascii.Error, ValueError))
    def is_base64(value: object) -> bool:
        if isinstance(value, str):
            base64.b64decode(value, validate=True)
        return True

    @checker.checks("date-time", raises=ValueError)
    def is_rfc3339(value: object) -> bool:
        if isinstance(value, str):
            if not (value.endswith("Z") or value[-6] in "+-"):
                raise ValueError(f"{value!r} has no offset")
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True

    @checker.checks("int64", raises=ValueError)
    def is_int64(value: object) -> bool:
        if isinstance(value, str):
            int(value)
        return True

    return checker


def _examples(spec: dict) -> list[tuple[str, dict, object]]:
    """(where, schema, example) for every example in the spec: definitions and their
    properties, and every response's ``examples``."""
    found = []
    for name, definition in spec["definitions"].items():
        if "example" in definition:
            found.append((f"definitions.{name}", definition, definition["example"]))
        for field, schema in definition.get("properties", {}).items():
            if "example" in schema:
                found.append((f"definitions.{name}.{field}", schema, schema["example"]))
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                for mime, example in response.get("examples", {}).items():
                    assert mime == "application/json", (path, method, code, mime)
                    found.append((f"{method} {path} {code}", response["schema"], example))
    return found


def test_every_request_body_and_json_response_has_an_example() -> None:
    spec = json.loads(SPEC.read_text())
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "body":
                    if parameter["schema"].get("format") == "binary":  # the raw upload's image
                        continue
                    ref = parameter["schema"]["$ref"].rsplit("/", 1)[-1]
                    assert "example" in spec["definitions"][ref], (method, path, ref)
            for code, response in operation["responses"].items():
                if response["schema"].get("format") == "binary":  # the rendered picture
                    continue
                assert "application/json" in response.get("examples", {}), (method, path, code)


def test_every_example_is_valid_against_its_schema() -> None:
    import jsonschema
    from google.protobuf import json_format, symbol_database
    from google.rpc import status_pb2  # noqa: F401 (registers google.rpc.Status)
    from inference.v1 import inference_service_pb2  # noqa: F401 (registers the API's messages)

    spec = json.loads(SPEC.read_text())
    definitions = _strict(spec["definitions"])
    checker = _format_checker()
    examples = _examples(spec)
    # The Invoke body, an answer per operation but the picture (6), the errors: dozens.
    assert len(examples) >= 30, [where for where, _, _ in examples]
    database = symbol_database.Default()
    for where, schema, example in examples:
        validator = jsonschema.Draft4Validator(
            {**_strict(schema), "definitions": definitions}, format_checker=checker
        )
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(example)]
        assert not errors, f"{where}: {errors}"
        ref = schema.get("$ref", "").rsplit("/", 1)[-1]
        if ref in MESSAGES:  # what the transcoder parses and prints: nothing unknown, lossless
            message = database.GetSymbol(MESSAGES[ref])()
            json_format.ParseDict(example, message)
            printed = json_format.MessageToDict(
                message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            assert _floats_close(printed, example), f"{where}: prints as {printed}"


def _floats_close(printed: object, example: object) -> bool:
    """``printed`` (a message printed back) says what ``example`` says: the same keys with
    the same values, floats to float32 precision (box coordinates and scores are floats)."""
    if isinstance(example, dict):
        return isinstance(printed, dict) and all(
            key in printed and _floats_close(printed[key], value) for key, value in example.items()
        )
    if isinstance(example, list):
        return (
            isinstance(printed, list)
            and len(printed) == len(example)
            and all(_floats_close(p, e) for p, e in zip(printed, example, strict=True))
        )
    if isinstance(example, float) and not isinstance(example, bool):
        return isinstance(printed, int | float) and abs(printed - example) <= 1e-4 * max(
            1, abs(example)
        )
    return printed == example
