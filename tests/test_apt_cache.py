"""build.apt_proxy and `./ccp apt-cache`: every apt-get of a build, and
mmdebstrap's, through a real apt-cacher-ng, with the input digest unchanged."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess

import pytest
from conftest import REPO

from ccp_tasks.build import apt_proxy
from ccp_tasks.checks import kube
from ccp_tasks.core.net import is_loopback
from ccp_tasks.model.config import load_config


def free_port() -> int:
    """A free loopback port apt-cacher-ng can bind (it takes none above 32767)."""
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


@pytest.fixture
def apt_cache(tmp_path):
    """The real `./ccp apt-cache`, from a copy of the script so that its cache/ is the test's."""
    home = tmp_path / "acng"
    home.mkdir()
    shutil.copy(REPO / "ccp", home / "ccp")
    env = dict(os.environ, CCP_APT_CACHE_PORT=str(free_port()))
    started = subprocess.run([home / "ccp", "apt-cache"], capture_output=True, text=True, env=env, timeout=300)
    assert started.returncode == 0, started.stderr
    yield home, started.stdout, env
    subprocess.run([home / "ccp", "apt-cache", "stop"], capture_output=True, env=env, timeout=60)


def test_apt_cache_prints_the_setting_and_a_second_call_finds_it_running(apt_cache):
    home, printed, env = apt_cache
    assert printed == f"build:\n  apt_proxy: http://127.0.0.1:{env['CCP_APT_CACHE_PORT']}\n"
    again = subprocess.run([home / "ccp", "apt-cache"], capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 0 and again.stdout == printed
    assert "already answers" in again.stderr


@pytest.mark.slow
def test_builds_fetch_through_the_apt_cache_without_changing_their_input_digest(
    project, builder, docker_client, apt_cache
):
    home, _, env = apt_cache
    proxy = f"http://127.0.0.1:{env['CCP_APT_CACHE_PORT']}"
    for name in ("base", "base-tools"):
        shutil.copytree(REPO / "dockerfiles" / name, project.root / "dockerfiles" / name)
    # A value of this run's before the apt step: the engine's build cache is shared, and
    # another run's identical step would come back cached, running no apt-get at all.
    template = project.root / "dockerfiles" / "base-tools" / "Dockerfile.j2"
    template.write_text(
        template.read_text().replace("{{ apt_install(", f"ENV CCP_TEST_RUN={project.namespace}\n{{{{ apt_install(", 1)
    )
    project.config["base"] = {"enabled": True, "image": "base", "suite": "bookworm"}
    project.config["build"] = {"apt_proxy": proxy}
    project.write_config()

    first = project.ok("-n", "2", timeout=1200)
    assert first.built == {"base", "base-tools"}
    fetched = (home / "cache" / "apt-cacher-ng" / "log" / "apt-cacher.log").read_text()
    assert "/debian/pool/main/b/base-files/" in fetched, "mmdebstrap did not go through the apt cache"
    # apt-get reached the proxy (BuildKit once built without the host's network, and
    # apt went on with the lists and debs of its cache mounts, after 7 s of retries).
    log = (project.root / "cache" / "logs" / "base-tools.log").read_text()
    assert "Could not connect" not in log and "Failed to fetch" not in log, log
    if builder == "classic" or any("Get:" in line and " curl " in line for line in log.splitlines()):
        # Under BuildKit, debs an earlier build left in the engine's cache mount are not fetched at all.
        assert "/debian/pool/main/c/curl/" in fetched, "base-tools' apt-get did not go through the apt cache"
    # The proxy reached the build, not the image.
    config = docker_client.inspect_image(project.ref("base-tools"))["Config"]
    assert not [e for e in config.get("Env") or [] if "proxy" in e.lower()]
    history = " ".join(step.get("CreatedBy", "") for step in docker_client.history(project.ref("base-tools")))
    assert proxy not in history

    # Where packages come from is not an input: without the proxy nothing is out of date.
    del project.config["build"]
    project.write_config()
    assert project.ok().rebuilt == set()


def test_a_port_apt_cacher_ng_cannot_bind_is_refused_before_starting_it(tmp_path):
    shutil.copy(REPO / "ccp", tmp_path / "ccp")
    env = dict(os.environ, CCP_APT_CACHE_PORT="40000")
    result = subprocess.run([tmp_path / "ccp", "apt-cache"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert result.stderr == (
        "ccp: error: CCP_APT_CACHE_PORT=40000: apt-cacher-ng binds only ports 1-32767; choose one (default 3142)\n"
    )
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "value, problem",
    [
        ("https://127.0.0.1:3142", "is not an http://host:port URL"),
        ("127.0.0.1:3142", "is not an http://host:port URL"),
        ("http://127.0.0.1:3142/acng", "without a path"),
        ("http://127.0.0.1:99999", "has a bad port"),
    ],
)
def test_a_bad_apt_proxy_is_one_line_naming_the_key(project, value, problem):
    project.config["build"] = {"apt_proxy": value}
    project.write_config()
    result = project.doit("list")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "ccp.yaml: build.apt_proxy:" in lines[0] and problem in lines[0], result.stderr


def test_every_section_of_ccp_yaml_is_read_into_its_settings(project):
    # A section the loader left a dict was read through getattr's default:
    # kube.kubernetes_version was silently ignored.
    project.config["kube"] = {"kubernetes_version": "1.30"}
    project.config["build"] = {"apt_proxy": "http://10.0.0.1:3142"}
    project.write_config()
    cfg = load_config(project.root)
    assert kube.kubernetes_version(cfg) == "1.30"
    assert cfg.build.apt_proxy == "http://10.0.0.1:3142"


@pytest.mark.parametrize(
    "proxy, network",
    [
        ("http://127.0.0.1:3142", "host"),
        ("http://localhost:3142", "host"),
        ("http://[::1]:3142", "host"),
        ("http://127.0.0.2:3142", "host"),
        ("http://10.0.0.5:3142", None),  # a shared apt-cacher-ng for several agents: the default bridge
        ("http://apt.example.org:3142", None),
        ("", None),
    ],
)
def test_a_proxy_on_loopback_is_reached_from_the_hosts_network(proxy, network):
    assert apt_proxy.network_mode(proxy) == network


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1:5000", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("registry.example.org:5000", False),
        ("192.168.1.4", False),
        ("localhost.example.org", False),
    ],
)
def test_one_rule_says_which_hosts_are_this_host(host, loopback):
    # The registry reference's spelling (external parents: no TLS to a loopback registry, as Docker does).
    assert is_loopback(host) is loopback
