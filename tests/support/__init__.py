"""Helpers shared by the test suites (importable as ``support``: pythonpath in pyproject.toml)."""
