"""devstack.docker without an engine: the dockerd flags, the Debian mirror, the extra CAs, the
image build's pid file (the docker tests run them for real)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack import docker


def test_dockerd_makes_no_bridge_network_nor_firewall_rules() -> None:
    assert set(docker.DOCKERD_FLAGS) == {
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--ip-masq=false",
    }


def test_every_image_is_a_project_name() -> None:
    assert all(name.startswith("inference-service") for name in docker.IMAGES)
    assert len(set(docker.IMAGES)) == len(docker.IMAGES) == 6


def test_extra_ca_certs_concatenates_the_given_pem_files(tmp_path: Path) -> None:
    first, second = tmp_path / "a.crt", tmp_path / "b.crt"
    first.write_text("-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\n")
    second.write_text("-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----")
    text = docker.extra_ca_certs([first, second])
    assert text.count("BEGIN CERTIFICATE") == 2
    assert text.endswith("-----END CERTIFICATE-----\n")
    assert docker.extra_ca_certs([]) == ""


def test_debian_mirror_is_a_url() -> None:
    mirror = docker.debian_mirror()
    assert mirror.startswith(("http://", "https://")), mirror


def test_image_build_running_follows_the_pid_file(tmp_path: Path) -> None:
    pid_file = tmp_path / "images.pid"
    assert not docker.image_build_running(pid_file)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pid_file.write_text(f"{child.pid}\n")
        assert docker.image_build_running(pid_file)
    finally:
        child.kill()
        child.wait()
    assert not docker.image_build_running(pid_file)
    docker.wait_for_image_build(timeout=5, pid_file=pid_file)  # returns at once


def test_apt_install_refuses_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker.os, "geteuid", lambda: 1000)
    with pytest.raises(docker.ProcessError, match="as root"):
        docker._apt_install("docker.io")


def test_images_announces_its_build_in_the_pid_file_and_builds_compose_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`images` holds the pid file while it builds (the docker tests wait for it) and builds
    the compose plugin at the same time as the images."""
    pid_file = tmp_path / "images.pid"
    monkeypatch.setattr(docker, "BUILD_PID_FILE", pid_file)
    monkeypatch.setattr(docker.DockerEngine, "ensure", lambda self: False)
    seen: dict[str, object] = {}

    def compose() -> None:
        seen["compose_during_build"] = pid_file.is_file()

    def build_all(self: docker.ImageBuilder, *, rebuild_base: bool = False) -> None:
        seen["pid"] = docker.read_pid(pid_file)

    monkeypatch.setattr(docker, "ensure_compose", compose)
    monkeypatch.setattr(docker.ImageBuilder, "all", build_all)
    assert docker.main(["images", "--extra-ca", str(tmp_path / "none.pem")]) == 1  # no such PEM
    (tmp_path / "none.pem").write_text("")
    assert docker.main(["images", "--extra-ca", str(tmp_path / "none.pem")]) == 0
    assert seen == {"compose_during_build": True, "pid": os.getpid()}
    assert not pid_file.exists()
