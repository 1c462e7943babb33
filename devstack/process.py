"""Start, watch and stop the local processes of the dev stack (Cassandra, the server, Envoy).

Every process is started in its own session with its output in a log file,
its PID written to a pid file, and is stopped by that PID: SIGTERM first,
SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


class ProcessError(RuntimeError):
    """A managed process failed to start or died."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1", attempts: int = 50) -> int:
    """The first of ``count`` consecutive TCP ports that are all free on ``host`` right now."""
    for _ in range(attempts):
        first = free_port(host)
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind((host, port))
            except OSError:
                continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports found on {host}")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by its parent) is not alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    # The state follows the parenthesised command name, which may itself contain spaces.
    return stat.rpartition(")")[2].split()[0] != "Z"


def read_pid(pid_file: Path) -> int | None:
    """The PID in ``pid_file`` if that process is still alive, else ``None``."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


class ManagedProcess:
    """One child process with a log file and a pid file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_file: Path,
        pid_file: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_file = log_file
        self.pid_file = pid_file
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        logger.info("starting %s: %s (log: %s)", self.name, " ".join(self.argv), self.log_file)
        with open(self.log_file, "ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        if self.pid_file is not None:
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.pid_file.write_text(f"{self._popen.pid}\n")

    def poll(self) -> int | None:
        return self._popen.poll() if self._popen else None

    def wait_until(self, ready: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
        """Wait until ``ready()`` is true; raise if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if ready():
                return
            code = self.poll()
            if code is not None:
                raise ProcessError(
                    f"{self.name} exited with status {code} while starting; "
                    f"last lines of {self.log_file}:\n{tail(self.log_file)}"
                )
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"{self.name} not ready after {timeout:.0f}s; "
                    f"last lines of {self.log_file}:\n{tail(self.log_file)}"
                )
            time.sleep(interval)

    def kill(self) -> int | None:
        """SIGKILL (a crash, for fault tests), and reap it. Returns the exit status."""
        if self._popen is None or self._popen.poll() is not None:
            return self.poll()
        self._popen.kill()
        code = self._popen.wait()
        if self.pid_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()
        return code

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Returns the exit status."""
        if self._popen is None:
            return None
        if self._popen.poll() is not None:  # already ended and reaped: its PID may be reused
            code: int | None = self._popen.returncode
        else:
            code = stop_pid(self._popen.pid, grace=grace, popen=self._popen)
        if self.pid_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()
        return code


def stop_pid(
    pid: int, *, grace: float = 20.0, popen: subprocess.Popen[bytes] | None = None
) -> int | None:
    """Stop the process ``pid`` (SIGTERM, then SIGKILL after ``grace`` seconds)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if popen is not None:
            if popen.poll() is not None:
                return popen.returncode
        elif not pid_alive(pid):
            return None
        time.sleep(0.1)
    logger.warning("process %d did not stop within %.0fs; killing it", pid, grace)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if popen is not None:
        return popen.wait()
    return None


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
