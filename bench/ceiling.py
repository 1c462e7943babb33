"""The ceiling: the server's own pipeline in-process, without network or store.

``measure_ceiling`` starts as many worker processes as the stack has server processes, each
with the server's settings (same environment) and so the same detector and the same number of
worker threads. Each worker decodes and detects the fixed image mix round-robin on all its
threads for a fixed time; the ceiling is the sum of their rates, and the CPU time the workers
used meanwhile (``time.process_time``: every thread of the process) divided by the images done
is what one image costs the pipeline. Before that, the first worker alone times decode +
detect serially (one image at a time), which is what a c=1 call can at best cost.

The worker side runs as ``python -m bench.ceiling`` and talks over stdin/stdout, one JSON line
per answer: ``ready`` after loading, then the result of ``serial`` or ``go``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from bench import procstats

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CeilingResult:
    """What the in-process pipeline did."""

    processes: int
    workers_per_process: int
    images: int
    elapsed_s: float
    img_s: float
    per_process_img_s: list[float]
    serial_median_ms: float
    serial_p95_ms: float
    serial_per_image_ms: dict[str, float]
    peak_rss_mb: list[float]
    cpu_s: float
    """CPU time (user + system) the worker processes used during the measured time, summed."""
    cpu_cores: float
    cpu_ms_per_img: float
    """``cpu_s`` per image done, in ms: what one image costs the in-process pipeline."""


# --- worker (child process) ------------------------------------------------------------------


class _Pipeline:
    """Decode + detect, as the server does it, with the server's settings."""

    def __init__(self, images_dir: Path, names: Sequence[str]) -> None:
        from bench.payloads import load_mix
        from inference_service.app import build_detector
        from inference_service.images.decoder import decode_image
        from inference_service.settings import Settings

        self.settings = Settings()  # the worker's entry point: INFERENCE_* as the servers get
        self._decode = decode_image
        self.detector = build_detector(self.settings)
        self.mix = load_mix(images_dir, names)

    def run_one(self, index: int) -> None:
        image = self._decode(
            self.mix[index % len(self.mix)].content, max_pixels=self.settings.max_image_pixels
        )
        self.detector.detect(image)

    def warm_up(self, pool: ThreadPoolExecutor) -> None:
        """Every image on every thread (interpreters and resize tables are made lazily)."""
        rounds = len(self.mix) * self.settings.workers * 2
        list(pool.map(self.run_one, range(rounds)))

    def serial(self, passes: int) -> dict[str, object]:
        """Time each image ``passes`` times, one at a time, on the calling thread."""
        times: dict[str, list[float]] = {image.name: [] for image in self.mix}
        for index in range(passes * len(self.mix)):
            started = time.perf_counter()
            self.run_one(index)
            times[self.mix[index % len(self.mix)].name].append(
                (time.perf_counter() - started) * 1000
            )
        every = sorted(t for values in times.values() for t in values)
        return {
            "median_ms": statistics.median(every),
            "p95_ms": every[max(0, round(0.95 * len(every)) - 1)],
            "per_image_ms": {name: statistics.median(v) for name, v in times.items()},
        }

    def parallel(self, pool: ThreadPoolExecutor, duration_s: float) -> dict[str, object]:
        """All worker threads on the mix for ``duration_s``; images done, time taken and the
        CPU time the process used meanwhile."""
        counter = itertools.count()
        done = [0] * self.settings.workers
        deadline = time.perf_counter() + duration_s

        def loop(slot: int) -> None:
            while time.perf_counter() < deadline:
                self.run_one(next(counter))
                done[slot] += 1

        started = time.perf_counter()
        cpu_started = time.process_time()
        list(pool.map(loop, range(self.settings.workers)))
        return {
            "images": sum(done),
            "elapsed_s": time.perf_counter() - started,
            # user + system time of this whole process (every thread, the model's included)
            "cpu_s": time.process_time() - cpu_started,
        }


def _answer(data: Mapping[str, object]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def worker_main(argv: Sequence[str] | None = None) -> int:
    """The worker process: load, say ready, then obey ``serial N`` / ``go SECONDS`` / EOF."""
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("--images-dir", type=Path, required=True)
    parser.add_argument("--image", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    pipeline = _Pipeline(args.images_dir, args.image)
    with ThreadPoolExecutor(pipeline.settings.workers, thread_name_prefix="ceiling") as pool:
        pipeline.warm_up(pool)
        _answer({"ready": True, "workers": pipeline.settings.workers})
        for line in sys.stdin:
            command, _, value = line.strip().partition(" ")
            if command == "serial":
                _answer(pipeline.serial(int(value)))
            elif command == "go":
                _answer(pipeline.parallel(pool, float(value)))
            else:
                break
    pipeline.detector.close()
    return 0


# --- coordinator -------------------------------------------------------------------------------


class _Worker:
    """One worker process and its pipes."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], log_file: Path, cwd: Path
    ) -> None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "wb") as log:
            self.process = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=dict(env),
                text=True,
                cwd=cwd,
                start_new_session=True,
            )
        self.log_file = log_file

    def send(self, command: str) -> None:
        stdin: IO[str] | None = self.process.stdin
        assert stdin is not None
        stdin.write(command + "\n")
        stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        """The next JSON line, waiting at most ``timeout`` seconds."""
        stdout = self.process.stdout
        assert stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            raise RuntimeError(
                f"ceiling worker {self.process.pid} gave no answer in {timeout:.0f}s; "
                f"see {self.log_file}"
            )
        return json.loads(result[0])

    def stop(self) -> None:
        """Close stdin (the worker exits), then SIGKILL by PID if it lingers."""
        with contextlib.suppress(OSError):
            if self.process.stdin:
                self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


def measure_ceiling(
    *,
    processes: int,
    env: Mapping[str, str],
    images_dir: Path,
    image_names: Sequence[str],
    duration_s: float,
    serial_passes: int,
    log_dir: Path,
    load_timeout_s: float = 180.0,
) -> CeilingResult:
    """Run the in-process pipeline with the stack's layout; see the module docstring."""
    argv = [sys.executable, "-m", "bench.ceiling", "--images-dir", str(images_dir)]
    for name in image_names:
        argv += ["--image", name]
    cwd = Path(__file__).resolve().parent.parent
    workers = [_Worker(argv, env, log_dir / f"ceiling-{i}.log", cwd) for i in range(processes)]
    try:
        ready = [worker.receive(load_timeout_s) for worker in workers]
        workers[0].send(f"serial {serial_passes}")
        serial = workers[0].receive(load_timeout_s)
        for worker in workers:
            worker.send(f"go {duration_s}")
        results = [worker.receive(duration_s + 60) for worker in workers]
        peak = [procstats.peak_rss_mb(w.process.pid) or 0.0 for w in workers]
    finally:
        for worker in workers:
            worker.stop()
    rates = [r["images"] / r["elapsed_s"] for r in results]
    images = sum(r["images"] for r in results)
    elapsed = max(r["elapsed_s"] for r in results)
    cpu = sum(r["cpu_s"] for r in results)
    return CeilingResult(
        processes=processes,
        workers_per_process=int(ready[0]["workers"]),
        images=images,
        elapsed_s=elapsed,
        img_s=sum(rates),
        per_process_img_s=[round(r, 1) for r in rates],
        serial_median_ms=serial["median_ms"],
        serial_p95_ms=serial["p95_ms"],
        serial_per_image_ms={k: round(v, 2) for k, v in serial["per_image_ms"].items()},
        peak_rss_mb=[round(p, 1) for p in peak],
        cpu_s=round(cpu, 3),
        cpu_cores=round(cpu / elapsed, 3) if elapsed > 0 else math.nan,
        cpu_ms_per_img=round(cpu * 1000 / images, 3) if images else math.nan,
    )


if __name__ == "__main__":
    sys.exit(worker_main())
