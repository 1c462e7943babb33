"""The driver's ``Cluster`` and ``Session`` from a ``CassandraConfig``: routing, consistency,
TLS, credentials, reconnection, and connecting with the schema in place.

* Consistency ``LOCAL_QUORUM`` (configurable), serial consistency ``SERIAL`` (one winner in the
  whole cluster), and a ``serial`` execution profile for reads at the serial level;
  token-aware, DC-aware routing; fixed protocol version; ``TCP_NODELAY`` on every connection;
  no compression (the content is compressed images).
* The driver reconnects forever (exponential backoff, capped), so the same store works again
  once Cassandra is back.
* The schema belongs to ``inference-service migrate`` (or to a server started with
  ``create_schema``); a server otherwise only checks that it is in place, and warns when the
  keyspace's replication and the consistency levels cannot survive the loss of one node.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from typing import TypeVar

from cassandra import AuthenticationFailed, ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)
from cassandra.query import dict_factory

from inference_service.errors import StoreUnavailableError
from inference_service.stores.cassandra.config import CassandraConfig
from inference_service.stores.cassandra.retry import UNAVAILABLE_ERRORS
from inference_service.stores.cassandra.schema import (
    check_identifier,
    create_schema,
    keyspace_replication,
    replication_warnings,
    verify_schema,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The execution profile of reads at the serial consistency level (settling uncertain writes).
SERIAL_PROFILE = "serial"


def connect_with_schema(config: CassandraConfig, make: Callable[[Cluster, Session], T]) -> T:
    """Connect (blocking); create the schema when asked, else check it is in place; warn about
    a replication that cannot lose a node; then ``make`` the store of the session. Any failure
    shuts the cluster down; an unreachable cluster (or rejected credentials) raises
    ``StoreUnavailableError``."""
    check_identifier(config.keyspace)
    cluster = build_cluster(config)
    try:
        session = cluster.connect()
        if config.create_schema:
            create_schema(
                session,
                config.keyspace,
                config.replication,
                config.default_ttl_s,
                bucket_s=config.list_bucket_s,
            )
        else:
            verify_schema(session, config.keyspace)
        _warn_about_replication(session, config)
        made = make(cluster, session)
    except UNAVAILABLE_ERRORS as exc:
        cluster.shutdown()
        if _authentication_failed(exc):
            # Never the password, nor the server's message (it may echo what was sent).
            logger.error(
                "Cassandra at %s rejected the credentials of user %r",
                list(config.contact_points),
                config.username,
            )
        else:
            logger.error("cannot connect to Cassandra at %s: %s", config.contact_points, exc)
        raise StoreUnavailableError("invocation store unavailable") from exc
    except BaseException:
        cluster.shutdown()
        raise
    logger.info(
        "connected to Cassandra %s, keyspace %s", list(config.contact_points), config.keyspace
    )
    return made


def build_cluster(config: CassandraConfig) -> Cluster:
    """A driver ``Cluster`` for ``config`` (not connected yet)."""
    routing = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=config.local_dc))
    consistency = ConsistencyLevel.name_to_value[config.consistency.upper()]
    serial = ConsistencyLevel.name_to_value[config.serial_consistency.upper()]
    default = ExecutionProfile(
        load_balancing_policy=routing,
        row_factory=dict_factory,
        consistency_level=consistency,
        serial_consistency_level=serial,
        request_timeout=config.request_timeout_s,
    )
    serial_reads = ExecutionProfile(
        load_balancing_policy=routing,
        row_factory=dict_factory,
        consistency_level=serial,
        request_timeout=config.request_timeout_s,
    )
    auth = None
    if config.username:
        auth = PlainTextAuthProvider(username=config.username, password=config.password or "")
    return Cluster(
        ssl_context=tls_context(config),
        contact_points=list(config.contact_points),
        port=config.port,
        protocol_version=config.protocol_version,
        execution_profiles={EXEC_PROFILE_DEFAULT: default, SERIAL_PROFILE: serial_reads},
        auth_provider=auth,
        connect_timeout=config.connect_timeout_s,
        control_connection_timeout=config.connect_timeout_s,
        # Forever (no attempt limit): after a long outage the pools come back by themselves.
        reconnection_policy=ExponentialReconnectionPolicy(
            base_delay=config.reconnect_delay_s,
            max_delay=config.reconnect_max_delay_s,
            max_attempts=None,
        ),
        # Without it a ~100 KB write waits for the peer's delayed ACK (~40 ms) under Nagle.
        sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        # Content is compressed images: compressing it again costs CPU for nothing.
        compression=False,
    )


def tls_context(config: CassandraConfig) -> ssl.SSLContext | None:
    """The client TLS context for ``config``, or ``None`` for plain TCP."""
    if config.tls_ca_file is None:
        return None
    context = ssl.create_default_context(cafile=config.tls_ca_file)
    context.check_hostname = config.tls_verify_hostname
    if config.tls_cert_file is not None:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return context


def _authentication_failed(exc: BaseException) -> bool:
    errors = exc.errors.values() if isinstance(exc, NoHostAvailable) else ()
    return any(isinstance(error, AuthenticationFailed) for error in errors)


def _warn_about_replication(session: Session, config: CassandraConfig) -> None:
    replication = keyspace_replication(session, config.keyspace)
    if replication is None:
        return
    for warning in replication_warnings(
        replication,
        local_dc=config.local_dc,
        consistency=config.consistency,
        serial_consistency=config.serial_consistency,
    ):
        logger.warning("keyspace %s: %s", config.keyspace, warning)
