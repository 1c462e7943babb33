"""The history checker on a three-node cluster (RF 3, ``LOCAL_QUORUM``), two servers behind
Envoy: clients (``support.history``) Invoke, replay, Get, list and delete through Envoy while one
Cassandra node is SIGKILLed and restarted, server A is paused (SIGSTOP) past the claim lease and
resumed, then SIGKILLed and started again. The checker reads the whole history afterwards:
0 violations.

Long (three node starts and a node's conviction): it runs under ``make faults-long``
(``INFERENCE_FAULTS_LONG=1``), not in ``make test``.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import ClusterStackFactory, FaultReport
from support.history import HistoryLoad, check

pytestmark = pytest.mark.skipif(
    os.environ.get("INFERENCE_FAULTS_LONG") != "1", reason="make faults-long runs it"
)

LEASE_S = 4.0
VICTIM = 2
DOWN_S = 25


def test_history_through_node_kills_and_server_pauses_and_kills(
    cluster_stack: ClusterStackFactory,
    load_images: list[bytes],
    fault_report: FaultReport,
) -> None:
    with cluster_stack("history", claim_lease_s=LEASE_S) as cs:
        cluster, stack, endpoint = cs.cluster, cs.stack, cs.endpoint
        a, b = stack.servers
        load = HistoryLoad([stack.grpc_target], load_images, clients=4, retry_s=LEASE_S + 90)
        load.start()
        try:
            load.wait_for(8, timeout=120)
            cluster.kill(VICTIM)
            time.sleep(DOWN_S)
            cluster.start_node(VICTIM)
            load.wait_for(load.answered() + 8, timeout=120)
            assert a.pid is not None
            os.kill(a.pid, signal.SIGSTOP)
            try:
                time.sleep(LEASE_S + 2)
            finally:
                os.kill(a.pid, signal.SIGCONT)
            load.wait_for(load.answered() + 8, timeout=120)
            os.kill(a.pid, signal.SIGKILL)
            time.sleep(2)
            a.start()
            load.wait_for(load.answered() + 8, timeout=120)
        finally:
            history = load.stop()
        verdict = check(history, endpoint, [a.address, b.address])
    fault_report.add_row(
        test="history checker, 3 nodes",
        load="4 clients via Envoy: invoke (retry), replay, other content, get, list, delete",
        fault=f"node {VICTIM} SIGKILL {DOWN_S} s; server SIGSTOP past lease; server SIGKILL",
        sent=verdict.ids,
        calls=verdict.ops,
        failed=len(load.unfinished),
        lost=len(verdict.violations),
        pending=0,
    )
    print(f"history: {history.counts()}, ids {verdict.ids}, violations {len(verdict.violations)}")
    assert verdict.violations == [], verdict.report
    assert load.unfinished == [], f"Invokes never answered: {load.unfinished}"
