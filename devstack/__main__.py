"""`python -m devstack run`: the whole stack in the foreground (make run)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from devstack.cassandra import LocalCassandraCluster
from devstack.stack import LocalStack, StackSettings

EXAMPLES = """\
inference-service is up.
  Web console (open it in a browser):        {rest}/console/
  REST/JSON + gRPC (Envoy, public):          {rest}    native gRPC also on {grpc}
  gRPC with health + reflection (loopback):  {internal}
  gRPC server (direct):                      {server}
  Prometheus metrics (per server):           {metrics}
{notes}
Try it (from the repository root):
  printf '{{"input": {{"id": "face-1", "content": "%s"}}}}' "$(base64 -w0 {image})" \\
    | curl -s{curl} -H 'content-type: application/json' --data-binary @- {rest}/v1/invocations
  curl -s{curl} '{rest}/v1/invocations/face-1?view=INVOCATION_VIEW_BASIC'
  curl -s{curl} {rest}/v1/models
  grpcurl -plaintext {internal} list
  grpcurl -plaintext -d '{{"id": "face-1", "view": "INVOCATION_VIEW_BASIC"}}' \\
    {internal} inference.v1.InferenceService/GetInvocation
  grpcurl -plaintext {internal} grpc.health.v1.Health/Check
  curl -s{curl} -o face-1.png '{rest}/v1/invocations/face-1:render'
  .venv/bin/inference-client --help    # invoke folders, get, render (--target {grpc})

Logs: {logs}
Ctrl-C stops Envoy, the server and {cassandra}.
"""


def cassandra_name(stack: LocalStack) -> str:
    """What the stack runs of Cassandra, for the Ctrl-C line."""
    if stack.cassandra is None:
        return "nothing else"
    if isinstance(stack.cassandra, LocalCassandraCluster):
        hosts = stack.cassandra.contact_points
        return f"the {len(hosts)} Cassandra nodes ({hosts[0]} .. {hosts[-1]})"
    return "Cassandra"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack")
    parser.add_argument("command", choices=("run",), help="run: start the stack until Ctrl-C")
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("cassandra", "cassandra.cluster", "cassandra.connection"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    settings = StackSettings()
    repo_root = Path.cwd()
    stack = LocalStack(settings, repo_root=repo_root, base_env=os.environ)
    stack.start()  # Ctrl-C while starting: KeyboardInterrupt, and start() stops what it started
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        image = settings.resolved_shared_dir() / "images" / "face-1.jpg"
        notes, curl = [], ""
        if settings.tls:
            notes.append("  TLS on the public listener: give curl your CA (--cacert CA.pem).")
            curl += " --cacert CA.pem"
        if settings.jwt:
            notes.append("  JWT required on the public listener: authorization: Bearer TOKEN.")
            curl += " -H 'authorization: Bearer TOKEN'"
        print(
            EXAMPLES.format(
                rest=stack.rest_url,
                grpc=stack.grpc_target,
                internal=stack.internal_target,
                notes="\n".join(notes),
                curl=curl,
                server=", ".join(server.address for server in stack.servers),
                metrics=", ".join(
                    f"http://127.0.0.1:{settings.metrics_port + index}/metrics"
                    for index in range(len(stack.servers))
                )
                if settings.metrics_enabled and settings.metrics_port
                else "off (or on free ports: see the server logs)",
                image=os.path.relpath(image, repo_root),
                logs=stack.build_dir,
                cassandra=cassandra_name(stack),
            ),
            flush=True,
        )
        while not stop.wait(1.0):
            for server in stack.servers:
                if server.poll() is not None:
                    print(f"a server exited; see {server.log_file}", file=sys.stderr)
                    return 1
    finally:
        print("stopping...", flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
