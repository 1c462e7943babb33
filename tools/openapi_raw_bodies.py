"""Post-process the OpenAPI file protoc-gen-openapiv2 writes (``make openapi``): a request whose
HTTP rule binds its body to a ``google.api.HttpBody`` field (``POST /v1/invocations:upload``)
takes the raw bytes as its body, but the plugin describes it as the HttpBody message
(``{contentType, data, extensions}``). Here that body parameter becomes ``type: string, format:
binary``, what Postman and schemathesis need to send a file.

Usage: python tools/openapi_raw_bodies.py SPEC.json (rewritten in place; idempotent).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HTTP_BODY_REF = "#/definitions/apiHttpBody"
RAW = {"type": "string", "format": "binary"}


def rewrite(spec: dict) -> dict:
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "body" and parameter.get("schema") == {
                    "$ref": HTTP_BODY_REF
                }:
                    parameter["schema"] = dict(RAW)
    return spec


def main(path: str) -> None:
    spec_path = Path(path)
    spec = rewrite(json.loads(spec_path.read_text()))
    text = json.dumps(spec, indent=2, ensure_ascii=False)
    # As the plugin (Go's encoder) writes them, so that the rest of the file stays as it was.
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(char, escaped)
    spec_path.write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
