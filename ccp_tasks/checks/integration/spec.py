r"""The `integration.yaml` an image ships: its format, read and validated into an IntegrationSpec.

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

import re
import shlex
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccp_tasks.core.schema import Field, Reader, Schema, Validator, choice, did_you_mean, key_path

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
_ALIAS_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
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


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def quoted(text: str, width: int = 80) -> str:
    """Quoted, on one line, line ends shown as \\r \\n (not doubled like repr() would)."""
    return "'" + clip(text.replace("\r", "\\r").replace("\n", "\\n"), width) + "'"
