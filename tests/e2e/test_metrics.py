"""Each server's /metrics (Prometheus) while the stack serves real calls through Envoy: the
counters move with the calls, whichever server took them."""

from __future__ import annotations

import base64
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from support.http import RestClient

SERVICE = "inference.v1.InferenceService"


def scrape_all(stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of every server's /metrics, summed."""
    total: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for index, _server in enumerate(stack.servers):
        url = f"http://127.0.0.1:{stack.settings.metrics_port + index}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                total[key] = total.get(key, 0.0) + sample.value
    return total


def get(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def handled(samples: dict, method: str, code: str) -> float:
    labels = {"grpc_service": SERVICE, "grpc_method": method, "grpc_code": code}
    return get(samples, "grpc_server_handled_total", **labels)


def test_metrics_move_with_calls_through_envoy(stack, api: RestClient, images_dir, id_prefix):
    before = scrape_all(stack)
    invocation_id = f"{id_prefix}-metrics"
    content = base64.b64encode((images_dir / "face-3.jpg").read_bytes()).decode()
    reply = api.post_json("/v1/invocations", {"input": {"id": invocation_id, "content": content}})
    assert reply.status == 200, reply.body[:300]
    reads = 6
    # Round-robin: both servers read it (with its content: the cache counts those), then hit
    # their caches.
    for _ in range(reads):
        assert api.get(f"/v1/invocations/{invocation_id}").status == 200
    assert api.get(f"/v1/invocations/{id_prefix}-metrics-none").status == 404
    after = scrape_all(stack)

    def moved(method: str, code: str) -> float:
        return handled(after, method, code) - handled(before, method, code)

    assert moved("Invoke", "OK") == 1
    assert moved("GetInvocation", "OK") == reads
    assert moved("GetInvocation", "NOT_FOUND") == 1
    # Envoy health-checks every server each second: the health service is counted too.
    health = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check", "grpc_code": "OK"}
    assert get(after, "grpc_server_handled_total", **health) > 0
    hits = get(after, "inference_cache_requests_total", result="hit") - get(
        before, "inference_cache_requests_total", result="hit"
    )
    misses = get(after, "inference_cache_requests_total", result="miss") - get(
        before, "inference_cache_requests_total", result="miss"
    )
    assert hits + misses == reads + 1  # the unknown id is a miss too
    assert hits >= reads - len(stack.servers)
    for stage in ("decode", "model", "store_claim", "store_complete"):
        count = get(after, "inference_stage_seconds_count", stage=stage) - get(
            before, "inference_stage_seconds_count", stage=stage
        )
        assert count >= 1, stage
    assert sum(v for k, v in after.items() if k[0] == "grpc_server_requests_in_flight") == 0
