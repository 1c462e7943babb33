"""Model sources, for real: the same model bytes from a path, a ``file://`` URI, HTTP (a local
server), S3 (moto's S3-compatible server on loopback) and ``.zip``/``.tar.gz`` archives of the
SavedModel from each; and every way a source can fail fails the load with a clear message,
leaving nothing half-loaded."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import custom_detector
from support.model_fixtures import RFB_SHA256, RFB_TFLITE, S3Server

from devstack.process import free_port
from inference_service.artifacts import file_sha256, tree_sha256
from inference_service.export.keras_rfb import archive_folder
from inference_service.models.config import ModelsConfig, ModelSpec
from inference_service.models.loader import LoadOptions, ModelLoadError, fetch_artifact, load_models


class FileServer:
    """Serves one folder over HTTP on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/{name}"


@pytest.fixture(scope="module")
def artifacts(
    shared_dir: Path, saved_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A folder with the TFLite model and the SavedModel as .zip, .tar.gz and .tgz."""
    root = tmp_path_factory.mktemp("artifacts")
    shutil.copy(shared_dir / RFB_TFLITE, root / "rfb.tflite")
    for suffix in (".zip", ".tar.gz", ".tgz"):
        archive_folder(saved_model_dir, root / f"rfb-savedmodel{suffix}")
    return root


@pytest.fixture(scope="module")
def web(artifacts: Path) -> Iterator[FileServer]:
    server = FileServer(artifacts)
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server, artifacts: Path) -> str:
    name = s3_server.bucket()
    for path in artifacts.iterdir():
        s3_server.put(name, f"ultraface/{path.name}", path)
    return name


@pytest.fixture
def options(tmp_path: Path, s3_server: S3Server) -> LoadOptions:
    return LoadOptions(cache_dir=tmp_path / "cache", s3_endpoint_url=s3_server.endpoint_url)


def uri_of(kind: str, name: str, artifacts: Path, web: FileServer, bucket: str) -> str:
    return {
        "path": str(artifacts / name),
        "file": (artifacts / name).as_uri(),
        "http": web.url(name),
        "s3": f"s3://{bucket}/ultraface/{name}",
    }[kind]


@pytest.mark.parametrize("kind", ["path", "file", "http", "s3"])
def test_every_source_gives_the_same_model_bytes(
    kind: str, artifacts: Path, web: FileServer, bucket: str, options: LoadOptions, shared_dir: Path
) -> None:
    uri = uri_of(kind, "rfb.tflite", artifacts, web, bucket)
    pinned = fetch_artifact(ModelSpec(name="m", source=uri, sha256=RFB_SHA256), options)
    assert Path(pinned.path).read_bytes() == (shared_dir / RFB_TFLITE).read_bytes()
    assert pinned.version == RFB_SHA256
    if kind != "http":  # http(s) needs the pin; the others version the bytes they fetched
        unpinned = fetch_artifact(ModelSpec(name="m", source=uri), options)
        assert file_sha256(unpinned.path) == unpinned.version == RFB_SHA256


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz", ".tgz"])
@pytest.mark.parametrize("kind", ["path", "file", "http", "s3"])
def test_archives_unpack_to_the_same_saved_model(
    kind: str,
    suffix: str,
    artifacts: Path,
    web: FileServer,
    bucket: str,
    options: LoadOptions,
    saved_model_dir: Path,
) -> None:
    name = f"rfb-savedmodel{suffix}"
    archive_sha = file_sha256(artifacts / name)
    uri = uri_of(kind, name, artifacts, web, bucket)
    artifact = fetch_artifact(ModelSpec(name="m", source=uri, sha256=archive_sha), options)
    folder = Path(artifact.path)
    assert folder.name == saved_model_dir.name
    assert (folder / "saved_model.pb").is_file()
    assert tree_sha256(folder) == tree_sha256(saved_model_dir)
    assert artifact.version == archive_sha
    again = fetch_artifact(ModelSpec(name="m", source=uri, sha256=archive_sha), options)
    assert again == artifact  # unpacked once, found again


def test_a_pinned_s3_model_is_served_from_the_cache(
    s3_server: S3Server, artifacts: Path, options: LoadOptions
) -> None:
    bucket = s3_server.bucket()
    uri = s3_server.put(bucket, "rfb.tflite", artifacts / "rfb.tflite")
    spec = ModelSpec(name="m", source=uri, sha256=RFB_SHA256)
    first = fetch_artifact(spec, options)
    s3_server.client().delete_object(Bucket=bucket, Key="rfb.tflite")
    assert fetch_artifact(spec, options) == first
    with pytest.raises(ModelLoadError, match="no such object"):
        fetch_artifact(ModelSpec(name="m", source=uri), options)  # unpinned: asks again


WRONG = "0" * 64


@pytest.mark.parametrize(
    ("source", "sha256", "message"),
    [
        ("ftp://example.invalid/m.tflite", None, "unsupported model source"),
        ("file://host/m.tflite", None, "names a host"),
        ("s3://bucket-only", None, "s3://bucket/key"),
        ("<missing-path>", None, "does not exist"),
        ("<path>", WRONG, "has sha256"),
        ("<http>/nope.tflite", RFB_SHA256, "cannot download"),
        ("<http>/rfb.tflite", WRONG, "refusing to use it"),
        ("<s3>/ultraface/nope.tflite", None, "no such object"),
        ("s3://no-such-bucket-here/m.tflite", None, "no such bucket"),
        ("<s3>/ultraface/rfb.tflite", WRONG, "refusing to use it"),
        ("<corrupt-zip>", None, "cannot unpack"),
    ],
    ids=[
        "scheme",
        "file-host",
        "s3-no-key",
        "missing-file",
        "file-checksum",
        "http-404",
        "http-checksum",
        "s3-missing-object",
        "s3-missing-bucket",
        "s3-checksum",
        "corrupt-archive",
    ],
)
def test_a_bad_source_fails_with_a_clear_message(
    source: str,
    sha256: str | None,
    message: str,
    artifacts: Path,
    web: FileServer,
    bucket: str,
    options: LoadOptions,
    tmp_path: Path,
) -> None:
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04 this is no zip")
    source = (
        source.replace("<missing-path>", str(artifacts / "missing.tflite"))
        .replace("<path>", str(artifacts / "rfb.tflite"))
        .replace("<http>", web.url("").rstrip("/"))
        .replace("<s3>", f"s3://{bucket}")
        .replace("<corrupt-zip>", str(corrupt))
    )
    spec = ModelSpec.model_construct(
        name="broken", runtime="tflite", source=source, sha256=sha256, aliases=(), default=False
    )
    with pytest.raises(ModelLoadError, match=message) as raised:
        fetch_artifact(spec, options)
    assert "model 'broken'" in str(raised.value)


def test_an_unreachable_s3_endpoint_fails_the_load(tmp_path: Path, s3_server: S3Server) -> None:
    options = LoadOptions(cache_dir=tmp_path, s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ModelLoadError, match=r"cannot download model s3://b/m\.tflite"):
        fetch_artifact(ModelSpec(name="m", source="s3://b/m.tflite"), options)


def test_one_bad_model_fails_the_whole_load_and_closes_the_others(
    options: LoadOptions, bucket: str
) -> None:
    config = ModelsConfig(
        models=(
            ModelSpec(name="good", runtime="python", detector="support.custom_detector:fixed"),
            ModelSpec(name="bad", source=f"s3://{bucket}/ultraface/missing.tflite"),
        )
    )
    made = len(custom_detector.MADE)
    with pytest.raises(ModelLoadError, match="model 'bad'"):
        load_models(config, options)
    assert len(custom_detector.MADE) == made + 1
    assert custom_detector.MADE[-1].closed  # the good one was loaded, then closed again
