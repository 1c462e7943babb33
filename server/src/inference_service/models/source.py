"""Model sources: where a model artifact comes from, chosen by its URI (``model_source_for``):
a local path or ``file://`` URI, an ``http(s)://`` download pinned by sha256, an ``s3://``
object, and any of them as a ``.zip``/``.tar.gz`` archive unpacked into a folder (SavedModels).

Downloads land in a cache folder through a temporary file renamed into place only once complete
(and verified, when pinned), so a cached file is never half-written; archives are unpacked the
same way, into a folder named after the archive's sha256.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from inference_service.artifacts import CHUNK_BYTES, artifact_sha256, file_sha256
from inference_service.ports import ModelSource

logger = logging.getLogger(__name__)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ModelFetchError(RuntimeError):
    """The model file could not be found, downloaded or verified."""


def _normalise_sha256(sha256: str) -> str:
    value = sha256.strip().lower()
    if not _SHA256_HEX.fullmatch(value):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return value


class LocalFileModelSource:
    """A model file (or folder, such as a SavedModel) already on disk; optionally checked
    against a sha256 (of the file; of ``tree_sha256`` for a folder)."""

    def __init__(self, path: str | os.PathLike[str], *, sha256: str | None = None) -> None:
        self._path = Path(path).expanduser()
        self._sha256 = None if sha256 is None else _normalise_sha256(sha256)

    def fetch(self) -> str:
        """Return the path of the file. Raises ``ModelFetchError`` when it is missing or its
        hash differs from the expected one."""
        if not self._path.exists():
            raise ModelFetchError(f"model file {self._path} does not exist")
        if self._sha256 is not None:
            actual = artifact_sha256(self._path)
            if actual != self._sha256:
                raise ModelFetchError(
                    f"model file {self._path} has sha256 {actual}, expected {self._sha256}"
                )
        logger.info("using model file %s", self._path)
        return str(self._path)

    def __repr__(self) -> str:
        return f"LocalFileModelSource({str(self._path)!r})"


class HttpModelSource:
    """A model downloaded once over HTTP(S) into a cache folder and verified by sha256.

    The download goes to a temporary file in ``cache_dir`` and is renamed into place only once
    its hash matches, so a cached file is always complete. Later ``fetch`` calls (and other
    processes sharing the folder) reuse it after re-checking its hash; a cached file with the
    wrong hash is replaced.
    """

    def __init__(
        self,
        url: str,
        sha256: str,
        cache_dir: str | os.PathLike[str],
        *,
        timeout_s: float = 60.0,
    ) -> None:
        """``url``: http(s) address of the file; ``sha256``: its expected hex digest;
        ``cache_dir``: folder for downloads (created if needed); ``timeout_s``: socket timeout
        of the download, in seconds."""
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"model URL must be http or https, got {url!r}")
        file_name = Path(urllib.parse.urlsplit(url).path).name
        if not file_name:
            raise ValueError(f"model URL has no file name: {url!r}")
        self._url = url
        self._sha256 = _normalise_sha256(sha256)
        self._cache_dir = Path(cache_dir).expanduser()
        self._timeout_s = timeout_s
        self._target = self._cache_dir / file_name

    def fetch(self) -> str:
        """Return the path of the verified cached file, downloading it first if needed.

        Raises ``ModelFetchError`` when the download fails or its hash differs.
        """
        if self._target.is_file():
            actual = file_sha256(self._target)
            if actual == self._sha256:
                logger.info("using cached model %s", self._target)
                return str(self._target)
            logger.warning(
                "cached model %s has sha256 %s, expected %s: downloading it again",
                self._target,
                actual,
                self._sha256,
            )
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        self._download()
        return str(self._target)

    def _download(self) -> None:
        logger.info("downloading model from %s to %s", self._url, self._target)
        handle, temp_name = tempfile.mkstemp(
            dir=self._cache_dir, prefix=f".{self._target.name}.", suffix=".part"
        )
        temp_path = Path(temp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(handle, "wb") as file:
                try:
                    # The scheme was checked to be http(s) in __init__.
                    with urllib.request.urlopen(  # noqa: S310
                        self._url, timeout=self._timeout_s
                    ) as response:
                        while chunk := response.read(CHUNK_BYTES):
                            digest.update(chunk)
                            file.write(chunk)
                            size += len(chunk)
                except OSError as exc:  # URLError, HTTPError, timeouts are all OSError
                    raise ModelFetchError(f"cannot download model from {self._url}: {exc}") from exc
            actual = digest.hexdigest()
            if actual != self._sha256:
                raise ModelFetchError(
                    f"model downloaded from {self._url} has sha256 {actual}, "
                    f"expected {self._sha256}; refusing to use it"
                )
            os.replace(temp_path, self._target)
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise
        logger.info("downloaded model %s (%d bytes)", self._target, size)

    def __repr__(self) -> str:
        return f"HttpModelSource({self._url!r}, cache_dir={str(self._cache_dir)!r})"


class S3ModelSource:
    """An object of an S3 (or S3-compatible) bucket, downloaded into a cache folder with boto3.

    With a sha256 pin, a cached copy with that hash is used without asking the store; else the
    object is downloaded again at every ``fetch`` (a reload then sees a new version). Needs the
    ``s3`` extra (boto3); credentials come from boto3's usual chain.
    """

    def __init__(
        self,
        bucket: str,
        key: str,
        cache_dir: str | os.PathLike[str],
        *,
        sha256: str | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        if not bucket or not key or key.endswith("/"):
            raise ValueError(f"an S3 source is s3://bucket/key, got s3://{bucket}/{key}")
        self._bucket = bucket
        self._key = key
        self._sha256 = None if sha256 is None else _normalise_sha256(sha256)
        self._endpoint_url = endpoint_url
        self._region = region
        self._timeout_s = timeout_s
        # Named after the key's hash (a key may hold "..") and its last part (its suffix).
        key_hash = hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()[:16]
        self._cache_dir = Path(cache_dir).expanduser() / "s3"
        self._target = self._cache_dir / f"{key_hash}-{key.rsplit('/', 1)[-1]}"

    @property
    def uri(self) -> str:
        return f"s3://{self._bucket}/{self._key}"

    def fetch(self) -> str:
        """Return the path of the downloaded (and, when pinned, verified) object. Raises
        ``ModelFetchError`` for a missing bucket or object, an unreachable store, refused
        credentials or a hash mismatch."""
        pinned = self._sha256 is not None and self._target.is_file()
        if pinned and file_sha256(self._target) == self._sha256:
            logger.info("using cached model %s for %s", self._target, self.uri)
            return str(self._target)
        self._target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(
            dir=self._target.parent, prefix=f".{self._target.name}.", suffix=".part"
        )
        temp_path = Path(temp_name)
        try:
            with os.fdopen(handle, "wb") as file:
                self._download(file)
            actual = file_sha256(temp_path)
            if self._sha256 is not None and actual != self._sha256:
                raise ModelFetchError(
                    f"model {self.uri} has sha256 {actual}, expected {self._sha256}; "
                    "refusing to use it"
                )
            os.replace(temp_path, self._target)
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise
        logger.info("downloaded model %s to %s", self.uri, self._target)
        return str(self._target)

    def _download(self, file: object) -> None:
        try:
            import boto3
            import botocore.config
            import botocore.exceptions
        except ImportError as exc:
            raise ModelFetchError(
                f"{self.uri}: s3:// sources need boto3 (pip install 'inference-service[s3]')"
            ) from exc
        config = botocore.config.Config(
            connect_timeout=self._timeout_s,
            read_timeout=self._timeout_s,
            retries={"max_attempts": 3, "mode": "standard"},
        )
        try:
            client = boto3.client(
                "s3", endpoint_url=self._endpoint_url, region_name=self._region, config=config
            )
            # GET (not download_fileobj's HEAD first): its error says which of bucket and key
            # is missing.
            body = client.get_object(Bucket=self._bucket, Key=self._key)["Body"]
            for chunk in body.iter_chunks(CHUNK_BYTES):
                file.write(chunk)  # type: ignore[attr-defined]
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                reason = "no such object"
            elif code == "NoSuchBucket":
                reason = "no such bucket"
            elif code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                reason = f"access denied ({code})"
            else:
                reason = f"{code or 'error'}: {error.get('Message', exc)}"
            raise ModelFetchError(f"cannot download model {self.uri}: {reason}") from exc
        except botocore.exceptions.BotoCoreError as exc:  # unreachable, no credentials, ...
            raise ModelFetchError(f"cannot download model {self.uri}: {exc}") from exc

    def __repr__(self) -> str:
        return f"S3ModelSource({self.uri!r})"


ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")
"""Sources whose path ends so are archives, unpacked into a folder."""


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _unpack(archive: Path, into: Path) -> None:
    """Unpack ``archive`` into the empty folder ``into``; refuse members that would land
    outside it (absolute paths, ``..``, links)."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.infolist():
                target = (into / member.filename).resolve()
                if not target.is_relative_to(into.resolve()):
                    raise ModelFetchError(
                        f"archive {archive.name}: unsafe member {member.filename}"
                    )
            zipped.extractall(into)  # noqa: S202 - every member was checked above
    else:
        with tarfile.open(archive, "r:gz") as tarred:
            try:
                # The "data" filter refuses absolute paths, "..", links out and devices.
                tarred.extractall(into, filter="data")
            except tarfile.FilterError as exc:
                raise ModelFetchError(f"archive {archive.name}: unsafe member: {exc}") from exc


class ArchiveModelSource:
    """A ``.zip`` or ``.tar.gz`` archive from another source, unpacked once into
    ``<cache_dir>/unpacked/<sha256 of the archive>/``. ``fetch`` returns that folder, or the
    single folder it holds (an archive of ``my-model/saved_model.pb`` gives ``my-model``)."""

    def __init__(self, inner: ModelSource, cache_dir: str | os.PathLike[str]) -> None:
        self._inner = inner
        self._root = Path(cache_dir).expanduser() / "unpacked"
        self.archive_sha256: str | None = None

    def fetch(self) -> str:
        archive = Path(self._inner.fetch())
        sha256 = file_sha256(archive)
        self.archive_sha256 = sha256
        target = self._root / sha256
        if not target.is_dir():
            self._root.mkdir(parents=True, exist_ok=True)
            temp = Path(tempfile.mkdtemp(dir=self._root, prefix=f".{sha256[:16]}."))
            try:
                try:
                    _unpack(archive, temp)
                except (OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
                    raise ModelFetchError(f"cannot unpack model archive {archive}: {exc}") from exc
                try:
                    os.replace(temp, target)
                except OSError:  # another process unpacked it first
                    if not target.is_dir():
                        raise
                    shutil.rmtree(temp, ignore_errors=True)
            except BaseException:
                shutil.rmtree(temp, ignore_errors=True)
                raise
            logger.info("unpacked model archive %s into %s", archive, target)
        entries = list(target.iterdir())
        if len(entries) == 1 and entries[0].is_dir():
            return str(entries[0])
        return str(target)

    def __repr__(self) -> str:
        return f"ArchiveModelSource({self._inner!r})"


def redact_uri(uri: str) -> str:
    """A source as shown to clients and in logs: no user, password or query (a presigned
    URL's signature)."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.scheme or parts.scheme == "file":
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def public_source(uri: str) -> str:
    """A source as shown to clients by default: its kind and file name only, never the
    server's folders or a URL's path (``file .../face.tflite``, ``https://host/.../m.onnx``,
    ``s3://bucket/.../m.tflite``)."""
    if not uri:
        return ""
    parts = urllib.parse.urlsplit(uri)
    if not parts.scheme or parts.scheme == "file" or len(parts.scheme) == 1:  # C:\...
        name = uri.replace("\\", "/").rstrip("/").rpartition("/")[2]
        return f"file .../{name}" if name else "file"
    name = parts.path.rstrip("/").rpartition("/")[2]
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}/.../{name}" if name else f"{parts.scheme}://{host}"


def model_source_for(
    uri: str,
    *,
    cache_dir: str | os.PathLike[str],
    sha256: str | None = None,
    s3_endpoint_url: str | None = None,
    s3_region: str | None = None,
) -> ModelSource:
    """The source of ``uri``: a path (absolute, or relative to the working directory) or
    ``file://`` URI; ``http(s)://`` (``sha256`` required); ``s3://bucket/key``. An archive
    (``.zip``, ``.tar.gz``, ``.tgz``) is unpacked, ``sha256`` then pinning the archive. Raises
    ``ValueError`` for a URI it cannot serve."""
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    archive = is_archive(parts.path or uri)
    source: ModelSource
    if not scheme:
        source = LocalFileModelSource(uri, sha256=sha256)
    elif scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URI {uri!r} names a host: use file:///absolute/path")
        path = urllib.request.url2pathname(urllib.parse.unquote(parts.path))
        if not path:
            raise ValueError(f"file URI {uri!r} has no path")
        source = LocalFileModelSource(path, sha256=sha256)
    elif scheme in ("http", "https"):
        if sha256 is None:
            raise ValueError(f"model URL {redact_uri(uri)} needs a sha256 pin")
        source = HttpModelSource(uri, sha256, cache_dir)
    elif scheme == "s3":
        source = S3ModelSource(
            parts.netloc,
            urllib.parse.unquote(parts.path.lstrip("/")),
            cache_dir,
            sha256=sha256,
            endpoint_url=s3_endpoint_url,
            region=s3_region,
        )
    else:
        raise ValueError(
            f"unsupported model source {redact_uri(uri)!r}: use a path, file://, http(s):// "
            "or s3://bucket/key"
        )
    if archive:
        return ArchiveModelSource(source, cache_dir)
    return source
