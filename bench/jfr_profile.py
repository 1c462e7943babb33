"""Where a Cassandra node's CPU goes: per-thread CPU from ``/proc`` and a Java Flight Recorder
profile, aggregated by thread group and by component (a short sub-bench tool, not part of
``make bench``; ``bench/cassandra_cost.py --profile`` drives it, docs/performance.md, "Round
four: where Cassandra's CPU per Invoke goes (JFR)").

Two views of one block of load, each with its own blind spot:

* **Threads** (``/proc/<pid>/task/*/stat``, names from ``comm``): the CPU each thread used over
  the block, grouped by the thread's name (``THREAD_GROUPS``). Exact and independent of any
  sampler, but the shared executor pool's workers (``SEPWorker``) rename themselves after the
  stage they serve last (Native-Transport-Requests, MutationStage, ReadStage, ...), so those
  are one group here, ``stages (shared pool)``.
* **Samples** (JFR ``jdk.ExecutionSample``: a thread's stack every few ms while it runs Java
  code): the share of each component (``COMPONENTS``: what the leaf-most frame of Cassandra,
  netty or a named JDK package does) within each thread group. Samples count time in Java
  code, also while the kernel has the thread waiting for a core (the machine is shared), and
  never see the JVM's own threads (collector, JIT compiler): so the milliseconds of a
  component are its thread group's CPU (the first view) times its share of that group's
  samples.

Re-aggregate a saved recording::

    .venv/bin/python -m bench.jfr_profile build/cassandra-cost/profile-base.jfr \\
        --threads build/cassandra-cost/profile-base.threads.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")

THREAD_GROUPS: tuple[tuple[str, str], ...] = (
    # (group, regular expression on the thread's name, from /proc or JFR)
    ("GC (G1 and VM threads)", r"^(GC Thread|G1 |VM Thread|VM Periodic|Conc#|Refine|ZWorker)"),
    ("JIT compiler", r"^(C1 |C2 |C1 CompilerThre|C2 CompilerThre|Sweeper)"),
    ("JFR (the recorder itself)", r"^(JFR |JFR:|Attach Listener)"),
    (
        "stages (shared pool)",
        r"^(Native-Transpor|MutationStage|ReadStage|CounterMutation|ViewMutation|"
        r"SharedPool-Work|RequestResponse|PaxosStage|Paxos)",
    ),
    ("netty event loops", r"^(epollEventLoop|nioEventLoop|Messaging-Event|Messaging-Accept)"),
    ("commit log", r"^(COMMIT-LOG|PERIODIC-COMMIT|GROUP-COMMIT|BATCH-COMMIT|CommitLog)"),
    ("memtable flush", r"^(MemtableFlushW|PerDiskMemtable|MemtablePostFlu|MemtableReclaim)"),
    ("compaction", r"^(CompactionExec|ValidationExec|CacheCleanupExe)"),
    ("paxos background", r"^(PaxosRepair|Paxos|PaxosCleanup|PaxosUncommitted)"),
    ("scheduled tasks", r"^(ScheduledFastTa|ScheduledTasks|OptionalTasks|NonPeriodicTask)"),
    ("JVM other", r"^(java|Reference|Finalizer|Signal Dis|Service Thr|Common-Cleaner|Notif)"),
)

COMPONENTS: tuple[tuple[str, str], ...] = (
    # (component, regular expression on "class.method" of a frame), tried leaf to root, first
    # matching frame wins; frames of no component (java.util, the JDK's collections, ...) are
    # skipped, so a sample counts for the code that called them.
    ("commit log", r"^org\.apache\.cassandra\.db\.commitlog\."),
    ("paxos (v2)", r"^org\.apache\.cassandra\.service\.paxos\."),
    ("compaction", r"^org\.apache\.cassandra\.db\.compaction\."),
    ("sstable write/read", r"^org\.apache\.cassandra\.io\.sstable\."),
    ("memtable flush", r"^org\.apache\.cassandra\.db\.memtable\.Flushing"),
    (
        "memtable (partition update, btree, allocator)",
        r"^org\.apache\.cassandra\.(db\.memtable\.|db\.partitions\.|utils\.btree\.|"
        r"utils\.memory\.|db\.rows\.BTreeRow|db\.rows\.Cells|db\.rows\.Row)",
    ),
    (
        "serialization (rows, cells, mutations)",
        r"^org\.apache\.cassandra\.(db\.rows\..*Serializ|db\.Mutation\$|db\..*Serializer|"
        r"db\.marshal\.|db\.SerializationHeader|io\.util\.|utils\.ByteBufferUtil|"
        r"db\.rows\.UnfilteredSerializer|db\.rows\.EncodingStats|utils\.vint)",
    ),
    (
        "reads (read command, iterators)",
        r"^org\.apache\.cassandra\.db\.(Read|SinglePartition|filter\.|transform\.|rows\.Unfiltered)",
    ),
    ("cql (statements, binding, result sets)", r"^org\.apache\.cassandra\.cql3\."),
    ("transport (CQL frames, dispatch)", r"^org\.apache\.cassandra\.(transport|net)\."),
    ("executors (shared pool)", r"^org\.apache\.cassandra\.concurrent\."),
    ("metrics (latency histograms)", r"^(org\.apache\.cassandra\.metrics\.|com\.codahale\.)"),
    ("sstable statistics (tombstone histograms)", r"^org\.apache\.cassandra\.utils\.streamhist"),
    ("other cassandra", r"^org\.apache\.cassandra\."),
    ("netty", r"^io\.netty\."),
    ("checksums, compression", r"^(java\.util\.zip\.|net\.jpountz\.|org\.xerial\.snappy)"),
    ("JDK nio, files", r"^(sun\.nio\.|java\.nio\.)"),
)

_GROUPS = [(name, re.compile(pattern)) for name, pattern in THREAD_GROUPS]
_COMPONENTS = [(name, re.compile(pattern)) for name, pattern in COMPONENTS]
OTHER = "other threads"


def thread_group(name: str) -> str:
    for group, pattern in _GROUPS:
        if pattern.search(name):
            return group
    return OTHER


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """``{tid: (name, CPU seconds)}`` of every live thread of ``pid``."""
    threads: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        threads[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return threads


def process_cpu(pid: int) -> float:
    """CPU seconds of ``pid``, all threads (also those that exited)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], total_s: float
) -> dict[str, Any]:
    """CPU seconds of each thread group between two ``thread_cpu`` snapshots (by the names at
    the end), and of each thread name; ``total_s`` is the process's CPU over the same span
    (threads that exited meanwhile count in it only: ``exited threads``)."""
    groups: Counter[str] = Counter()
    names: Counter[str] = Counter()
    for tid, (name, cpu) in after.items():
        used = cpu - before.get(tid, (name, 0.0))[1]
        if used <= 0:
            continue
        groups[thread_group(name)] += used
        names[re.sub(r"[-:#_ ]?\d+$", "", name)] += used
    gone = total_s - sum(groups.values())
    if gone > 0:
        groups["exited threads"] += gone
    return {"total_s": total_s, "groups": dict(groups), "names": dict(names)}


def samples(recording: Path, events: str = "jdk.ExecutionSample") -> Iterable[dict[str, Any]]:
    """The events of ``recording`` (``jfr print --json``, full stacks)."""
    out = subprocess.run(
        ["jfr", "print", "--json", "--stack-depth", "128", "--events", events, str(recording)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)["recording"]["events"]


def _frames(event: dict[str, Any]) -> list[str]:
    stack = event["values"].get("stackTrace") or {}
    # JFR names classes "java/util/Arrays" but hidden ones (lambdas) "org.apache...$$Lambda$12"
    return [
        f"{frame['method']['type']['name'].replace('/', '.')}.{frame['method']['name']}"
        for frame in stack.get("frames") or []
    ]


def component(frames: Sequence[str]) -> str:
    """The component of a stack (leaf first): the first frame that names one."""
    for frame in frames:
        for name, pattern in _COMPONENTS:
            if pattern.search(frame):
                return name
    return "JDK and other"


def activity(frames: Sequence[str]) -> str:
    """What the whole stack is part of, by its root-side frames (a coarser view than
    ``component``: a row serialised for the commit log counts as the commit log here)."""
    text = "\n".join(frames)
    for name, marker in (
        ("compaction", "db.compaction."),
        ("memtable flush", "db.memtable.Flushing"),
        ("commit log (sync, segments)", "db.commitlog.AbstractCommitLogService"),
        ("commit log (segment allocation)", "db.commitlog.AbstractCommitLogSegmentManager"),
        ("paxos v2: commit / apply", "paxos.PaxosCommit"),
        ("paxos v2: propose", "paxos.PaxosPropose"),
        ("paxos v2: prepare (+ read)", "paxos.PaxosPrepare"),
        ("paxos v2: other", "service.paxos."),
        ("plain write (index entry, content)", "StorageProxy.mutate"),
        ("reads", "ReadCommand"),
        ("CQL request handling (other)", "org.apache.cassandra.transport."),
        ("netty I/O", "io.netty."),
    ):
        if marker in text:
            return name
    return "other"


def event_time(event: dict[str, Any]) -> float:
    """An event's start, in seconds since the epoch (``jfr print --json`` writes it in ISO 8601
    with up to nanoseconds)."""
    text = event["values"]["startTime"].rstrip("Z")
    whole, _, fraction = text.partition(".")
    seconds = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC).timestamp()
    return seconds + float(f"0.{fraction or 0}")


def profile(
    recording: Path, window: tuple[float, float] | None = None, last_s: float | None = None
) -> dict[str, Any]:
    """Samples of ``recording`` counted by (thread group, component) and by activity, and the
    leaf-most Cassandra frames; only those within ``window`` (epoch seconds) or the last
    ``last_s`` seconds of the recording. A recording started while another one runs (the
    node's own, from its start) also holds what the other had in its buffers then."""
    events = list(samples(recording))
    if last_s is not None and events:
        end = max(event_time(e) for e in events)
        window = (end - last_s, end)
    if window is not None:
        events = [e for e in events if window[0] <= event_time(e) <= window[1]]
    by_group: dict[str, Counter[str]] = defaultdict(Counter)
    by_activity: dict[str, Counter[str]] = defaultdict(Counter)
    top: Counter[str] = Counter()
    count = truncated = 0
    for event in events:
        thread = event["values"].get("sampledThread") or {}
        name = thread.get("osName") or thread.get("javaName") or "?"
        frames = _frames(event)
        group = thread_group(name)
        by_group[group][component(frames)] += 1
        by_activity[group][activity(frames)] += 1
        cassandra = next((f for f in frames if f.startswith("org.apache.cassandra.")), None)
        top[cassandra or (frames[0] if frames else "?")] += 1
        count += 1
        truncated += bool((event["values"].get("stackTrace") or {}).get("truncated"))
    return {
        "samples": count,
        "truncated": truncated,
        "by_group": {g: dict(c) for g, c in by_group.items()},
        "by_activity": {g: dict(c) for g, c in by_activity.items()},
        "top_frames": dict(top.most_common(25)),
    }


def apportion(threads: dict[str, Any], prof: dict[str, Any], invokes: int, key: str) -> dict:
    """ms per Invoke of each (thread group, component or activity): a group's CPU (``/proc``)
    split by its samples; groups without samples (GC, JIT) stay whole."""
    table: dict[str, dict[str, float]] = {}
    for group, seconds in threads["groups"].items():
        ms = seconds * 1000 / invokes
        counts = prof[key].get(group)
        if not counts:
            table[group] = {f"[{group}: no Java samples]": ms}
            continue
        n = sum(counts.values())
        table[group] = {part: ms * k / n for part, k in counts.items()}
    return table


def totals(table: dict[str, dict[str, float]]) -> dict[str, float]:
    """``apportion``'s table summed over thread groups, by component (or activity)."""
    out: Counter[str] = Counter()
    for parts in table.values():
        for part, ms in parts.items():
            out[part] += ms
    return dict(out)


def report(threads: dict[str, Any], prof: dict[str, Any], invokes: int) -> str:
    """Markdown tables of one profiled block."""
    lines = [
        f"{invokes} Invokes; node CPU {threads['total_s'] * 1000 / invokes:.2f} ms per Invoke; "
        f"{prof['samples']} Java samples ({prof['truncated']} stacks truncated)",
        "",
        "| thread group | ms per Invoke | share |",
        "| --- | --- | --- |",
    ]
    total = threads["total_s"]
    for group, seconds in sorted(threads["groups"].items(), key=lambda kv: -kv[1]):
        lines.append(
            f"| {group} | {seconds * 1000 / invokes:.2f} | {100 * seconds / total:.0f} % |"
        )
    for key, title in (("by_group", "component"), ("by_activity", "activity")):
        table = apportion(threads, prof, invokes, key)
        lines += ["", f"| {title} (all threads) | ms per Invoke |", "| --- | --- |"]
        for part, ms in sorted(totals(table).items(), key=lambda kv: -kv[1]):
            if ms >= 0.005:
                lines.append(f"| {part} | {ms:.2f} |")
        if key == "by_group" and "stages (shared pool)" in table:
            lines += ["", "| stages (shared pool), by component | ms per Invoke |", "| --- | --- |"]
            for part, ms in sorted(table["stages (shared pool)"].items(), key=lambda kv: -kv[1]):
                if ms >= 0.005:
                    lines.append(f"| {part} | {ms:.2f} |")
    lines += ["", "| leaf-most Cassandra frame | samples |", "| --- | --- |"]
    lines += [f"| `{frame}` | {n} |" for frame, n in list(prof["top_frames"].items())[:15]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jfr_profile", description=__doc__)
    parser.add_argument("recording", type=Path)
    parser.add_argument(
        "--threads", type=Path, required=True, help="the block's thread CPU (JSON, as saved)"
    )
    parser.add_argument(
        "--last-seconds",
        type=float,
        default=None,
        help="only the recording's last seconds (for recordings saved without their window)",
    )
    args = parser.parse_args(argv)
    saved = json.loads(args.threads.read_text())
    window = tuple(saved["window"]) if saved.get("window") else None
    prof = profile(args.recording, window, args.last_seconds)
    print(report(saved["threads"], prof, saved["invokes"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
