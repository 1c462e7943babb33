"""A real stack with TLS and JWT authentication on Envoy's public listener: one server, real
images, through REST (HTTPS) and native gRPC (TLS). Credentials are made at test time
(``support.credentials``); no token reaches a server, and none is written to a log."""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.credentials import (
    AUDIENCE,
    DELETE_SCOPE,
    ISSUER,
    READ_SCOPE,
    SCOPE,
    TlsFiles,
    TokenIssuer,
    make_tls_files,
)
from support.http import RestClient, assert_status_json
from support.stacks import REPO_ROOT, stack_settings

from devstack.stack import LocalStack
from inference_client import Client
from inference_service.stores.cassandra import CassandraConfig

CLIENT = Path(sys.executable).with_name("inference-client")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("secure-tls"))


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> TokenIssuer:
    return TokenIssuer(tmp_path_factory.mktemp("secure-jwt"))


@pytest.fixture(scope="module")
def secure_stack(
    cassandra_endpoint: CassandraConfig,
    shared_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tls: TlsFiles,
    issuer: TokenIssuer,
) -> Iterator[LocalStack]:
    settings = stack_settings(
        cassandra_endpoint,
        shared_dir,
        tmp_path_factory.mktemp("secure-stack"),
        server_processes=1,
        envoy_tls_cert_file=tls.server_cert,
        envoy_tls_key_file=tls.server_key,
        envoy_jwt_jwks_file=issuer.jwks_file,
        envoy_jwt_issuer=ISSUER,
        envoy_jwt_audiences=[AUDIENCE],
        envoy_jwt_required_scope=SCOPE,
    )
    stack = LocalStack(settings, repo_root=REPO_ROOT, base_env=os.environ)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def https(secure_stack: LocalStack, tls: TlsFiles) -> RestClient:
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    return RestClient("127.0.0.1", secure_stack.envoy.listen_port, ssl_context=context)


@pytest.fixture
def tls_channel(secure_stack: LocalStack, tls: TlsFiles) -> Iterator[grpc.Channel]:
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca_pem())
    options = [("grpc.max_send_message_length", 32 * 1024 * 1024)]
    with grpc.secure_channel(secure_stack.grpc_target, credentials, options) as channel:
        yield channel


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_rest_over_https_with_a_token(
    secure_stack: LocalStack, https: RestClient, issuer: TokenIssuer, id_prefix: str, images_dir
) -> None:
    assert secure_stack.rest_url.startswith("https://")
    token = issuer.token()
    invocation_id = f"{id_prefix}-secure-rest"
    content = (images_dir / "face-6.jpg").read_bytes()
    payload = {"input": {"id": invocation_id, "content": base64.b64encode(content).decode()}}
    reply = https.post_json("/v1/invocations", payload, headers=bearer(token))
    assert reply.status == 200, reply.body[:500]
    assert reply.json()["invocation"]["state"] == "STATE_SUCCEEDED"
    reader = issuer.token(scope=f"{SCOPE} {READ_SCOPE}")
    reply = https.get(f"/v1/invocations/{invocation_id}", headers=bearer(reader))
    assert reply.status == 200, reply.body[:500]
    camera = https.get(f"/v1/invocations/{invocation_id}", headers=bearer(token))
    assert_status_json(camera, 403, grpc.StatusCode.PERMISSION_DENIED)
    assert base64.b64decode(reply.json()["invocation"]["input"]["content"]) == content

    missing = https.post_json("/v1/invocations", payload)
    assert_status_json(missing, 401, grpc.StatusCode.UNAUTHENTICATED)
    expired = https.get(
        f"/v1/invocations/{invocation_id}", headers=bearer(issuer.token(lifetime_s=-120))
    )
    assert_status_json(expired, 401, grpc.StatusCode.UNAUTHENTICATED)
    no_scope = https.get(
        f"/v1/invocations/{invocation_id}", headers=bearer(issuer.token(scope="x"))
    )
    assert_status_json(no_scope, 403, grpc.StatusCode.PERMISSION_DENIED)

    for log in (secure_stack.envoy.log_file, *(s.log_file for s in secure_stack.servers)):
        text = log.read_text(errors="replace")
        assert token not in text and token.split(".")[2] not in text, log


def test_grpc_over_tls_with_a_token(
    tls_channel: grpc.Channel, issuer: TokenIssuer, id_prefix: str, images_dir
) -> None:
    stub = pb_grpc.InferenceServiceStub(tls_channel)
    content = (images_dir / "face-8.jpg").read_bytes()
    request = pb.InvokeRequest(input=pb.ModelInput(id=f"{id_prefix}-secure-grpc", content=content))
    invocation = stub.Invoke(request, metadata=list(bearer(issuer.token()).items()), timeout=30)
    assert invocation.invocation.state == pb.Invocation.STATE_SUCCEEDED

    get = pb.GetInvocationRequest(id=f"{id_prefix}-secure-grpc")
    for metadata, code in [
        ([], grpc.StatusCode.UNAUTHENTICATED),
        (list(bearer("not.a.jwt").items()), grpc.StatusCode.UNAUTHENTICATED),
        (list(bearer(issuer.token(scope=None)).items()), grpc.StatusCode.PERMISSION_DENIED),
    ]:
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetInvocation(get, metadata=metadata, timeout=10)
        assert raised.value.code() == code


def test_the_library_over_tls_with_a_token(
    secure_stack: LocalStack, tls: TlsFiles, issuer: TokenIssuer, id_prefix: str, images_dir
) -> None:
    """``inference_client.Client`` with ``ca_file`` and ``token``: invoke (an id chosen by the
    client), get, render, list models, list and delete invocations."""
    token = issuer.token(scope=f"{SCOPE} {READ_SCOPE} {DELETE_SCOPE}")
    content = (images_dir / "face-2.jpg").read_bytes()
    with Client(secure_stack.grpc_target, ca_file=tls.ca_cert, token=token) as client:
        invoked = client.invoke(content, metadata={"case": f"{id_prefix}-lib"})
        assert invoked.state == pb.Invocation.STATE_SUCCEEDED
        assert uuid.UUID(invoked.id)
        stored = client.get(invoked.id, full=True)
        assert stored.input.content == content
        assert len(stored.output.detections) == len(invoked.output.detections) > 0
        png = client.render(invoked.id)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert any(model.is_default for model in client.list_models())
        listed = client.list_invocations(filter=f'metadata.case = "{id_prefix}-lib"', page_size=1)
        assert [invocation.id for invocation in listed] == [invoked.id]
        client.delete(invoked.id)
        with pytest.raises(grpc.RpcError) as raised:
            client.get(invoked.id)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    # Without the token, or without the CA, the same client is refused.
    with Client(secure_stack.grpc_target, ca_file=tls.ca_cert, retry_for=0) as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.get(invoked.id)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with Client(secure_stack.grpc_target, token=token, retry_for=0, timeout=5) as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.get(invoked.id)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port


def cli(stack: LocalStack, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "INFERENCE_TARGET": stack.grpc_target, "COLUMNS": "200", **env}
    return subprocess.run(
        [str(CLIENT), *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )


def test_the_cli_over_tls_with_a_token(
    secure_stack: LocalStack, tls: TlsFiles, issuer: TokenIssuer, id_prefix, images_dir, tmp_path
) -> None:
    """``inference-client --ca-file --token``: invoke (with --model and --json), get, render,
    list, delete against the TLS + JWT listener; refused without the token."""
    token = issuer.token(scope=f"{SCOPE} {READ_SCOPE} {DELETE_SCOPE}")
    secure = ("--ca-file", str(tls.ca_cert), "--token", token)
    shutil.copy(images_dir / "face-1.jpg", tmp_path / "face-1.jpg")
    prefix = f"{id_prefix}-secure-cli-"
    invoked = cli(
        secure_stack,
        "invoke", "face-1.jpg", "--id-prefix", prefix, "--model", "ultraface-slim-320", "--json",
        *secure, cwd=tmp_path,
    )  # fmt: skip
    assert invoked.returncode == 0, invoked.stdout + invoked.stderr
    (line,) = invoked.stdout.splitlines()
    outcome = json.loads(line)
    assert outcome["id"] == f"{prefix}face-1.jpg"
    assert outcome["state"] == "SUCCEEDED" and outcome["faces"] > 0

    got = cli(secure_stack, "get", outcome["id"], "--json", *secure, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["invocation"]["model"] == "ultraface-slim-320"
    rendered = cli(secure_stack, "render", outcome["id"], "-o", "out.png", *secure, cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")
    listed = cli(
        secure_stack,
        "list", "--filter", 'metadata.path = "face-1.jpg"', "--json",
        cwd=tmp_path, INFERENCE_CA_FILE=str(tls.ca_cert), INFERENCE_TOKEN=token,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert outcome["id"] in [json.loads(row)["id"] for row in listed.stdout.splitlines()]
    models = cli(secure_stack, "list-models", "--json", *secure, cwd=tmp_path)
    assert models.returncode == 0, models.stderr
    assert {"ultraface-rfb-320", "ultraface-slim-320"} <= {
        json.loads(row)["name"] for row in models.stdout.splitlines()
    }

    refused = cli(secure_stack, "get", outcome["id"], "--ca-file", str(tls.ca_cert), cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("error: UNAUTHENTICATED"), refused.stderr
    assert "Traceback" not in refused.stderr

    deleted = cli(secure_stack, "delete", outcome["id"], *secure, cwd=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert f"deleted {outcome['id']}" in deleted.stdout
