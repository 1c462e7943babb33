"""Apache Cassandra for development, the tests and CI, run from Maven jars: one node or a
local cluster of N nodes.

The Apache binary tarball is not needed: the server runs from ``cassandra-all`` and its runtime
dependencies, resolved once with Maven into ``<root>/dist``. Everything else (generated config,
data, commit log, logs, pid file) also lives under ``root`` (default ``<repo>/build/cassandra``),
so a second start reuses both the jars and the data.

The node binds to 127.0.0.1 only, has authentication off and is tuned to start fast rather than
to run fast: small heap, C1-only JIT, an AppCDS archive of the loaded classes (written when the
first started node stops, used from the second start on), no gossip settle wait, a 100 ms ring
delay, one token. On Linux its timer slack is 0.5 ms (``TIMER_SLACK_NS``): idle workers of its
thread pools then wake up far less often.

A cluster (``LocalCassandraCluster``) runs N such nodes on loopback aliases, the way ``ccm`` does:
node i listens on ``127.0.0.i`` with the same ports as the others, keeps its files under
``<root>/node<i>`` (default root ``<repo>/build/cassandra-cluster``) and shares the jars of
``<repo>/build/cassandra/dist``. Every node is a seed, owns one token of an evenly split ring and
keeps hints for the nodes that are down.

Command line::

    python -m devstack.cassandra start|stop|status [--root DIR] [--port N]
        [--nodes N]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devstack.process import (
    ManagedProcess,
    ProcessError,
    pid_alive,
    port_open,
    read_pid,
    stop_pid,
    tail,
)

logger = logging.getLogger(__name__)

CASSANDRA_VERSION = "5.0.9"
"""Newest 5.0.x ``cassandra-all`` on Maven Central that resolves here."""
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

# From upstream conf/jvm17-server.options: what Cassandra 5 needs to run on Java 17.
_JAVA17_MODULE_OPTIONS = (
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
)

# General server options (upstream conf/jvm-server.options), less the ones that slow a dev start
# (-XX:+AlwaysPreTouch) or do not apply to a small heap.
_SERVER_OPTIONS = (
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-Xss256k",
    "-ea",
    "-da:net.openhft...",
    "-XX:+UseThreadPriorities",
    "-XX:+HeapDumpOnOutOfMemoryError",
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:+PerfDisableSharedMem",
    "-Djava.net.preferIPv4Stack=true",
)

GC_OPTIONS: dict[str, tuple[str, ...]] = {
    "g1": ("-XX:+UseG1GC", "-XX:MaxGCPauseMillis=300"),
    "serial": ("-XX:+UseSerialGC",),
    "parallel": ("-XX:+UseParallelGC",),
    "shenandoah": ("-XX:+UseShenandoahGC",),
    "zgc": ("-XX:+UseZGC",),
}
"""The JVM's garbage collector, by name (``LocalCassandra(gc=...)``). G1 is upstream's choice
and the default here; the others were measured for the node's CPU per Invoke
(docs/performance.md, round four: ``bench/cassandra_cost.py``)."""

# Dev-only start-up and shut-down shortcuts; each is safe for a lone node.
_FAST_DEV_OPTIONS = (
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.ring_delay_ms=100",
    "-Dcassandra.superuser_setup_delay_ms=0",
    "-Dcassandra.skip_paxos_state_rebuild=true",
    # The value Cassandra 5.0 estimates on x86-64 with compressed oops; skips a ~1 s estimate.
    "-Dcassandra.memtable.row_overhead_size=180",
    # A lone node has nobody to announce its shutdown to, nor messages to wait for (saves 4 s).
    "-Dcassandra.shutdown_announce_in_ms=0",
    "-Dcassandra.test.messagingService.nonGracefulShutdown=true",
)

# What a node of a local cluster changes in the above. The short ring delay stays (it bounds the
# shadow gossip round of a node whose fellow seeds are not up yet), but gossip's quarantine, and
# with it the time after which a node that gossips without tokens yet is dropped as a "fat
# client", is set back to upstream's default (twice the default 30 s ring delay) instead of
# 200 ms. The default role's setup is retried until every known node is up: at once, it would
# spin (and log twice per try) while the others start. A node that stops tells the others, so
# they do not wait for their failure detectors (20-40 s) to mark it down.
_CLUSTER_NODE_OPTIONS = (
    "-Dcassandra.gossip_quarantine_delay_ms=60000",
    "-Dcassandra.superuser_setup_delay_ms=1000",
    "-Dcassandra.shutdown_announce_in_ms=500",
)

TIMER_SLACK_NS = 500_000
"""The node's timer slack, in ns (Linux: ``prctl(PR_SET_TIMERSLACK)``; the default is 50 us): how
much later than asked the kernel may end a timed sleep, so as to batch wake-ups. Cassandra's
shared executor pool (``SEPWorker``) keeps a worker awake for about 10 ms after each task,
sleeping 10 us at a time (``LockSupport.parkNanos``, hard-coded, no setting), in case more work
comes: at 10-40 requests/s that polling, not the requests, was most of the node's CPU (about
6 ms per request in the pool's threads, 2 ms with 0.5 ms of slack; docs/performance.md, round
three). 1 ms saved no more and slowed lightweight transactions. Every JVM thread inherits the
slack of the process that starts it; the kernel ignores it for real-time threads. ``None`` or
0: the system's default."""

# Sets the timer slack of this process (PR_SET_TIMERSLACK is 29), then becomes the JVM, which
# keeps it across exec and hands it to every thread it starts. argv: slack (ns), java command.
_TIMER_SLACK_LAUNCHER = (
    "import ctypes, os, sys; "
    "failed = ctypes.CDLL(None, use_errno=True).prctl(29, int(sys.argv[1]), 0, 0, 0); "
    "failed and print('cannot set the timer slack:', os.strerror(ctypes.get_errno()), "
    "file=sys.stderr); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by devstack.cassandra: the runtime of a dev Cassandra node. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.inference-service.devstack</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""

_CASSANDRA_YAML = """\
# Generated by devstack.cassandra on every start; edits are overwritten.
cluster_name: inference-dev
num_tokens: 1
initial_token: {initial_token}
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
dynamic_snitch: false
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{seeds}"
listen_address: {host}
rpc_address: {host}
storage_port: {storage_port}
native_transport_port: {native_port}
start_native_transport: true

{security}
data_file_directories:
  - {root}/data
commitlog_directory: {root}/commitlog
saved_caches_directory: {root}/saved_caches
hints_directory: {root}/hints
cdc_raw_directory: {root}/cdc_raw

# A mutation must fit in half a commit log segment: 32 MiB segments take rows of up to 16 MiB,
# enough for 8 MiB of content. External clusters need the same (default segment: 32 MiB).
commitlog_segment_size: 32MiB
commitlog_sync: periodic
commitlog_sync_period: 10000ms
native_transport_max_frame_size: 16MiB
native_transport_max_message_size: 16MiB
native_transport_max_request_data_in_flight_per_ip: 128MiB
native_transport_max_request_data_in_flight: 256MiB

storage_compatibility_mode: NONE
# Paxos v2 (Cassandra 4.1+): fewer round trips and less work per lightweight transaction than
# the default v1; every claim of an id is one.
paxos_variant: v2
auto_snapshot: false
snapshot_before_compaction: false
# Memtable cells (the 100-500 KB images above all) live off the JVM heap: the collector's
# threads spent 0.42 ms per Invoke with the default heap_buffers and 0.05 ms with this
# (docs/performance.md, round four). Durability is the commit log's, unchanged; the node's
# memory outside the heap grows by up to memtable_offheap_space (a quarter of the heap).
memtable_allocation_type: offheap_objects
hinted_handoff_enabled: {hinted_handoff}
concurrent_compactors: 1
{cluster_settings}"""

# Appended to the config of a node of a cluster (empty for a lone node).
_CLUSTER_SETTINGS = """
# One node of a local cluster. Its token is set, and the nodes of a new, empty cluster start
# together: nothing to stream, so no bootstrap (every node is also a seed, and seeds never do).
auto_bootstrap: false
# The nodes start one after the other: the first need not wait (10 s) for the others to connect
# before it takes CQL clients.
block_for_peers_timeout_in_secs: 0
"""

_LOGBACK_XML = """\
<!-- Generated by devstack.cassandra on every start. -->
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>{logs}/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>{logs}/system.log.%i.zip</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="FILE"/>
  </root>
</configuration>
"""


_OPEN_SECURITY = """\
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
"""

# PasswordAuthenticator: the default superuser cassandra/cassandra is created at the first start.
_AUTH_SECURITY = """\
authenticator: PasswordAuthenticator
authorizer: CassandraAuthorizer
role_manager: CassandraRoleManager
"""

_CLIENT_TLS = """\
client_encryption_options:
  enabled: true
  optional: false
  keystore: {keystore}
  keystore_password: {password}
  store_type: PKCS12
  require_client_auth: false
"""

DEFAULT_SUPERUSER = ("cassandra", "cassandra")
"""The role PasswordAuthenticator creates on a new node (change it on a real cluster)."""


@dataclasses.dataclass(frozen=True)
class ClientTls:
    """TLS for the node's CQL port: a PKCS12 keystore holding its key and certificate, and the CA
    certificate (PEM) that clients use to verify it."""

    keystore: Path
    keystore_password: str = dataclasses.field(repr=False)
    ca_file: Path


def default_root() -> Path:
    """``<repo>/build/cassandra``, the repository found from this file (else the cwd)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / ".git").exists() or (parent / "server" / "pyproject.toml").is_file():
            return parent / "build" / "cassandra"
    return Path.cwd() / "build" / "cassandra"


def cql_answers(
    host: str,
    port: int,
    timeout: float = 5.0,
    *,
    credentials: tuple[str, str] | None = None,
    tls_ca_file: Path | None = None,
) -> bool:
    """True when a driver connection to ``host:port`` can read ``system.local`` (as the user
    of ``credentials``, over TLS verified with ``tls_ca_file`` when given)."""
    if not port_open(host, port, timeout=min(timeout, 1.0)):
        return False
    # Imported here: the driver is heavy, and the CLI's ``stop`` does not need it.
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    profile = ExecutionProfile(
        load_balancing_policy=WhiteListRoundRobinPolicy([host]), request_timeout=timeout
    )
    auth_provider = None
    if credentials is not None:
        from cassandra.auth import PlainTextAuthProvider

        auth_provider = PlainTextAuthProvider(username=credentials[0], password=credentials[1])
    ssl_context = None
    if tls_ca_file is not None:
        import ssl

        ssl_context = ssl.create_default_context(cafile=str(tls_ca_file))
    cluster = Cluster(
        [host],
        port=port,
        auth_provider=auth_provider,
        ssl_context=ssl_context,
        protocol_version=5,
        connect_timeout=timeout,
        control_connection_timeout=timeout,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version FROM system.local").one()
        return row is not None
    except Exception as exc:  # any failure means "not ready yet"
        logger.debug("CQL on %s:%d not ready: %s", host, port, exc)
        return False
    finally:
        cluster.shutdown()


def _quote_java_arg(arg: str) -> str:
    """Quote one argument for a Java ``@argfile`` when it needs it."""
    if arg and not any(char.isspace() or char in "\"'#\\" for char in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _with_extra_yaml(text: str, extra: str) -> str:
    """``text`` with ``extra`` appended; a top-level one-line setting of ``text`` that ``extra``
    sets again is dropped (YAML keys must be unique)."""
    keys = {
        line.partition(":")[0]
        for line in extra.splitlines()
        if line and not line[0].isspace() and not line.startswith("#") and ":" in line
    }
    kept = [line for line in text.splitlines() if line.partition(":")[0] not in keys]
    return "\n".join(kept) + f"\n\n# extra settings\n{extra.strip()}\n"


class LocalCassandra:
    """One local Cassandra node under ``root``: resolve, configure, start, check and stop it.

    ``start`` reuses a node already running from the same ``root`` (pid file alive and CQL
    answering); ``stop`` stops the node of the pid file, whoever started it.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        host: str = "127.0.0.1",
        native_port: int = 9042,
        storage_port: int = 7000,
        max_heap: str = "1G",
        min_heap: str = "256M",
        version: str = CASSANDRA_VERSION,
        dist_dir: Path | None = None,
        java: str = "java",
        mvn: str = "mvn",
        class_data_sharing: bool = True,
        c1_only: bool = True,
        seeds: Sequence[str] | None = None,
        initial_token: int = 0,
        hinted_handoff: bool = False,
        password_auth: bool = False,
        client_tls: ClientTls | None = None,
        timer_slack_ns: int | None = TIMER_SLACK_NS,
        jmx_port: int | None = None,
        gc: str = "g1",
        extra_yaml: str = "",
    ) -> None:
        """
        Args:
            root: folder of config, data, logs and pid file (default ``<repo>/build/cassandra``).
            host: address of every listener; keep it a loopback address.
            native_port: CQL port.
            storage_port: inter-node port (bound even by a lone node).
            max_heap / min_heap: ``-Xmx`` / ``-Xms``. A small ``-Xms`` keeps start-up fast
                (Cassandra locks the committed heap in memory when it may).
            version: ``org.apache.cassandra:cassandra-all`` version.
            dist_dir: where the jars and the class archive go (default ``<root>/dist``); nodes
                may share one.
            java / mvn: the executables to run.
            class_data_sharing: keep an AppCDS archive of loaded classes to start faster.
            c1_only: stop the JIT at C1 (``-XX:TieredStopAtLevel=1``): starts faster, runs slower.
            seeds: ``host:storage_port`` of the cluster's seed nodes; none (the default) makes a
                lone node, its own only seed. A node whose seeds are others is a node of a
                cluster: no bootstrap, and the cluster's gossip settings (see
                ``LocalCassandraCluster``).
            initial_token: the node's one token (Murmur3: -2**63 .. 2**63-1).
            hinted_handoff: keep hints for replicas that are down (useful in a cluster only).
            password_auth: ``PasswordAuthenticator`` (and ``CassandraAuthorizer``); clients log
                in as ``DEFAULT_SUPERUSER`` or a role made with it.
            client_tls: TLS on the CQL port (no plain connections then).
            timer_slack_ns: the JVM's timer slack on Linux (``TIMER_SLACK_NS``, 0.5 ms: far
                fewer wake-ups of idle pool workers); ``None`` or 0 leaves the system's.
            jmx_port: serve JMX on this loopback port (no authentication: loopback only), so
                that ``nodetool`` (``nodetool_command``) can manage the node; ``None``: no JMX.
            gc: the garbage collector, a key of ``GC_OPTIONS`` (default ``g1``).
            extra_yaml: lines appended to ``cassandra.yaml`` (settings the generated file does
                not set; for measurements such as ``bench/cassandra_cost.py``).
        """
        if gc not in GC_OPTIONS:
            raise ValueError(f"gc {gc!r}: choose from {sorted(GC_OPTIONS)}")
        self.root = (root or default_root()).resolve()
        self.host = host
        self.native_port = native_port
        self.storage_port = storage_port
        self.max_heap = max_heap
        self.min_heap = min_heap
        self.version = version
        self.dist_dir = (dist_dir or self.root / "dist").resolve()
        self.java = java
        self.mvn = mvn
        self.class_data_sharing = class_data_sharing
        self.c1_only = c1_only
        self.seeds = tuple(seeds) if seeds else (self.address,)
        self.initial_token = initial_token
        self.hinted_handoff = hinted_handoff
        self.password_auth = password_auth
        self.client_tls = client_tls
        self.timer_slack_ns = timer_slack_ns
        self.jmx_port = jmx_port
        self.gc = gc
        self.extra_yaml = extra_yaml
        self._process: ManagedProcess | None = None

    @property
    def address(self) -> str:
        """``host:storage_port``: the node's name in gossip, seed lists and logs."""
        return f"{self.host}:{self.storage_port}"

    @property
    def in_cluster(self) -> bool:
        """True for a node of a cluster: one with seeds other than itself."""
        return self.seeds != (self.address,)

    # --- paths --------------------------------------------------------------------------

    @property
    def lib_dir(self) -> Path:
        return self.dist_dir / f"cassandra-{self.version}" / "lib"

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def args_file(self) -> Path:
        """The node's JVM options (a Java ``@argfile``), written at each start."""
        return self.conf_dir / "jvm.args"

    @property
    def pid_file(self) -> Path:
        return self.root / "cassandra.pid"

    @property
    def stdout_log(self) -> Path:
        return self.logs_dir / "stdout.log"

    @property
    def system_log(self) -> Path:
        return self.logs_dir / "system.log"

    # --- distribution -------------------------------------------------------------------

    def maven_command(self) -> list[str]:
        """The ``mvn`` command that copies the runtime jars into ``lib_dir``."""
        return [
            self.mvn,
            "-B",
            "-q",
            "-f",
            str(self.lib_dir.parent / "pom.xml"),
            f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={self.lib_dir}",
        ]

    def ensure_distribution(self) -> list[Path]:
        """Resolve the jars once (Maven caches them in ``~/.m2``); return the classpath."""
        marker = self.lib_dir / ".complete"
        if not marker.is_file():
            if shutil.which(self.mvn) is None:
                raise ProcessError(
                    f"{self.mvn!r} not found: Maven is needed once to fetch "
                    f"Cassandra {self.version}"
                )
            self.lib_dir.mkdir(parents=True, exist_ok=True)
            (self.lib_dir.parent / "pom.xml").write_text(_POM.format(version=self.version))
            command = self.maven_command()
            logger.info("resolving Cassandra %s jars: %s", self.version, " ".join(command))
            started = time.monotonic()
            result = subprocess.run(  # argv is built by us
                command, capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise ProcessError(
                    f"resolving Cassandra {self.version} failed (status {result.returncode}):\n"
                    f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
                )
            marker.write_text(f"{self.version}\n")
            logger.info("resolved Cassandra jars in %.1fs", time.monotonic() - started)
        jars = sorted(self.lib_dir.glob("*.jar"))
        if not any(jar.name.startswith("cassandra-all-") for jar in jars):
            raise ProcessError(f"no cassandra-all jar in {self.lib_dir}; delete it and retry")
        return jars

    # --- configuration ------------------------------------------------------------------

    def write_config(self) -> None:
        """(Re)write ``cassandra.yaml`` and ``logback.xml`` and create the data folders."""
        for name in ("conf", "data", "commitlog", "saved_caches", "hints", "cdc_raw", "logs"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        text = _CASSANDRA_YAML.format(
            host=self.host,
            root=self.root,
            native_port=self.native_port,
            storage_port=self.storage_port,
            seeds=",".join(self.seeds),
            initial_token=self.initial_token,
            hinted_handoff=str(self.hinted_handoff).lower(),
            cluster_settings=_CLUSTER_SETTINGS if self.in_cluster else "",
            security=self._security_yaml(),
        )
        if self.extra_yaml:
            text = _with_extra_yaml(text, self.extra_yaml)
        (self.conf_dir / "cassandra.yaml").write_text(text)
        (self.conf_dir / "logback.xml").write_text(_LOGBACK_XML.format(logs=self.logs_dir))

    def _security_yaml(self) -> str:
        text = _AUTH_SECURITY if self.password_auth else _OPEN_SECURITY
        if self.client_tls is not None:
            text += _CLIENT_TLS.format(
                keystore=self.client_tls.keystore, password=self.client_tls.keystore_password
            )
        return text

    def cql_answers(self, timeout: float = 5.0) -> bool:
        """True when the node answers CQL (logged in, over TLS, as its settings need)."""
        return cql_answers(
            self.host,
            self.native_port,
            timeout,
            credentials=DEFAULT_SUPERUSER if self.password_auth else None,
            tls_ca_file=self.client_tls.ca_file if self.client_tls is not None else None,
        )

    def _cds_archive(self, classpath: str) -> Path:
        """Where the class archive for this JVM and classpath lives (it is tied to both)."""
        java_version = subprocess.run(
            [self.java, "-version"], capture_output=True, text=True, check=False
        ).stderr
        key = hashlib.sha256(f"{java_version}\n{classpath}\n{self.c1_only}".encode()).hexdigest()
        return self.dist_dir / "cds" / f"classes-{key[:16]}.jsa"

    def jvm_command(self) -> list[str]:
        """The ``java`` command of the node; its options are written to ``conf/jvm.args``."""
        jars = self.ensure_distribution()
        # Jars only: a class-data-sharing archive refuses non-empty folders on the classpath.
        classpath = ":".join(str(jar) for jar in jars)
        options = [
            f"-Xms{self.min_heap}",
            f"-Xmx{self.max_heap}",
            *GC_OPTIONS[self.gc],
            *_SERVER_OPTIONS,
            *_JAVA17_MODULE_OPTIONS,
            *_FAST_DEV_OPTIONS,
        ]
        if self.in_cluster:
            names = {option.partition("=")[0] for option in _CLUSTER_NODE_OPTIONS}
            options = [option for option in options if option.partition("=")[0] not in names]
            options += _CLUSTER_NODE_OPTIONS
        if self.c1_only:
            options.append("-XX:TieredStopAtLevel=1")
        if self.class_data_sharing:
            archive = self._cds_archive(classpath)
            archive.parent.mkdir(parents=True, exist_ok=True)
            if archive.is_file():
                options.append(f"-XX:SharedArchiveFile={archive}")
            else:
                # Written by the JVM when it exits; ``stop`` promotes it once the exit was clean.
                options.append(f"-XX:ArchiveClassesAtExit={archive.with_suffix('.jsa.pending')}")
            options += ["-Xshare:auto", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
        if self.jmx_port is not None:
            options.append(f"-Dcassandra.jmx.local.port={int(self.jmx_port)}")
        options += [
            f"-Dcassandra.config=file://{self.conf_dir}/cassandra.yaml",
            f"-Dlogback.configurationFile=file://{self.conf_dir}/logback.xml",
            f"-Dcassandra.logdir={self.logs_dir}",
            f"-Dcassandra.storagedir={self.root}",
            "-Dcassandra-foreground=yes",
            "-cp",
            classpath,
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        # A Java argument file keeps the command (and its log line) short and readable.
        self.args_file.parent.mkdir(parents=True, exist_ok=True)
        self.args_file.write_text("".join(f"{_quote_java_arg(option)}\n" for option in options))
        command = [self.java, f"@{self.args_file}"]
        if self.timer_slack_ns and sys.platform.startswith("linux"):
            slack = str(self.timer_slack_ns)
            command = [sys.executable, "-c", _TIMER_SLACK_LAUNCHER, slack, *command]
        return command

    def nodetool_command(self) -> list[str]:
        """``nodetool`` for this node (its JMX port: ``jmx_port`` must be set), run from the
        node's own jars (``org.apache.cassandra.tools.NodeTool``)."""
        if self.jmx_port is None:
            raise ValueError("nodetool needs a node started with jmx_port")
        classpath = ":".join(str(jar) for jar in self.ensure_distribution())
        return [
            self.java,
            *_JAVA17_MODULE_OPTIONS,
            "-cp",
            classpath,
            "org.apache.cassandra.tools.NodeTool",
            "-h",
            self.host,
            "-p",
            str(self.jmx_port),
        ]

    # --- life cycle ---------------------------------------------------------------------

    def pid(self) -> int | None:
        """PID of the node of this ``root`` if it is alive.

        Where ``/proc`` exists, the process must also be this node (its command line names our
        ``@argfile``): a stale pid file may name an unrelated process after a reboot.
        """
        pid = read_pid(self.pid_file)
        if pid is None:
            return None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return pid
        if f"@{self.args_file}".encode() not in argv:
            logger.warning("%s names process %d, not this node: ignored", self.pid_file, pid)
            return None
        return pid

    def is_running(self) -> bool:
        """True when the node of this ``root`` is alive and answers CQL."""
        return self.pid() is not None and self.cql_answers()

    def start(self, timeout: float = 120.0) -> bool:
        """Start the node unless it already runs; wait until CQL answers.

        Returns ``True`` when this call started the node, ``False`` when it reused a running
        one (so that the caller knows whether to stop it).
        """
        started = time.monotonic()
        pid = self.pid()
        if pid is not None:
            logger.info("Cassandra already running from %s (pid %d); reusing it", self.root, pid)
            running_port = self.configured_native_port()
            if running_port not in (None, self.native_port):
                raise ProcessError(
                    f"the Cassandra of {self.root} (pid {pid}) serves CQL on port {running_port}, "
                    f"not {self.native_port}; stop it first (`python -m {__name__} stop`)"
                )
            deadline = time.monotonic() + timeout
            while not self.cql_answers():
                if read_pid(self.pid_file) is None:
                    raise ProcessError(f"Cassandra (pid {pid}) died; see {self.system_log}")
                if time.monotonic() > deadline:
                    raise ProcessError(
                        f"Cassandra (pid {pid}) does not answer CQL on "
                        f"{self.host}:{self.native_port} after {timeout:.0f}s; is it started "
                        f"with other ports? Stop it with `python -m {__name__} stop`."
                    )
                time.sleep(0.2)
            return False
        for port in (self.native_port, self.storage_port):
            if port_open(self.host, port):
                raise ProcessError(
                    f"port {self.host}:{port} is taken by a process this tool did not start "
                    f"(no live pid in {self.pid_file}); stop it or choose other ports"
                )
        argv = self.jvm_command()
        self.write_config()
        self._process = ManagedProcess(
            "cassandra", argv, log_file=self.stdout_log, pid_file=self.pid_file, cwd=self.root
        )
        self._process.start()
        try:
            self._process.wait_until(
                lambda: self.cql_answers(timeout=2.0),
                timeout=timeout,
                interval=0.1,
            )
        except ProcessError as exc:
            self.stop()
            raise ProcessError(
                f"{exc}\nlast lines of {self.system_log}:\n{tail(self.system_log)}"
            ) from None
        logger.info(
            "Cassandra %s up on %s:%d in %.1fs (pid %s)",
            self.version,
            self.host,
            self.native_port,
            time.monotonic() - started,
            self._process.pid,
        )
        return True

    def exec_foreground(self) -> None:
        """Become the node: write the config and replace this process with the JVM (``exec``).

        For containers, where the node is the main process and gets the stop signal itself.
        Never returns."""
        argv = self.jvm_command()
        self.write_config()
        logger.info(
            "Cassandra %s on %s:%d, data in %s",
            self.version,
            self.host,
            self.native_port,
            self.root,
        )
        os.chdir(self.root)
        os.execvp(argv[0], argv)  # noqa: S606 (the argv of jvm_command, no shell)

    def configured_native_port(self) -> int | None:
        """The CQL port in the last generated ``cassandra.yaml`` (that of a running node)."""
        try:
            text = (self.conf_dir / "cassandra.yaml").read_text()
        except OSError:
            return None
        match = re.search(r"^native_transport_port: (\d+)$", text, re.MULTILINE)
        return int(match.group(1)) if match else None

    def stop(self, grace: float = 30.0) -> bool:
        """Stop the node of the pid file (SIGTERM, SIGKILL after ``grace``); ``True`` if one ran."""
        own = self._process if self._process is not None and self._process.poll() is None else None
        pid = own.pid if own is not None else self.pid()
        if pid is None:
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()
            return False
        started = time.monotonic()
        logger.info("stopping Cassandra (pid %d)", pid)
        if own is not None:
            own.stop(grace=grace)  # our own child: also reaps it
        else:
            stop_pid(pid, grace=grace)
        elapsed = time.monotonic() - started
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        self._process = None
        clean = elapsed < grace
        for pending in (self.dist_dir / "cds").glob("*.jsa.pending"):
            if clean:
                # Written by the JVM at a clean exit: the next start uses it.
                pending.replace(pending.with_suffix(""))
            else:
                # A killed JVM may have left it half written.
                pending.unlink(missing_ok=True)
        logger.info("Cassandra stopped in %.1fs", elapsed)
        return True

    def kill(self, timeout: float = 30.0) -> bool:
        """SIGKILL the node, as a crash would end it (for fault tests; the data stays). ``True``
        if one ran. Returns once the process is gone."""
        own = self._process if self._process is not None and self._process.poll() is None else None
        pid = own.pid if own is not None else self.pid()
        if pid is None:
            return False
        logger.info("killing Cassandra (pid %d) with SIGKILL", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        # Our own child is reaped by poll(); another's is gone once it is no longer alive.
        while (own.poll() is None) if own is not None else pid_alive(pid):
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"Cassandra (pid {pid}) still alive {timeout:.0f}s after SIGKILL"
                )
            time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        self._process = None
        return True

    # --- log ----------------------------------------------------------------------------

    def log_mark(self) -> int:
        """Where ``system.log`` ends now: ``logged(text, mark)`` looks only at what follows."""
        try:
            return self.system_log.stat().st_size
        except OSError:
            return 0

    def logged(self, text: str, mark: int = 0) -> bool:
        """True when ``system.log`` has ``text`` after ``mark`` (all of it once rolled over)."""
        try:
            with self.system_log.open("rb") as log:
                if os.fstat(log.fileno()).st_size >= mark:
                    log.seek(mark)
                return text.encode() in log.read()
        except OSError:
            return False


def cluster_root() -> Path:
    """``<repo>/build/cassandra-cluster``: where the nodes of a local cluster keep their files."""
    return default_root().with_name("cassandra-cluster")


def ring_tokens(count: int) -> list[int]:
    """``count`` Murmur3 tokens that split the ring into equal parts (as ``ccm`` assigns them)."""
    return [-(2**63) + index * (2**64 // count) for index in range(count)]


class LocalCassandraCluster:
    """N local Cassandra nodes, node i on the loopback address ``base_address + i - 1``.

    Every node uses the same CQL and storage ports on its own address (``127.0.0.1:9042``,
    ``127.0.0.2:9042``, ...; Linux routes all of 127.0.0.0/8 to the loopback interface) and
    keeps its files under ``<root>/node<i>``; all share one folder of jars (and class archive).
    Every node is a seed and has one token, so N nodes split the ring evenly, and keeps hints
    for nodes that are down. Nodes are numbered from 1.

    One node (``nodes=1``) is exactly the single dev node: ``LocalCassandra`` with its files
    directly under ``root`` (default ``<repo>/build/cassandra``).

    Whether a node sees another UP is read from its log: gossip logs ``InetAddress /<host>:<port>
    is now UP`` (or ``DOWN``) when its failure detector changes its mind, as ``ccm`` waits for it.
    """

    def __init__(
        self,
        nodes: int = 3,
        root: Path | None = None,
        *,
        base_address: str = "127.0.0.1",
        native_port: int = 9042,
        storage_port: int = 7000,
        dist_dir: Path | None = None,
        **node_options: Any,
    ) -> None:
        """
        Args:
            nodes: how many nodes (at least 1).
            root: folder of the nodes' folders (default ``<repo>/build/cassandra-cluster``, and
                for one node ``<repo>/build/cassandra``, the single dev node's).
            base_address: the first node's address; node i has ``base_address + i - 1``. Every
                address must be a loopback address.
            native_port / storage_port: the CQL and inter-node ports of every node.
            dist_dir: the jars (default ``<repo>/build/cassandra/dist``, the dev node's).
            node_options: passed on to every ``LocalCassandra`` (``max_heap``, ``c1_only``, ...).
        """
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, not {nodes}")
        first = ipaddress.IPv4Address(base_address)
        hosts = [str(first + index) for index in range(nodes)]
        if not all(ipaddress.IPv4Address(host).is_loopback for host in hosts):
            raise ValueError(f"the nodes' addresses {hosts[0]}..{hosts[-1]} must be loopback")
        dist_dir = dist_dir or default_root() / "dist"
        if nodes == 1:
            self.root = (root or default_root()).resolve()
            self._nodes = (
                LocalCassandra(
                    self.root,
                    host=hosts[0],
                    native_port=native_port,
                    storage_port=storage_port,
                    dist_dir=dist_dir,
                    **node_options,
                ),
            )
            return
        self.root = (root or cluster_root()).resolve()
        seeds = [f"{host}:{storage_port}" for host in hosts]
        self._nodes = tuple(
            LocalCassandra(
                self.root / f"node{index}",
                host=host,
                native_port=native_port,
                storage_port=storage_port,
                dist_dir=dist_dir,
                seeds=seeds,
                initial_token=token,
                hinted_handoff=True,
                **node_options,
            )
            for index, (host, token) in enumerate(zip(hosts, ring_tokens(nodes), strict=True), 1)
        )

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def nodes(self) -> tuple[LocalCassandra, ...]:
        return self._nodes

    def node(self, index: int) -> LocalCassandra:
        """Node ``index``, counted from 1."""
        if not 1 <= index <= len(self._nodes):
            raise IndexError(f"no node {index} in a cluster of {len(self._nodes)}")
        return self._nodes[index - 1]

    @property
    def contact_points(self) -> tuple[str, ...]:
        """Every node's CQL host (all on ``native_port``)."""
        return tuple(node.host for node in self._nodes)

    @property
    def native_port(self) -> int:
        return self._nodes[0].native_port

    def is_running(self) -> bool:
        """True when every node is alive and answers CQL."""
        return all(node.is_running() for node in self._nodes)

    def start(self, timeout: float = 120.0) -> bool:
        """Start the nodes that are not running, one after the other.

        Each node is waited for (``timeout`` seconds for each) until it answers CQL and, in a
        cluster, until it and every node already running see each other UP. Returns ``True``
        when this call started a node, ``False`` when all of them were running. If one fails,
        the nodes this call started are stopped again.
        """
        started_at = time.monotonic()
        started: list[LocalCassandra] = []
        try:
            for node in self._nodes:
                if self._start_node(node, timeout):
                    started.append(node)
        except BaseException:
            for node in reversed(started):
                node.stop()
            raise
        if started and len(self._nodes) > 1:
            logger.info(
                "Cassandra cluster of %d nodes up in %.1fs (%d started)",
                len(self._nodes),
                time.monotonic() - started_at,
                len(started),
            )
        return bool(started)

    def start_node(self, index: int, timeout: float = 120.0) -> bool:
        """Start (or restart) node ``index`` and wait until it has rejoined: it answers CQL, every
        other running node sees it UP and it sees them UP. ``False`` if it was running."""
        return self._start_node(self.node(index), timeout)

    def stop(self, grace: float = 30.0) -> bool:
        """Stop every node, the last one first; ``True`` if any ran. The data stays."""
        stopped = False
        for node in reversed(self._nodes):
            stopped = node.stop(grace=grace) or stopped
        return stopped

    def kill(self, index: int, *, wait_down: bool = False, timeout: float = 90.0) -> bool:
        """SIGKILL node ``index`` (a crash, for fault tests); ``True`` if it ran.

        With ``wait_down``, return only once every other running node sees it DOWN (their
        failure detectors took 20-40 s on two busy cores). Until then they still send it
        requests: a read that asks it waits for the speculative retry to another replica (or
        times out).
        """
        node = self.node(index)
        others = self._running_others(node)
        marks = {other.address: other.log_mark() for other in others}
        if not node.kill():
            return False
        if wait_down:
            deadline = time.monotonic() + timeout
            for other in others:
                self._wait_for_log(
                    other, f"/{node.address} is now DOWN", marks[other.address], deadline
                )
        return True

    def _running_others(self, node: LocalCassandra) -> list[LocalCassandra]:
        return [other for other in self._nodes if other is not node and other.pid() is not None]

    def _start_node(self, node: LocalCassandra, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        others = self._running_others(node)
        marks = {other.address: other.log_mark() for other in [node, *others]}
        if not node.start(timeout=timeout):
            return False
        try:
            for other in others:
                self._wait_for_log(
                    other, f"/{node.address} is now UP", marks[other.address], deadline
                )
                self._wait_for_log(
                    node, f"/{other.address} is now UP", marks[node.address], deadline
                )
        except BaseException:
            node.stop()
            raise
        return True

    @staticmethod
    def _wait_for_log(node: LocalCassandra, text: str, mark: int, deadline: float) -> None:
        """Wait until ``node`` logs ``text`` after ``mark``; raise if it dies or time runs out."""
        while not node.logged(text, mark):
            if node.pid() is None:
                raise ProcessError(
                    f"Cassandra on {node.host} died; last lines of {node.system_log}:\n"
                    f"{tail(node.system_log)}"
                )
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"Cassandra on {node.host} did not log {text!r} in time; last lines of "
                    f"{node.system_log}:\n{tail(node.system_log)}"
                )
            time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    """``fetch``, ``start``, ``stop`` or ``status`` of the local node (or nodes); 0 on success.

    ``status`` exits with 3 when the node (every node) is not running, as LSB init scripts do,
    and with 1 when a node is alive but does not answer CQL (or, of several, only some run).
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m {__name__}", description="Run the local dev Cassandra node (or nodes)."
    )
    parser.add_argument(
        "command",
        choices=("fetch", "start", "stop", "status", "run"),
        help="fetch: only resolve the jars (Maven), e.g. in a CI setup step; run: the node in "
        "the foreground, as this process (containers: the jars must be in --dist-dir already)",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="default: <repo>/build/cassandra (one node), <repo>/build/cassandra-cluster (more)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address of the (first) node; node i: host + i - 1"
    )
    parser.add_argument("--port", type=int, default=9042, help="CQL port (default 9042)")
    parser.add_argument("--storage-port", type=int, default=7000, help="default 7000")
    parser.add_argument(
        "--nodes", type=int, default=1, help="how many nodes, on 127.0.0.1..N (default 1)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="start timeout (of each node), seconds"
    )
    parser.add_argument("--dist-dir", type=Path, default=None, help="default: <root>/dist")
    parser.add_argument("--max-heap", default="1G", help="-Xmx (default 1G)")
    parser.add_argument(
        "--full-jit",
        action="store_true",
        help="C2 as well as C1 (slower start, full speed once warm); default C1 only",
    )
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("cassandra", "cassandra.cluster", "cassandra.connection"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.nodes > 1:
        return _cluster_command(args)

    node = LocalCassandra(
        args.root,
        host=args.host,
        native_port=args.port,
        storage_port=args.storage_port,
        dist_dir=args.dist_dir,
        max_heap=args.max_heap,
        c1_only=not args.full_jit,
        # A container's image is read-only to it in spirit: no class archive written at exit.
        class_data_sharing=args.command != "run",
    )
    where = f"{node.host}:{node.native_port}"
    if args.command == "fetch":
        return _fetch(node)
    if args.command == "run":
        if not (node.lib_dir / ".complete").is_file():
            print(f"no Cassandra jars in {node.lib_dir}: `fetch` them first", file=sys.stderr)
            return 1
        node.exec_foreground()
    if args.command == "start":
        try:
            started = node.start(timeout=args.timeout)
        except ProcessError as exc:
            print(f"Cassandra failed to start: {exc}", file=sys.stderr)
            return 1
        state = "started" if started else "already running"
        print(f"Cassandra {state}: CQL on {where} (pid {node.pid()}, data in {node.root})")
        return 0
    if args.command == "stop":
        if node.stop():
            print(f"Cassandra stopped (data kept in {node.root})")
        else:
            print("Cassandra was not running")
        return 0
    pid = node.pid()
    if pid is None:
        print(f"Cassandra is not running (root {node.root})")
        return 3
    port = node.configured_native_port() or node.native_port
    where = f"{node.host}:{port}"
    if cql_answers(node.host, port):
        print(f"Cassandra is running: pid {pid}, CQL on {where}")
        return 0
    print(f"Cassandra process {pid} is alive but CQL on {where} does not answer (yet)")
    return 1


def _fetch(node: LocalCassandra) -> int:
    """``fetch``: resolve the jars of ``node`` (Maven), e.g. in a CI setup step."""
    try:
        jars = node.ensure_distribution()
    except ProcessError as exc:
        print(f"could not fetch Cassandra: {exc}", file=sys.stderr)
        return 1
    print(f"Cassandra {node.version}: {len(jars)} jars in {node.lib_dir}")
    return 0


def _cluster_command(args: argparse.Namespace) -> int:
    """``main`` for more than one node."""
    try:
        cluster = LocalCassandraCluster(
            args.nodes,
            args.root,
            base_address=args.host,
            native_port=args.port,
            storage_port=args.storage_port,
        )
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    where = ", ".join(f"{host}:{cluster.native_port}" for host in cluster.contact_points)
    if args.command == "fetch":
        return _fetch(cluster.node(1))  # one folder of jars for all nodes
    if args.command == "start":
        try:
            started = cluster.start(timeout=args.timeout)
        except ProcessError as exc:
            print(f"Cassandra cluster failed to start: {exc}", file=sys.stderr)
            return 1
        state = "started" if started else "already running"
        print(
            f"Cassandra cluster {state}: {len(cluster)} nodes, CQL on {where} (in {cluster.root})"
        )
        return 0
    if args.command == "stop":
        if cluster.stop():
            print(f"Cassandra cluster stopped (data kept in {cluster.root})")
        else:
            print("Cassandra cluster was not running")
        return 0
    alive = answering = 0
    for index, node in enumerate(cluster.nodes, 1):
        pid = node.pid()
        port = node.configured_native_port() or node.native_port
        if pid is None:
            state = "not running"
        elif cql_answers(node.host, port):
            state = f"running: pid {pid}"
            answering += 1
        else:
            state = f"process {pid} alive but CQL does not answer (yet)"
        alive += pid is not None
        print(f"node {index} ({node.host}:{port}, {node.root}): {state}")
    if answering == len(cluster):
        return 0
    return 3 if alive == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
