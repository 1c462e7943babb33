"""``inference_model_info`` reports every served model (not only the default), with a label
that says which one is the default, and forgets a model that a reload removed."""

from __future__ import annotations

from inference_service.domain import ModelDescription, ModelInfo
from inference_service.metrics import Metrics


def described(name: str, version: str, *, default: bool = False, aliases=()) -> ModelDescription:
    return ModelDescription(
        info=ModelInfo(name=name, version=version),
        runtime="onnx/onnxruntime",
        aliases=aliases,
        is_default=default,
    )


def model_info(metrics: Metrics) -> dict[str, tuple[dict[str, str], float]]:
    """The ``inference_model_info`` samples by model name: (labels, value)."""
    return {
        sample.labels["name"]: (sample.labels, sample.value)
        for metric in metrics.registry.collect()
        if metric.name == "inference_model_info"
        for sample in metric.samples
    }


def test_every_served_model_is_reported_with_its_default_label() -> None:
    metrics = Metrics()
    metrics.set_models(
        [
            described("rfb", "3", default=True, aliases=("face-detector",)),
            described("slim", "7"),
        ]
    )
    info = model_info(metrics)
    assert set(info) == {"rfb", "slim"}
    assert info["rfb"] == (
        {"name": "rfb", "version": "3", "runtime": "onnx/onnxruntime", "default": "true"},
        1.0,
    )
    assert info["slim"][0]["default"] == "false" and info["slim"][1] == 1.0
    assert metrics.model_label("") == "rfb"
    assert metrics.model_label("face-detector") == "rfb"
    assert metrics.model_label("slim") == "slim"
    assert metrics.model_label("other") == "unknown"


def test_a_reload_replaces_the_reported_models() -> None:
    metrics = Metrics()
    metrics.set_models([described("rfb", "3", default=True), described("slim", "7")])
    metrics.set_models([described("slim", "8", default=True)])
    info = model_info(metrics)
    assert set(info) == {"slim"}
    assert info["slim"][0]["version"] == "8" and info["slim"][0]["default"] == "true"
    assert metrics.model_label("rfb") == "unknown"


def test_an_upload_counts_as_an_invoke_of_its_model() -> None:
    """UploadInvocation (issue 21 item 5) is an Invoke: the per-model series count it."""
    import grpc
    from inference.v1 import inference_service_pb2 as pb

    from inference_service.grpc.metrics import MetricsInterceptor

    metrics = Metrics()
    metrics.set_models([described("m", "v1", default=True)])
    observer = MetricsInterceptor(metrics)
    method = "/inference.v1.InferenceService/UploadInvocation"
    state = observer.call_started(method, pb.UploadInvocationRequest(), None)
    response = pb.InvokeResponse(
        invocation=pb.Invocation(model="m", state=pb.Invocation.STATE_SUCCEEDED)
    )
    observer.call_finished(state, method, None, grpc.StatusCode.OK, response, 0.01)
    assert metrics.registry.get_sample_value("inference_model_requests_total", {"model": "m"}) == 1
