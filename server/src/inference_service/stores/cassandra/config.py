"""``CassandraConfig``: how the store reaches the cluster and uses it, built from ``Settings``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from inference_service.stores.cassandra.schema import DEFAULT_BUCKET_S, replication_map

if TYPE_CHECKING:
    from inference_service.settings import Settings


@dataclasses.dataclass(frozen=True, slots=True)
class CassandraConfig:
    """How to reach the cluster and how to use it; the app builds it from ``Settings``."""

    contact_points: Sequence[str] = ("127.0.0.1",)
    port: int = 9042
    local_dc: str = "datacenter1"
    keyspace: str = "inference"
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    replication: str = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    """CQL map literal used when the keyspace is created."""
    consistency: str = "LOCAL_QUORUM"
    serial_consistency: str = "SERIAL"
    request_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    default_ttl_s: int = 0
    """TTL of every written row, 0 for none; also the table's ``default_time_to_live``."""
    create_schema: bool = False
    """Create or upgrade the schema at connect; otherwise only check that it is in place."""
    list_bucket_s: int = DEFAULT_BUCKET_S
    """Bucket width of the list index when ``create_schema`` makes it (the index's own width,
    recorded in ``invocations_index_state``, wins afterwards)."""
    protocol_version: int = 5
    reconnect_delay_s: float = 0.5
    reconnect_max_delay_s: float = 4.0
    retry_budget_s: float = 10.0
    """How long idempotent writes and settling reads are retried before UNAVAILABLE."""
    tls_ca_file: str | None = None
    """CA (PEM) of the nodes' certificates: connect with TLS. None: plain TCP."""
    tls_verify_hostname: bool = True
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> CassandraConfig:
        """The store's part of the service settings."""
        password = settings.cassandra_password
        return cls(
            contact_points=tuple(settings.cassandra_contact_points),
            port=settings.cassandra_port,
            local_dc=settings.cassandra_local_dc,
            keyspace=settings.cassandra_keyspace,
            username=settings.cassandra_username,
            password=password.get_secret_value() if password is not None else None,
            replication=replication_map(
                settings.cassandra_replication_strategy,
                replication_factor=settings.cassandra_replication_factor,
                datacenters=settings.cassandra_datacenters,
            ),
            consistency=settings.cassandra_consistency,
            serial_consistency=settings.cassandra_serial_consistency,
            protocol_version=settings.cassandra_protocol_version,
            reconnect_delay_s=settings.cassandra_reconnect_delay_s,
            reconnect_max_delay_s=settings.cassandra_reconnect_max_delay_s,
            retry_budget_s=settings.cassandra_retry_budget_s,
            request_timeout_s=settings.cassandra_request_timeout_s,
            connect_timeout_s=settings.cassandra_connect_timeout_s,
            default_ttl_s=settings.cassandra_default_ttl_s,
            create_schema=settings.cassandra_create_schema,
            list_bucket_s=settings.cassandra_list_bucket_s,
            tls_ca_file=_path(settings.cassandra_tls_ca_file),
            tls_verify_hostname=settings.cassandra_tls_verify_hostname,
            tls_cert_file=_path(settings.cassandra_tls_cert_file),
            tls_key_file=_path(settings.cassandra_tls_key_file),
        )


def _path(value: object) -> str | None:
    return str(value) if value is not None else None
