"""Local stacks for end-to-end tests: settings on free ports, storing in the session's
Cassandra keyspace (the one ``cassandra_endpoint`` made)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from devstack.process import free_port, free_ports, pid_alive
from devstack.stack import LocalStack, StackSettings
from inference_service.stores.cassandra import CassandraConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def stack_settings(
    endpoint: CassandraConfig, shared_dir: Path, build_dir: Path, **overrides: Any
) -> StackSettings:
    """Settings of a stack on free ports, storing in the session's keyspace (``overrides``
    last: e.g. ``server_processes``, or Envoy's TLS and JWT settings)."""
    credentials: dict[str, Any] = {}
    if endpoint.username is not None:
        credentials = {
            "cassandra_username": endpoint.username,
            "cassandra_password": endpoint.password,
        }
    processes = overrides.pop("server_processes", 1)
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": free_ports(processes),
        "server_processes": processes,
        "metrics_port": free_ports(processes),  # server i serves /metrics on metrics_port + i
        "envoy_port": free_port(),
        "envoy_internal_port": free_port(),
        "envoy_admin_port": free_port(),
        "store": "cassandra",
        "cassandra_contact_points": list(endpoint.contact_points),
        "cassandra_port": endpoint.port,
        "cassandra_local_dc": endpoint.local_dc,
        "cassandra_keyspace": endpoint.keyspace,
        "cassandra_create_schema": False,  # the session fixture created it
        "shared_dir": shared_dir,
        "build_dir": build_dir,
        **credentials,
    }
    return StackSettings(**{**fields, **overrides})


def two_servers_settings(
    endpoint: CassandraConfig, shared_dir: Path, build_dir: Path, **overrides: Any
) -> StackSettings:
    """The fault tests' stack: two server processes of one worker each behind Envoy
    (``overrides`` last: e.g. ``claim_lease_s``, or a keyspace to create)."""
    return stack_settings(
        endpoint, shared_dir, build_dir, **{"server_processes": 2, "workers": 1, **overrides}
    )


@contextlib.contextmanager
def running_stack(
    settings: StackSettings, prepare: Callable[[LocalStack], None] | None = None
) -> Iterator[LocalStack]:
    """The stack of ``settings``, started, and stopped at the end: no process of it left.
    ``prepare`` may change the stack before it starts (e.g. put a proxy in a path)."""
    stack = LocalStack(settings, repo_root=REPO_ROOT, base_env=os.environ)
    if prepare is not None:
        prepare(stack)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        left = [s.pid for s in stack.servers if s.pid and pid_alive(s.pid)]
        assert not left, f"server processes still run: {left}"


@contextlib.contextmanager
def running_two_servers(
    endpoint: CassandraConfig,
    shared_dir: Path,
    build_dir: Path,
    *,
    prepare: Callable[[LocalStack], None] | None = None,
    **overrides: Any,
) -> Iterator[LocalStack]:
    """``running_stack`` of ``two_servers_settings``."""
    settings = two_servers_settings(endpoint, shared_dir, build_dir, **overrides)
    with running_stack(settings, prepare) as stack:
        yield stack
