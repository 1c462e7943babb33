"""docs/settings.md is what tools/settings_reference.py makes from the settings classes now
(like the committed OpenAPI file, it must not go stale), and it lists every setting."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "settings_reference.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_reference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_settings_reference_is_up_to_date() -> None:
    generator = _generator()
    committed = generator.OUTPUT.read_text()
    assert committed == generator.render(), (
        "docs/settings.md is stale: run `make docs` and commit it"
    )


def test_every_setting_is_in_the_reference() -> None:
    generator = _generator()
    text = generator.render()
    for _, cls, _ in generator._classes():
        prefix = cls.model_config["env_prefix"]
        for name, field in cls.model_fields.items():
            variable = f"{prefix}{name}".upper()
            assert f"| `{variable}` |" in text, variable
            assert field.description, f"{cls.__name__}.{name} has no docstring"
