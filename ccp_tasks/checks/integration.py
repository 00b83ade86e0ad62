r"""Integration tests on running containers: the `integration.yaml` an image ships.

## Integration tests: `integration.yaml`

A service image may ship `integration.yaml` beside its `Dockerfile.j2`.
`test:<image>` starts the built image (and the other images of the tree it
needs) on a private Docker network made for the run, waits until it answers,
runs the checks, and removes every container and the network again, also when
a check fails or the run is interrupted. Leftovers of a killed run are removed
by the next run of the same image.

```yaml
# dockerfiles/api-service/integration.yaml
services:                           # other images of the tree, started first, in this order
  memcached:                        # its host name (network alias) on the run's network
    image: memcached                # an image of the tree
    env: {MEMCACHED_MEMORY_MB: "64"}
    ports: [11211]                  # wait until these accept connections
# the image under test; its host name on the network is its image name
env: {MEMCACHED_HOST: memcached}
ports: [8080]                       # exactly the TCP ports it must listen on
ready: {timeout: 30}
checks:
  - http: {path: /health, expect_json: {status: ok}}
  - name: a value goes through memcached
    http: {method: PUT, path: /kv/greeting, json: {value: hello}, expect_json: {value: hello}}
  - http: {path: /kv/greeting, expect_json: {key: greeting, value: hello}}
    regression: true                # the answer must match the last passing run's
  - exec: {command: [id, -un], output: "^api-service$"}
```

```yaml
# dockerfiles/nginx/integration.yaml
files:                              # rendered with Jinja2, mounted read-only
  /etc/nginx/conf.d/tls.conf: tls.conf.j2
ports: [80, 443]
tls: {hostnames: [www.test]}        # a throwaway CA and certificate, mounted at /etc/ccp/tls
checks:
  - tls: {port: 443, min_version: TLSv1.2, san: [www.test]}
  - http: {port: 443, tls: true, path: /, status: 200, expect_headers: {Server: {regex: "^nginx"}}}
```

```yaml
# dockerfiles/memcached/integration.yaml: configuration applied, shown on the wire
env: {MEMCACHED_MEMORY_MB: "64"}
ports: [11211]
checks:
  - send: {data: "stats\r\n", expect: 'STAT limit_maxbytes 67108864'}
```

Top-level keys (the image under test):

| key | default | meaning |
|---|---|---|
| `env` | `{}` | environment variables (strings; numbers are accepted; not templated) |
| `command` / `entrypoint` | the image's | a list of strings, or a string split like a shell would |
| `user` | the image's | user to run as |
| `files` | `{}` | container path → template file beside `integration.yaml` (or `{template: …, mode: "0755"}`); rendered into the run's work directory and bind-mounted read-only |
| `ports` | not checked | the exact set of TCP ports the container listens on (an empty list: none) |
| `local_ports` | `[]` | ports it listens on only on the loopback address (an admin socket, say): must listen, never reached from outside |
| `ready` | see below | when the container counts as started |
| `tls` | none | a throwaway CA and server certificate for this run (see below) |
| `variables` | `{}` | extra variables for the `files` templates |
| `services` | `{}` | dependencies: alias → `{image, env, command, entrypoint, user, files, ports, ready}` |
| `checks` | `[]` | the checks, run in order after the port checks |

Templates render like Dockerfile templates (`StrictUndefined`, `trim_blocks`,
`lstrip_blocks`) and see the configured `variables`
of `ccp.yaml`, the file's own `variables`, `image_name` (the image under
test), `services` (the dependency aliases) and `tls_dir`.

`ready` (also per service): `timeout` (seconds, default 30), `interval`
(default 0.5), `ports` (default: the container's `ports`; each must accept a
TCP connection from this host) and `log` (a regular expression the container
log must match). A container that exits, or is not ready in time, fails the
`ready` check with the tail of its log; the checks do not run then.

`tls`: `hostnames` (the certificate's DNS names or IPs, required),
`common_name` (default: the first host name), `key_type` (`ecdsa`, default, or
`rsa`), `dir` (default `/etc/ccp/tls`). The container under test finds there,
read-only: `cert.pem` (the server certificate), `key.pem` (its unencrypted
private key), `ca.pem` (the CA that signed it) and `bundle.pem` (certificate
then key, as haproxy wants). Every host-side TLS client of the run trusts only
that CA.

Each check is a mapping with an optional `name` (default: derived from the
check; names must be unique, regression answers are recorded by name) and
exactly one of `http`, `send`, `exec`, `tls`. Checks address the image under
test (services are there to be used by it). Key paths in error messages count
list items from 0 (`checks[0]` is the first check).

- **port** (from `ports`, no entry needed): one result per configured port —
  it listens (read from `/proc/net/tcp` and `/proc/net/tcp6` in the
  container with `cat`, or through the container's process on this host when
  the image has no `cat`) on a non-loopback address and this host can connect
  to it at the container's address on the run's network; and one failing
  result per port it listens on that the config does not name
  (`listens on 8080, which the config does not name`). Docker's own DNS
  listener on 127.0.0.11 does not count.
- **`http`**: `port` (default: the first of `ports`), `method` (`GET`),
  `path` (`/`), `headers`, `body` (a string) or `json` (sent as JSON), `tls`
  (`false`; `true` verifies against the run's CA), `hostname` (SNI and `Host`;
  default the first TLS host name), `timeout` (10: connection failures and
  502/503/504 are retried until then), and what to expect: `status` (200),
  `expect_headers` (name → exact value, `{regex: …}`, or `null` for absent),
  `expect_json` (dotted path such as `items.0.id` → value or `{regex: …}`),
  `expect_body` (a regular expression searched in the body).
- **`send`**: `port`, `data` (a string; YAML double quotes give `\r\n`),
  `expect` (a regular expression searched in the answer), `tls`, `hostname`,
  `timeout` (10). The answer is read until it matches (with `regression`:
  until the end), the server closes, or it has been quiet for half a second.
- **`exec`**: `command` (a list, or a string split like a shell would; write
  `[sh, -c, "…"]` for a shell), `user`, `exit_code` (0), `output` (a regular
  expression searched in stdout and stderr).
- **`tls`**: `port`, `hostname` (default the first of `tls.hostnames`),
  `min_version` (`TLSv1.2`; `TLSv1.1`, `TLSv1.2` or `TLSv1.3`), `subject`
  (attribute → value, `commonName` or `CN`, …), `san` (the exact list of
  names in the certificate), `plaintext` (`true`), `timeout` (10). Three
  results: `handshake` (verified against the run's CA with host name
  checking, negotiated version at least `min_version`, subject and names),
  `floor` (a client limited to the version below `min_version`, with every
  cipher allowed, is refused by the server) and `plaintext` (a plain HTTP
  request to the port gets no 2xx answer), named `<name>: handshake` and so on.
- **regression**: an `http` or `send` check with `regression: true` (beside
  `http:`/`send:`, like `name`) compares its answer (status and body; a JSON
  body as JSON without the dotted paths listed in `ignore`, `*` matching any
  key or index; text with each regular expression in `mask` blanked) with the
  answer recorded by the last run of the image in which every check passed.
  The first run records and passes; a run with a failure records nothing.

```yaml
  - name: version from API_VERSION is applied
    http: {path: /version}
    regression: true
    ignore: [build.time]
  - name: stats are stable
    send: {port: 11211, data: "stats settings\r\n"}
    regression: true
    mask: ['STAT (pid|uptime|time) \d+']
```

Each run writes the rendered files and certificates under the work directory
the task passes (`cache/test-work/<image>/`), the full log of every container
to `cache/logs/test-<image>.log`, and the recorded answers to
`cache/results/recorded/<image>/<image>.json`. Host-side checks connect to the
container's address on the run's network, so integration tests need a local
engine: with `DOCKER_HOST=tcp://…` or `ssh://…` they fail saying so. Every
container and network of a run carries the task's labels plus
`io.ccp.integration.image=<image>` and `io.ccp.integration.run=<id>`.
"""

from __future__ import annotations

import copy
import dataclasses
import http.client
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import time
import uuid
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ccp_tasks.checks.harness import Harness, LogSection, sweep, write_logs
from ccp_tasks.checks.records import CheckResult
from ccp_tasks.core.errors import CcpError, ConfigError, EngineError, EngineNotFound, TemplateError
from ccp_tasks.core.schema import Field, Reader, Schema, Validator, choice, did_you_mean, key_path
from ccp_tasks.core.state import dump_json, fields, read_record, write_atomic
from ccp_tasks.engine.containers import Containers, NotRunning
from ccp_tasks.engine.docker_ops import engine_address, local_socket
from ccp_tasks.engine.leftovers import of_any_run

# The pipeline's one YAML reader: malformed YAML is reported as file:line:col.
from ccp_tasks.model.config import read_yaml

SPEC_NAME = "integration.yaml"
# Every container and network of a run carries the caller's labels plus these;
# the image label is what the next run sweeps by, the run label tells runs apart.
IMAGE_LABEL = "io.ccp.integration.image"
RUN_LABEL = "io.ccp.integration.run"
TLS_FILES = ("cert.pem", "key.pem", "ca.pem", "bundle.pem")
DEFAULT_TLS_DIR = "/etc/ccp/tls"
TLS_VERSIONS = ("TLSv1.1", "TLSv1.2", "TLSv1.3")
SEND_QUIET_SECONDS = 0.5
# Docker's embedded DNS server listens inside every container on a user-defined
# network; it is the engine's, not the service's.
DOCKER_DNS_ADDRESS = "127.0.0.11"
_ALIAS_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_RETRY_STATUSES = (502, 503, 504)
_SUBJECT_NAMES = {
    "CN": "commonName",
    "O": "organizationName",
    "OU": "organizationalUnitName",
    "C": "countryName",
    "L": "localityName",
    "ST": "stateOrProvinceName",
    "E": "emailAddress",
}


# ---------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class FileMount:
    target: str  # absolute path in the container
    template: str  # relative to the spec's directory
    mode: int = 0o644


@dataclass(frozen=True)
class Readiness:
    timeout: float = 30.0
    interval: float = 0.5
    ports: tuple[int, ...] | None = None  # None: the container's ports
    log: str | None = None


@dataclass(frozen=True)
class ContainerSpec:
    alias: str
    image: str | None  # None for the image under test: the caller names it
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] | str | None = None
    entrypoint: list[str] | str | None = None
    user: str | None = None
    files: tuple[FileMount, ...] = ()
    ports: tuple[int, ...] | None = None  # None: not checked
    local_ports: tuple[int, ...] = ()
    ready: Readiness = field(default_factory=Readiness)

    @property
    def ready_ports(self) -> tuple[int, ...]:
        return self.ready.ports if self.ready.ports is not None else (self.ports or ())


@dataclass(frozen=True)
class TlsSettings:
    hostnames: tuple[str, ...]
    common_name: str
    dir: str = DEFAULT_TLS_DIR
    key_type: str = "ecdsa"


@dataclass(frozen=True)
class HttpCheck:
    port: int
    method: str = "GET"
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    json: Any = None
    has_json: bool = False  # `json: null` is a body too
    tls: bool = False
    hostname: str | None = None
    timeout: float = 10.0
    status: int = 200
    expect_headers: dict[str, Any] = field(default_factory=dict)
    expect_json: dict[str, Any] = field(default_factory=dict)
    expect_body: str | None = None


@dataclass(frozen=True)
class SendCheck:
    port: int
    data: str
    expect: str | None = None
    tls: bool = False
    hostname: str | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class ExecCheck:
    command: list[str] | str
    exit_code: int = 0
    output: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class TlsCheck:
    port: int
    hostname: str
    min_version: str = "TLSv1.2"
    subject: dict[str, str] = field(default_factory=dict)
    san: tuple[str, ...] | None = None
    plaintext: bool = True
    timeout: float = 10.0


@dataclass(frozen=True)
class Check:
    name: str
    kind: str  # 'http', 'send', 'exec', 'tls'
    spec: HttpCheck | SendCheck | ExecCheck | TlsCheck
    regression: bool = False
    ignore: tuple[str, ...] = ()  # dotted paths left out of a JSON answer's comparison
    mask: tuple[str, ...] = ()  # regular expressions blanked in a text answer


@dataclass(frozen=True)
class IntegrationSpec:
    path: Path
    container: ContainerSpec  # the image under test
    services: tuple[ContainerSpec, ...] = ()
    tls: TlsSettings | None = None
    checks: tuple[Check, ...] = ()
    variables: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Loading and validating


class _Reader(Reader):
    """integration.yaml's own kinds of value, besides the shared checks."""

    def port(self, value, where: str) -> int:
        return self.integer(value, where, 1, 65535)

    def ports(self, value, where: str) -> tuple[int, ...]:
        if not isinstance(value, list):
            self.fail(where, f"expected a list of port numbers, got {value!r}")
        ports = tuple(self.port(item, f"{where}[{i}]") for i, item in enumerate(value))
        if len(set(ports)) != len(ports):
            self.fail(where, f"port {next(p for p in ports if ports.count(p) > 1)} is listed twice")
        return ports

    def command(self, value, where: str) -> list[str] | str:
        if isinstance(value, str):
            try:
                shlex.split(value)
            except ValueError as exc:
                self.fail(where, f"cannot split {value!r}: {exc}")
            return value
        if not isinstance(value, list) or not value:
            self.fail(where, f"expected a list of strings or a string, got {value!r}")
        out = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                self.fail(f"{where}[{i}]", f"expected a string, got {item!r}")
            out.append(str(item))
        return out

    def expected_value(self, value, where: str):
        """An exact value, or {regex: …}."""
        if isinstance(value, dict) and set(value) == {"regex"}:
            return {"regex": self.regex(value["regex"], f"{where}.regex")}
        return value


def _between(low: int, high: int) -> Validator:
    return lambda r, value, where: r.integer(value, where, low, high)


# What each section may hold. A field without a check is looked at by its
# reader below, with the rest of the section (defaults that depend on other
# sections, paths beside the spec).
_READY = Schema(
    {
        "timeout": Field(Reader.seconds, 30.0),
        "interval": Field(Reader.seconds, 0.5),
        "ports": Field(_Reader.ports, None),
        "log": Field(Reader.regex, None),
    }
)
_CONTAINER = {
    "env": Field(Reader.text_map, {}),
    "command": Field(_Reader.command, None),
    "entrypoint": Field(_Reader.command, None),
    "user": Field(Reader.string, None),
    "files": Field(),
    "ports": Field(_Reader.ports, None),
    "ready": Field(lambda r, value, where: _read_ready(r, value, where), Readiness()),
}
_TOP = Schema(
    {
        "variables": Field(),
        "tls": Field(),
        **_CONTAINER,
        "local_ports": Field(_Reader.ports, ()),
        "services": Field(),
        "checks": Field(),
    }
)
_SERVICE = Schema({"image": Field(Reader.string, required=True), **_CONTAINER})
_TLS = Schema(
    {
        "hostnames": Field(Reader.strings, required=True),
        "common_name": Field(Reader.string),
        "key_type": Field(choice("ecdsa", "rsa"), "ecdsa"),
        "dir": Field(Reader.string, DEFAULT_TLS_DIR),
    }
)
_FILE = Schema({"template": Field(Reader.string, required=True), "mode": Field()})
_KINDS = ("http", "send", "exec", "tls")
_REGRESSION_KEYS = ("regression", "ignore", "mask")
_CHECK = Schema(
    {"name": Field(Reader.string), **{kind: Field() for kind in _KINDS}, **{k: Field() for k in _REGRESSION_KEYS}}
)
_HTTP = Schema(
    {
        "port": Field(),
        "method": Field(Reader.string, "GET"),
        "path": Field(Reader.string, "/"),
        "headers": Field(Reader.text_map, {}),
        "body": Field(Reader.string, None),
        "json": Field(),
        "tls": Field(Reader.boolean, False),
        "hostname": Field(),
        "timeout": Field(Reader.seconds, 10.0),
        "status": Field(_between(100, 599), 200),
        "expect_headers": Field(),
        "expect_json": Field(),
        "expect_body": Field(Reader.regex, None),
    }
)
_SEND = Schema(
    {
        "port": Field(),
        "data": Field(Reader.string, required=True),
        "expect": Field(Reader.regex, None),
        "tls": Field(Reader.boolean, False),
        "hostname": Field(),
        "timeout": Field(Reader.seconds, 10.0),
    }
)
_EXEC = Schema(
    {
        "command": Field(_Reader.command, required=True),
        "user": Field(Reader.string, None),
        "exit_code": Field(_between(0, 255), 0),
        "output": Field(Reader.regex, None),
    }
)
_TLS_CHECK = Schema(
    {
        "port": Field(),
        "hostname": Field(Reader.string),
        "min_version": Field(choice(*TLS_VERSIONS), "TLSv1.2"),
        "subject": Field(Reader.text_map, {}),
        "san": Field(Reader.strings, None),
        "plaintext": Field(Reader.boolean, True),
        "timeout": Field(Reader.seconds, 10.0),
    }
)


def _read_ready(r: _Reader, data, where: str) -> Readiness:
    return Readiness(**r.mapping(data, where, _READY))


def _read_files(r: _Reader, data, where: str, spec_dir: Path) -> tuple[FileMount, ...]:
    if not isinstance(data, dict):
        r.fail(where, f"expected a mapping of container path to template, got {data!r}")
    mounts = []
    for target, item in data.items():
        at = f"{where}.{target}"
        if not isinstance(target, str) or not target.startswith("/"):
            r.fail(at, "the container path must be absolute")
        mode = 0o644
        if isinstance(item, dict):
            template = r.mapping(item, at, _FILE)["template"]
            if "mode" in item:
                raw = item["mode"]
                try:
                    # YAML reads 0755 as the integer 493 and "0755" as a string; both mean rwxr-xr-x
                    mode = raw if isinstance(raw, int) and not isinstance(raw, bool) else int(str(raw), 8)
                except ValueError:
                    mode = -1
                if not 0 <= mode <= 0o777:
                    r.fail(f"{at}.mode", f'expected a file mode such as "0755", got {raw!r}')
        else:
            template = r.string(item, at)
        source = (spec_dir / template).resolve()
        if not source.is_relative_to(spec_dir.resolve()):
            r.fail(at, f"template '{template}' is outside {spec_dir}")
        if not source.is_file():
            r.fail(at, f"template '{template}' not found beside {SPEC_NAME} (in {spec_dir})")
        mounts.append(FileMount(target, template, mode))
    return tuple(mounts)


def _read_container(r: _Reader, data: dict, where: str, alias: str, image: str | None, spec_dir: Path) -> ContainerSpec:
    """The container of a section `data` that _TOP or _SERVICE checked."""
    return ContainerSpec(
        alias=alias,
        image=image,
        env=data["env"],
        command=data["command"],
        entrypoint=data["entrypoint"],
        user=data["user"],
        files=_read_files(r, data["files"], key_path(where, "files"), spec_dir) if "files" in data else (),
        ports=data["ports"],
        local_ports=data.get("local_ports", ()),
        ready=data["ready"],
    )


def _read_tls(r: _Reader, data) -> TlsSettings:
    tls = r.mapping(data, "tls", _TLS)
    hostnames = tls["hostnames"]
    if not hostnames:
        r.fail("tls.hostnames", "name at least one host name for the certificate")
    if not tls["dir"].startswith("/"):
        r.fail("tls.dir", "the container path must be absolute")
    return TlsSettings(
        hostnames=hostnames,
        common_name=tls.get("common_name", hostnames[0]),
        dir=tls["dir"].rstrip("/") or "/",
        key_type=tls["key_type"],
    )


def _default_port(r: _Reader, data: dict, where: str, container: ContainerSpec) -> int:
    if "port" in data:
        return r.port(data["port"], f"{where}.port")
    if not container.ports:
        r.fail(where, "missing key 'port' (and no top-level 'ports' to take the first of)")
    return container.ports[0]


def _need_tls(r: _Reader, tls: TlsSettings | None, where: str) -> TlsSettings:
    if tls is None:
        r.fail(where, "needs a top-level 'tls' section: the run's CA is what the check trusts")
    return tls


def _read_regression(r: _Reader, data: dict, where: str, kind: str) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    """regression/ignore/mask sit beside the check's kind: they are about how
    its answer is kept, not about the request."""
    inside = data[kind] if isinstance(data[kind], dict) else {}
    for key in _REGRESSION_KEYS:
        if key in inside:
            r.fail(f"{where}.{kind}.{key}", f"'{key}' belongs beside '{kind}' (at {where}.{key}), not inside it")
    regression = r.boolean(data.get("regression", False), f"{where}.regression")
    if regression and kind not in ("http", "send"):
        r.fail(f"{where}.regression", f"only http and send checks have an answer to compare, not {kind}")
    ignore = r.strings(data["ignore"], f"{where}.ignore") if "ignore" in data else ()
    mask: tuple[str, ...] = ()
    if "mask" in data:
        mask = tuple(r.regex(m, f"{where}.mask[{i}]") for i, m in enumerate(r.strings(data["mask"], f"{where}.mask")))
    for key, _given in (("ignore", ignore), ("mask", mask)):
        if key in data and not regression:
            r.fail(f"{where}.{key}", "only means something with 'regression: true'")
    if ignore and kind != "http":
        r.fail(f"{where}.ignore", "names paths in a JSON answer, which only http checks get; use 'mask' on text")
    return regression, ignore, mask


def _hostname(r: _Reader, data: dict, where: str, tls: TlsSettings | None) -> str | None:
    if "hostname" in data:
        return r.string(data["hostname"], f"{where}.hostname")
    return tls.hostnames[0] if tls else None


def _read_http(r: _Reader, data, where: str, container: ContainerSpec, tls: TlsSettings | None) -> HttpCheck:
    checked = r.mapping(data, where, _HTTP)
    if "body" in data and "json" in data:
        r.fail(where, "give 'body' or 'json', not both")
    if checked["tls"]:
        _need_tls(r, tls, f"{where}.tls")
    if not re.fullmatch(r"[A-Z]+", checked["method"]):
        r.fail(f"{where}.method", f"expected an HTTP method such as GET, got {checked['method']!r}")
    if not checked["path"].startswith("/"):
        r.fail(f"{where}.path", f"expected a path starting with '/', got {checked['path']!r}")
    expect_headers = {}
    if "expect_headers" in data:
        if not isinstance(data["expect_headers"], dict):
            r.fail(
                f"{where}.expect_headers", f"expected a mapping of header name to value, got {data['expect_headers']!r}"
            )
        for name, value in data["expect_headers"].items():
            at = f"{where}.expect_headers.{name}"
            value = r.expected_value(value, at)
            if value is not None and not isinstance(value, dict):
                value = r.text_map({name: value}, f"{where}.expect_headers")[name]
            expect_headers[str(name)] = value
    expect_json = {}
    if "expect_json" in data:
        raw = data["expect_json"]
        if not isinstance(raw, dict):
            r.fail(f"{where}.expect_json", f"expected a mapping of dotted path to value, got {raw!r}")
        expect_json = {str(k): r.expected_value(v, f"{where}.expect_json.{k}") for k, v in raw.items()}
    return HttpCheck(
        **checked
        | {
            "port": _default_port(r, data, where, container),
            "has_json": "json" in data,
            "hostname": _hostname(r, data, where, tls if checked["tls"] else None),
            "expect_headers": expect_headers,
            "expect_json": expect_json,
        }
    )


def _read_send(r: _Reader, data, where: str, container: ContainerSpec, tls: TlsSettings | None) -> SendCheck:
    checked = r.mapping(data, where, _SEND)
    if checked["tls"]:
        _need_tls(r, tls, f"{where}.tls")
    return SendCheck(
        **checked
        | {
            "port": _default_port(r, data, where, container),
            "hostname": _hostname(r, data, where, tls if checked["tls"] else None),
        }
    )


def _read_exec(r: _Reader, data, where: str) -> ExecCheck:
    return ExecCheck(**r.mapping(data, where, _EXEC))


def _read_tls_check(r: _Reader, data, where: str, container: ContainerSpec, tls: TlsSettings | None) -> TlsCheck:
    checked = r.mapping(data, where, _TLS_CHECK)
    tls = _need_tls(r, tls, where)
    return TlsCheck(
        **checked
        | {
            "port": _default_port(r, data, where, container),
            "hostname": checked.get("hostname", tls.hostnames[0]),
            "subject": {_SUBJECT_NAMES.get(key, key): value for key, value in checked["subject"].items()},
        }
    )


def _default_name(kind: str, spec) -> str:
    if kind == "http":
        return f"{spec.method} {spec.path}" + (" over TLS" if spec.tls else "") + (f" on port {spec.port}")
    if kind == "send":
        return f"send {spec.data[:24]!r} to port {spec.port}"
    if kind == "exec":
        return "exec " + (spec.command if isinstance(spec.command, str) else shlex.join(spec.command))
    return f"TLS on port {spec.port}"


def load_spec(path: Path, images: Collection[str]) -> IntegrationSpec:
    """Parse and validate an integration.yaml once; every error is one line naming the file and key."""
    path = Path(path)
    r = _Reader(str(path))
    data = read_yaml(path)
    top = r.mapping(data, "", _TOP)
    spec_dir = path.parent
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(isinstance(k, str) and k.isidentifier() for k in variables):
        r.fail("variables", f"expected a mapping of identifiers to values, got {variables!r}")
    tls = _read_tls(r, data["tls"]) if "tls" in data else None
    container = _read_container(r, top, "", alias="", image=None, spec_dir=spec_dir)
    overlap = set(container.local_ports) & set(container.ports or ())
    if overlap:
        r.fail("local_ports", f"port {min(overlap)} is in 'ports' too")

    services = []
    raw_services = data.get("services", {})
    if not isinstance(raw_services, dict):
        r.fail("services", f"expected a mapping of host name to service, got {raw_services!r}")
    for alias, item in raw_services.items():
        where = f"services.{alias}"
        if not isinstance(alias, str) or not _ALIAS_RE.match(alias):
            r.fail(where, f"{alias!r} is not a valid host name (lowercase letters, digits and '-')")
        service = r.mapping(item, where, _SERVICE)
        image = service["image"]
        if image not in images:
            r.fail(f"{where}.image", f"'{image}' is not an image of the tree{did_you_mean(image, images)}")
        services.append(_read_container(r, service, where, alias=alias, image=image, spec_dir=spec_dir))

    checks = []
    raw_checks = data.get("checks", [])
    if not isinstance(raw_checks, list):
        r.fail("checks", f"expected a list of checks, got {raw_checks!r}")
    names: dict[str, int] = {}
    for index, item in enumerate(raw_checks):
        where = f"checks[{index}]"
        name = r.mapping(item, where, _CHECK).get("name")
        kinds = [kind for kind in _KINDS if kind in item]
        if len(kinds) != 1:
            found = " and ".join(kinds) if kinds else "none"
            r.fail(where, f"expected exactly one of http, send, exec, tls (found {found})")
        kind = kinds[0]
        regression, ignore, mask = _read_regression(r, item, where, kind)
        at = f"{where}.{kind}"
        spec: HttpCheck | SendCheck | ExecCheck | TlsCheck
        if kind == "http":
            spec = _read_http(r, item[kind], at, container, tls)
        elif kind == "send":
            spec = _read_send(r, item[kind], at, container, tls)
        elif kind == "exec":
            spec = _read_exec(r, item[kind], at)
        else:
            spec = _read_tls_check(r, item[kind], at, container, tls)
        name = name if name is not None else _default_name(kind, spec)
        if name in names:
            r.fail(f"{where}.name", f"'{name}' names checks[{names[name]}] too; give one a different 'name'")
        names[name] = index
        checks.append(Check(name, kind, spec, regression, ignore, mask))

    return IntegrationSpec(
        path=path,
        container=container,
        services=tuple(services),
        tls=tls,
        checks=tuple(checks),
        variables=dict(variables),
    )


def service_images(spec: IntegrationSpec) -> list[str]:
    """The tree images the spec starts as dependencies, each once, in start order."""
    # Only the image under test has no image name; every service was read with one.
    return list(dict.fromkeys(service.image for service in spec.services if service.image is not None))


def spec_files(spec: IntegrationSpec, path: Path) -> list[Path]:
    """The templates the spec renders and the ones they include, for doit's
    file_dep (the spec file itself is not listed)."""
    import jinja2
    from jinja2 import meta

    spec_dir = Path(path).parent
    named = list(dict.fromkeys(m.template for c in (spec.container, *spec.services) for m in c.files))
    found: list[Path] = []
    seen: set[str] = set()
    env = None
    while named:
        name = named.pop(0)
        if name in seen:
            continue
        seen.add(name)
        source = spec_dir / name
        if not source.is_file():
            continue  # a dynamic include naming a missing file fails at render time, with its line
        found.append(source)
        env = env or jinja2.Environment()
        try:
            ast = env.parse(source.read_text())
        except (jinja2.TemplateSyntaxError, UnicodeDecodeError):
            continue  # reported when the run renders it
        named.extend(ref for ref in meta.find_referenced_templates(ast) if ref)
    return found


# ---------------------------------------------------------------------------
# Running


@dataclass
class StartedContainer:
    spec: ContainerSpec
    ref: str
    container_id: str
    ip: str = ""


@dataclass
class IntegrationRun:
    client: Any  # the engine's Containers; an Engine or a docker-py client (kube.run_pod's) is taken as its Containers
    image: str
    network: str
    labels: dict[str, str]
    workdir: Path
    started: list[StartedContainer] = field(default_factory=list)
    ca_pem: str = ""
    answers: dict[str, Any] = field(default_factory=dict)  # regression answers of this run
    recorded: dict[str, Any] = field(default_factory=dict)  # of the last passing run
    harness: Harness = field(init=False)  # what makes the run's containers and network, and removes them

    def __post_init__(self) -> None:
        self.client = Containers.of(self.client)
        self.harness = Harness(self.client, self.labels, what=f"the integration run of '{self.image}'")

    @property
    def under_test(self) -> StartedContainer:
        return self.started[-1]


def require_local_engine() -> None:
    if local_socket() is None:
        raise EngineError(
            f"integration tests need a local Docker engine: their checks connect from this host to the "
            f"containers' addresses on a private network, which the engine at {engine_address()} does not offer; "
            "unset DOCKER_HOST or run them on the engine's host"
        )


def _template_env(spec_dir: Path):
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    # Sandboxed as the Dockerfile templates are (render._tree_environment).
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(spec_dir)),
        undefined=jinja2.StrictUndefined,
        # the same rendering rules as the Dockerfile templates
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _template_line(tb, spec_dir: Path, default: str) -> str:
    import traceback

    where = default
    for frame in traceback.extract_tb(tb):
        if Path(frame.filename).parent == spec_dir or frame.filename.startswith(str(spec_dir) + os.sep):
            where = f"{frame.filename}:{frame.lineno}"
    return where


def render_files(
    spec: IntegrationSpec, container: ContainerSpec, context: dict, out_dir: Path
) -> list[tuple[Path, str]]:
    """Render a container's files; return (host file, container path) pairs to mount."""
    import jinja2

    spec_dir = spec.path.parent
    env = _template_env(spec_dir)
    mounts = []
    for mount in container.files:
        source = spec_dir / mount.template
        try:
            text = env.get_template(mount.template).render(context)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"{exc.filename or source}:{exc.lineno}: template syntax error: {exc.message}"
            ) from None
        except jinja2.TemplateNotFound as exc:
            line = _template_line(exc.__traceback__, spec_dir, str(source))
            raise TemplateError(f"{line}: includes '{exc.name}', which is not beside {spec.path}") from None
        except jinja2.UndefinedError as exc:
            line = _template_line(exc.__traceback__, spec_dir, str(source))
            raise TemplateError(
                f"{line}: {exc.message} (define it under 'variables:' in {spec.path.name} or ccp.yaml)"
            ) from None
        except Exception as exc:  # a filter raised: still the template's fault
            line = _template_line(exc.__traceback__, spec_dir, str(source))
            raise TemplateError(f"{line}: {type(exc).__name__}: {exc}") from None
        host = out_dir / mount.target.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_text(text)
        # The container's user is rarely ours: the mounted file keeps these bits.
        host.chmod(mount.mode)
        mounts.append((host.resolve(), mount.target))
    return mounts


def make_tls(tls: TlsSettings, out_dir: Path) -> str:
    """Write a fresh CA's server certificate, key, CA and bundle; return the CA's PEM."""
    import trustme

    key_type = trustme.KeyType.RSA if tls.key_type == "rsa" else trustme.KeyType.ECDSA
    ca = trustme.CA(key_type=key_type)
    leaf = ca.issue_cert(*tls.hostnames, common_name=tls.common_name, key_type=key_type)
    cert = b"".join(pem.bytes() for pem in leaf.cert_chain_pems)
    key = leaf.private_key_pem.bytes()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in (
        ("cert.pem", cert),
        ("key.pem", key),
        ("ca.pem", ca.cert_pem.bytes()),
        ("bundle.pem", cert + key),
    ):
        target = out_dir / name
        target.write_bytes(data)
        # Readable by whatever user the service drops to; the key is thrown away with the run.
        target.chmod(0o644)
    return ca.cert_pem.bytes().decode()


def start_container(
    run: IntegrationRun, container: ContainerSpec, ref: str, mounts: list[tuple[Path, str]]
) -> StartedContainer:
    try:
        container_id = run.harness.create(
            ref,
            command=container.command,
            entrypoint=container.entrypoint,
            user=container.user,
            environment=container.env,
            hostname=container.alias,
            name=f"{run.network}-{container.alias}",
            binds=[f"{host}:{target}:ro" for host, target in mounts],
            network=run.network,
            aliases=[container.alias],
        )
    except EngineNotFound as exc:
        raise EngineError(
            f"image '{container.image or run.image}' ({ref}) is not in the engine; build it first"
        ) from exc
    started = StartedContainer(container, ref, container_id)
    run.started.append(started)  # before start: a failed start is still removed
    run.harness.start(container_id)
    networks = run.client.inspect(container_id)["NetworkSettings"]["Networks"]
    started.ip = networks[run.network]["IPAddress"]
    return started


def _can_connect(ip: str, port: int, timeout: float = 1.0) -> str | None:
    """None when ip:port accepts a TCP connection, else why not."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "refuses connections"
    except TimeoutError:
        return "does not answer"
    except OSError as exc:
        return exc.strerror or str(exc)


def wait_ready(run: IntegrationRun, started: StartedContainer) -> CheckResult:
    container = started.spec
    name = "ready" if container.image is None else f"ready: {container.alias}"
    ready = container.ready
    log_re = re.compile(ready.log) if ready.log else None
    closed: list[int] = []  # of the last probe: what the loopback hint looks at

    def probe() -> list[str]:
        waiting = []
        closed.clear()
        for port in container.ready_ports:
            problem = _can_connect(started.ip, port)
            if problem:
                waiting.append(f"port {port} {problem}")
                closed.append(port)
        if log_re and not log_re.search(run.harness.logs(started.container_id)):
            waiting.append(f"its log has no line matching {_short(ready.log or '', 200)}")
        return waiting

    waited = run.harness.wait_ready(started.container_id, probe, timeout=ready.timeout, interval=ready.interval)
    if waited.ready:
        return CheckResult(name, "ready", True, seconds=waited.seconds)
    if waited.stopped:
        return CheckResult(
            name, "ready", False, f"{container.alias} {waited.stopped} before it was ready", waited.seconds
        )
    message = f"{container.alias} not ready after {ready.timeout:g}s: {'; '.join(waited.waiting)}"
    return CheckResult(name, "ready", False, message + _loopback_hint(run, started, closed), waited.seconds)


def _loopback_hint(run: IntegrationRun, started: StartedContainer, ports: list[int]) -> str:
    """The usual reason a port that is up refuses outside connections: it is bound to loopback."""
    if not ports:
        return ""
    try:
        listening = _listening(run, started)
    except OSError:
        return ""
    local = [p for p in ports if listening.get(p) and all(_is_loopback(a) for a in listening[p])]
    shown = "; ".join(f"{p} on {', '.join(sorted(listening[p]))}" for p in local)
    return f" (it listens on {shown} only)" if local else ""


# -- listening sockets


def parse_proc_net(text: str, ipv6: bool) -> list[tuple[str, int]]:
    """(address, port) of each LISTEN socket in a /proc/net/tcp{,6} table."""
    import ipaddress

    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != "0A":
            continue
        address_hex, _, port_hex = fields[1].partition(":")
        try:
            raw = bytes.fromhex(address_hex)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address: ipaddress.IPv4Address | ipaddress.IPv6Address
            if ipv6:
                address = ipaddress.IPv6Address(raw)
                address = address.ipv4_mapped or address
            else:
                address = ipaddress.IPv4Address(raw)
            found.append((str(address), int(port_hex, 16)))
        except ValueError:
            continue
    return found


def _exec(engine, container_id: str, command, user: str | None = None) -> tuple[int, str]:
    code, output = Containers.of(engine).exec_run(container_id, command, user)
    return code, output.decode("utf-8", "replace")


def _listening(run: IntegrationRun, started: StartedContainer) -> dict[int, set[str]]:
    """Port -> addresses the container listens on, from its own /proc/net tables."""
    tables = {}
    for name in ("tcp", "tcp6"):
        try:
            code, output = _exec(run.client, started.container_id, ["cat", f"/proc/net/{name}"])
        except NotRunning as exc:
            raise OSError(f"cannot read the container's listening sockets: {exc.reason}") from exc
        if code == 0:
            tables[name] = output
    if "tcp" not in tables:
        # No `cat` in the image (distroless, scratch): the engine is local, so
        # the same tables are readable through the container's process on this host.
        pid = run.client.inspect(started.container_id)["State"].get("Pid")
        for name in ("tcp", "tcp6"):
            try:
                tables[name] = Path(f"/proc/{pid}/net/{name}").read_text()
            except OSError:
                pass
    if "tcp" not in tables:
        raise OSError("cannot read /proc/net/tcp in the container (no `cat`) nor through its process on this host")
    ports: dict[int, set[str]] = {}
    for name, text in tables.items():
        for address, port in parse_proc_net(text, ipv6=name == "tcp6"):
            if address != DOCKER_DNS_ADDRESS:
                ports.setdefault(port, set()).add(address)
    return ports


def _is_loopback(address: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(address).is_loopback


def port_problem(
    port: int, addresses: Collection[str] | None, ip: str, *, absent: str, loopback: str, unreachable: str = ""
) -> str:
    """What is wrong with `port`, which a container declares and listens on at
    `addresses` (None: it does not listen on it), seen from this host at `ip`:
    `absent`, `loopback` (it listens on loopback addresses only), or
    `unreachable` followed by why ip:port cannot be connected to; "" when it answers."""
    if not addresses:
        return absent
    if all(_is_loopback(a) for a in addresses):
        return loopback
    problem = _can_connect(ip, port, timeout=3.0)
    return f"{unreachable}{ip}:{port} {problem} from this host" if problem else ""


def port_results(
    ports: Collection[int],
    local_ports: Collection[int],
    listening: dict[int, set[str]],
    ip: str,
    detail: str,
    *,
    outside: str = "other containers cannot reach",
) -> list[CheckResult]:
    """The port checks of a running container listening on `listening` (port ->
    addresses), at `ip`: each of `ports` listened on and reachable from this
    host, each of `local_ports` listened on, and no port the config does not
    name. `outside` completes "listens on <port> on <addresses> only, which ..."."""
    shown = ", ".join(str(p) for p in sorted(listening)) or "no TCP port"
    results = []
    for port in ports:
        addresses = listening.get(port)
        message = port_problem(
            port,
            addresses,
            ip,
            absent=f"does not listen on {port} (listens on {shown})",
            loopback=f"listens on {port} on {', '.join(sorted(addresses or ()))} only, which {outside}",
            unreachable=f"listens on {port} but ",
        )
        results.append(CheckResult(f"port {port}", "port", not message, message, detail=detail if message else ""))
    for port in local_ports:
        addresses = listening.get(port)
        message = "" if addresses else f"does not listen on {port} (listens on {shown})"
        results.append(
            CheckResult(f"port {port} (local)", "port", not message, message, detail=detail if message else "")
        )
    named = set(ports) | set(local_ports)
    for port in sorted(set(listening) - named):
        message = f"listens on {port}, which the config does not name"
        results.append(CheckResult(f"port {port} (not in config)", "port", False, message, detail=detail))
    return results


def _port_checks(run: IntegrationRun, started: StartedContainer) -> list[CheckResult]:
    container = started.spec
    begin = time.monotonic()
    try:
        listening = _listening(run, started)
    except OSError as exc:
        return [CheckResult(f"port {p}", "port", False, str(exc)) for p in container.ports or ()]
    detail = "listening: " + (
        ", ".join(f"{p} on {', '.join(sorted(a))}" for p, a in sorted(listening.items())) or "nothing"
    )
    results = port_results(container.ports or (), container.local_ports, listening, started.ip, detail)
    seconds = round(time.monotonic() - begin, 2)
    for result in results:
        result.seconds = seconds
    return results


# -- network clients


def _ssl_reason(exc: ssl.SSLError) -> str:
    if exc.reason == "WRONG_VERSION_NUMBER":
        return "the port does not speak TLS (WRONG_VERSION_NUMBER)"
    return str(exc.reason or exc)


def _verifying_context(run: IntegrationRun) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # certificate and host name checked
    context.load_verify_locations(cadata=run.ca_pem)
    return context


def _connect_retrying(ip: str, port: int, deadline: float) -> socket.socket:
    """A TCP connection, retried while the port refuses (the service may still be starting)."""
    while True:
        try:
            return socket.create_connection((ip, port), timeout=max(1.0, min(5.0, deadline - time.monotonic())))
        except (TimeoutError, ConnectionRefusedError, ConnectionResetError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


class _HttpConnection(http.client.HTTPConnection):
    """Connects to the container's address whatever the Host header says."""

    def __init__(self, ip: str, port: int, host: str | None, timeout: float, context: ssl.SSLContext | None):
        super().__init__(host or ip, port, timeout=timeout)
        self._ip = ip
        self._context = context

    def connect(self):
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host) if self._context else sock


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _short(text: str, width: int = 80) -> str:
    """Quoted, on one line, line ends shown as \\r \\n (not doubled like repr() would)."""
    return "'" + _clip(text.replace("\r", "\\r").replace("\n", "\\n"), width) + "'"


def _lookup(value, path: str):
    """(True, found) or (False, None) for a dotted path such as items.0.id."""
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and re.fullmatch(r"-?\d+", part) and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return False, None
    return True, value


def _matches(expected, got) -> bool:
    if isinstance(expected, dict) and set(expected) == {"regex"}:
        if isinstance(got, bool) or not isinstance(got, (str, int, float)):
            return False
        return re.search(expected["regex"], str(got)) is not None
    if got != expected:
        return False
    # 1 == 1.0 is fine; true == 1 is not what a JSON check means
    return type(got) is type(expected) or {type(got), type(expected)} <= {int, float}


def _show(expected) -> str:
    if isinstance(expected, dict) and set(expected) == {"regex"}:
        return f"to match {_short(expected['regex'], 200)}"
    return json.dumps(expected)


def _http_request(run: IntegrationRun, ip: str, check: HttpCheck):
    """(status, reason, headers, body) of one answer, retried while the service starts."""
    deadline = time.monotonic() + check.timeout
    headers = dict(check.headers)
    body = None
    if check.has_json:
        body = json.dumps(check.json).encode()
        headers.setdefault("Content-Type", "application/json")
    elif check.body is not None:
        body = check.body.encode()
    context = _verifying_context(run) if check.tls else None
    while True:
        connection = _HttpConnection(
            ip, check.port, check.hostname, max(1.0, min(5.0, deadline - time.monotonic())), context
        )
        try:
            connection.request(check.method, check.path, body=body, headers=headers)
            response = connection.getresponse()
            answer = (response.status, response.reason, response.getheaders(), response.read())
        except (TimeoutError, ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
            continue
        finally:
            connection.close()
        if answer[0] in _RETRY_STATUSES and check.status != answer[0] and time.monotonic() < deadline:
            time.sleep(0.2)
            continue
        return answer


def _check_http(run: IntegrationRun, check: Check) -> CheckResult:
    spec = cast(HttpCheck, check.spec)  # CHECKS dispatches on check.kind, which load_spec paired with this type
    ip = run.under_test.ip
    try:
        status, reason, headers, raw = _http_request(run, ip, spec)
    except ssl.SSLCertVerificationError as exc:
        return CheckResult(check.name, "http", False, f"TLS certificate not accepted: {exc.verify_message}")
    except ssl.SSLError as exc:
        return CheckResult(check.name, "http", False, f"TLS handshake failed: {_ssl_reason(exc)}")
    except (OSError, http.client.HTTPException) as exc:
        message = f"no answer from {ip}:{spec.port} within {spec.timeout:g}s: {exc or type(exc).__name__}"
        return CheckResult(check.name, "http", False, message)
    text = raw.decode("utf-8", "replace")
    problems = []
    if status != spec.status:
        problems.append(f"expected status {spec.status}, got {status} {reason}".rstrip())
    got_headers: dict[str, str] = {}
    for name, value in headers:
        got_headers.setdefault(name.lower(), value)
    for name, expected in spec.expect_headers.items():
        got = got_headers.get(name.lower())
        if expected is None:
            if got is not None:
                problems.append(f"header {name}: expected absent, got {got!r}")
        elif got is None:
            problems.append(f"header {name}: missing")
        elif isinstance(expected, dict):
            if not re.search(expected["regex"], got):
                problems.append(f"header {name}: expected to match {_short(expected['regex'], 200)}, got {got!r}")
        elif got != expected:
            problems.append(f"header {name}: expected {expected!r}, got {got!r}")
    parsed, is_json = None, False
    try:
        parsed, is_json = json.loads(text), True
    except ValueError:
        pass
    if spec.expect_json:
        if not is_json:
            problems.append(f"expected a JSON body, got {_short(text, 60)}")
        else:
            for path, expected in spec.expect_json.items():
                found, got = _lookup(parsed, path)
                if not found:
                    problems.append(f"json {path}: missing")
                elif not _matches(expected, got):
                    problems.append(f"json {path}: expected {_show(expected)}, got {json.dumps(got)}")
    if spec.expect_body and not re.search(spec.expect_body, text):
        problems.append(f"body does not match {_short(spec.expect_body, 200)}: got {_short(text, 60)}")
    if not problems and check.regression:
        answer = {"status": status, "json": parsed} if is_json else {"status": status, "text": text}
        return _regression(run, check, answer)
    head = "\n".join([f"HTTP {status} {reason}", *(f"{k}: {v}" for k, v in headers)])
    detail = f"{head}\n\n{text[:2000]}" if problems else ""
    return CheckResult(check.name, "http", not problems, "; ".join(problems), detail=detail)


def _read_answer(sock: socket.socket, expect: re.Pattern | None, deadline: float) -> tuple[bytes, str]:
    """Read until the answer matches, the server closes, the answer pauses, or time is up."""
    chunks: list[bytes] = []
    while True:
        now = time.monotonic()
        if now >= deadline:
            return b"".join(chunks), "timeout"
        # Before the first byte the whole timeout applies; after it, a pause ends the answer.
        sock.settimeout(min(deadline - now, SEND_QUIET_SECONDS) if chunks else deadline - now)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return b"".join(chunks), "quiet" if chunks else "timeout"
        except ConnectionResetError:
            return b"".join(chunks), "reset"
        if not chunk:
            return b"".join(chunks), "closed"
        chunks.append(chunk)
        if expect and expect.search(b"".join(chunks).decode("utf-8", "replace")):
            return b"".join(chunks), "matched"


def _check_send(run: IntegrationRun, check: Check) -> CheckResult:
    spec = cast(SendCheck, check.spec)  # CHECKS dispatches on check.kind, which load_spec paired with this type
    ip = run.under_test.ip
    deadline = time.monotonic() + spec.timeout
    expect = re.compile(spec.expect) if spec.expect else None
    try:
        sock = _connect_retrying(ip, spec.port, deadline)
        with sock:
            if spec.tls:
                sock = _verifying_context(run).wrap_socket(sock, server_hostname=spec.hostname)
            sock.sendall(spec.data.encode())
            # A regression answer is the whole answer, not as much as the first match needed.
            raw, ended = _read_answer(sock, None if check.regression else expect, deadline)
    except ssl.SSLError as exc:
        reason = getattr(exc, "verify_message", None) or _ssl_reason(exc)
        return CheckResult(check.name, "send", False, f"TLS handshake failed: {reason}")
    except OSError as exc:
        reason = exc.strerror or exc or type(exc).__name__
        return CheckResult(check.name, "send", False, f"cannot send to {ip}:{spec.port}: {reason}")
    text = raw.decode("utf-8", "replace")
    if expect and not expect.search(text):
        if not raw:
            how = {
                "timeout": f"no answer within {spec.timeout:g}s",
                "closed": "the connection closed without an answer",
            }.get(ended, "no answer")
            return CheckResult(
                check.name, "send", False, f"expected an answer matching {_short(expect.pattern, 200)}, got {how}"
            )
        message = f"answer does not match {_short(expect.pattern, 200)}: got {_short(text)}"
        return CheckResult(check.name, "send", False, message, detail=text[:2000])
    if check.regression:
        return _regression(run, check, {"text": text})
    return CheckResult(check.name, "send", True)


def _check_exec(run: IntegrationRun, check: Check) -> CheckResult:
    spec = cast(ExecCheck, check.spec)  # CHECKS dispatches on check.kind, which load_spec paired with this type
    try:
        code, output = _exec(run.client, run.under_test.container_id, spec.command, spec.user)
    except NotRunning as exc:  # the container stopped: the check's failure, not the engine's
        return CheckResult(check.name, "exec", False, f"cannot run it: {exc.reason}")
    problems = []
    if code != spec.exit_code:
        problems.append(f"exit code {code}, expected {spec.exit_code}")
    if spec.output and not re.search(spec.output, output):
        problems.append(f"output does not match {_short(spec.output, 200)}: got {_short(output.strip(), 60)}")
    return CheckResult(check.name, "exec", not problems, "; ".join(problems), detail=output[-2000:] if problems else "")


def _subject(cert: dict) -> dict[str, str]:
    return {key: value for rdn in cert.get("subject", ()) for key, value in rdn}


def _names(cert: dict) -> list[str]:
    return [value for _, value in cert.get("subjectAltName", ())]


def _tls_floor_context(floor: str) -> tuple[ssl.SSLContext, str]:
    below = TLS_VERSIONS[TLS_VERSIONS.index(floor) - 1] if floor != "TLSv1.1" else "TLSv1"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Only the protocol matters here; whatever certificate the server sends.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # old versions are the point
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = getattr(ssl.TLSVersion, below.replace(".", "_"))
    # Every cipher, at security level 0: a refusal must come from the server's
    # protocol floor, not from this host's OpenSSL declining old ciphers.
    context.set_ciphers("ALL:@SECLEVEL=0")
    return context, below


def _handshake_problems(spec: TlsCheck, version: str, cipher: str, cert: dict) -> tuple[list[str], str]:
    problems = []
    subject = _subject(cert)
    names = _names(cert)
    detail = f"negotiated {version} with {cipher}; subject {subject}; names {names}"
    rank = TLS_VERSIONS.index(version) if version in TLS_VERSIONS else -1  # TLSv1, SSLv3: below every floor
    if rank < TLS_VERSIONS.index(spec.min_version):
        problems.append(f"negotiated {version}, below the floor {spec.min_version}")
    for key, want in spec.subject.items():
        got = subject.get(key)
        if got != want:
            found = f"is {got!r}" if got else "is missing"
            problems.append(f"certificate subject {key} {found}, expected {want!r}")
    if spec.san is not None and sorted(set(names)) != sorted(set(spec.san)):
        problems.append(f"certificate names are {', '.join(names) or 'none'}, expected {', '.join(spec.san)}")
    return problems, detail


def _check_tls(run: IntegrationRun, check: Check) -> list[CheckResult]:
    spec = cast(TlsCheck, check.spec)  # CHECKS dispatches on check.kind, which load_spec paired with this type
    ip = run.under_test.ip
    results = []

    # handshake: verified, hostname-checked, new enough, the expected certificate
    begin = time.monotonic()
    problems, detail = [], ""
    try:
        sock = _connect_retrying(ip, spec.port, begin + spec.timeout)
        with _verifying_context(run).wrap_socket(sock, server_hostname=spec.hostname) as tls:
            version, cipher, cert = tls.version(), tls.cipher(), tls.getpeercert()
    except ssl.SSLCertVerificationError as exc:
        problems.append(f"TLS handshake as {spec.hostname} failed: {str(exc.verify_message).rstrip('.')}")
    except ssl.SSLError as exc:
        problems.append(f"TLS handshake as {spec.hostname} failed: {_ssl_reason(exc)}")
    except OSError as exc:
        problems.append(f"cannot connect to {ip}:{spec.port}: {exc.strerror or exc or type(exc).__name__}")
    else:
        # PROTOCOL_TLS_CLIENT turns a server without a verified certificate away in the handshake; were
        # one to get through, its empty subject and names must not pass a check that asked for neither.
        if not cert or version is None or cipher is None:
            problems.append(f"TLS handshake as {spec.hostname} gave no verified certificate")
        else:
            problems, detail = _handshake_problems(spec, version, cipher[0], cert)
    results.append(
        CheckResult(
            f"{check.name}: handshake",
            "tls",
            not problems,
            "; ".join(problems),
            round(time.monotonic() - begin, 2),
            detail if problems else "",
        )
    )

    # floor: a client that cannot reach the floor must be turned away by the server
    begin = time.monotonic()
    context, below = _tls_floor_context(spec.min_version)
    message = ""
    try:
        with socket.create_connection((ip, spec.port), timeout=5) as sock:
            with context.wrap_socket(sock, server_hostname=spec.hostname) as tls:
                message = f"accepted a {tls.version()} client (floor {spec.min_version})"
    except ssl.SSLError as exc:
        if exc.reason in ("NO_CIPHERS_AVAILABLE", "NO_PROTOCOLS_AVAILABLE") and "ALERT" not in str(exc):
            message = f"this host's OpenSSL cannot offer {below}, so the floor was not checked ({exc.reason})"
    except (TimeoutError, ConnectionResetError, BrokenPipeError):
        pass  # hung up on the old client: refused
    except OSError as exc:
        message = f"cannot connect to {ip}:{spec.port}: {exc.strerror or exc}"
    results.append(CheckResult(f"{check.name}: floor", "tls", not message, message, round(time.monotonic() - begin, 2)))

    if spec.plaintext:
        begin = time.monotonic()
        message, detail = "", ""
        try:
            with socket.create_connection((ip, spec.port), timeout=5) as sock:
                sock.sendall(f"GET / HTTP/1.0\r\nHost: {spec.hostname}\r\n\r\n".encode())
                raw, _ = _read_answer(sock, re.compile(r"\r?\n"), time.monotonic() + 3)
            first = raw.split(b"\n", 1)[0].strip().decode("latin-1")
            detail = f"plain-text answer: {first!r}" if raw else "no plain-text answer"
            if re.match(r"HTTP/\d(?:\.\d)? 2\d\d", first):
                message = f"answered a plain-text request on the TLS port with {first!r}"
        except OSError as exc:
            if not isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                message = f"cannot connect to {ip}:{spec.port}: {exc.strerror or exc}"
        results.append(
            CheckResult(
                f"{check.name}: plaintext",
                "tls",
                not message,
                message,
                round(time.monotonic() - begin, 2),
                detail if message else "",
            )
        )
    return results


# -- regression


def _drop_path(value, parts: list[str]):
    if not parts:
        return
    head, rest = parts[0], parts[1:]
    if isinstance(value, dict):
        keys = list(value) if head == "*" else [head] if head in value else []
        for key in keys:
            if rest:
                _drop_path(value[key], rest)
            else:
                del value[key]
    elif isinstance(value, list):
        indexes: Sequence[int]
        if head == "*":
            indexes = range(len(value))
        elif re.fullmatch(r"\d+", head) and int(head) < len(value):
            indexes = [int(head)]
        else:
            indexes = []
        for index in sorted(indexes, reverse=True):
            if rest:
                _drop_path(value[index], rest)
            else:
                value[index] = "(ignored)"  # keeps the other indexes where they were


def _normalized(answer: dict, ignore: tuple[str, ...], mask: tuple[str, ...]) -> dict:
    answer = copy.deepcopy(answer)
    if "json" in answer:
        for path in ignore:
            if path in ("", "*"):
                answer["json"] = "(ignored)"
            else:
                _drop_path(answer["json"], path.split("."))
    if "text" in answer:
        for pattern in mask:
            answer["text"] = re.sub(pattern, "(masked)", answer["text"])
    return answer


def _differences(old, new, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            at = f"{path}.{key}" if path else str(key)
            if key not in new:
                found.append(f"{at}: {json.dumps(old[key])} -> absent")
            elif key not in old:
                found.append(f"{at}: absent -> {json.dumps(new[key])}")
            else:
                found.extend(_differences(old[key], new[key], at))
        return found
    if isinstance(old, list) and isinstance(new, list):
        found = []
        for index, (a, b) in enumerate(zip(old, new)):
            found.extend(_differences(a, b, f"{path}.{index}" if path else str(index)))
        if len(old) != len(new):
            found.append(f"{path or 'answer'}: {len(old)} items -> {len(new)}")
        return found
    if old != new or type(old) is not type(new):
        if isinstance(old, str) and isinstance(new, str) and ("\n" in old or "\n" in new):
            old_lines, new_lines = old.splitlines(), new.splitlines()
            for number, (a, b) in enumerate(zip(old_lines, new_lines), 1):
                if a != b:
                    return [f"{path + ' ' if path else ''}line {number}: {_short(a, 50)} -> {_short(b, 50)}"]
            return [f"{path or 'answer'}: {len(old_lines)} lines -> {len(new_lines)}"]
        return [f"{path or 'answer'}: {_clip(json.dumps(old), 50)} -> {_clip(json.dumps(new), 50)}"]
    return []


def _regression(run: IntegrationRun, check: Check, answer: dict) -> CheckResult:
    run.answers[check.name] = answer
    previous = run.recorded.get(check.name)
    if previous is None:
        return CheckResult(
            check.name,
            check.kind,
            True,
            detail="no answer recorded yet: this one is recorded if every check of the run passes",
        )
    old, new = _normalized(previous, check.ignore, check.mask), _normalized(answer, check.ignore, check.mask)
    differences = []
    if old.get("status") != new.get("status"):
        differences.append(f"status {old.get('status')} -> {new.get('status')}")
    if ("json" in old) != ("json" in new):
        differences.append("a JSON answer -> text" if "json" in old else "a text answer -> JSON")
    elif "json" in old:
        differences.extend(_differences(old["json"], new["json"]))
    else:
        differences.extend(_differences(old.get("text", ""), new.get("text", "")))
    if not differences:
        return CheckResult(check.name, check.kind, True)
    more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
    return CheckResult(
        check.name,
        check.kind,
        False,
        f"answer differs from the last passing run: {differences[0]}{more}",
        detail="\n".join(differences[:30]),
    )


def recorded_path(recorded_dir: Path, image: str) -> Path:
    return Path(recorded_dir) / f"{image}.json"


def load_recorded(path: Path) -> dict:
    return read_record(path, "a record of answers", lambda raw: fields(raw, answers=dict)["answers"]) or {}


# -- the run


_CHECKERS: dict[str, Callable[[IntegrationRun, Check], CheckResult | list[CheckResult]]] = {
    "http": _check_http,
    "send": _check_send,
    "exec": _check_exec,
    "tls": _check_tls,
}


def run_check(run: IntegrationRun, check: Check) -> list[CheckResult]:
    begin = time.monotonic()
    outcome = _CHECKERS[check.kind](run, check)
    results = outcome if isinstance(outcome, list) else [outcome]
    if not isinstance(outcome, list):
        outcome.seconds = outcome.seconds or round(time.monotonic() - begin, 2)
    return results


def _write_logs(run: IntegrationRun, results: list[CheckResult], log_path: Path) -> None:
    """Every container's full log to log_path; the tails to each failed result,
    the image under test's last (it started last)."""
    sections = []
    for started in run.started:
        role = "under test" if started.spec.image is None else f"service {started.spec.alias}"
        status = run.harness.status(started.container_id)
        text = run.harness.logs(started.container_id)
        sections.append(LogSection(started.spec.alias or run.image, status, text, about=f"{role}, {started.ref}"))
    write_logs(log_path, sections, [result for result in results if not result.passed])


def _render_all(
    run: IntegrationRun, spec: IntegrationSpec, main: ContainerSpec, variables: dict | None
) -> dict[str, list[tuple[Path, str]]]:
    """Render every container's files (and the TLS files): alias -> mounts.
    Done before anything starts: a template error needs no container to report."""
    for sub in ("files", "tls"):
        shutil.rmtree(run.workdir / sub, ignore_errors=True)
    context = {
        **(variables or {}),
        **spec.variables,
        "image_name": run.image,
        "services": [s.alias for s in spec.services],
        "tls_dir": spec.tls.dir if spec.tls else None,
    }
    mounts = {c.alias: render_files(spec, c, context, run.workdir / "files" / c.alias) for c in (*spec.services, main)}
    if spec.tls:
        run.ca_pem = make_tls(spec.tls, run.workdir / "tls")
        mounts[run.image] += [((run.workdir / "tls" / name).resolve(), f"{spec.tls.dir}/{name}") for name in TLS_FILES]
    return mounts


def _start_and_check(
    run: IntegrationRun,
    spec: IntegrationSpec,
    main: ContainerSpec,
    refs: dict[str, str],
    mounts: dict[str, list[tuple[Path, str]]],
    results: list[CheckResult],
) -> None:
    """The services, then the image under test, each waited for; then its port
    checks and the spec's checks. Appends to `results` as it goes, so the logs
    written afterwards go to the results there are, whatever ended the run."""
    run.harness.network(run.network)
    for container in (*spec.services, main):
        started = start_container(run, container, refs[container.image or run.image], mounts[container.alias])
        ready = wait_ready(run, started)
        results.append(ready)
        if not ready.passed:
            return
    if main.ports is not None or main.local_ports:
        results.extend(_port_checks(run, run.under_test))
    for check in spec.checks:
        results.extend(run_check(run, check))


def _refuse_names(spec: IntegrationSpec, image: str, refs: dict[str, str]) -> None:
    for alias in (s.alias for s in spec.services):
        if alias == image:
            raise ConfigError(
                f"{spec.path}: services.{alias}: the image under test already has the host name '{image}'"
            )
    missing = [name for name in (image, *service_images(spec)) if name not in refs]
    if missing:
        raise CcpError(f"integration run of '{image}': no image reference given for '{missing[0]}'")


def run_spec(
    engine,
    image: str,
    refs: dict[str, str],
    spec: IntegrationSpec,
    *,
    workdir: Path,
    recorded_dir: Path,
    log_path: Path,
    labels: dict[str, str],
    variables: dict | None = None,
) -> list[CheckResult]:
    """Start `image` (refs[image]) and its services on a private network, wait
    until they answer, run the spec's checks, and remove everything again.
    `engine` is an Engine, its Containers or a docker-py APIClient.

    Returns one CheckResult per check (a TLS check gives three); a failing
    one carries the containers' log tails in its detail. Raises EngineError
    (engine trouble), TemplateError (a file does not render) or ConfigError."""
    require_local_engine()
    _refuse_names(spec, image, refs)
    run_id = uuid.uuid4().hex[:10]
    # The image label is what the next run of the image sweeps by; the run label tells runs apart.
    sweep_labels = {**labels, IMAGE_LABEL: image}
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", image)
    run = IntegrationRun(
        client=engine,
        image=image,
        network=f"ccp-it-{safe}-{run_id}",
        labels={**sweep_labels, RUN_LABEL: run_id},
        workdir=Path(workdir),
    )
    record_file = recorded_path(recorded_dir, image)
    run.recorded = load_recorded(record_file)
    sweep(run.client, of_any_run(sweep_labels))
    main = dataclasses.replace(spec.container, alias=image)  # the image under test: its host name is its name
    mounts = _render_all(run, spec, main, variables)

    results: list[CheckResult] = []
    with run.harness:
        try:
            _start_and_check(run, spec, main, refs, mounts, results)
        finally:
            try:
                _write_logs(run, results, Path(log_path))
            except (EngineError, OSError):
                pass  # the logs are evidence: losing them must not hide how the run went

    if all(result.passed for result in results) and (run.answers or record_file.exists()):
        write_atomic(record_file, dump_json({"image": image, "ref": refs[image], "answers": run.answers}))
    return results
