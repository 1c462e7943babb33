"""Models through Envoy on the real stack: ListModels and GetModel over REST and native gRPC,
and an Invoke with each model (each runtime) through the transcoder."""

from __future__ import annotations

import base64
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.http import RestClient, assert_status_json
from support.model_fixtures import E2E_MODELS, write_models_toml
from support.reference import mismatches

DEFAULT = "ultraface-rfb-320"
MODEL_FIELDS = {
    "name",
    "version",
    "runtime",
    "aliases",
    "is_default",
    "ready",
    "load_time",
    "source",
}
RUNTIMES = {
    "ultraface-rfb-320": "tflite/litert",
    "ultraface-slim-320": "tflite/litert",
    "ultraface-rfb-320-onnx": "onnx/onnxruntime",
    "ultraface-rfb-320-savedmodel": "savedmodel/tensorflow",
}


def rest_models(api: RestClient) -> list[dict[str, Any]]:
    reply = api.get("/v1/models")
    assert reply.status == 200, (reply.status, reply.body[:300])
    body = reply.json()
    assert set(body) == {"models"}
    return body["models"]


def test_list_models_through_rest_and_grpc(api: RestClient, channel: grpc.Channel) -> None:
    models = rest_models(api)
    names = [model["name"] for model in models]
    assert names == [DEFAULT, *sorted(set(E2E_MODELS) - {DEFAULT})]
    for model in models:
        assert set(model) == MODEL_FIELDS
        assert model["ready"] is True
        assert model["runtime"] == RUNTIMES[model["name"]]
        assert len(model["version"]) == 64
        assert model["is_default"] == (model["name"] == DEFAULT)
    assert models[0]["aliases"] == ["face-detector"]

    # Native gRPC through Envoy: the same models (from either server: both load the same).
    stub = pb_grpc.InferenceServiceStub(channel)
    listed = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    as_json = [
        json_format.MessageToDict(
            model, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for model in listed
    ]
    fields = ("name", "version", "runtime", "aliases", "is_default", "ready", "source")
    assert [{k: m[k] for k in fields} for m in as_json] == [
        {k: m[k] for k in fields} for m in models
    ]


@pytest.mark.parametrize("name", [DEFAULT, "face-detector", "ultraface-rfb-320-onnx"])
def test_get_model_through_rest_and_grpc(api: RestClient, channel: grpc.Channel, name) -> None:
    reply = api.get(f"/v1/models/{name}")
    assert reply.status == 200, reply.body[:300]
    model = reply.json()["model"]
    expected = DEFAULT if name == "face-detector" else name
    assert model["name"] == expected
    stub = pb_grpc.InferenceServiceStub(channel)
    assert stub.GetModel(pb.GetModelRequest(name=name), timeout=10).model.name == expected


def test_an_unknown_model_is_404(api: RestClient, channel: grpc.Channel, shared_dir: Path) -> None:
    body = assert_status_json(api.get("/v1/models/yolo"), 404, grpc.StatusCode.NOT_FOUND)
    assert "yolo" in body["message"]
    content = base64.b64encode((shared_dir / "images" / "face-1.jpg").read_bytes()).decode()
    reply = api.post_json(
        "/v1/invocations", {"input": {"id": "unknown-model", "content": content}, "model": "yolo"}
    )
    assert_status_json(reply, 404, grpc.StatusCode.NOT_FOUND)
    # A method the path does not declare is 405 (issue 18); a path that is not declared, 404.
    for method, path in (("POST", "/v1/models"), ("DELETE", "/v1/models/x")):
        assert_status_json(api.call(method, path), 405, grpc.StatusCode.UNIMPLEMENTED)
    assert_status_json(api.call("GET", "/v1/models/x/y"), 404, grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize("model", ["", *E2E_MODELS])
def test_invoke_each_model_through_envoy(
    api: RestClient, shared_dir: Path, reference: dict[str, Any], id_prefix: str, model: str
) -> None:
    versions = {m["name"]: m["version"] for m in rest_models(api)}
    content = (shared_dir / "images" / "face-1.jpg").read_bytes()
    invocation_id = f"{id_prefix}-model-{model or 'default'}"
    payload = {
        "input": {"id": invocation_id, "content": base64.b64encode(content).decode()},
        "model": model,
    }
    reply = api.post_json("/v1/invocations", payload)
    assert reply.status == 200, reply.body[:500]
    invocation = reply.json()["invocation"]
    name = model or DEFAULT
    assert invocation["state"] == "STATE_SUCCEEDED"
    assert (invocation["model"], invocation["model_version"]) == (name, versions[name])
    rows = [
        [d["box"]["x_min"], d["box"]["y_min"], d["box"]["x_max"], d["box"]["y_max"], d["score"]]
        for d in invocation["output"]["detections"]
    ]
    if name == "ultraface-slim-320":
        assert len(rows) > 30
    else:
        assert mismatches(rows, reference["images"]["face-1.jpg"]["boxes"]) == []
    read = api.get(f"/v1/invocations/{invocation_id}?view=INVOCATION_VIEW_BASIC").json()
    assert (read["invocation"]["model"], read["invocation"]["model_version"]) == (
        name,
        versions[name],
    )


def test_reload_under_load_through_envoy(
    api: RestClient,
    stack,
    e2e_models_file: Path,
    shared_dir: Path,
    id_prefix: str,
) -> None:
    """REST Invokes of the default model keep coming through Envoy while both servers reload
    (SIGHUP) a configuration that changes that model (a new alias, so a new detector): no call
    fails, every one is answered by the same model version, and both servers then serve the
    change. The configuration is put back (and reloaded) at the end."""
    original = e2e_models_file.read_text()
    config = tomllib.loads(original)
    default = next(model for model in config["models"] if model.get("default"))
    default["aliases"] = [*default["aliases"], "rfb"]
    content = base64.b64encode((shared_dir / "images" / "face-9.jpg").read_bytes()).decode()
    version = {m["name"]: m["version"] for m in rest_models(api)}[DEFAULT]
    before = {
        server.address: direct_model(server.address, DEFAULT).load_time.ToDatetime()
        for server in stack.servers
    }
    stop = threading.Event()
    answers: list[tuple[int, str]] = []

    def client(index: int) -> None:
        count = 0
        while not stop.is_set():
            count += 1
            payload = {"input": {"id": f"{id_prefix}-reload-{index}-{count}", "content": content}}
            reply = api.post_json("/v1/invocations", payload, timeout=30)
            model = reply.json()["invocation"]["model_version"] if reply.status == 200 else ""
            answers.append((reply.status, model or reply.body[:200].decode(errors="replace")))

    try:
        with ThreadPoolExecutor(4) as pool:
            clients = [pool.submit(client, index) for index in range(4)]
            time.sleep(1.0)
            write_models_toml(e2e_models_file, config["models"])
            for server in stack.servers:
                server.reload()
            deadline = time.monotonic() + 60
            for server in stack.servers:
                while not has_model(server.address, "rfb"):
                    assert time.monotonic() < deadline, f"{server.address} did not reload"
                    time.sleep(0.2)
            time.sleep(1.0)
            stop.set()
            for future in clients:
                future.result()
        assert len(answers) > 20
        assert [a for a in answers if a != (200, version)] == []
        for server in stack.servers:  # a new detector, loaded by the reload
            assert (
                direct_model(server.address, "rfb").load_time.ToDatetime() > before[server.address]
            )
        assert api.get("/v1/models/rfb").json()["model"]["name"] == DEFAULT
    finally:
        stop.set()
        e2e_models_file.write_text(original)
        for server in stack.servers:
            server.reload()
        deadline = time.monotonic() + 60
        for server in stack.servers:
            while has_model(server.address, "rfb"):
                assert time.monotonic() < deadline, f"{server.address} did not reload back"
                time.sleep(0.2)


def direct_model(address: str, name: str) -> pb.Model:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        return stub.GetModel(pb.GetModelRequest(name=name), timeout=10).model


def has_model(address: str, name: str) -> bool:
    try:
        direct_model(address, name)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return False
    return True
