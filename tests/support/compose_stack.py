"""A compose project of the repository's compose files, driven with ``docker compose`` (the
docker tests)."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ("compose.yaml", "compose.airgap.yaml")
UP_TIMEOUT_S = 420


@dataclasses.dataclass(frozen=True)
class ComposeStack:
    """A compose project (``compose.yaml`` + ``compose.airgap.yaml``) on its own ports."""

    project: str
    ports: dict[str, int]
    shared_dir: Path

    @property
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "INFERENCE_SHARED_DIR": str(self.shared_dir),
            "COMPOSE_PROJECT_NAME": self.project,
        }
        env.update({f"INFERENCE_COMPOSE_{name}_PORT": str(p) for name, p in self.ports.items()})
        return env

    def compose(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = ["docker", "compose"]
        for name in COMPOSE_FILES:
            argv += ["-f", str(REPO_ROOT / name)]
        argv += ["-p", self.project, *args]
        logger.info("$ %s", " ".join(argv))
        result = subprocess.run(
            argv,
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode:
            logs = self.logs()
            raise AssertionError(
                f"docker compose {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n--- logs ---\n{logs}"
            )
        return result

    def up(self) -> None:
        started = time.monotonic()
        self.compose("up", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), timeout=UP_TIMEOUT_S + 60)
        logger.info("compose stack %s up in %.0fs", self.project, time.monotonic() - started)

    def logs(self, services: Sequence[str] = ()) -> str:
        result = self.compose("logs", "--no-color", "--tail", "40", *services, check=False)
        return result.stdout[-8000:]

    def health(self, service: str) -> str:
        """The health of a service's container (``healthy``, ``starting``, ...)."""
        container = self.compose("ps", "-q", service).stdout.strip()
        result = subprocess.run(
            ["docker", "inspect", "--format", "{{.State.Health.Status}}", container],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.strip()

    def wait_healthy(self, service: str, timeout: float = 120.0) -> str:
        """Poll the service's health until ``healthy`` (or ``timeout``); the last status."""
        deadline = time.monotonic() + timeout
        status = self.health(service)
        while status != "healthy" and time.monotonic() < deadline:
            time.sleep(1.0)
            status = self.health(service)
        return status
