"""Integration tests on running containers (ccp_tasks.checks.integration) against the real engine.

One tiny image, built once FROM scratch, plays every part: static busybox
(httpd, wget, sh, cat) plus this host's openssl binary with the libraries it
links, for a TLS server. The specs under tests/fixtures/integration/web/ start
it as "web" (the image under test) and "backend" (its dependency).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from ccp_tasks.checks import harness, integration
from ccp_tasks.checks.integration import ports
from ccp_tasks.core.errors import ConfigError, EngineError, TemplateError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "integration" / "web"
OPENSSL = Path("/usr/bin/openssl")
IMAGES = ("web", "backend", "memcached", "base")
VALUES = {"value": "one", "stamp": "1"}


@pytest.fixture(scope="module")
def box(docker_client, tmp_path_factory):
    """Build the fixture image once; yields (namespace, image ID)."""
    if not OPENSSL.exists():
        pytest.fail("the TLS fixture packs this host's openssl: `apt-get install -y openssl`")
    namespace = f"ccptest-it-{uuid.uuid4().hex[:8]}"
    context = tmp_path_factory.mktemp("box")
    rootfs = context / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", rootfs / "bin" / applet)  # COPY keeps symlinks: no RUN step needed
    ldd = subprocess.run(["ldd", str(OPENSSL)], capture_output=True, text=True, check=True).stdout
    for path in [str(OPENSSL), *re.findall(r"(/\S+)", ldd)]:
        target = rootfs / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(path), target)
    (context / "Dockerfile").write_text(f"FROM scratch\nCOPY rootfs/ /\nLABEL ccp.test.namespace={namespace}\n")
    ref = f"{namespace}/box:latest"
    image_id = None
    for chunk in docker_client.build(path=str(context), tag=ref, rm=True, forcerm=True, pull=False, decode=True):
        assert "error" not in chunk, chunk
        if isinstance(chunk.get("aux"), dict):
            image_id = chunk["aux"].get("ID", image_id)
    assert image_id
    yield namespace, image_id
    docker_client.remove_image(ref, force=True)


class Runner:
    """run_spec with a per-test work directory, record directory and labels."""

    def __init__(self, client, namespace: str, image_id: str, root: Path):
        self.client = client
        self.refs = {"web": image_id, "backend": image_id}
        self.root = root
        self.labels = {"ccp.test.namespace": namespace, "io.ccp.check": f"{namespace}/web"}
        self.log = root / "logs" / "test-web.log"
        self.recorded = root / "recorded" / "web"

    def run(self, spec, variables=VALUES):
        return integration.run_spec(
            self.client,
            "web",
            self.refs,
            spec,
            workdir=self.root / "work" / "web",
            recorded_dir=self.recorded,
            log_path=self.log,
            labels=self.labels,
            variables=dict(variables),
        )

    def leftovers(self) -> list[str]:
        filters = {"label": [f"{k}={v}" for k, v in self.labels.items()]}
        containers = [c["Names"][0] for c in self.client.containers(all=True, filters=filters)]
        networks = [n["Name"] for n in self.client.networks(filters=filters)]
        return containers + networks


@pytest.fixture
def runner(docker_client, box, tmp_path):
    namespace, image_id = box
    runner = Runner(docker_client, namespace, image_id, tmp_path)
    yield runner
    harness.sweep(docker_client, runner.labels)  # whatever a failed assertion left


def spec_in(tmp_path: Path, text: str, name: str = "integration.yaml") -> Path:
    directory = tmp_path / "spec"
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def by_name(results) -> dict:
    return {result.name: result for result in results}


# ---------------------------------------------------------------------------
# A passing run: every kind of check, a dependency, regression records


def test_passing_run_then_regression(runner):
    spec = integration.load_spec(FIXTURES / "integration.yaml", IMAGES)
    assert integration.service_images(spec) == ["backend"]
    assert sorted(p.name for p in integration.spec_files(spec, FIXTURES / "integration.yaml")) == [
        "data.json.j2",
        "hello.txt.j2",
        "index.html.j2",
        "proxy.cgi.j2",
        "start.sh.j2",
        "web.conf.j2",
    ]

    results = runner.run(spec)
    failed = [f"{r.name}: {r.message}\n{r.detail}" for r in results if not r.passed]
    assert not failed, "\n".join(failed)
    names = [r.name for r in results]
    assert names[:2] == ["ready: backend", "ready"]
    assert {"port 8080", "port 8443", "TLS: handshake", "TLS: floor", "TLS: plaintext"} <= set(names)
    assert {r.kind for r in results} == {"ready", "port", "http", "send", "exec", "tls"}
    first = by_name(results)["the backend's answer through the proxy"]
    assert "no answer recorded yet" in first.detail
    assert runner.leftovers() == []

    # Files were rendered under the work directory; the full logs of both containers were kept.
    work = runner.root / "work" / "web"
    assert (work / "files" / "web" / "etc" / "web.conf").read_text().endswith("value = one\n")
    assert os.access(work / "files" / "web" / "start.sh", os.X_OK)
    assert {p.name for p in (work / "tls").iterdir()} == {"cert.pem", "key.pem", "ca.pem", "bundle.pem"}
    log = runner.log.read_text()
    assert (
        "==== backend (service backend" in log and "==== web (under test" in log and "web starting (value one)" in log
    )

    record = integration.recorded_path(runner.recorded, "web")
    answers = json.loads(record.read_text())["answers"]
    assert answers["the same answer, stamp included"]["json"]["stamp"] == "1"

    # The backend's answer changes in a field the first check ignores: that one
    # passes, the one without an ignore list fails, and nothing is recorded.
    again = by_name(runner.run(spec, {**VALUES, "stamp": "2"}))
    assert again["the backend's answer through the proxy"].passed
    strict = again["the same answer, stamp included"]
    assert not strict.passed
    assert strict.message == 'answer differs from the last passing run: stamp: "1" -> "2"'
    assert json.loads(record.read_text())["answers"] == answers
    assert runner.leftovers() == []

    # A changed value: the expectation fails first; the raw answer, compared
    # with the Date and Last-Modified headers masked, differs in its last line.
    third = by_name(runner.run(spec, {**VALUES, "value": "uno"}))
    assert third["the backend's answer through the proxy"].message == 'json value: expected "one", got "uno"'
    assert re.fullmatch(
        r"answer differs from the last passing run: line \d+: 'hello from web \(one\)' -> 'hello from web \(uno\)'",
        third["raw HTTP over TCP"].message,
    ), third["raw HTTP over TCP"].message
    assert runner.leftovers() == []


# ---------------------------------------------------------------------------
# A failing run: every kind of check failing, each with its one-line message


def test_every_check_kind_fails_with_its_message(runner):
    spec = integration.load_spec(FIXTURES / "failing.yaml", IMAGES)
    results = by_name(runner.run(spec))
    messages = {name: r.message for name, r in results.items() if not r.passed}
    assert results["ready"].passed and results["port 8443"].passed and results["port 8444"].passed
    expected = {
        "port 9090": "does not listen on 9090 (listens on 8080, 8443, 8444)",
        "port 8080 (not in config)": "listens on 8080, which the config does not name",
        "floor violated: floor": "accepted a TLSv1.1 client (floor TLSv1.2)",
        "below the floor: handshake": "negotiated TLSv1.2, below the floor TLSv1.3",
        "below the floor: floor": "accepted a TLSv1.2 client (floor TLSv1.3)",
        "plaintext answered: plaintext": "answered a plain-text request on the TLS port with 'HTTP/1.1 200 OK'",
        "another certificate: handshake": (
            "certificate subject commonName is 'good.test', expected 'other.test'; "
            "certificate names are good.test, expected other.test"
        ),
        "status": "expected status 200, got 404 Not Found",
        "header": "header Content-Type: expected 'text/plain', got 'application/json'; "
        "header X-Served-By: expected absent, got 'web'",
        "json field": 'json value: expected "two", got "one"; json nope.x: missing',
        "body": "body does not match 'goodbye': got 'hello from web (one)\\n'",
        "send": "answer does not match 'HTTP/1\\.[01] 500': got 'HTTP/1.1 200 OK\\r\\nDate: ",
        "exec exit code": "exit code 3, expected 0",
        "exec output": "output does not match 'value = two': got '# rendered for the integration run of web\\nvalue = one'",
    }
    for name, message in expected.items():
        assert name in messages, f"{name} passed: {results.get(name)}"
        if name == "send":
            assert messages[name].startswith(message), messages[name]
        else:
            assert messages[name] == message
    assert messages["wrong host name: handshake"] == (
        "TLS handshake as wrong.test failed: Hostname mismatch, certificate is not valid for 'wrong.test'"
    )
    assert messages["plaintext answered: handshake"] == (
        "TLS handshake as good.test failed: the port does not speak TLS (WRONG_VERSION_NUMBER)"
    )
    # What passes in those TLS checks: the floor holds on 8443, plain text gets no answer there.
    for name in (
        "wrong host name: floor",
        "wrong host name: plaintext",
        "floor violated: handshake",
        "floor violated: plaintext",
        "plaintext answered: floor",
    ):
        assert results[name].passed, results[name]
    assert len(messages) == len(expected) + 2
    # Every failure carries the log tails, the image under test's last.
    detail = results["status"].detail
    assert "HTTP 404 Not Found" in detail
    assert detail.index("last lines of backend's log") < detail.index("last lines of web's log")
    assert "web starting (value one)" in detail
    assert detail.endswith(f"full logs: {runner.log}")
    assert runner.leftovers() == []
    assert not integration.recorded_path(runner.recorded, "web").exists()


# ---------------------------------------------------------------------------
# Readiness


SLOW_BACKEND = """\
services:
  backend:
    image: backend
    command: [sh, -c, "echo backend warming up; exec sleep 60"]
    ports: [9000]
    ready: {timeout: 1.5, interval: 0.2}
command: [httpd, -f, -p, 8080]
ports: [8080]
checks:
  - exec: {command: "true"}
"""


def test_readiness_timeout_and_early_exit_fail_with_the_log(runner, tmp_path):
    results = runner.run(integration.load_spec(spec_in(tmp_path, SLOW_BACKEND), IMAGES))
    assert [(r.name, r.passed) for r in results] == [("ready: backend", False)]  # web never started
    assert results[0].message == "backend not ready after 1.5s: port 9000 refuses connections"
    assert "backend warming up" in results[0].detail
    assert runner.leftovers() == []

    exits = spec_in(tmp_path, 'command: [sh, -c, "echo boom >&2; exit 3"]\nports: [8080]\n', name="exits.yaml")
    results = runner.run(integration.load_spec(exits, IMAGES))
    assert [(r.name, r.passed) for r in results] == [("ready", False)]
    assert results[0].message == "web exited with code 3 before it was ready"
    assert "    boom" in results[0].detail
    assert runner.leftovers() == []


LOOPBACK = """\
command: [sh, -c, "httpd -p 127.0.0.1:8081 && exec httpd -f -p 8080"]
ports: [8080]
local_ports: [8081]
"""


def test_loopback_ports(runner, tmp_path, monkeypatch):
    # An admin port on loopback, declared as such: passes. The image plays one
    # without `cat`: the tables are read through the container's process instead.
    real_exec = ports.exec_text

    def no_cat(client, container_id, command, user=None):
        if command[0] == "cat":
            return 127, 'exec: "cat": executable file not found in $PATH'
        return real_exec(client, container_id, command, user)

    monkeypatch.setattr(ports, "exec_text", no_cat)
    results = runner.run(integration.load_spec(spec_in(tmp_path, LOOPBACK), IMAGES))
    monkeypatch.undo()
    assert [(r.name, r.passed) for r in results] == [("ready", True), ("port 8080", True), ("port 8081 (local)", True)]

    # Declared as a service port: other containers cannot reach it.
    exposed = LOOPBACK.replace("ports: [8080]\nlocal_ports: [8081]", "ports: [8080, 8081]\nready: {ports: [8080]}")
    results = by_name(runner.run(integration.load_spec(spec_in(tmp_path, exposed, name="exposed.yaml"), IMAGES)))
    assert results["port 8081"].message == "listens on 8081 on 127.0.0.1 only, which other containers cannot reach"

    # Waited for: readiness says why it never answers.
    waited = LOOPBACK.replace("ports: [8080]\nlocal_ports: [8081]", "ports: [8080, 8081]\nready: {timeout: 1}")
    results = runner.run(integration.load_spec(spec_in(tmp_path, waited, name="waited.yaml"), IMAGES))
    assert (
        results[0].message
        == "web not ready after 1s: port 8081 refuses connections (it listens on 8081 on 127.0.0.1 only)"
    )
    assert runner.leftovers() == []


# ---------------------------------------------------------------------------
# Cleanup: leftovers of a killed run, KeyboardInterrupt from a check and from SIGINT


SMALL = """\
command: [httpd, -f, -p, 8080]
ports: [8080]
checks:
  - exec: {command: [cat, /proc/1/cmdline]}
"""


def test_leftovers_of_a_killed_run_are_removed(runner, tmp_path):
    old = {**runner.labels, integration.IMAGE_LABEL: "web", integration.RUN_LABEL: "killed"}
    network = runner.client.create_network(f"ccp-it-web-killed-{uuid.uuid4().hex[:6]}", labels=old)
    container = runner.client.create_container(
        runner.refs["web"],
        command=["sleep", "60"],
        labels=old,
        networking_config=runner.client.create_networking_config(
            {network["Id"]: runner.client.create_endpoint_config()}
        ),
    )
    runner.client.start(container["Id"])
    assert len(runner.leftovers()) == 2
    results = runner.run(integration.load_spec(spec_in(tmp_path, SMALL), IMAGES))
    assert all(r.passed for r in results), results
    assert runner.leftovers() == []


def test_keyboard_interrupt_in_a_check_removes_everything(runner, tmp_path, monkeypatch):
    seen = []

    def interrupted(run, check):
        seen.append(runner.leftovers())
        raise KeyboardInterrupt

    monkeypatch.setitem(integration.CHECKERS, "exec", interrupted)
    spec = integration.load_spec(spec_in(tmp_path, SMALL), IMAGES)
    with pytest.raises(KeyboardInterrupt):
        runner.run(spec)
    assert len(seen[0]) == 2  # the container and the network were there when it struck
    assert runner.leftovers() == []


def test_sigint_while_waiting_removes_everything(runner, tmp_path):
    never = (
        "services:\n  backend: {image: backend, command: [httpd, -f, -p, 8081], ports: [8081]}\n"
        "command: [sleep, 60]\nports: [8080]\nready: {timeout: 30}\n"
    )
    spec = integration.load_spec(spec_in(tmp_path, never), IMAGES)
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run(spec)
    finally:
        timer.cancel()
        timer.join()
    assert time.monotonic() - started < 15
    assert runner.leftovers() == []


# ---------------------------------------------------------------------------
# Errors before anything starts


def test_remote_engine_is_refused(runner, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://192.0.2.1:2375")
    spec = integration.load_spec(FIXTURES / "integration.yaml", IMAGES)
    with pytest.raises(EngineError, match="integration tests need a local Docker engine.*tcp://192.0.2.1:2375"):
        runner.run(spec)


def test_an_image_missing_from_the_engine_is_an_engine_error(runner, tmp_path):
    runner.refs["web"] = "ccptest-it-nowhere/web:latest"
    with pytest.raises(
        EngineError, match=r"image 'web' \(ccptest-it-nowhere/web:latest\) is not in the engine; build it first"
    ):
        runner.run(integration.load_spec(spec_in(tmp_path, SMALL), IMAGES))
    assert runner.leftovers() == []


def test_undefined_template_variable_names_file_and_line(runner):
    spec = integration.load_spec(FIXTURES / "integration.yaml", IMAGES)
    with pytest.raises(TemplateError, match=r"data\.json\.j2:1: 'stamp' is undefined"):
        runner.run(spec, {"value": "one"})
    assert runner.leftovers() == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "checks:\n  - http: {path: /, stauts: 200}\nports: [80]\n",
            "checks[0].http.stauts: unknown key (did you mean 'status'?); known keys: ",
        ),
        (
            "ports: [80]\nchecks:\n  - exec: {command: echo}\n  - http: {status: ok}\n",
            "checks[1].http.status: expected an integer, got 'ok'",
        ),
        (
            "services:\n  cache: {image: memcache}\n",
            "services.cache.image: 'memcache' is not an image of the tree (did you mean 'memcached'?)",
        ),
        ("servcies: {}\n", "servcies: unknown key (did you mean 'services'?)"),
        (
            "services:\n  cache: {image: memcached, redy: {timeout: 5}}\n",
            "services.cache.redy: unknown key (did you mean 'ready'?); known keys: command, entrypoint, env, ",
        ),
        ("ready: {timeuot: 5}\n", "ready.timeuot: unknown key (did you mean 'timeout'?); known keys: interval, log, "),
        ("ports: [80, 80]\n", "ports: port 80 is listed twice"),
        (
            "ports: [80]\nchecks:\n  - http: {}\n    send: {data: x}\n",
            "checks[0]: expected exactly one of http, send, exec, tls (found http and send)",
        ),
        ("checks:\n  - tls: {port: 443}\n", "checks[0].tls: needs a top-level 'tls' section"),
        (
            "tls: {hostnames: [a.test]}\nchecks:\n  - tls: {port: 443, min_version: TLSv1.4}\n",
            "checks[0].tls.min_version: expected one of TLSv1.1, TLSv1.2, TLSv1.3, got 'TLSv1.4' (did you mean 'TLSv1.3'?)",
        ),
        (
            "files: {/etc/x.conf: missing.j2}\n",
            "files./etc/x.conf: template 'missing.j2' not found beside integration.yaml",
        ),
        (
            "ports: [80]\nchecks:\n  - http: {}\n    ignore: [a]\n",
            "checks[0].ignore: only means something with 'regression: true'",
        ),
        (
            "ports: [80]\nchecks:\n  - http: {regression: true}\n",
            "checks[0].http.regression: 'regression' belongs beside 'http' (at checks[0].regression), not inside it",
        ),
        (
            "checks:\n  - exec: {command: id}\n    regression: true\n",
            "checks[0].regression: only http and send checks have an answer to compare, not exec",
        ),
        (
            "ports: [80]\nchecks:\n  - http: {expect_body: '('}\n",
            "checks[0].http.expect_body: not a valid regular expression",
        ),
        (
            "ports: [80]\nchecks:\n  - http: {}\n  - http: {}\n",
            "checks[1].name: 'GET / on port 80' names checks[0] too",
        ),
        ("services:\n  Cache: {image: memcached}\n", "services.Cache: 'Cache' is not a valid host name"),
        ("env: {DEBUG: yes}\n", "env.DEBUG: expected a string, got True"),
    ],
)
def test_validation_errors_are_one_line_naming_file_and_key(tmp_path, text, message):
    path = spec_in(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        integration.load_spec(path, IMAGES)
    error = str(caught.value)
    assert "\n" not in error
    assert error.startswith(f"{path}: "), error
    assert message in error, error


def test_proc_net_tables_are_parsed():
    tcp = (
        "  sl  local_address rem_address   st\n"
        "   0: 0B00007F:AEEF 00000000:0000 0A 0\n"  # Docker's DNS resolver
        "   1: 0100007F:1F91 00000000:0000 0A 0\n"
        "   2: 0200A8C0:1F90 0300A8C0:C350 01 0\n"  # an established connection, not a listener
    )
    tcp6 = (
        "  sl  local_address                         remote_address                        st\n"
        "   0: 00000000000000000000000000000000:20FB 00000000000000000000000000000000:0000 0A 0\n"
        "   1: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 0\n"
    )
    assert integration.parse_proc_net(tcp, ipv6=False) == [("127.0.0.11", 0xAEEF), ("127.0.0.1", 8081)]
    assert integration.parse_proc_net(tcp6, ipv6=True) == [("::", 8443), ("127.0.0.1", 80)]
