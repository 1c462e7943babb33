"""server/requirements.lock (what `make` installs) pins every dependency of server/pyproject.toml,
dev extra included, and the grpcio family at one version. `make lock` rewrites it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "server/requirements.lock"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    found = {}
    for line in LOCK.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line.strip())
        if match:
            found[normalize(match.group(1))] = match.group(2)
    return found


def test_every_dependency_is_pinned() -> None:
    project = tomllib.loads((REPO / "server/pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    locked = pins()
    names = {normalize(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in wanted}
    missing = sorted(names - set(locked))
    assert not missing, f"not in the lock: {missing}; run `make lock`"
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            assert "==" in line, line


def test_the_grpcio_family_is_pinned_together() -> None:
    locked = pins()
    family = {name: locked[name] for name in locked if name.startswith("grpcio")}
    assert {"grpcio", "grpcio-tools", "grpcio-health-checking", "grpcio-reflection"} <= set(family)
    assert len(set(family.values())) == 1, family
