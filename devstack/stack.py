"""The whole local stack: Cassandra, the inference server and Envoy, started and stopped together.

Used by ``make run`` (``python -m devstack run``) and by the end-to-end
tests, so there is one implementation of the orchestration.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, SecretStr

from devstack.cassandra import LocalCassandra, LocalCassandraCluster
from devstack.envoy import LocalEnvoy
from devstack.server import LocalServer
from inference_service.edge.config import EnvoySettings
from inference_service.limits import RequestLimits
from inference_service.settings import Settings

logger = logging.getLogger(__name__)


class StackSettings(Settings, EnvoySettings):
    """The server's settings, Envoy's edge settings and the ports of the other local processes
    (``INFERENCE_*``)."""

    envoy_port: int = Field(8080, ge=1, le=65535)
    """Envoy's public listener: REST/JSON and native gRPC of the API only."""
    envoy_internal_port: int = Field(8081, ge=1, le=65535)
    """Envoy's internal listener (always on 127.0.0.1): every gRPC path, health and reflection
    included, without TLS or authentication."""
    envoy_admin_port: int = Field(9901, ge=1, le=65535)
    """Envoy's admin interface (always on 127.0.0.1)."""
    cassandra_storage_port: int = Field(7000, ge=1, le=65535)
    """Inter-node port of the local Cassandra node (of every node)."""
    cassandra_nodes: int = Field(1, ge=1, le=9)
    """Local Cassandra nodes to run: 1 (the default) runs the single dev node; N > 1 runs a
    cluster of N nodes on the loopback addresses ``127.0.0.1`` .. ``127.0.0.N`` (from the first
    contact point on), each with the same ports, their files in ``<build_dir>/cassandra-cluster``,
    and gives the servers all N as contact points. The keyspace's replication is a setting of
    its own. Ignored when contact points are given (nothing local is started then)."""
    server_processes: int = Field(1, ge=1, le=16)
    """Server processes behind Envoy, on ports ``port``, ``port + 1``, ... (one Python process
    cannot use more than one core for its Python parts)."""
    build_dir: Path = Path("build")
    """Where the local processes keep their files (Cassandra data, logs, rendered configs)."""

    def uses_local_cassandra(self) -> bool:
        """A local node is started unless the store is memory or contact points were given."""
        return self.store == "cassandra" and "cassandra_contact_points" not in self.model_fields_set


def server_environment(settings: Settings) -> dict[str, str]:
    """``INFERENCE_*`` variables that give a server process the explicitly set server settings
    of ``settings`` (the stack's own fields excluded), plus an absolute shared folder."""
    env = {}
    for name in Settings.model_fields:
        if name not in settings.model_fields_set:
            continue
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list) and any(isinstance(item, SecretStr) for item in value):
            value = ",".join(item.get_secret_value() for item in value)
        elif isinstance(value, list):
            value = json.dumps(value)
        env[f"INFERENCE_{name.upper()}"] = str(value)
    env["INFERENCE_SHARED_DIR"] = str(settings.resolved_shared_dir())
    return env


class LocalStack:
    """Starts Cassandra (one node, N nodes, or none when an existing cluster is configured),
    the servers, then Envoy."""

    def __init__(
        self, settings: StackSettings, *, repo_root: Path, base_env: Mapping[str, str]
    ) -> None:
        self.settings = settings
        self.repo_root = repo_root
        build_dir = (
            settings.build_dir
            if settings.build_dir.is_absolute()
            else repo_root / settings.build_dir
        )
        self.build_dir = build_dir
        self.cassandra: LocalCassandra | LocalCassandraCluster | None = None
        if settings.uses_local_cassandra() and settings.cassandra_nodes == 1:
            self.cassandra = LocalCassandra(
                build_dir / "cassandra",
                host=settings.cassandra_contact_points[0],
                native_port=settings.cassandra_port,
                storage_port=settings.cassandra_storage_port,
                # `make run` serves at full speed once warm (C2); tests start nodes C1-only.
                c1_only=False,
            )
        elif settings.uses_local_cassandra():
            self.cassandra = LocalCassandraCluster(
                settings.cassandra_nodes,
                build_dir / "cassandra-cluster",
                base_address=settings.cassandra_contact_points[0],
                native_port=settings.cassandra_port,
                storage_port=settings.cassandra_storage_port,
                dist_dir=build_dir / "cassandra" / "dist",  # the single node's jars
                c1_only=False,
            )
        server_env = server_environment(settings)
        if not settings.list_page_token_secrets:
            # Every server process of the stack must verify the page tokens the others sign
            # (Envoy spreads the pages of one listing over them): one random secret per stack.
            server_env["INFERENCE_LIST_PAGE_TOKEN_SECRETS"] = secrets.token_urlsafe(32)
        if (
            settings.store == "cassandra"
            and "cassandra_create_schema" not in settings.model_fields_set
        ):
            # The dev stack creates its own schema (servers start one after the other).
            server_env["INFERENCE_CASSANDRA_CREATE_SCHEMA"] = "true"
        if "list_page_token_secrets" not in settings.model_fields_set:
            # Every server of the stack signs and checks ListInvocations page tokens alike.
            server_env["INFERENCE_LIST_PAGE_TOKEN_SECRETS"] = secrets.token_urlsafe(32)
        if isinstance(self.cassandra, LocalCassandraCluster):
            hosts = self.cassandra.contact_points
            server_env["INFERENCE_CASSANDRA_CONTACT_POINTS"] = ",".join(hosts)
            if "cassandra_replication_factor" not in settings.model_fields_set:
                # A local cluster survives the loss of a node: RF 3 (or every node, if fewer).
                server_env["INFERENCE_CASSANDRA_REPLICATION_FACTOR"] = str(min(len(hosts), 3))
        self.servers = [
            LocalServer(
                host=settings.host,
                port=settings.port + index,
                # Server i serves /metrics on metrics_port + i (0: each picks a free port).
                settings_env={
                    **server_env,
                    "INFERENCE_METRICS_PORT": str(
                        settings.metrics_port and settings.metrics_port + index
                    ),
                },
                run_dir=build_dir / "server",
                base_env=base_env,
                name=f"server-{index}" if settings.server_processes > 1 else "server",
            )
            for index in range(settings.server_processes)
        ]
        self.envoy = LocalEnvoy.for_repo(
            repo_root,
            listen_port=settings.envoy_port,
            internal_port=settings.envoy_internal_port,
            admin_port=settings.envoy_admin_port,
            upstreams=[(server.host, server.port) for server in self.servers],
            # The servers' own limits (they get the same settings): REST bodies fit them.
            limits=RequestLimits.from_settings(settings),
            settings=settings,
            build_dir=build_dir / "envoy",
        )
        self._started_cassandra = False

    @property
    def rest_url(self) -> str:
        return self.envoy.url

    @property
    def grpc_target(self) -> str:
        return self.envoy.grpc_target

    @property
    def internal_target(self) -> str:
        return self.envoy.internal_target

    def start(self) -> None:
        """Start everything, each waited for until healthy; on failure stop what started."""
        try:
            if self.cassandra is not None:
                self._started_cassandra = self.cassandra.start()
            for server in self.servers:
                server.start()
            self.envoy.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop Envoy, the servers (draining calls), and Cassandra if this stack started it."""
        self.envoy.stop()
        for server in self.servers:
            server.stop()
        if self.cassandra is not None and self._started_cassandra:
            self.cassandra.stop()
            self._started_cassandra = False

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
