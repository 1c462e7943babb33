"""The web console (console/) as Envoy routes: every file a ``direct_response`` on the public
listener, at ``/console/<name>`` (``/console/`` is ``index.html``; ``/console`` redirects there).

Why Envoy serves it: the console is a few static files (HTML, CSS, ES modules; no build step,
nothing fetched at run time), and Envoy is the one process every deployment already has in front
of the API. Served there, the page is on the API's own origin (no CORS) and behind the same edge
(TLS, limits); no server process, port or container is added, and a server stays a gRPC server
(no HTTP handler, no new RPC). The files are read when the config is rendered and inlined into
it, so the Envoy of compose.yaml (which only sees the rendered file) serves them as well; a change
to console/ takes effect when Envoy's config is rendered again (a restart of ``make run``).

Three things make a ``direct_response`` a file server here:
  * Envoy answers it as a local reply, which ``local_reply_config`` would rewrite into the API's
    JSON error shape: ``console_reply_mappers`` comes first there and keeps the body as it is,
    with the file's content type (chosen by the request's path);
  * the route config's ``max_direct_response_body_size_bytes`` (4 KiB by default) is raised to
    ``MAX_FILE_BYTES`` in the template;
  * the transcoder (which refuses paths outside the API with 404) and, with JWT, jwt_authn and
    RBAC are disabled on these routes: the page loads without a token and then asks for one; the
    API calls it makes are authenticated and authorized as any client's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _default_console_dir() -> Path:
    """``console/`` of the source checkout this module runs from (an editable install: the
    dev stack, the tests), else ``./console`` (the ``envoy-config`` image runs in ``/app``,
    where server/Dockerfile copies the console)."""
    checkout = Path(__file__).resolve().parents[4] / "console"
    return checkout if checkout.is_dir() else Path("console")


CONSOLE_DIR = _default_console_dir()
"""The console's files, served as they are (no build step)."""
PREFIX = "/console/"
MAX_FILE_BYTES = 1024 * 1024
"""Largest file the console may have (Envoy's max_direct_response_body_size_bytes)."""

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page loads only its own files and talks only to its own origin; images are the API's
# renders and the stored inputs, as blob: URLs (fetched with the token when there is one).
_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # A new Envoy config (a new console) is picked up at the next load: revalidate each time.
    "cache-control": "no-cache",
}


class ConsoleError(RuntimeError):
    """The console's files cannot be served."""


def _files(console_dir: Path) -> list[Path]:
    files = sorted(p for p in console_dir.iterdir() if p.is_file() and p.suffix in _TYPES)
    if not any(p.name == "index.html" for p in files):
        raise ConsoleError(f"no index.html in {console_dir}")
    for path in files:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConsoleError(f"{path} is over {MAX_FILE_BYTES} bytes")
    return files


def console_routes(
    auth_filter_names: list[str], console_dir: Path = CONSOLE_DIR
) -> list[dict[str, Any]]:
    """The routes of the console's files (GET and HEAD), and ``/console`` -> ``/console/``.
    ``auth_filter_names``: the authentication and authorization filters of the public
    listener, disabled on these routes (the files are public; the API is not)."""
    disabled = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}
    per_filter = {
        name: disabled for name in ("envoy.filters.http.grpc_json_transcoder", *auth_filter_names)
    }
    get = [{"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}]
    headers = [
        {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for key, value in _SECURITY_HEADERS.items()
    ]
    routes: list[dict[str, Any]] = [
        {
            "match": {"path": PREFIX.rstrip("/"), "headers": get},
            "redirect": {"path_redirect": PREFIX},
            "typed_per_filter_config": per_filter,
        }
    ]
    for path in _files(console_dir):
        paths = [PREFIX + path.name] + ([PREFIX] if path.name == "index.html" else [])
        for url in paths:
            routes.append(
                {
                    "match": {"path": url, "headers": get},
                    "direct_response": {
                        "status": 200,
                        "body": {"inline_string": path.read_text(encoding="utf-8")},
                    },
                    "response_headers_to_add": headers,
                    "typed_per_filter_config": per_filter,
                }
            )
    return routes


def console_reply_mappers() -> list[dict[str, Any]]:
    """``local_reply_config`` mappers, first in the list: a 200 local reply under ``/console/``
    (only the console's direct responses are) keeps its body, with its file's content type."""
    mappers = []
    for suffix, content_type in _TYPES.items():
        regex = (
            r"/console/([^?]*\.html)?(\?.*)?"
            if suffix == ".html"
            else rf"/console/[^?]*\{suffix}(\?.*)?"
        )
        mappers.append(
            {
                "filter": {
                    "and_filter": {
                        "filters": [
                            {
                                "status_code_filter": {
                                    "comparison": {
                                        "op": "EQ",
                                        "value": {
                                            "default_value": 200,
                                            "runtime_key": "local_reply.console_200",
                                        },
                                    }
                                }
                            },
                            {
                                "header_filter": {
                                    "header": {
                                        "name": ":path",
                                        "string_match": {"safe_regex": {"regex": regex}},
                                    }
                                }
                            },
                        ]
                    }
                },
                "body_format_override": {
                    "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
                    "content_type": content_type,
                },
            }
        )
    return mappers
