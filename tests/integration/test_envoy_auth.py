"""TLS and JWT authentication on Envoy's public listener, through REST and native gRPC.

Every credential is made here, at test time (``support.credentials``): a CA and a server
certificate for the listener, an RSA key whose JWKS file Envoy reads, and tokens signed by it
(or by a stranger's key). The upstream is the fake service, which records what reaches it.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
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
from support.envoy_upstream import FakeInferenceService, rest_client, running_envoy, serve_fake
from support.http import RestClient, assert_status_json

from devstack.envoy import LocalEnvoy
from inference_service.edge.__main__ import main as envoy_main
from inference_service.edge.config import EnvoySettings, render_config


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeInferenceService, int]]:
    with serve_fake() as served:
        yield served


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def issuer(tmp_path_factory) -> TokenIssuer:
    return TokenIssuer(tmp_path_factory.mktemp("jwt"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory, issuer) -> TokenIssuer:
    """Same issuer name and key id, another key: its tokens must not verify."""
    return TokenIssuer(tmp_path_factory.mktemp("jwt-stranger"), key_id=issuer.key_id)


def secure_settings(tls: TlsFiles, issuer: TokenIssuer) -> EnvoySettings:
    return EnvoySettings(
        envoy_tls_cert_file=tls.server_cert,
        envoy_tls_key_file=tls.server_key,
        envoy_jwt_jwks_file=issuer.jwks_file,
        envoy_jwt_issuer=ISSUER,
        envoy_jwt_audiences=[AUDIENCE],
        envoy_jwt_required_scope=SCOPE,
    )


@pytest.fixture(scope="module")
def envoy(fake, tls, issuer, tmp_path_factory) -> Iterator[LocalEnvoy]:
    build = tmp_path_factory.mktemp("envoy-secure")
    yield from running_envoy(build, [fake[1]], settings=secure_settings(tls, issuer))


@pytest.fixture(scope="module")
def ssl_context(tls) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    return context


@pytest.fixture(scope="module")
def api(envoy, ssl_context) -> RestClient:
    return rest_client(envoy, ssl_context=ssl_context)


@pytest.fixture
def secure_channel(envoy, tls) -> Iterator[grpc.Channel]:
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca_pem())
    with grpc.secure_channel(envoy.grpc_target, credentials) as channel:
        yield channel


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def invoke_body(invocation_id: str) -> dict:
    return {"input": {"id": invocation_id, "content": "AA=="}}


def test_url_is_https(envoy):
    assert envoy.url.startswith("https://")


def test_a_valid_token_with_the_scope_is_served_over_https_and_never_reaches_the_server(
    api, fake, issuer
):
    token = issuer.token()
    reply = api.post_json("/v1/invocations", invoke_body("tls-jwt-ok"), headers=bearer(token))
    assert reply.status == 200, reply.body
    assert reply.json()["invocation"]["id"] == "tls-jwt-ok"
    received = fake[0].metadata[-1]
    assert "authorization" not in received
    assert received["x-forwarded-proto"] == "https"
    reader = issuer.token(scope=f"{SCOPE} {READ_SCOPE}")
    reply = api.get("/v1/invocations/tls-jwt-ok", headers=bearer(reader))
    assert reply.status == 200, reply.body


def test_reading_and_erasing_need_scopes_of_their_own(api, fake, issuer, secure_channel):
    """A camera's token (the required scope only) may invoke, but neither read, list nor
    delete: 403 / PERMISSION_DENIED; a reader's token reads but does not delete; an eraser's
    deletes. The servers get the caller's subject (for the audit line of a delete)."""
    camera = bearer(issuer.token(scope=SCOPE))
    reader = bearer(issuer.token(scope=f"{SCOPE} {READ_SCOPE}"))
    eraser = bearer(issuer.token(scope=f"{SCOPE} {DELETE_SCOPE}", sub="dpo@example.test"))
    assert api.post_json("/v1/invocations", invoke_body("cam-1"), headers=camera).status == 200
    reads = ["/v1/invocations/cam-1", "/v1/invocations/cam-1:render", "/v1/invocations"]
    reads.append("/v1/invocations?page_size=3&filter=state%20%3D%20FAILED")
    before = len(fake[0].requests)
    for path in reads:
        assert_status_json(api.get(path, headers=camera), 403, grpc.StatusCode.PERMISSION_DENIED)
        assert_status_json(api.get(path, headers=eraser), 403, grpc.StatusCode.PERMISSION_DENIED)
    for headers in (camera, reader):
        reply = api.call("DELETE", "/v1/invocations/cam-1", b"", headers=headers)
        assert_status_json(reply, 403, grpc.StatusCode.PERMISSION_DENIED)
    assert len(fake[0].requests) == before  # none of them reached a server
    assert api.get("/v1/invocations/cam-1", headers=reader).status == 200
    assert api.get("/v1/invocations?page_size=3", headers=reader).status == 200
    reply = api.call("DELETE", "/v1/invocations/cam-1", b"", headers=eraser)
    assert reply.status == 200, reply.body
    assert fake[0].metadata[-1]["x-envoy-auth-subject"] == "dpo@example.test"
    spoofed = {**eraser, "x-envoy-auth-subject": "someone-else"}
    api.call("DELETE", "/v1/invocations/cam-1", b"", headers=spoofed)
    assert fake[0].metadata[-1]["x-envoy-auth-subject"] == "dpo@example.test"

    stub = pb_grpc.InferenceServiceStub(secure_channel)
    camera_md = list(camera.items())
    for call, request in (
        (stub.GetInvocation, pb.GetInvocationRequest(id="cam-1")),
        (stub.ListInvocations, pb.ListInvocationsRequest()),
        (stub.RenderInvocation, pb.RenderInvocationRequest(id="cam-1")),
        (stub.DeleteInvocation, pb.DeleteInvocationRequest(id="cam-1")),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call(request, metadata=camera_md, timeout=10)
        assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED, call
    with pytest.raises(grpc.RpcError) as raised:
        stub.DeleteInvocation(
            pb.DeleteInvocationRequest(id="cam-1"), metadata=list(reader.items()), timeout=10
        )
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    stub.DeleteInvocation(
        pb.DeleteInvocationRequest(id="cam-1"), metadata=list(eraser.items()), timeout=10
    )
    listed = stub.ListInvocations(
        pb.ListInvocationsRequest(), metadata=list(reader.items()), timeout=10
    )
    assert listed.invocations[0].id == "listed"


def wrong_tokens(issuer: TokenIssuer, stranger: TokenIssuer) -> dict[str, str]:
    """Tokens that must be refused with 401, by what is wrong with them."""
    token = issuer.token()
    header, payload, signature = token.split(".")
    return {
        "garbage": "not-a-jwt",
        "signed by another key": stranger.token(),
        "tampered payload": f"{header}.{issuer.token(sub='admin').split('.')[1]}.{signature}",
        "unsigned (alg none)": f"{header.replace(header, 'eyJhbGciOiJub25lIn0')}.{payload}.",
        "expired": issuer.token(lifetime_s=-120),
        "another issuer": issuer.token(issuer="https://evil.test.invalid"),
        "no expiry": issuer.token(lifetime_s=None),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "garbage",
        "signed by another key",
        "tampered payload",
        "unsigned (alg none)",
        "expired",
        "another issuer",
        "no expiry",
    ],
)
def test_missing_or_invalid_token_is_401_json_over_rest(api, fake, issuer, stranger, case):
    headers = {} if case == "missing" else bearer(wrong_tokens(issuer, stranger)[case])
    before = len(fake[0].requests)
    reply = api.post_json("/v1/invocations", invoke_body("refused"), headers=headers)
    body = assert_status_json(reply, 401, grpc.StatusCode.UNAUTHENTICATED)
    assert body["message"], body
    reply = api.get("/v1/invocations/refused", headers=headers)
    assert_status_json(reply, 401, grpc.StatusCode.UNAUTHENTICATED)
    assert len(fake[0].requests) == before


@pytest.mark.parametrize(
    ("what", "claims"),
    [
        ("no scope", {"scope": None}),
        ("another scope", {"scope": "read other"}),
        ("a scope that only contains it", {"scope": f"{SCOPE}-admin"}),
        ("another audience", {"audience": "another-service"}),
    ],
)
def test_a_valid_token_without_the_right_is_403_json_over_rest(api, fake, issuer, what, claims):
    before = len(fake[0].requests)
    reply = api.post_json(
        "/v1/invocations", invoke_body("forbidden"), headers=bearer(issuer.token(**claims))
    )
    assert_status_json(reply, 403, grpc.StatusCode.PERMISSION_DENIED)
    assert len(fake[0].requests) == before


def test_the_scope_may_be_one_of_several(api, issuer):
    token = issuer.token(scope=f"read {SCOPE} write")
    reply = api.post_json("/v1/invocations", invoke_body("several-scopes"), headers=bearer(token))
    assert reply.status == 200, reply.body


def test_grpc_over_tls_needs_a_valid_token_with_the_scope(secure_channel, fake, issuer, stranger):
    stub = pb_grpc.InferenceServiceStub(secure_channel)
    request = pb.InvokeRequest(input=pb.ModelInput(id="grpc-tls"))
    invocation = stub.Invoke(request, metadata=bearer(issuer.token()).items(), timeout=10)
    assert invocation.invocation.id == "grpc-tls"
    assert "authorization" not in fake[0].metadata[-1]

    before = len(fake[0].requests)
    refused = [
        ([], grpc.StatusCode.UNAUTHENTICATED),
        (bearer(stranger.token()).items(), grpc.StatusCode.UNAUTHENTICATED),
        (bearer(issuer.token(lifetime_s=-120)).items(), grpc.StatusCode.UNAUTHENTICATED),
        (bearer(issuer.token(scope=None)).items(), grpc.StatusCode.PERMISSION_DENIED),
        (bearer(issuer.token(audience="another")).items(), grpc.StatusCode.PERMISSION_DENIED),
    ]
    for metadata, code in refused:
        with pytest.raises(grpc.RpcError) as raised:
            stub.Invoke(request, metadata=list(metadata), timeout=10)
        assert raised.value.code() == code, (metadata, raised.value)
        assert not raised.value.details().startswith("{")
    assert len(fake[0].requests) == before


def test_plain_http_and_untrusted_tls_are_refused(envoy, tls, issuer):
    with socket.create_connection(("127.0.0.1", envoy.listen_port), timeout=5) as sock:
        sock.sendall(b"GET /v1/invocations/x HTTP/1.1\r\nHost: edge\r\n\r\n")
        try:
            answer = sock.recv(1024)
        except OSError:
            answer = b""
    assert not answer.startswith(b"HTTP/"), answer
    with (
        grpc.insecure_channel(envoy.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        pb_grpc.InferenceServiceStub(channel).Invoke(
            pb.InvokeRequest(input=pb.ModelInput(id="plain")),
            metadata=list(bearer(issuer.token()).items()),
            timeout=5,
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    untrusted = ssl.create_default_context()  # the system's CAs: not the test CA
    with pytest.raises(ssl.SSLCertVerificationError):
        RestClient("127.0.0.1", envoy.listen_port, ssl_context=untrusted).get("/v1/invocations/x")


def test_the_internal_listener_needs_no_token(envoy):
    with grpc.insecure_channel(envoy.internal_target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_no_token_or_key_is_written_anywhere(api, envoy, issuer, tls):
    """Envoy's log (with its access log) holds no token, and its config no key material: the
    certificate key and the JWKS are file names there."""
    token = issuer.token()
    api.post_json("/v1/invocations", invoke_body("no-secrets"), headers=bearer(token))
    api.post_json("/v1/invocations", invoke_body("no-secrets"), headers=bearer(token + "x"))
    log = envoy.log_file.read_text()
    assert token not in log and token.split(".")[2] not in log
    config = envoy.config_path.read_text()
    assert "PRIVATE KEY" not in config
    assert str(tls.server_key.resolve()) in config
    assert "BEGIN" not in config
    assert repr(issuer).count(".") <= 3  # no key in the issuer's repr either


def test_settings_refuse_half_configurations(tls, issuer):
    with pytest.raises(ValueError, match="go together"):
        EnvoySettings(envoy_tls_cert_file=tls.server_cert)
    with pytest.raises(ValueError, match="needs envoy_jwt_issuer"):
        EnvoySettings(envoy_jwt_jwks_file=issuer.jwks_file)
    with pytest.raises(ValueError, match="need envoy_jwt_jwks_file"):
        EnvoySettings(envoy_jwt_required_scope=SCOPE)
    template = (Path(__file__).resolve().parents[2] / "envoy" / "envoy.yaml").read_text()
    missing = EnvoySettings(
        envoy_tls_cert_file=tls.server_cert, envoy_tls_key_file=tls.server_key.with_name("nope")
    )
    with pytest.raises(Exception, match="is not a file"):
        render_config(template, descriptor=Path("d.binpb"), settings=missing)


def test_rendered_config_with_every_option_passes_envoy_validation(fake, tls, issuer, tmp_path):
    settings = secure_settings(tls, issuer).model_copy(
        update={"envoy_public_health_and_reflection": True}
    )
    proxy = LocalEnvoy.for_repo(
        Path(__file__).resolve().parents[2], build_dir=tmp_path, settings=settings
    )
    output = proxy.validate()
    assert "OK" in output
    assert "Deprecated" not in output, output
    config = proxy.config_path.read_text()
    for part in ("DownstreamTlsContext", "jwt_authn", "rbac", "ServerReflection"):
        assert part in config, part


def test_render_command_takes_the_edge_settings_as_flags_and_variables(
    tls, issuer, tmp_path, monkeypatch
):
    """What compose.yaml's envoy-config runs: flags override INFERENCE_ENVOY_* variables."""
    monkeypatch.setenv("INFERENCE_ENVOY_REQUEST_TIMEOUT_S", "12.5")
    monkeypatch.setenv("INFERENCE_ENVOY_JWT_REQUIRED_SCOPE", "from-env")
    out = tmp_path / "envoy.yaml"
    argv = ["render", "--out", str(out), "--internal-port", "18081"]
    argv += ["--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key)]
    argv += ["--jwt-jwks", str(issuer.jwks_file), "--jwt-issuer", ISSUER]
    argv += ["--jwt-audience", AUDIENCE, "--jwt-audience", "other", "--jwt-required-scope", SCOPE]
    assert envoy_main(argv) == 0
    config = out.read_text()
    assert "request_timeout: 12.500s" in config
    assert "port_value: 18081" in config
    assert "DownstreamTlsContext" in config
    assert f'"audiences": ["{AUDIENCE}", "other"]' in config
    assert f'"exact": "{SCOPE}"' in config and "from-env" not in config
    assert envoy_main(["render", "--out", str(out), "--tls-cert", str(tls.server_cert)]) == 1
