"""``python -m inference_service.edge render --out PATH ...``: write a rendered Envoy config
for an Envoy that runs elsewhere (compose.yaml's ``envoy-config`` service runs it). It takes the
limits from the same ``INFERENCE_*`` variables as the server (``INFERENCE_MAX_CONTENT_BYTES``,
...) and the edge settings from ``INFERENCE_ENVOY_*`` (flags override them).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from inference_service.edge.config import (
    DEFAULT_ADMIN_PORT,
    DEFAULT_INTERNAL_PORT,
    DEFAULT_LISTEN_HOST,
    DEFAULT_LISTEN_PORT,
    DEFAULT_UPSTREAM,
    DESCRIPTOR_PATH,
    TEMPLATE_PATH,
    EnvoyError,
    EnvoySettings,
    render_config,
)
from inference_service.limits import RequestLimits
from inference_service.settings import Settings

logger = logging.getLogger(__name__)


def _upstream(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """Write a rendered config for an Envoy that runs elsewhere (e.g. the one of compose.yaml).
    Its size limits derive from the servers' settings, read from the same INFERENCE_* variables
    (INFERENCE_MAX_CONTENT_BYTES, INFERENCE_MAX_METADATA_ENTRIES): give it the servers' values."""
    parser = argparse.ArgumentParser(
        prog="python -m inference_service.edge", description=main.__doc__
    )
    parser.add_argument("command", choices=("render",))
    parser.add_argument("--template", type=Path, default=TEMPLATE_PATH)
    parser.add_argument(
        "--descriptor",
        type=Path,
        default=DESCRIPTOR_PATH,
        help="descriptor set path as that Envoy sees it (not checked here)",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--listen-host", default=DEFAULT_LISTEN_HOST)
    parser.add_argument("--listen-port", type=int, default=DEFAULT_LISTEN_PORT)
    parser.add_argument(
        "--internal-port",
        type=int,
        default=DEFAULT_INTERNAL_PORT,
        help="port of the internal listener (health, reflection), on 127.0.0.1",
    )
    parser.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT)
    parser.add_argument(
        "--upstream",
        type=_upstream,
        action="append",
        help="HOST:PORT of a gRPC server; repeat for several "
        f"(default {DEFAULT_UPSTREAM[0]}:{DEFAULT_UPSTREAM[1]})",
    )
    edge = parser.add_argument_group(
        "edge settings", "each overrides its INFERENCE_ENVOY_* variable (docs/security.md)"
    )
    edge.add_argument("--tls-cert", dest="envoy_tls_cert_file", type=Path, help="PEM chain")
    edge.add_argument("--tls-key", dest="envoy_tls_key_file", type=Path, help="PEM private key")
    edge.add_argument("--jwt-jwks", dest="envoy_jwt_jwks_file", type=Path, help="JWKS file")
    edge.add_argument("--jwt-issuer", dest="envoy_jwt_issuer")
    edge.add_argument(
        "--jwt-audience", dest="envoy_jwt_audiences", action="append", help="repeat for several"
    )
    edge.add_argument("--jwt-required-scope", dest="envoy_jwt_required_scope")
    edge.add_argument(
        "--jwt-read-scope", dest="envoy_jwt_read_scope", help="scope to read (empty: none)"
    )
    edge.add_argument(
        "--jwt-delete-scope", dest="envoy_jwt_delete_scope", help="scope to delete (empty: none)"
    )
    edge.add_argument(
        "--public-health-and-reflection",
        dest="envoy_public_health_and_reflection",
        action="store_const",
        const=True,
        help="also route health and reflection on the public listener",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {
        name: value
        for name, value in vars(args).items()
        if name.startswith("envoy_") and value is not None
    }
    try:
        limits = RequestLimits.from_settings(Settings())
        settings = EnvoySettings(**overrides)
        text = render_config(
            args.template.read_text(),
            descriptor=args.descriptor,
            listen_host=args.listen_host,
            listen_port=args.listen_port,
            internal_port=args.internal_port,
            admin_port=args.admin_port,
            upstreams=args.upstream or [DEFAULT_UPSTREAM],
            limits=limits,
            settings=settings,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    except (EnvoyError, OSError, ValidationError) as exc:
        logger.error("%s", exc)
        return 1
    logger.info(
        "wrote %s (content up to %d bytes: REST requests up to %d bytes, responses up to %d)",
        args.out,
        limits.max_content_bytes,
        limits.rest_request_body_bytes,
        limits.rest_response_body_bytes,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
