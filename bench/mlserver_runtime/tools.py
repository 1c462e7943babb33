"""Helpers that run in the MLServer venv (its protobuf and gRPC stubs), called by bench/mlserver.py.

    python tools.py protoset OUT                        the V2 dataplane's FileDescriptorSet
    python tools.py requests --model M --out F IMG...   one ModelInferRequest per image (framed)
    python tools.py check --target H:P --model M IMG... infer each image once; print JSON boxes

``check`` prints ``{"<image name>": [[x_min, y_min, x_max, y_max, score], ...], ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

INPUT_NAME = "image"


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def infer_request(model: str, content: bytes) -> pb.ModelInferRequest:
    """A V2 request with one BYTES input of shape [1]: the encoded image."""
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=INPUT_NAME,
        datatype="BYTES",
        shape=[1],
        contents=pb.InferTensorContents(bytes_contents=[content]),
    )
    return pb.ModelInferRequest(model_name=model, inputs=[tensor])


def write_protoset(out: Path) -> None:
    files = descriptor_pb2.FileDescriptorSet()
    pb.DESCRIPTOR.CopyToProto(files.file.add())
    out.write_bytes(files.SerializeToString())


def write_requests(model: str, images: Sequence[Path], out: Path) -> None:
    with open(out, "wb") as file:
        for image in images:
            message = infer_request(model, image.read_bytes()).SerializeToString()
            file.write(_uvarint(len(message)) + message)


def _boxes(response: pb.ModelInferResponse) -> list[list[float]]:
    outputs = {output.name: list(output.contents.fp32_contents) for output in response.outputs}
    boxes, scores = outputs["boxes"], outputs["scores"]
    return [[*boxes[4 * i : 4 * i + 4], scores[i]] for i in range(len(scores))]


def check(target: str, model: str, images: Sequence[Path]) -> dict[str, list[list[float]]]:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        found = {}
        for image in images:
            request = infer_request(model, image.read_bytes())
            found[image.name] = _boxes(stub.ModelInfer(request, timeout=30))
        return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools.py")
    commands = parser.add_subparsers(dest="command", required=True)
    protoset = commands.add_parser("protoset")
    protoset.add_argument("out", type=Path)
    requests = commands.add_parser("requests")
    requests.add_argument("--model", required=True)
    requests.add_argument("--out", type=Path, required=True)
    requests.add_argument("images", type=Path, nargs="+")
    checker = commands.add_parser("check")
    checker.add_argument("--target", required=True)
    checker.add_argument("--model", required=True)
    checker.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "protoset":
        write_protoset(args.out)
    elif args.command == "requests":
        write_requests(args.model, args.images, args.out)
    else:
        json.dump(check(args.target, args.model, args.images), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
