"""schemathesis against the live stack through Envoy, driven by the committed OpenAPI description:
every response has a documented status, content type and body, and no 5xx but a documented 503.
Bounded: a fixed number of derandomized cases per operation. Every operation is covered, the
listing and the delete included (positive cases delete random, well-formed ids: none that
another test stored, whose ids carry the run's prefix)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support.http import RestClient

SPEC = (
    Path(__file__).resolve().parents[2] / "api/openapi/inference/v1/inference_service.swagger.json"
)
CASES_PER_OPERATION = 25
# schemathesis's own strategies use `random` (its concern, not this test's).
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")


def no_server_error_but_503(ctx, response, case) -> None:
    """A 5xx is a bug, except 503 (documented: the store or every server is unavailable)."""
    if response.status_code >= 500 and response.status_code != 503:
        raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")


@pytest.fixture(scope="module")
def rest_schema(e2e_stack):
    schema = schemathesis.openapi.from_path(str(SPEC))
    schema.config.update(base_url=e2e_stack.rest_url)
    return schema


def operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.fixture(scope="module")
def stored_id(e2e_stack, images_dir, id_prefix) -> str:
    """An invocation that exists, so that reads of it (200, JSON or PNG) are checked too."""
    invocation_id = f"{id_prefix}-openapi"
    content = base64.b64encode((images_dir / "face-2.jpg").read_bytes()).decode()
    reply = RestClient(e2e_stack.envoy.listen_host, e2e_stack.envoy.listen_port).post_json(
        "/v1/invocations", {"input": {"id": invocation_id, "content": content}}
    )
    assert reply.status == 200, reply.body[:300]
    return invocation_id


@pytest.mark.parametrize("kind", ["positive", "negative", "stored id"])
def test_rest_api_conforms_to_its_openapi_description(rest_schema, e2e_stack, stored_id, kind):
    found = operations(rest_schema)
    # Invoke, UploadInvocation, GetInvocation, RenderInvocation, ListInvocations,
    # DeleteInvocation, ListModels, GetModel
    assert len(found) == 8, [f"{op.method} {op.path}" for op in found]
    if kind != "positive":  # the models' reads have no body or id to get wrong
        found = [op for op in found if op.path.startswith("/v1/invocations")]
    if kind == "stored id":  # the reads (not the delete), of an id that exists
        found = [op for op in found if op.method.upper() == "GET" and "{id}" in op.path]
    mode = GenerationMode.NEGATIVE if kind == "negative" else GenerationMode.POSITIVE
    path_parameters = {"id": stored_id} if kind == "stored id" else None
    statuses: list[int] = []
    for operation in found:

        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
        @settings(
            max_examples=CASES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def conforms(case):
            response = case.call(base_url=e2e_stack.rest_url, timeout=60)
            statuses.append(response.status_code)
            case.validate_response(
                response,
                checks=[
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                    no_server_error_but_503,
                ],
            )

        conforms()
    # With a fixed id the reads have few distinct cases (hypothesis stops when all are tried).
    assert len(statuses) >= len(found) * (1 if kind == "stored id" else 5), statuses
    expected = 200 if kind == "stored id" else 400
    assert expected in statuses, sorted(set(statuses))
