"""The store against a Cassandra node that requires TLS and a password (PasswordAuthenticator):
it connects with both; a wrong password, plain TCP or an untrusted certificate are refused; no
secret shows up in a repr or a log line. The node and its certificates are made for this
module (a temporary folder, free ports)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import shutil
import uuid
from collections.abc import Iterator

import pytest
from support.certificates import TestCA

from devstack.cassandra import (
    DEFAULT_SUPERUSER,
    ClientTls,
    LocalCassandra,
    default_root,
)
from devstack.process import free_port
from inference_service.domain import Claim, Invocation, ModelInfo, ModelInput, ModelOutput, State
from inference_service.errors import StoreUnavailableError
from inference_service.stores.cassandra import CassandraConfig, CassandraInvocationStore

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEYSTORE_PASSWORD = "keystore-secret-4711"
WRONG_PASSWORD = "wrong-secret-0815"


@pytest.fixture(scope="module")
def secure_node(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalCassandra, TestCA]]:
    if shutil.which("java") is None:
        pytest.skip("needs Java 17 to run a local Cassandra node")
    ca = TestCA(tmp_path_factory.mktemp("cassandra-ca"))
    keystore = ca.pkcs12(ca.issue("node", hosts=("127.0.0.1",)), KEYSTORE_PASSWORD)
    node = LocalCassandra(
        tmp_path_factory.mktemp("cassandra-secure"),
        native_port=free_port(),
        storage_port=free_port(),
        dist_dir=default_root() / "dist",
        password_auth=True,
        client_tls=ClientTls(
            keystore=keystore, keystore_password=KEYSTORE_PASSWORD, ca_file=ca.ca_file
        ),
    )
    node.start(timeout=180)
    try:
        yield node, ca
    finally:
        node.stop()


def config_for(node: LocalCassandra, ca: TestCA, **changes: object) -> CassandraConfig:
    user, password = DEFAULT_SUPERUSER
    config = CassandraConfig(
        contact_points=(node.host,),
        port=node.native_port,
        keyspace=f"secure_{uuid.uuid4().hex[:8]}",
        username=user,
        password=password,
        tls_ca_file=str(ca.ca_file),
        create_schema=True,
        connect_timeout_s=3.0,
    )
    return dataclasses.replace(config, **changes)


async def test_store_connects_with_tls_and_a_password(secure_node) -> None:
    node, ca = secure_node
    store = await CassandraInvocationStore.connect(config_for(node, ca))
    try:
        content = b"\xff\xd8\xff" + uuid.uuid4().bytes
        invocation = Invocation(
            input=ModelInput(id="secure-1", content=content),
            content_sha256=hashlib.sha256(content).hexdigest(),
            state=State.PENDING,
            model=ModelInfo("face-detector", "1"),
            create_time=dt.datetime.now(dt.UTC).replace(microsecond=0),
            claim=Claim(uuid.uuid4().hex, dt.datetime.now(dt.UTC).replace(microsecond=0)),
        )
        assert await store.claim(invocation) is None
        done = dataclasses.replace(
            invocation,
            state=State.SUCCEEDED,
            output=ModelOutput(detections=(), image_width=1, image_height=1),
            complete_time=invocation.create_time,
        )
        await store.complete(done)
        assert (await store.get("secure-1")).input.content == content
    finally:
        await store.close()


async def test_a_wrong_password_is_refused_and_never_shown(secure_node, caplog) -> None:
    node, ca = secure_node
    config = config_for(node, ca, password=WRONG_PASSWORD)
    with (
        caplog.at_level(logging.DEBUG),
        pytest.raises(StoreUnavailableError) as raised,
    ):
        await CassandraInvocationStore.connect(config)
    assert "rejected the credentials of user 'cassandra'" in caplog.text
    assert WRONG_PASSWORD not in caplog.text
    assert WRONG_PASSWORD not in repr(config)
    assert WRONG_PASSWORD not in str(raised.value)


@pytest.mark.parametrize("how", ["plain TCP", "untrusted CA"])
async def test_no_connection_without_trusted_tls(secure_node, tmp_path, how: str) -> None:
    node, ca = secure_node
    if how == "plain TCP":
        config = config_for(node, ca, tls_ca_file=None)
    else:
        config = config_for(node, ca, tls_ca_file=str(TestCA(tmp_path, "another CA").ca_file))
    with pytest.raises(StoreUnavailableError):
        await CassandraInvocationStore.connect(config)
