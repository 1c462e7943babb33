"""Write docs/settings.md, the reference of every ``INFERENCE_*`` setting, from the settings
classes themselves: each field's environment variable, type (with its bounds), default and
docstring (pydantic's ``use_attribute_docstrings``), grouped by the ``# --- group ---``
comments of the class's source.

    python tools/settings_reference.py           # write docs/settings.md (`make docs`)
    python tools/settings_reference.py --check   # exit 1 when the committed file is stale

A unit test (tests/unit/test_settings_reference.py) fails while the committed file differs
from what this script writes.
"""

from __future__ import annotations

import argparse
import enum
import inspect
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "settings.md"

_GROUP = re.compile(r"^\s*# -+ (.+?) -+\s*$")
_FIELD = re.compile(r"^    ([a-z_][a-z0-9_]*)\s*:")
_RST_LITERAL = re.compile(r"``([^`]+)``")


def _classes() -> list[tuple[str, type[BaseSettings], str]]:
    """(section title, class, what it configures): the server's, the edge's, the dev stack's."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from devstack.stack import StackSettings
    from inference_service.edge.config import EnvoySettings
    from inference_service.settings import Settings

    return [
        ("The server", Settings, "what `inference-service serve` (and `migrate`, ...) reads"),
        (
            "Envoy: the edge",
            EnvoySettings,
            "what the Envoy config renderer reads (`python -m inference_service.edge render`:"
            " `make run`, the tests, compose's `envoy-config`); the body limits follow the"
            " server's `INFERENCE_MAX_CONTENT_BYTES` and `INFERENCE_MAX_METADATA_ENTRIES`",
        ),
        (
            "The local stack",
            StackSettings,
            "`make run` and the tests only (besides every setting above): ports and processes"
            " of the local stack",
        ),
    ]


def _own_fields(cls: type[BaseSettings]) -> list[str]:
    """The fields declared in ``cls`` itself, in source order."""
    return [name for name in cls.model_fields if name in inspect.get_annotations(cls)]


def _groups(cls: type[BaseSettings]) -> Iterator[tuple[str, list[str]]]:
    """The class's own fields by the ``# --- group ---`` comment above them."""
    own = set(_own_fields(cls))
    group, fields = "", []
    for line in inspect.getsource(cls).splitlines():
        heading = _GROUP.match(line)
        if heading:
            if fields:
                yield group, fields
            group, fields = heading[1], []
            continue
        field = _FIELD.match(line)
        if field and field[1] in own:
            fields.append(field[1])
    if fields:
        yield group, fields


def _type(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{value}`" for value in args)
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type(arg) for arg in args)
    if origin is not None and args:
        return f"{origin.__name__}[{', '.join(_type(arg) for arg in args)}]"
    if annotation is type(None):
        return "unset"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


_BOUNDS = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)


def _bounds(field: FieldInfo) -> str:
    found = []
    for item in field.metadata:
        for kind, attribute, sign in _BOUNDS:
            if isinstance(item, kind):
                found.append(f"{sign} {_number(getattr(item, attribute))}")
    return f" ({', '.join(found)})" if found else ""


def _number(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _default(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if isinstance(value, (list, dict, tuple)) and not value:
        return "empty"
    if isinstance(value, list):
        return "`" + ",".join(str(item) for item in value) + "`"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, str) and not value:
        return '`""`'
    if isinstance(value, int):
        return f"`{value}`" + (f" ({_size(value)})" if value >= 1024 * 1024 else "")
    return f"`{value}`"


def _size(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2)):
        if value % size == 0:
            return f"{value // size} {unit}"
    return f"{value:,}"


def _description(text: str | None, env: dict[str, str]) -> str:
    one_line = " ".join((text or "").split())

    def literal(match: re.Match[str]) -> str:
        name = match[1]
        return f"`{env[name]}`" if name in env else f"`{name}`"

    return _RST_LITERAL.sub(literal, one_line).replace("|", "\\|")


def render() -> str:
    """The whole of docs/settings.md."""
    classes = _classes()
    env: dict[str, str] = {}
    for _, cls, _ in classes:
        prefix = cls.model_config.get("env_prefix", "")
        for name in cls.model_fields:
            env[name] = f"{prefix}{name}".upper()
    lines = [
        "# Settings reference",
        "",
        "<!-- Generated by tools/settings_reference.py from the settings classes (`make docs`);",
        "     do not edit: change the field's docstring and run `make docs`. -->",
        "",
        "Every setting is an environment variable; the common ones are also flags of",
        "`inference-service serve` (`--help`). Sizes are in bytes, times (`_S`) in seconds.",
        "A list is comma-separated (or a JSON list). How the settings fit together:",
        "[operations.md](operations.md).",
        "",
    ]
    for title, cls, _ in classes:
        lines.append(f"- [{title}](#{_anchor(title)}): `{cls.__name__}`")
    lines.append("")
    for title, cls, what in classes:
        source = Path(inspect.getfile(cls)).resolve().relative_to(REPO)
        lines += [
            f"## {title}",
            "",
            f"`{cls.__name__}` in [`{source}`](../{source}): {what}.",
            "",
        ]
        for group, names in _groups(cls):
            if group:
                lines += [f"### {_capitalized(group)}", ""]
            lines += ["| variable | type | default | description |", "| --- | --- | --- | --- |"]
            for name in names:
                field = cls.model_fields[name]
                lines.append(
                    f"| `{env[name]}` | {_type(field.annotation)}{_bounds(field)} "
                    f"| {_default(field.default)} | {_description(field.description, env)} |"
                )
            lines.append("")
    return "\n".join(lines)


def _capitalized(text: str) -> str:
    """``requests`` -> ``Requests``; ``gRPC server`` stays as it is."""
    return text if text[1:2].isupper() else text[:1].upper() + text[1:]


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(REPO)} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
