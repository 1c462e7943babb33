"""Which files to send, and the input id of each.

An id is derived from the file's path relative to the current directory (or, for a file outside
it, relative to the folder given on the command line), ``/`` written as ``~``, after an optional
prefix; so running the same command again from the same place gives the same ids, and the
service returns what it already stored. A path that is not a valid id as it is (other
characters, or longer than 128) keeps its valid characters and gets a hash of the whole path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}
)
MAX_ID_CHARS = 128
_VALID_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9._~-]")
_HASH_CHARS = 16


@dataclasses.dataclass(frozen=True)
class InputFile:
    path: Path
    """The file as found (relative when the argument was)."""
    relative: str
    """Its path relative to the current directory (or to the argument), with ``/``."""


def find_images(arguments: Iterable[Path]) -> Iterator[InputFile]:
    """Files named on the command line (whatever their suffix) and the image files under named
    folders (recursively, by suffix, sorted), each once."""
    seen: set[Path] = set()
    cwd = Path.cwd().resolve()
    for argument in arguments:
        if argument.is_dir():
            base = argument.resolve()
            found = sorted(
                p for p in argument.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif argument.is_file():
            base = argument.resolve().parent
            found = [argument]
        else:
            raise FileNotFoundError(f"{argument}: no such file or folder")
        for path in found:
            resolved = path.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            yield InputFile(path=path, relative=_relative(resolved, cwd, base))


def _relative(path: Path, cwd: Path, base: Path) -> str:
    for root in (cwd, base):
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return path.name


def input_id(relative: str, prefix: str = "") -> str:
    """The input id of a file at ``relative`` (a POSIX path), after ``prefix``."""
    plain = prefix + relative.replace("/", "~")
    if _VALID_ID.fullmatch(plain):
        return plain
    digest = hashlib.sha256((prefix + "\0" + relative).encode()).hexdigest()[:_HASH_CHARS]
    readable = _INVALID_CHARS.sub("_", plain.replace(os.sep, "~"))
    keep = MAX_ID_CHARS - _HASH_CHARS - 1
    return f"{readable[:keep]}-{digest}"
