"""The fixed image mix and the request files the load generators send."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

from inference.v1 import inference_service_pb2 as pb
from PIL import Image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
INVOKE_METHOD = "inference.v1.InferenceService.Invoke"
GET_METHOD = "inference.v1.InferenceService.GetInvocation"
DELETE_METHOD = "inference.v1.InferenceService.DeleteInvocation"
INVOKE_ID_FIELD = "1.1"
"""``InvokeRequest.input`` (1) . ``ModelInput.id`` (1)."""


@dataclasses.dataclass(frozen=True)
class MixImage:
    """One image of the mix."""

    name: str
    content: bytes
    width: int
    height: int

    def describe(self) -> dict[str, object]:
        size = f"{self.width}x{self.height}"
        return {"name": self.name, "bytes": len(self.content), "size": size}


def load_mix(images_dir: Path, names: Sequence[str] = ()) -> list[MixImage]:
    """Every image of ``images_dir`` (or only ``names``), sorted by name: the fixed mix."""
    paths = (
        [images_dir / name for name in names]
        if names
        else sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    )
    if not paths:
        raise FileNotFoundError(f"no images in {images_dir}")
    mix = []
    for path in paths:
        content = path.read_bytes()
        with Image.open(io.BytesIO(content)) as image:
            width, height = image.size
        mix.append(MixImage(path.name, content, width, height))
    return mix


def uvarint(value: int) -> bytes:
    """``value`` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def write_delimited(path: Path, messages: Iterable[bytes]) -> Path:
    """Write messages as uvarint length-prefixed records (what ``bench-ghz -messages`` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        for message in messages:
            file.write(uvarint(len(message)))
            file.write(message)
    return path


def invoke_messages(mix: Sequence[MixImage]) -> list[bytes]:
    """One ``InvokeRequest`` per image, without an id (``bench-ghz`` appends a unique one)."""
    return [
        pb.InvokeRequest(input=pb.ModelInput(content=image.content)).SerializeToString()
        for image in mix
    ]


def get_messages(ids: Sequence[str], view: int) -> list[bytes]:
    """One ``GetInvocationRequest`` per id."""
    return [pb.GetInvocationRequest(id=i, view=view).SerializeToString() for i in ids]


def delete_messages(ids: Sequence[str]) -> list[bytes]:
    """One ``DeleteInvocationRequest`` per id."""
    return [pb.DeleteInvocationRequest(id=i).SerializeToString() for i in ids]


def write_rest_invoke_suffixes(directory: Path, mix: Sequence[MixImage]) -> Path:
    """Files with the end of a REST Invoke body per image (after the id); returns their list.

    ``bench/wrk/invoke.lua`` sends ``{"input":{"id":"<id>`` followed by one of them.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(mix):
        path = directory / f"{index:02d}.json-suffix"
        encoded = base64.b64encode(image.content).decode()
        path.write_text('","content":' + json.dumps(encoded) + "}}")
        paths.append(str(path))
    listing = directory / "bodies.txt"
    listing.write_text("\n".join(paths) + "\n")
    return listing


def write_raw_images(directory: Path, mix: Sequence[MixImage]) -> Path:
    """One file per image of the mix, its encoded bytes as they are; returns their list.

    ``bench/wrk/upload.lua`` sends each as the body of ``POST /v1/invocations:upload``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(mix):
        path = directory / f"{index:02d}.image"
        path.write_bytes(image.content)
        paths.append(str(path))
    listing = directory / "images.txt"
    listing.write_text("\n".join(paths) + "\n")
    return listing


def write_rest_get_paths(path: Path, ids: Sequence[str], view: str) -> Path:
    """The REST paths of ``GET /v1/invocations/{id}?view=...``, one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"/v1/invocations/{i}?view={view}\n" for i in ids))
    return path


def rest_list_path(page_size: int, page_token: str = "") -> str:
    """The REST path of ``GET /v1/invocations`` for one page (the default, BASIC, view)."""
    path = f"/v1/invocations?page_size={page_size}"
    return path + (f"&page_token={quote(page_token, safe='')}" if page_token else "")
