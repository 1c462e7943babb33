"""The version of a model artifact: the sha256 of a file, or of a folder's files (a
SavedModel). Used by the detectors (their default version) and the model sources (pinned
downloads, archives); depends on nothing else in the package."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK_BYTES = 1 << 20
"""Bytes read (and hashed) at a time."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's content, as lowercase hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a folder: of every file's relative path and content, in sorted order."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        digest.update(bytes.fromhex(file_sha256(file)))
    return digest.hexdigest()


def artifact_sha256(path: str | os.PathLike[str]) -> str:
    """The version of a model artifact: the sha256 of a file, or ``tree_sha256`` of a folder."""
    return tree_sha256(path) if Path(path).is_dir() else file_sha256(path)
