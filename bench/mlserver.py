"""The peer: Seldon MLServer serving the same detector (``bench/mlserver_runtime``).

MLServer lives in its own virtualenv (``build/bench/mlserver-venv``, made by ``make bench``
from ``bench/requirements-mlserver.txt``); this module only writes its model repository,
starts ``mlserver start`` with a given ``parallel_workers``, waits until the model is ready,
and stops it (and any worker it left) by PID.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench import procstats
from devstack.process import ManagedProcess, pid_alive, port_open

logger = logging.getLogger(__name__)

MODEL_NAME = "face-detector"
RUNTIME_DIR = Path(__file__).resolve().parent / "mlserver_runtime"
TOOLS = RUNTIME_DIR / "tools.py"
INFER_METHOD = "inference.GRPCInferenceService.ModelInfer"


class MLServerPeer:
    """One ``mlserver start`` with ``parallel_workers`` inference processes (0: in the main one)."""

    def __init__(
        self,
        *,
        venv: Path,
        work_dir: Path,
        source_dir: Path,
        model_path: Path,
        parallel_workers: int,
        http_port: int,
        grpc_port: int,
        base_env: Mapping[str, str],
        detector_extra: Mapping[str, object],
    ) -> None:
        self.venv = venv
        self.root = work_dir / f"mlserver-pw{parallel_workers}"
        self.source_dir = source_dir
        self.model_path = model_path
        self.parallel_workers = parallel_workers
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.base_env = dict(base_env)
        self.detector_extra = dict(detector_extra)
        self._process: ManagedProcess | None = None
        self._tree: list[int] = []

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def config(self) -> dict[str, object]:
        """MLServer's server-wide settings (``settings.json``)."""
        return {
            "debug": False,
            "host": "127.0.0.1",
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "parallel_workers": self.parallel_workers,
            # Off: our server has no metrics endpoint either; this only spares MLServer work.
            "metrics_endpoint": None,
            "load_models_at_startup": True,
        }

    def write_repository(self) -> None:
        """``settings.json`` and ``models/face-detector/model-settings.json`` under ``root``."""
        model_dir = self.root / "models" / MODEL_NAME
        model_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "settings.json").write_text(json.dumps(self.config, indent=2))
        model_settings = {
            "name": MODEL_NAME,
            "implementation": "face_runtime.FaceDetectorRuntime",
            "parameters": {"uri": str(self.model_path), "extra": self.detector_extra},
        }
        (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in self.base_env.items() if not key.startswith("MLSERVER")}
        env["PYTHONPATH"] = os.pathsep.join([str(RUNTIME_DIR), str(self.source_dir)])
        return env

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/v2/models/{MODEL_NAME}/ready"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def start(self, timeout: float = 180.0) -> None:
        for port in (self.http_port, self.grpc_port):
            if port_open("127.0.0.1", port):
                raise RuntimeError(f"port {port} is taken; choose other MLServer ports")
        self.write_repository()
        self._process = ManagedProcess(
            f"mlserver-pw{self.parallel_workers}",
            [str(self.venv / "bin" / "mlserver"), "start", str(self.root)],
            log_file=self.root / "mlserver.log",
            pid_file=self.root / "mlserver.pid",
            env=self._env(),
            cwd=self.root,
        )
        self._process.start()
        self._process.wait_until(self.ready, timeout=timeout, interval=0.3)
        self.refresh_tree()
        logger.info(
            "MLServer ready (parallel_workers=%d, pids %s)", self.parallel_workers, self._tree
        )

    def refresh_tree(self) -> list[int]:
        """Remember MLServer's processes (main, inference workers, helpers) for RSS and stop."""
        if self._process is not None and self._process.pid is not None:
            for pid in procstats.process_tree(self._process.pid):
                if pid not in self._tree:
                    self._tree.append(pid)
        return list(self._tree)

    def peak_rss_mb(self) -> dict[str, float]:
        """Peak RSS (VmHWM) of each live MLServer process, by PID."""
        self.refresh_tree()
        peaks = {str(pid): procstats.peak_rss_mb(pid) for pid in self._tree}
        return {pid: round(mb, 1) for pid, mb in peaks.items() if mb is not None}

    def stop(self) -> None:
        """SIGTERM the main process (it stops its workers), then SIGKILL any leftover by PID."""
        self.refresh_tree()
        if self._process is not None:
            self._process.stop(grace=20.0)
            self._process = None
        deadline = time.monotonic() + 5.0
        for pid in self._tree:
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                logger.warning("MLServer process %d outlived its parent; killing it", pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._tree = []


def _tools(venv: Path, args: Sequence[str], timeout: float = 120.0) -> str:
    result = subprocess.run(
        [str(venv / "bin" / "python"), str(TOOLS), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{TOOLS.name} {args[0]} failed: {result.stderr[-2000:]}")
    return result.stdout


def write_protoset(venv: Path, out: Path) -> Path:
    """The V2 dataplane's FileDescriptorSet, from MLServer's own stubs."""
    _tools(venv, ["protoset", str(out)])
    return out


def write_requests(venv: Path, images: Sequence[Path], out: Path) -> Path:
    """One ``ModelInferRequest`` per image (uvarint-framed), for ``bench-ghz``."""
    _tools(venv, ["requests", "--model", MODEL_NAME, "--out", str(out), *map(str, images)])
    return out


def detections(venv: Path, target: str, images: Sequence[Path]) -> dict[str, list[list[float]]]:
    """What the peer returns for each image: ``[x_min, y_min, x_max, y_max, score]`` lists."""
    args = ["check", "--target", target, "--model", MODEL_NAME, *map(str, images)]
    return json.loads(_tools(venv, args))
