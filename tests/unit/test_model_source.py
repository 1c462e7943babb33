"""Model sources against a real HTTP server on 127.0.0.1 (no other network)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_service.models.loader import LoadOptions
from inference_service.models.source import (
    HttpModelSource,
    LocalFileModelSource,
    ModelFetchError,
    public_source,
)
from inference_service.settings import DEFAULT_MODEL_FILE, Settings

PAYLOAD = b"not really a model, but bytes all the same\n" * 1000
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
WRONG_SHA256 = "0" * 64


class FileServer:
    """Serves one folder over HTTP on 127.0.0.1 and counts GET requests."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:  # keep test output clean
                pass

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, name: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/{name}"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "model.tflite").write_bytes(PAYLOAD)
    server = FileServer(root)
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
    server.thread.join(timeout=5)


def test_download_verifies_and_caches(served: FileServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "nested"
    path = HttpModelSource(served.url("model.tflite"), PAYLOAD_SHA256, cache).fetch()
    assert Path(path) == cache / "model.tflite"
    assert Path(path).read_bytes() == PAYLOAD
    assert served.requests == ["/model.tflite"]
    assert sorted(p.name for p in cache.iterdir()) == ["model.tflite"]  # no temp file left


def test_cached_file_is_reused(served: FileServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = HttpModelSource(served.url("model.tflite"), PAYLOAD_SHA256, cache).fetch()
    again = HttpModelSource(served.url("model.tflite"), PAYLOAD_SHA256.upper(), cache)
    assert again.fetch() == first
    assert again.fetch() == first
    assert len(served.requests) == 1


def test_corrupt_cached_file_is_downloaded_again(served: FileServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "model.tflite").write_bytes(b"half a model")
    path = HttpModelSource(served.url("model.tflite"), PAYLOAD_SHA256, cache).fetch()
    assert Path(path).read_bytes() == PAYLOAD
    assert len(served.requests) == 1


def test_hash_mismatch_is_refused_and_cleaned_up(served: FileServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = HttpModelSource(served.url("model.tflite"), WRONG_SHA256, cache)
    with pytest.raises(ModelFetchError, match=f"has sha256 {PAYLOAD_SHA256}, expected 0000"):
        source.fetch()
    assert list(cache.iterdir()) == []
    assert len(served.requests) == 1


def test_missing_file_is_an_error(served: FileServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ModelFetchError, match="cannot download model"):
        HttpModelSource(served.url("absent.tflite"), PAYLOAD_SHA256, cache).fetch()
    assert list(cache.iterdir()) == []


def test_unreachable_server_is_an_error(tmp_path: Path) -> None:
    # Port 9 on loopback: nothing listens there, the connection is refused at once.
    source = HttpModelSource(
        "http://127.0.0.1:9/model.tflite", PAYLOAD_SHA256, tmp_path, timeout_s=5
    )
    with pytest.raises(ModelFetchError, match="cannot download model"):
        source.fetch()


@pytest.mark.parametrize(
    ("url", "sha256", "message"),
    [
        ("ftp://example.invalid/m.tflite", PAYLOAD_SHA256, "http or https"),
        ("https://example.invalid/", PAYLOAD_SHA256, "no file name"),
        ("https://example.invalid/m.tflite", "abc", "not a sha256"),
    ],
)
def test_bad_arguments(url: str, sha256: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        HttpModelSource(url, sha256, tmp_path)


def test_local_file(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(PAYLOAD)
    assert LocalFileModelSource(model).fetch() == str(model)
    assert LocalFileModelSource(model, sha256=PAYLOAD_SHA256).fetch() == str(model)
    with pytest.raises(ModelFetchError, match="expected 0000"):
        LocalFileModelSource(model, sha256=WRONG_SHA256).fetch()
    with pytest.raises(ModelFetchError, match="does not exist"):
        LocalFileModelSource(tmp_path / "absent.tflite").fetch()


def test_shared_model_matches_the_manifest(shared_dir: Path) -> None:
    source = LocalFileModelSource(
        shared_dir / DEFAULT_MODEL_FILE,
        sha256="2c46b4b60667d11b91adc14074e6196a1ef1d2dbdbabdc65b3bfa18f78de4866",
    )
    assert source.fetch().endswith("version-RFB-320_without_postprocessing.tflite")


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("/srv/models/face.tflite", "file .../face.tflite"),
        ("file:///srv/models/rfb.onnx", "file .../rfb.onnx"),
        ("models/saved/", "file .../saved"),
        (
            "https://user:secret@models.example:8443/a/b/m.onnx?sig=xyz",
            "https://models.example/.../m.onnx",
        ),
        ("s3://bucket/team/m.tflite", "s3://bucket/.../m.tflite"),
        ("", ""),
    ],
)
def test_public_source_shows_the_kind_and_file_name_only(uri: str, shown: str) -> None:
    assert public_source(uri) == shown


def test_load_options_take_the_expose_setting() -> None:
    assert LoadOptions.from_settings(Settings()).expose_model_sources is False
    exposed = Settings(expose_model_sources=True)
    assert LoadOptions.from_settings(exposed).expose_model_sources is True
