"""The inference server as a local child process (``inference-service serve``)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.process import ManagedProcess

logger = logging.getLogger(__name__)


def grpc_serving(address: str, timeout: float = 1.0) -> bool:
    """True when ``address`` answers gRPC health with SERVING."""
    try:
        with grpc.insecure_channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
    except grpc.RpcError:
        return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


class LocalServer:
    """Runs ``inference-service serve`` with the given ``INFERENCE_*`` settings."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        settings_env: Mapping[str, str],
        run_dir: Path,
        base_env: Mapping[str, str],
        name: str = "server",
    ) -> None:
        self.host = host
        self.port = port
        env = {**base_env, **settings_env, "INFERENCE_HOST": host, "INFERENCE_PORT": str(port)}
        self._process = ManagedProcess(
            name,
            [sys.executable, "-m", "inference_service", "serve"],
            log_file=run_dir / f"{name}.log",
            pid_file=run_dir / f"{name}.pid",
            env=env,
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def log_file(self) -> Path:
        return self._process.log_file

    def poll(self) -> int | None:
        """The exit status once the process has ended, else ``None``."""
        return self._process.poll()

    def start(self, timeout: float = 120.0) -> None:
        self._process.start()
        self._process.wait_until(lambda: grpc_serving(self.address), timeout=timeout, interval=0.3)
        logger.info("server serving on %s (pid %s)", self.address, self.pid)

    def reload(self) -> None:
        """SIGHUP: the server loads its model configuration again (calls go on meanwhile)."""
        if self.pid is None or self.poll() is not None:
            raise RuntimeError(f"server {self.address} is not running")
        os.kill(self.pid, signal.SIGHUP)

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM (the server drains, then exits); SIGKILL after ``grace`` seconds."""
        return self._process.stop(grace=grace)

    def kill(self) -> int | None:
        """SIGKILL: the server dies between any two lines (fault tests)."""
        return self._process.kill()
