"""Model sources: where the model file comes from (a local path, or a verified download)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from inference_service.ports import ModelSource

logger = logging.getLogger(__name__)

SHARED_MODEL_FILE = Path("models/tflite/version-RFB-320_without_postprocessing.tflite")
"""Where the default model lies inside the shared folder."""

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CHUNK_BYTES = 1 << 20


class ModelFetchError(RuntimeError):
    """The model file could not be found, downloaded or verified."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's content, as lowercase hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise_sha256(sha256: str) -> str:
    value = sha256.strip().lower()
    if not _SHA256_HEX.fullmatch(value):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return value


class LocalFileModelSource:
    """A model file already on disk; optionally checked against a sha256."""

    def __init__(self, path: str | os.PathLike[str], *, sha256: str | None = None) -> None:
        self._path = Path(path).expanduser()
        self._sha256 = None if sha256 is None else _normalise_sha256(sha256)

    def fetch(self) -> str:
        """Return the path of the file. Raises ``ModelFetchError`` when it is missing or its
        hash differs from the expected one."""
        if not self._path.is_file():
            raise ModelFetchError(f"model file {self._path} does not exist")
        if self._sha256 is not None:
            actual = file_sha256(self._path)
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
                        while chunk := response.read(_CHUNK_BYTES):
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


def default_model_source(
    *,
    model_path: str | os.PathLike[str] | None,
    shared_dir: str | os.PathLike[str],
    model_url: str,
    model_sha256: str,
    cache_dir: str | os.PathLike[str],
) -> ModelSource:
    """Pick the model source: ``model_path`` when given; else the shared copy
    ``<shared_dir>/models/tflite/version-RFB-320_without_postprocessing.tflite`` when it exists;
    else a download of ``model_url`` (verified against ``model_sha256``) cached in ``cache_dir``."""
    if model_path is not None:
        return LocalFileModelSource(model_path)
    shared_copy = Path(shared_dir).expanduser() / SHARED_MODEL_FILE
    if shared_copy.is_file():
        return LocalFileModelSource(shared_copy)
    logger.info("no model at %s; it will be downloaded from %s", shared_copy, model_url)
    return HttpModelSource(model_url, model_sha256, cache_dir)
