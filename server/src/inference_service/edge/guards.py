"""Routes that refuse a request at the edge before it reaches a server (issue 18), rendered
into ``envoy/envoy.yaml`` by ``inference_service.edge.config`` (``${REQUEST_GUARDS}`` on the public
listener, ``${INTERNAL_REQUEST_GUARDS}`` on the internal one). Each is a route listed before
the API's own, matching only a bad request, with a ``direct_response`` of 400: REST clients
get ``{"code": 3, ...}`` and native gRPC clients ``INVALID_ARGUMENT`` (the public listener's
local reply mappers), and nothing reaches a server.

Two kinds:

* **reserved gRPC headers** a client may send: ``grpc-timeout``, ``grpc-encoding`` and
  ``grpc-accept-encoding``, each refused unless its value is well formed (and, for
  ``grpc-encoding``, a coding the servers decode). grpc-core refuses a malformed one with
  INTERNAL, and before issue 18 kept it in the connection's HPACK table, failing the calls of
  every client Envoy multiplexes onto that connection. The other reserved request headers
  (``grpc-status``, ``grpc-previous-rpc-attempts``, ``*-bin``, ...) mean nothing in a request
  to this API and are removed by the first filter (``strip_envoy_headers``), not refused.
* **fields bound by the path**: the transcoder lets a query parameter set any field of the
  request, the fields the path binds included, so ``/v1/invocations/A?id=B`` read B while
  every rule keyed on the path (access log, authorisation, rate limits) saw A. For every
  ``google.api.http`` rule of the service with a ``{field}`` in its path, a query parameter of
  that field (by its proto and its JSON name) is refused, on any method: routes added later
  (e.g. ``DELETE /v1/invocations/{id}``) are covered as soon as their rule is in the contract.
"""

from __future__ import annotations

import re
from typing import Any

from google.api import annotations_pb2
from google.protobuf.descriptor import ServiceDescriptor
from inference.v1 import inference_service_pb2 as pb

# gRPC over HTTP/2: "grpc-timeout" is 1 to 8 digits and a unit.
GRPC_TIMEOUT = r"[0-9]{1,8}[HMSmun]"
# The codings grpc-core decodes (the servers'): a request compressed otherwise cannot be read.
GRPC_ENCODING = r"identity|gzip|deflate"
# A list of content-coding tokens: a client may offer codings the servers do not use.
GRPC_ACCEPT_ENCODING = r"[A-Za-z0-9._-]+( *, *[A-Za-z0-9._-]+)*"
CHECKED_HEADERS = {
    "grpc-timeout": GRPC_TIMEOUT,
    "grpc-encoding": GRPC_ENCODING,
    "grpc-accept-encoding": GRPC_ACCEPT_ENCODING,
}
SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"]
# A :path whose query has a parameter name with a percent escape.
_ENCODED_NAME = r"[^?]*\?([^&]*&)*[^&=]*%.*"
_PATH_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(=[^}]*)?\}")


def _refuse(message: str) -> dict[str, Any]:
    return {"status": 400, "body": {"inline_string": message}}


def header_guards() -> list[dict[str, Any]]:
    """One route per checked header: present, and not matching its pattern -> 400."""
    return [
        {
            "match": {
                "prefix": "/",
                "headers": [
                    {"name": name, "present_match": True},
                    {
                        "name": name,
                        "string_match": {"safe_regex": {"regex": pattern}},
                        "invert_match": True,
                    },
                ],
            },
            "direct_response": _refuse(f"invalid {name} header"),
        }
        for name, pattern in CHECKED_HEADERS.items()
    ]


def _path_regex(template: str) -> tuple[str, list[str]]:
    """An HTTP rule's path template -> (a regex of its paths, the fields it binds)."""
    fields: list[str] = []
    parts: list[str] = []
    position = 0
    for found in _PATH_VARIABLE.finditer(template):
        parts.append(re.escape(template[position : found.start()]))
        fields.append(found.group(1))
        parts.append(".+" if (found.group(2) or "").endswith("**") else "[^/]+")
        position = found.end()
    parts.append(re.escape(template[position:]))
    return "".join(parts), fields


def _http_rules(service: ServiceDescriptor) -> list[tuple[str, str, str, Any]]:
    """(HTTP method, path template, body, request message descriptor) of every HTTP rule of
    ``service``."""
    rules = []
    for method in service.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        for binding in [rule, *rule.additional_bindings]:
            pattern = binding.WhichOneof("pattern")
            if pattern is None:
                continue
            if pattern == "custom":
                verb, template = binding.custom.kind.upper(), binding.custom.path
            else:
                verb, template = pattern.upper(), getattr(binding, pattern)
            rules.append((verb, template, binding.body, method.input_type))
    return rules


def _http_paths(service: ServiceDescriptor) -> list[tuple[str, Any]]:
    """(path template, request message descriptor) of every HTTP rule of ``service``."""
    return [(template, message) for _, template, _, message in _http_rules(service)]


def grpc_on_rest_path_guards(service: ServiceDescriptor = SERVICE) -> list[dict[str, Any]]:
    """A native gRPC request (content-type application/grpc) to a REST path -> 404, which a
    gRPC client reads as UNIMPLEMENTED; before, it went to a server as it was and came back as
    Envoy's "upstream connect error ... reset" text."""
    regexes = sorted({_path_regex(template)[0] for template, _ in _http_paths(service)})
    return [
        _refusal(
            {
                "safe_regex": {"regex": regex},
                "headers": [
                    {"name": "content-type", "string_match": {"prefix": "application/grpc"}}
                ],
            },
            f"no gRPC method at this path: gRPC calls go to /{service.full_name}/<method>",
            status=404,
        )
        for regex in regexes
    ]


# What a JSON body may be declared as: application/json, with parameters (charset=utf-8).
JSON_CONTENT_TYPE = r"(?i)application/json( *;.*)?"


# What a raw body (a google.api.HttpBody request field, e.g. POST /v1/invocations:upload) may
# not be declared as: JSON (the other route's body), text, or a form of parts (a browser's file
# upload, whose body is not the file itself).
NOT_RAW_CONTENT_TYPE = r"(?i)(application/([a-z0-9.+-]*\+)?json|text/[^;]*|multipart/[^;]*)( *;.*)?"


def is_raw_body(message: Any, body: str) -> bool:
    """Whether an HTTP rule's ``body`` is a ``google.api.HttpBody`` field of ``message``: the
    request body is then the bytes themselves, not JSON."""
    field = message.fields_by_name.get(body) if body and body != "*" else None
    return (
        field is not None
        and field.message_type is not None
        and field.message_type.full_name == "google.api.HttpBody"
    )


def _raw_body_guard(verb: str, regex: str) -> dict[str, Any]:
    """A raw-body route (issue 21 item 5): a JSON, text or multipart body -> 415. Any other
    Content-Type, or none, passes (curl's --data-binary sends form-urlencoded); the server
    reads the image's format from its bytes."""
    route = _refusal(
        {
            "safe_regex": {"regex": regex},
            "headers": [
                {"name": ":method", "string_match": {"exact": verb}},
                {
                    "name": "content-type",
                    "string_match": {"safe_regex": {"regex": NOT_RAW_CONTENT_TYPE}},
                },
            ],
        },
        "the request body must be the image itself (e.g. Content-Type: image/jpeg or "
        "application/octet-stream), not JSON, text or a multipart form; a JSON body goes to "
        "POST /v1/invocations",
    )
    route["direct_response"]["status"] = 415
    return route


def content_type_guards(service: ServiceDescriptor = SERVICE) -> list[dict[str, Any]]:
    """For every HTTP rule with a JSON body: a Content-Type other than JSON, or none, -> 415.
    Without it, a web page could make a browser POST an invocation as a "simple" request
    (text/plain, form-urlencoded) that no CORS preflight stops. For a rule whose body is raw
    (``is_raw_body``), the reverse: JSON, text or multipart -> 415."""
    routes: list[dict[str, Any]] = []
    for verb, template, body, message in _http_rules(service):
        if not body:
            continue
        regex, _ = _path_regex(template)
        if is_raw_body(message, body):
            routes.append(_raw_body_guard(verb, regex))
            continue
        method = {"name": ":method", "string_match": {"exact": verb}}
        for content_type in (
            {"name": "content-type", "present_match": False},
            {
                "name": "content-type",
                "string_match": {"safe_regex": {"regex": JSON_CONTENT_TYPE}},
                "invert_match": True,
            },
        ):
            route = _refusal(
                {"safe_regex": {"regex": regex}, "headers": [method, content_type]},
                "the request body must be JSON: send Content-Type: application/json",
            )
            route["direct_response"]["status"] = 415
            routes.append(route)
    return routes


def path_field_guards(service: ServiceDescriptor = SERVICE) -> list[dict[str, Any]]:
    """One route per (path, path-bound field, spelling): that query parameter -> 400."""
    routes: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for template, message in _http_paths(service):
        regex, fields = _path_regex(template)
        if fields and (regex, "%") not in seen:
            # The transcoder decodes a parameter's name (?%69d=B sets id); Envoy's matchers
            # do not: a percent-encoded name is refused on these paths.
            seen.add((regex, "%"))
            routes.append(
                _refusal(
                    {
                        "safe_regex": {"regex": regex},
                        "headers": [
                            {
                                "name": ":path",
                                "string_match": {"safe_regex": {"regex": _ENCODED_NAME}},
                            }
                        ],
                    },
                    "percent-encoded query parameter names are not allowed here",
                )
            )
        for field_path in fields:
            names = {field_path}
            top = message.fields_by_name.get(field_path)
            if top is not None:
                names.add(top.json_name)
            for name in sorted(names):
                if (regex, name) in seen:
                    continue
                seen.add((regex, name))
                routes.append(
                    _refusal(
                        {
                            "safe_regex": {"regex": regex},
                            "query_parameters": [{"name": name, "present_match": True}],
                        },
                        f"query parameter {name!r} is not allowed here: the path sets it",
                    )
                )
    return routes


def method_guards(service: ServiceDescriptor = SERVICE) -> list[dict[str, Any]]:
    """For every REST path of ``service``: a method no HTTP rule of that path declares -> 405,
    with an ``Allow`` header listing those it does (before, 404 "no such path" or the
    transcoder's 400). The longest paths first, so ``{id}:render`` (GET only) is checked before
    ``{id}`` (GET, DELETE)."""
    verbs: dict[str, set[str]] = {}
    for verb, template, _, _ in _http_rules(service):
        verbs.setdefault(_path_regex(template)[0], set()).add(verb)
    routes: list[dict[str, Any]] = []
    for regex in sorted(verbs, key=len, reverse=True):
        allowed = sorted(verbs[regex])
        route = _refusal(
            {
                "safe_regex": {"regex": regex},
                "headers": [
                    {
                        "name": ":method",
                        "string_match": {"safe_regex": {"regex": "|".join(allowed)}},
                        "invert_match": True,
                    }
                ],
            },
            f"method not allowed on this path; allowed: {', '.join(allowed)}",
            status=405,
        )
        route["response_headers_to_add"] = [
            {
                "header": {"key": "allow", "value": ", ".join(allowed)},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]
        routes.append(route)
    return routes


def not_found_route() -> dict[str, Any]:
    """The public listener's last route: any other path -> 404 at once (NOT_FOUND as JSON,
    UNIMPLEMENTED for gRPC). Not buffered: before issue 21, a streaming call (reflection,
    health Watch, an unknown bidi method) was held by the buffer filter until the client
    half-closed, i.e. until the stream idle timeout (90 s), before Envoy found no route."""
    route = _refusal(
        {"prefix": "/"},
        "no such path: this listener serves inference.v1.InferenceService and its REST routes",
        status=404,
    )
    route["typed_per_filter_config"]["envoy.filters.http.buffer"] = BUFFER_DISABLED
    return route


BUFFER_DISABLED = {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
    "disabled": True,
}


def _refusal(match: dict[str, Any], message: str, status: int = 400) -> dict[str, Any]:
    """A route refusing a REST request that ``match`` matches, on its REST path."""
    return {
        "match": match,
        "direct_response": {"status": status, "body": {"inline_string": message}},
        # Envoy picks the route on the REST path, before any filter runs; the transcoder would
        # rewrite the path to the gRPC one and pick again. Disabled here, the REST path keeps
        # this route.
        "typed_per_filter_config": {
            "envoy.filters.http.grpc_json_transcoder": {
                "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                "disabled": True,
            }
        },
    }
