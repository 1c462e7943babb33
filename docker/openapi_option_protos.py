"""Copy grpc-gateway's OpenAPI option protos (protoc-gen-openapiv2/options/{annotations,
openapiv2}.proto) out of its module zip on the Go module proxy into ``third_party/``: what
``make protos`` takes from the Go module cache, for an image build without a Go toolchain.

Used by server/Dockerfile's ``protos`` stage; environment: GOPROXY (the first entry of the
list), GRPC_GATEWAY_VERSION, and EXTRA_CA_CERTS (PEM certificates trusted as well as the
system's, for a build behind a TLS-intercepting proxy).
"""

import io
import os
import pathlib
import ssl
import urllib.request
import zipfile

MODULE = "github.com/grpc-ecosystem/grpc-gateway/v2"
NAMES = ("annotations.proto", "openapiv2.proto")


def main() -> None:
    version = os.environ["GRPC_GATEWAY_VERSION"]
    proxy = os.environ.get("GOPROXY", "https://proxy.golang.org").split(",")[0].rstrip("/")
    context = ssl.create_default_context()
    extra = os.environ.get("EXTRA_CA_CERTS", "").strip()
    if extra:
        context.load_verify_locations(cadata=extra)
    url = f"{proxy}/{MODULE}/@v/{version}.zip"
    with urllib.request.urlopen(url, context=context, timeout=120) as response:  # noqa: S310
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    target = pathlib.Path("third_party/protoc-gen-openapiv2/options")
    target.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        member = f"{MODULE}@{version}/protoc-gen-openapiv2/options/{name}"
        (target / name).write_bytes(archive.read(member))
        print(f"{target / name} <- {url}")


if __name__ == "__main__":
    main()
