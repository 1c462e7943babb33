"""The stack under test: ``LocalStack`` (Cassandra, N servers, Envoy) on the bench's own ports
and build folder, plus what the bench does to it besides load: empty the table, seed and check
invocations, and read the processes' PIDs.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from bench.payloads import MixImage
from devstack.cassandra import LocalCassandra
from devstack.process import port_open
from devstack.stack import LocalStack, StackSettings
from inference_service.stores.cassandra.schema import INDEX_TABLE, TABLE

logger = logging.getLogger(__name__)

Box = list[float]


class BenchStack:
    """A ``LocalStack`` started with the bench's settings, and what the bench needs from it."""

    def __init__(
        self,
        settings: StackSettings,
        *,
        repo_root: Path,
        base_env: Mapping[str, str],
        cassandra_full_jit: bool = True,
    ) -> None:
        """``cassandra_full_jit`` runs the local node with the JVM's full JIT (C2), as a
        production node runs, instead of the devstack's start-fast C1-only setting."""
        self.settings = settings
        self.stack = LocalStack(settings, repo_root=repo_root, base_env=base_env)
        node = self.stack.cassandra
        if node is not None and cassandra_full_jit:
            self.stack.cassandra = LocalCassandra(
                node.root,
                host=node.host,
                native_port=node.native_port,
                storage_port=node.storage_port,
                c1_only=False,
            )

    # --- life cycle ----------------------------------------------------------------------

    def check_ports(self) -> None:
        """Fail before starting anything when a port the bench needs is taken."""
        s = self.settings
        ports = [s.envoy_port, s.envoy_internal_port, s.envoy_admin_port]
        ports += [s.port + i for i in range(s.server_processes)]
        if self.stack.cassandra is not None and self.stack.cassandra.pid() is None:
            ports += [s.cassandra_port, s.cassandra_storage_port]
        taken = [port for port in ports if port_open("127.0.0.1", port)]
        if taken:
            raise RuntimeError(
                f"ports {taken} are in use; stop what uses them or pass other --port-base"
            )

    def start(self) -> None:
        """Start the stack; a Cassandra node that is not already running starts empty."""
        self.check_ports()
        self._wipe_stopped_node()
        self.stack.start()

    def stop(self, *, keep_cassandra: bool) -> None:
        """Stop Envoy and the servers; Cassandra too if this run started it (unless kept), and
        then its data goes (a run leaves gigabytes, mostly Paxos state in ``system.paxos``)."""
        if keep_cassandra and self.stack.cassandra is not None:
            self.stack.envoy.stop()
            for server in self.stack.servers:
                server.stop()
            return
        self.stack.stop()
        self._wipe_stopped_node()

    def data_mb(self) -> dict[str, float]:
        """Disk use of the node's data folders by table folder (the largest few), in MiB."""
        node = self.stack.cassandra
        if node is None or not (node.root / "data").is_dir():
            return {}
        sizes = {}
        for table in (node.root / "data").glob("*/*"):
            total = sum(f.stat().st_size for f in table.rglob("*") if f.is_file())
            sizes[f"{table.parent.name}.{table.name.split('-')[0]}"] = round(total / 2**20, 1)
        return dict(sorted(sizes.items(), key=lambda item: -item[1])[:5])

    def _wipe_stopped_node(self) -> None:
        """Delete the data of the bench's own node while it is not running (never its jars,
        config or logs); every run then starts from the same empty state."""
        node = self.stack.cassandra
        if node is None or node.pid() is not None:
            return
        for name in ("data", "commitlog", "saved_caches", "hints", "cdc_raw"):
            path = node.root / name
            if path.is_dir():
                shutil.rmtree(path)
        logger.info("emptied the bench's Cassandra node under %s", node.root)

    # --- processes -------------------------------------------------------------------------

    @property
    def server_pids(self) -> list[int]:
        return [s.pid for s in self.stack.servers if s.pid is not None]

    @property
    def envoy_pid(self) -> int | None:
        return self.stack.envoy.pid

    @property
    def cassandra_pid(self) -> int | None:
        return self.stack.cassandra.pid() if self.stack.cassandra is not None else None

    @property
    def envoy_target(self) -> str:
        return self.stack.grpc_target

    @property
    def rest_url(self) -> str:
        return self.stack.rest_url

    @property
    def server_targets(self) -> list[str]:
        return [server.address for server in self.stack.servers]

    def server_logs(self) -> list[str]:
        return [str(server.log_file) for server in self.stack.servers]

    def crashed_servers(self) -> list[str]:
        """Addresses of servers that have exited."""
        return [s.address for s in self.stack.servers if s.poll() is not None]

    # --- data ---------------------------------------------------------------------------------

    def truncate(self, timeout_s: float = 120.0) -> None:
        """Empty the invocations table and the listing's index (not the index's state: its
        bucket width), so every run writes into the same (empty) state and the bench node's
        disk use stays bounded (a run writes gigabytes of images)."""
        if self.stack.cassandra is None:
            return
        from cassandra.cluster import Cluster  # heavy; only here

        s = self.settings
        cluster = Cluster(
            s.cassandra_contact_points,
            port=s.cassandra_port,
            protocol_version=s.cassandra_protocol_version,
        )
        try:
            session = cluster.connect()
            names = (TABLE, INDEX_TABLE)
            for name in names:
                session.execute(f"TRUNCATE {s.cassandra_keyspace}.{name}", timeout=timeout_s)
            logger.info("truncated %s: %s", s.cassandra_keyspace, ", ".join(names))
        finally:
            cluster.shutdown()

    def seed(self, mix: Sequence[MixImage], id_prefix: str) -> dict[str, tuple[str, list[Box]]]:
        """Invoke every image once through Envoy (native gRPC) with a known id.

        Returns ``{image name: (id, detections as [x_min, y_min, x_max, y_max, score])}``.
        """
        seeded = {}
        with grpc.insecure_channel(
            self.envoy_target,
            options=[("grpc.max_receive_message_length", 64 << 20)],
        ) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            for index, image in enumerate(mix):
                invocation_id = f"{id_prefix}{index:02d}"
                request = pb.InvokeRequest(
                    input=pb.ModelInput(id=invocation_id, content=image.content)
                )
                response = stub.Invoke(request, timeout=60)
                seeded[image.name] = (invocation_id, _boxes(response.invocation.output))
        return seeded

    def rest_invoke(self, image: MixImage, invocation_id: str) -> list[Box]:
        """Invoke one image through Envoy's REST/JSON API; its detections."""
        body = json.dumps(
            {"input": {"id": invocation_id, "content": base64.b64encode(image.content).decode()}}
        ).encode()
        request = urllib.request.Request(  # noqa: S310
            f"{self.rest_url}/v1/invocations",
            data=body,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            invocation = json.loads(response.read())["invocation"]
        return [
            [
                d["box"]["x_min"],
                d["box"]["y_min"],
                d["box"]["x_max"],
                d["box"]["y_max"],
                d["score"],
            ]
            for d in invocation["output"].get("detections", [])
        ]


def _boxes(output: pb.ModelOutput) -> list[Box]:
    return [
        [d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max, d.score] for d in output.detections
    ]
