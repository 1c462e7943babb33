"""What /proc says about a process: CPU time, peak and current RSS, children."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (field 3 onwards), or ``None``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (all its threads), in seconds; ``None`` if gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (``VmHWM``) of ``pid`` in MiB; ``None`` if gone."""
    kb = _status_kb(pid, "VmHWM")
    return None if kb is None else kb / 1024


def rss_mb(pid: int) -> float | None:
    """Current resident set size (``VmRSS``) of ``pid`` in MiB; ``None`` if gone."""
    kb = _status_kb(pid, "VmRSS")
    return None if kb is None else kb / 1024


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from every thread's ``children`` file)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, parents first."""
    tree, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        if current in tree:
            continue
        tree.append(current)
        queue += children(current)
    return tree


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``: all but idle, iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(value) for value in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(values) - values[3] - values[4]) / _CLOCK_TICKS


def wait_quiet(
    pids: Iterable[int], *, max_cores: float = 0.1, window_s: float = 1.0, timeout_s: float = 120.0
) -> float:
    """Wait until ``pids`` together use at most ``max_cores`` over a ``window_s`` window (e.g.
    Cassandra has finished the compactions and flushes a write phase left); the seconds waited.
    Gives up, without error, after ``timeout_s``."""
    pids = list(pids)
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        before = sum(cpu_seconds(pid) or 0.0 for pid in pids)
        time.sleep(window_s)
        used = sum(cpu_seconds(pid) or 0.0 for pid in pids) - before
        if used / window_s <= max_cores:
            break
    return time.monotonic() - started


class CpuMeter:
    """CPU seconds used by named groups of processes between ``start`` and ``stop``, and by the
    whole machine (``machine``)."""

    def __init__(self, groups: Mapping[str, Iterable[int]]) -> None:
        self._groups = {name: list(pids) for name, pids in groups.items()}
        self._before: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        sample = {
            name: sum(cpu_seconds(pid) or 0.0 for pid in pids)
            for name, pids in self._groups.items()
        }
        sample["machine"] = machine_busy_seconds()
        return sample

    def start(self) -> None:
        self._before = self._sample()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group since ``start``."""
        after = self._sample()
        return {name: round(after[name] - self._before.get(name, 0.0), 3) for name in after}


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, in order (``sched_getaffinity``; Linux)."""
    return sorted(os.sched_getaffinity(0))


def pin(pids: Iterable[int], cpus: Iterable[int]) -> int:
    """Let every thread of ``pids`` run only on ``cpus`` (``taskset -a -p``); threads they start
    later inherit it from their creator. Returns how many threads were pinned (threads that end
    meanwhile are skipped)."""
    cpu_set = set(cpus)
    pinned = 0
    for pid in pids:
        try:
            tasks = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue
        for tid in tasks:
            try:
                os.sched_setaffinity(tid, cpu_set)
                pinned += 1
            except OSError:  # the thread ended meanwhile
                continue
    return pinned
