"""The Envoy config of the edge, rendered from ``envoy/envoy.yaml`` (a ``string.Template``
whose placeholders are documented at its top) by ``render_config``.

Its size limits (REST request and response bodies) come from a ``RequestLimits``
(``inference_service.limits``), the server's own, so that Envoy and the servers behind it always
agree on what the largest request and response are. Its edge settings (timeouts, connection and
stream limits, circuit breakers, heap limit, and the optional TLS, JWT authentication and public
health/reflection) come from an ``EnvoySettings`` (``INFERENCE_ENVOY_*``). The routes that refuse
requests at the edge are made in ``guards``, the strict-JSON filter in ``strict_json``, the web
console's routes in ``console``.
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from inference_service.edge import console, strict_json
from inference_service.edge.guards import (
    content_type_guards,
    grpc_on_rest_path_guards,
    header_guards,
    method_guards,
    not_found_route,
    path_field_guards,
)
from inference_service.limits import RequestLimits
from inference_service.settings import split_list

logger = logging.getLogger(__name__)

DEFAULT_LISTEN_HOST = "127.0.0.1"
DEFAULT_LISTEN_PORT = 8080
DEFAULT_INTERNAL_PORT = 8081
DEFAULT_ADMIN_PORT = 9901
DEFAULT_UPSTREAM = ("127.0.0.1", 50051)
TEMPLATE_PATH = Path("envoy/envoy.yaml")
DESCRIPTOR_PATH = Path("build/protos/descriptor.binpb")

_HOST = re.compile(r"[A-Za-z0-9._:-]+")
_UINT32_MAX = 2**32 - 1  # Envoy's byte limits are UInt32Value
_JWT_PROVIDER = "inference"
# The paths of grpc.health.v1.Health and server reflection (v1 and v1alpha).
_OPS_PATHS = r"/grpc\.(health\.v1\.Health|reflection\.v1(alpha)?\.ServerReflection)/[^/]+"


class EnvoyError(RuntimeError):
    """Envoy could not be found, configured, validated or started."""


class EnvoySettings(BaseSettings):
    """Envoy's edge settings, each ``INFERENCE_<FIELD>`` in the environment (docs/security.md).

    The defaults are a one-command local stack: plain HTTP, no authentication, health and
    reflection on the loopback-only internal listener.
    """

    model_config = SettingsConfigDict(
        env_prefix="INFERENCE_", extra="ignore", use_attribute_docstrings=True
    )

    # --- timeouts (seconds) -------------------------------------------------
    envoy_request_headers_timeout_s: float = Field(10.0, gt=0)
    """A client must send all its request headers within this long (slowloris)."""
    envoy_request_timeout_s: float = Field(30.0, gt=0)
    """A client must send its whole request (headers and body, up to about 12 MiB of REST
    JSON) within this long, else 408; it never cuts a server's answer."""
    envoy_invoke_timeout_s: float = Field(60.0, gt=0)
    """Route timeout of Invoke: how long Envoy waits for the server once the request is in
    (504). Leave room for the server's pending wait, the store's retries and an 8 MiB input."""
    envoy_read_timeout_s: float = Field(30.0, gt=0)
    """Route timeout of GetInvocation (and of any other method of the service)."""
    envoy_stream_idle_timeout_s: float = Field(90.0, gt=0)
    """A stream on which no byte moved for this long is reset (e.g. a client that stops
    reading its response). Longer than the route timeouts."""
    envoy_connection_idle_timeout_s: float = Field(300.0, gt=0)
    """A client connection without any stream for this long is closed."""

    # --- limits -------------------------------------------------------------
    envoy_max_connections: int = Field(10_000, ge=1)
    """Client connections Envoy keeps at once, all listeners together (the internal listener
    is not counted); more are refused. Keep it under the file descriptor limit (ulimit -n)."""
    envoy_max_streams_per_connection: int = Field(100, ge=1, le=2_147_483_647)
    """Concurrent HTTP/2 streams (calls) on one client connection; more are refused."""
    envoy_max_heap_bytes: int = Field(1024 * 1024 * 1024, ge=1)
    """Heap size the overload manager counts against: at 98% of it Envoy answers every new
    request with 503 (it shrinks its heap at 90% and stops keep-alive at 95%)."""
    envoy_upstream_max_connections: int = Field(1024, ge=1, le=_UINT32_MAX)
    """Circuit breaker: connections to the servers."""
    envoy_upstream_max_pending_requests: int = Field(1024, ge=1, le=_UINT32_MAX)
    """Circuit breaker: requests waiting for a connection to a server; more are 503."""
    envoy_upstream_max_requests: int = Field(1024, ge=1, le=_UINT32_MAX)
    """Circuit breaker: requests in flight to the servers; more are 503."""

    # --- what the public listener serves -------------------------------------------
    envoy_public_health_and_reflection: bool = False
    """Also route grpc.health.v1.Health and server reflection on the public listener (behind
    the same TLS and authentication). Off: they are served on the internal listener only."""

    # --- TLS ----------------------------------------------------------------------
    envoy_tls_cert_file: Path | None = None
    """PEM certificate chain of the public listener; with ``envoy_tls_key_file`` it serves
    TLS only (HTTP/2 and HTTP/1.1 by ALPN). Unset: plain HTTP."""
    envoy_tls_key_file: Path | None = None
    """PEM private key of that certificate (Envoy reads the file; it is never rendered)."""

    # --- JWT authentication -----------------------------------------------------------
    envoy_jwt_jwks_file: Path | None = None
    """A local JWKS file (the issuer's public keys): every call to the public listener then
    needs ``authorization: Bearer <JWT>`` signed by one of them (401 otherwise). Unset: no
    authentication."""
    envoy_jwt_issuer: str | None = None
    """The ``iss`` a token must have (required with ``envoy_jwt_jwks_file``)."""
    envoy_jwt_audiences: Annotated[list[str], NoDecode] = []
    """Audiences of which a token's ``aud`` must hold one (comma-separated); empty: not
    checked."""
    envoy_jwt_required_scope: str | None = None
    """A scope a valid token must carry in its ``scope`` claim (space-separated, OAuth 2.0
    style) or be refused with 403. Unset: any valid token is enough."""
    envoy_jwt_read_scope: str = "inference.read"
    """With JWT on: the scope a token needs, besides ``envoy_jwt_required_scope``, to read
    stored invocations (GetInvocation, RenderInvocation, ListInvocations; gRPC and REST), or
    403 / PERMISSION_DENIED. So a camera's token (Invoke only) cannot browse what is stored.
    Empty: no scope of its own."""
    envoy_jwt_delete_scope: str = "inference.delete"
    """With JWT on: the scope a token needs, besides ``envoy_jwt_required_scope``, to erase
    an invocation (DeleteInvocation), or 403 / PERMISSION_DENIED. Empty: no scope of its
    own."""

    @field_validator("envoy_jwt_audiences", mode="before")
    @classmethod
    def _split_audiences(cls, value: object) -> object:
        return split_list(value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.envoy_tls_cert_file is None) != (self.envoy_tls_key_file is None):
            raise ValueError("envoy_tls_cert_file and envoy_tls_key_file go together")
        if self.envoy_jwt_jwks_file is not None and not self.envoy_jwt_issuer:
            raise ValueError("envoy_jwt_jwks_file needs envoy_jwt_issuer")
        if self.envoy_jwt_jwks_file is None and (
            self.envoy_jwt_required_scope or self.envoy_jwt_audiences
        ):
            raise ValueError("JWT audiences and scopes need envoy_jwt_jwks_file")
        longest_route = max(self.envoy_invoke_timeout_s, self.envoy_read_timeout_s)
        if self.envoy_stream_idle_timeout_s <= longest_route:
            raise ValueError(
                "envoy_stream_idle_timeout_s must be longer than the route timeouts "
                f"({longest_route}s), else it cuts servers that are still working"
            )
        return self

    @property
    def tls(self) -> bool:
        """True when the public listener serves TLS."""
        return self.envoy_tls_cert_file is not None

    @property
    def jwt(self) -> bool:
        """True when the public listener requires a JWT."""
        return self.envoy_jwt_jwks_file is not None

    def edge_settings(self) -> EnvoySettings:
        """Only the fields of ``EnvoySettings`` (e.g. of a ``StackSettings``)."""
        return EnvoySettings.model_validate(
            {name: getattr(self, name) for name in EnvoySettings.model_fields}
        )


def _check_host(host: str) -> str:
    if not _HOST.fullmatch(host):
        raise EnvoyError(f"not a host name or IP address: {host!r}")
    return host


def _check_port(port: int) -> int:
    if not 0 < int(port) < 65536:
        raise EnvoyError(f"not a TCP port: {port!r}")
    return int(port)


def _check_size(name: str, size: int) -> int:
    if not 0 < int(size) <= _UINT32_MAX:
        raise EnvoyError(f"{name} of {size} bytes is beyond what Envoy takes (1 to {_UINT32_MAX})")
    return int(size)


def _duration(seconds: float) -> str:
    """A protobuf Duration as Envoy's YAML takes it: ``10s``, ``0.5s`` (millisecond precision)."""
    millis = round(float(seconds) * 1000)
    if millis < 0:
        raise EnvoyError(f"not a duration: {seconds!r}")
    whole, fraction = divmod(millis, 1000)
    return f"{whole}.{fraction:03d}s".replace(".000s", "s")


def _file(path: Path, what: str) -> str:
    """An absolute file path for Envoy's config, checked to exist."""
    path = Path(path).resolve()
    if not path.is_file():
        raise EnvoyError(f"{what} {path} is not a file")
    return str(path)


def _flow(value: Any) -> str:
    """``value`` as a one-line YAML flow value (JSON is YAML)."""
    return json.dumps(value, separators=(", ", ": "))


def _tls_transport_socket(settings: EnvoySettings) -> dict[str, Any]:
    assert settings.envoy_tls_cert_file is not None and settings.envoy_tls_key_file is not None
    certificate = {
        "certificate_chain": {"filename": _file(settings.envoy_tls_cert_file, "TLS certificate")},
        "private_key": {"filename": _file(settings.envoy_tls_key_file, "TLS private key")},
    }
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "DownstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                "tls_certificates": [certificate],
            },
        },
    }


def _auth_filters(settings: EnvoySettings) -> list[dict[str, Any]]:
    """jwt_authn with one provider (a local JWKS file), required on every path; RBAC, allowing
    only tokens whose ``scope`` holds the required scope, when one is set; and RBAC for the
    scopes of reading and erasing stored invocations (``_operation_scopes_filter``)."""
    assert settings.envoy_jwt_jwks_file is not None
    provider: dict[str, Any] = {
        "issuer": settings.envoy_jwt_issuer,
        "local_jwks": {"filename": _file(settings.envoy_jwt_jwks_file, "JWKS file")},
        # The token stops here: servers never see it (nor log it).
        "forward": False,
        "require_expiration": True,
        "payload_in_metadata": "jwt_payload",
        "normalize_payload_in_metadata": {"space_delimited_claims": ["scope"]},
    }
    if settings.envoy_jwt_audiences:
        provider["audiences"] = list(settings.envoy_jwt_audiences)
    filters: list[dict[str, Any]] = [
        {
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3."
                "JwtAuthentication",
                "providers": {_JWT_PROVIDER: provider},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": _JWT_PROVIDER}}],
            },
        }
    ]
    # The caller's subject goes to the servers (their audit log of deletes): an x-envoy-*
    # header, which no client can set (every one is dropped first, see strip_envoy_headers).
    provider["claim_to_headers"] = [{"header_name": "x-envoy-auth-subject", "claim_name": "sub"}]
    scope = settings.envoy_jwt_required_scope
    operation_scopes = _operation_scopes_filter(settings)
    if scope:
        has_scope = _has_scope(scope)
        filters.append(
            {
                "name": "envoy.filters.http.rbac",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                    "rules": {
                        "action": "ALLOW",
                        "policies": {
                            "required-scope": {
                                "permissions": [{"any": True}],
                                "principals": [has_scope],
                            }
                        },
                    },
                },
            }
        )
    if operation_scopes is not None:
        filters.append(operation_scopes)
    return filters


def _has_scope(scope: str) -> dict[str, Any]:
    """An RBAC principal: the verified token's ``scope`` claim holds ``scope``."""
    return {
        "sourced_metadata": {
            "metadata_matcher": {
                "filter": "envoy.filters.http.jwt_authn",
                "path": [{"key": "jwt_payload"}, {"key": "scope"}],
                "value": {"list_match": {"one_of": {"string_match": {"exact": scope}}}},
            }
        }
    }


#: The operations that read stored invocations and the one that erases them, as they reach
#: the RBAC filter: native gRPC paths, and REST requests before transcoding (method and path,
#: without the query string).
_GRPC_PREFIX = "/inference.v1.InferenceService/"
_READ_GRPC = ("GetInvocation", "RenderInvocation", "ListInvocations")
_DELETE_GRPC = ("DeleteInvocation",)


def _method_and_path(method: str, regex: str) -> dict[str, Any]:
    return {
        "and_rules": {
            "rules": [
                {"header": {"name": ":method", "string_match": {"exact": method}}},
                {"url_path": {"path": {"safe_regex": {"regex": regex}}}},
            ]
        }
    }


def _grpc_paths(names: Sequence[str]) -> list[dict[str, Any]]:
    return [{"url_path": {"path": {"exact": f"{_GRPC_PREFIX}{name}"}}} for name in names]


def _operation_scopes_filter(settings: EnvoySettings) -> dict[str, Any] | None:
    """RBAC for the scopes of reading (``envoy_jwt_read_scope``) and erasing
    (``envoy_jwt_delete_scope``): reads need the one, deletes the other, everything else
    passes (to the required scope's RBAC, if any). None when neither is set."""
    read_paths = [
        *_grpc_paths(_READ_GRPC),
        # GET /v1/invocations (list), /v1/invocations/{id} and /v1/invocations/{id}:render
        _method_and_path("GET", r"/v1/invocations(/[^/]+)?"),
    ]
    delete_paths = [*_grpc_paths(_DELETE_GRPC), _method_and_path("DELETE", r"/v1/invocations/.*")]
    guarded: list[dict[str, Any]] = []
    policies: dict[str, Any] = {}
    for name, scope, paths in (
        ("read-scope", settings.envoy_jwt_read_scope, read_paths),
        ("delete-scope", settings.envoy_jwt_delete_scope, delete_paths),
    ):
        if not scope:
            continue
        guarded += paths
        policies[name] = {
            "permissions": [{"or_rules": {"rules": paths}}],
            "principals": [_has_scope(scope)],
        }
    if not policies:
        return None
    policies["other-operations"] = {
        "permissions": [{"not_rule": {"or_rules": {"rules": guarded}}}],
        "principals": [{"any": True}],
    }
    return {
        "name": "operation_scopes",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": policies},
        },
    }


def _console(template: str, settings: EnvoySettings) -> dict[str, Any]:
    """The web console's placeholders (``console``)."""
    auth = [item["name"] for item in _auth_filters(settings)] if settings.jwt else []
    return {
        "CONSOLE_ROUTES": _block(
            template,
            "CONSOLE_ROUTES",
            [f"- {_flow(route)}" for route in console.console_routes(auth)],
            "no console",
        ),
        "CONSOLE_REPLY_MAPPERS": _block(
            template,
            "CONSOLE_REPLY_MAPPERS",
            [f"- {_flow(mapper)}" for mapper in console.console_reply_mappers()],
            "no console",
        ),
        "CONSOLE_MAX_FILE_BYTES": console.MAX_FILE_BYTES,
    }


def _public_ops_route() -> dict[str, Any]:
    """Health and reflection on the public listener: streams, so neither buffered nor timed."""
    return {
        "match": {"safe_regex": {"regex": _OPS_PATHS}, "grpc": {}},
        "route": {
            "cluster": "inference_grpc",
            "timeout": "0s",
            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
        },
        "typed_per_filter_config": {
            "envoy.filters.http.buffer": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3."
                "BufferPerRoute",
                "disabled": True,
            }
        },
    }


def _block(template: str, name: str, items: Sequence[str], empty: str) -> str:
    """Lines that replace the placeholder ``name``, which stands alone on its line: ``items``
    at the placeholder's indentation, or the comment ``empty``."""
    found = re.search(rf"^( *)\$\{{{name}\}}", template, flags=re.MULTILINE)
    if found is None:
        raise EnvoyError(f"bad Envoy config template: no line for ${{{name}}}")
    if not items:
        return f"# {empty}"
    return ("\n" + found.group(1)).join(items)


def render_config(
    template: str,
    *,
    descriptor: Path,
    listen_host: str = DEFAULT_LISTEN_HOST,
    listen_port: int = DEFAULT_LISTEN_PORT,
    internal_port: int = DEFAULT_INTERNAL_PORT,
    admin_port: int = DEFAULT_ADMIN_PORT,
    upstreams: Sequence[tuple[str, int]] = (DEFAULT_UPSTREAM,),
    limits: RequestLimits | None = None,
    settings: EnvoySettings | None = None,
) -> str:
    """Fill the placeholders of the Envoy config template.

    ``descriptor`` is written as given (make it absolute unless Envoy runs in a known folder);
    every upstream ``(host, port)`` becomes one endpoint of the gRPC cluster. The REST body
    limits derive from ``limits``: those of the servers behind this Envoy (default: the default
    settings'). The timeouts, limits and optional parts come from ``settings`` (default: the
    defaults: plain HTTP, no authentication, health and reflection on the internal listener
    only); the files it names (certificate, key, JWKS) must exist, and are written as absolute
    paths.
    """
    limits = limits or RequestLimits()
    settings = settings if settings is not None else EnvoySettings()
    if not upstreams:
        raise EnvoyError("at least one upstream gRPC server is needed")
    endpoints = [
        {
            "endpoint": {
                "address": {
                    "socket_address": {
                        "address": _check_host(host),
                        "port_value": _check_port(port),
                    }
                }
            }
        }
        for host, port in upstreams
    ]
    values = {
        "LISTEN_HOST": _check_host(listen_host),
        "LISTEN_PORT": _check_port(listen_port),
        "INTERNAL_PORT": _check_port(internal_port),
        "ADMIN_PORT": _check_port(admin_port),
        # JSON strings and lists are YAML flow scalars and sequences: quoted, escaped.
        "DESCRIPTOR_PATH": json.dumps(str(descriptor)),
        "UPSTREAM_ENDPOINTS": json.dumps(endpoints),
        "MAX_REQUEST_BYTES": _check_size(
            "the largest REST request body", limits.rest_request_body_bytes
        ),
        # The raw upload route's body is the content itself.
        "UPLOAD_MAX_BYTES": _check_size("the content limit", limits.max_content_bytes),
        "MAX_RESPONSE_BYTES": _check_size(
            "the largest REST response body", limits.rest_response_body_bytes
        ),
        "REQUEST_HEADERS_TIMEOUT": _duration(settings.envoy_request_headers_timeout_s),
        "REQUEST_TIMEOUT": _duration(settings.envoy_request_timeout_s),
        "STREAM_IDLE_TIMEOUT": _duration(settings.envoy_stream_idle_timeout_s),
        "CONNECTION_IDLE_TIMEOUT": _duration(settings.envoy_connection_idle_timeout_s),
        "INVOKE_TIMEOUT": _duration(settings.envoy_invoke_timeout_s),
        "READ_TIMEOUT": _duration(settings.envoy_read_timeout_s),
        "MAX_CONNECTIONS": settings.envoy_max_connections,
        "MAX_STREAMS_PER_CONNECTION": settings.envoy_max_streams_per_connection,
        "MAX_HEAP_BYTES": settings.envoy_max_heap_bytes,
        "UPSTREAM_MAX_CONNECTIONS": settings.envoy_upstream_max_connections,
        "UPSTREAM_MAX_PENDING_REQUESTS": settings.envoy_upstream_max_pending_requests,
        "UPSTREAM_MAX_REQUESTS": settings.envoy_upstream_max_requests,
        "PUBLIC_TLS": (
            f"transport_socket: {_flow(_tls_transport_socket(settings))}"
            if settings.tls
            else "# plain HTTP: no TLS (INFERENCE_ENVOY_TLS_CERT_FILE unset)"
        ),
        "AUTH_FILTERS": _block(
            template,
            "AUTH_FILTERS",
            [f"- {_flow(item)}" for item in _auth_filters(settings)] if settings.jwt else [],
            "no authentication (INFERENCE_ENVOY_JWT_JWKS_FILE unset)",
        ),
        "REQUEST_GUARDS": _block(
            template,
            "REQUEST_GUARDS",
            [
                f"- {_flow(route)}"
                for route in header_guards()
                + path_field_guards()
                + grpc_on_rest_path_guards()
                + content_type_guards()
                + method_guards()
            ],
            "no request guards",
        ),
        "INTERNAL_REQUEST_GUARDS": _block(
            template,
            "INTERNAL_REQUEST_GUARDS",
            [f"- {_flow(route)}" for route in header_guards()],
            "no request guards",
        ),
        **_console(template, settings),
        "STRICT_JSON_FILTER": _block(
            template, "STRICT_JSON_FILTER", [f"- {_flow(strict_json.filter_config())}"], ""
        ),
        "STRICT_JSON_INVOKE": _flow(strict_json.route_config("inference.v1.InvokeRequest")),
        "NOT_FOUND_ROUTE": _block(
            template, "NOT_FOUND_ROUTE", [f"- {_flow(not_found_route())}"], "no fallback"
        ),
        "PUBLIC_OPS_ROUTE": _block(
            template,
            "PUBLIC_OPS_ROUTE",
            [f"- {_flow(_public_ops_route())}"]
            if settings.envoy_public_health_and_reflection
            else [],
            "health and reflection: internal listener only",
        ),
    }
    try:
        return string.Template(template).substitute(values)
    except (KeyError, ValueError) as exc:
        raise EnvoyError(f"bad Envoy config template: {exc!r}") from exc
