"""The pod definition against the images it runs and their integration.yaml, read without running them."""

from __future__ import annotations

import posixpath
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccp_tasks.checks import integration
from ccp_tasks.checks.kube.api import api_problems, runnable_problems
from ccp_tasks.checks.kube.definition import show
from ccp_tasks.checks.kube.schema import schema_problems
from ccp_tasks.checks.pods.plans import verify_non_root
from ccp_tasks.checks.pods.rules import effective_argv
from ccp_tasks.checks.pods.source import PodSource, config_map_data, secret_data
from ccp_tasks.checks.pods.values import PodValues
from ccp_tasks.checks.pods.volumes import PROJECTED_KINDS, volume_files
from ccp_tasks.checks.records import CheckResult
from ccp_tasks.core.errors import CcpError
from ccp_tasks.core.schema import did_you_mean
from ccp_tasks.engine.containers import ROLE_LABEL, Containers

UNCHECKED_PATH_PREFIXES = ("/proc/", "/sys/", "/dev/", "/tmp/", "/run/", "/var/run/", "/var/log/", "/var/tmp/")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ---------------------------------------------------------------------------
# Reading an image's files without running it


@dataclass
class FileInfo:
    path: str  # after following symbolic links
    kind: str  # file, dir, other
    mode: int


class ImageFiles:
    """An image's files and config, read from a container that is created and never started."""

    def __init__(self, containers: Containers, ref: str, labels: dict[str, str]):
        self.containers = containers
        self.ref = ref
        self.labels = labels
        self._container: str | None = None
        self._stats: dict[str, FileInfo | None] = {}
        self.config = containers.inspect_image(ref).get("Config") or {}

    @property
    def container(self) -> str:
        if self._container is None:
            self._container = self.containers.create(
                self.ref,
                labels={**self.labels, ROLE_LABEL: "inspect"},
                entrypoint=["/ccp-kube-never-started"],
                command=[],
                use_config_proxy=False,
            )
        return self._container

    def stat(self, path: str) -> FileInfo | None:
        """What `path` is, following symbolic links (relative ones from their directory)."""
        original = path
        if original in self._stats:
            return self._stats[original]
        info = None
        for _ in range(40):
            with self.containers.archive(self.container, path) as archive:
                if archive is None:
                    break
                try:
                    member = next(iter(archive), None)
                except tarfile.TarError:
                    member = None
            if member is None:
                break
            if member.issym():
                target = member.linkname
                path = posixpath.normpath(
                    target if target.startswith("/") else posixpath.join(posixpath.dirname(path), target)
                )
                continue
            kind = "dir" if member.isdir() else "file" if member.isfile() or member.islnk() else "other"
            info = FileInfo(path, kind, member.mode & 0o7777)
            break
        self._stats[original] = info
        return info

    def read(self, path: str) -> bytes | None:
        info = self.stat(path)
        if info is None or info.kind != "file":
            return None
        with self.containers.archive(self.container, info.path) as archive:
            if archive is None:
                return None
            try:
                for member in archive:
                    if member.isfile():
                        handle = archive.extractfile(member)
                        return handle.read() if handle else b""
            except tarfile.TarError:
                return None
        return None

    def which(self, program: str, path_env: str, workdir: str) -> tuple[FileInfo | None, str]:
        """Where `program` is found (the executable check of execve/PATH lookup), or why not."""
        if "/" in program:
            path = program if program.startswith("/") else posixpath.normpath(posixpath.join(workdir or "/", program))
            info = self.stat(path)
            if info is None:
                return None, f"{path} does not exist in the image"
            if info.kind != "file":
                return None, f"{path} is not a file"
            if not info.mode & 0o111:
                return None, f"{path} is not executable (mode {info.mode:04o})"
            return info, ""
        for directory in (path_env or DEFAULT_PATH).split(":"):
            info = self.stat(posixpath.join(directory or ".", program))
            if info is not None and info.kind == "file" and info.mode & 0o111:
                return info, ""
        return None, f"'{program}' is not in the image's PATH ({path_env or DEFAULT_PATH})"

    def close(self) -> None:
        if self._container:
            self.containers.remove(self._container)
            self._container = None


# ---------------------------------------------------------------------------
# Cross-checks


@dataclass
class PodContext:
    """What the cross-checks and the run need to know about the pod and its image."""

    cfg: Any
    image: str  # the image under test
    images: tuple[str, ...]  # the tree
    source: PodSource
    documents: list[dict]
    template: Path
    spec: Any = None  # the image's IntegrationSpec, or None
    sidecar_specs: dict[str, Any] = field(default_factory=dict)  # other tree image -> its IntegrationSpec
    variables: dict[str, Any] = field(default_factory=dict)

    @property
    def tree_refs(self) -> dict[str, str]:
        return {self.cfg.image_ref(name): name for name in self.images}

    def tree_image(self, container: dict) -> str | None:
        image = container.get("image")
        return self.tree_refs.get(image) if isinstance(image, str) else None

    @property
    def main(self) -> tuple[str, dict] | None:
        """(path, container) of the first regular container that runs the image under test."""
        ref = self.cfg.image_ref(self.image)
        for path, container, init in self.source.all_containers():
            if not init and container.get("image") == ref:
                return path, container
        return None

    def tls_secret(self) -> str | None:
        """The Secret the container under test mounts at the integration test's tls.dir."""
        if not self.spec or not self.spec.tls or not self.main:
            return None
        _, container = self.main
        for mount in container.get("volumeMounts") or []:
            if mount.get("mountPath", "").rstrip("/") == self.spec.tls.dir and not mount.get("subPath"):
                volume = _volume(self.source, mount.get("name"))
                if volume and volume.get("secret"):
                    return volume["secret"].get("secretName")
        return None


def _volume(source: PodSource, name) -> dict | None:
    return next((v for v in source.spec.get("volumes") or [] if v.get("name") == name), None)


def image_problems(ctx: PodContext) -> list[str]:
    problems = []
    tree = ctx.tree_refs
    for path, container, _init in ctx.source.all_containers():
        ref = container.get("image", "")
        if ref in tree or ref in ctx.cfg.external_refs:
            continue
        hint = did_you_mean(ref, [*tree, *ctx.cfg.external_refs])
        problems.append(
            f"{path}.image: '{ref}' is neither an image of the tree nor listed in external_images{hint} "
            "(write {{ image('name') }})"
        )
    if ctx.main is None:
        problems.append(
            f"{ctx.source.spec_path}.containers: no container runs {ctx.cfg.image_ref(ctx.image)}, the image under test"
        )
    return problems


def reference_problems(ctx: PodContext) -> list[str]:
    problems = []
    source, sp = ctx.source, ctx.source.spec_path
    provided = {ctx.tls_secret()} - {None}

    def look(kind: str, name, where: str, optional: bool, keys: Sequence[tuple[str, str]] = ()) -> None:
        if not isinstance(name, str) or not name:
            # The API server requires the name even of an optional reference.
            problems.append(f"{where}: required field is missing (name the {kind})")
            return
        data = (
            config_map_data(source, name)
            if kind == "ConfigMap"
            else (None if name in provided else secret_data(source, name))
        )
        if name in provided:
            return
        if data is None:
            if not optional:
                problems.append(f"{where}: {kind} '{name}' is not in the pod's YAML stream")
            return
        for key, at in keys:
            if key not in data and not optional:
                problems.append(
                    f"{at}: {kind} '{name}' has no key '{key}' (it has {', '.join(sorted(data)) or 'none'})"
                )

    for index, volume in enumerate(source.spec.get("volumes") or []):
        where = f"{sp}.volumes[{index}]"
        parts = [(volume, where)] + [
            (part, f"{where}.projected.sources[{i}]")
            for i, part in enumerate((volume.get("projected") or {}).get("sources") or [])
        ]
        for part, at in parts:
            if part.get("configMap") is not None:
                ref = part["configMap"]
                keys = [
                    (item.get("key"), f"{at}.configMap.items[{i}].key") for i, item in enumerate(ref.get("items") or [])
                ]
                look("ConfigMap", ref.get("name"), f"{at}.configMap.name", bool(ref.get("optional")), keys)
            if part.get("secret") is not None:
                ref = part["secret"]
                name = ref.get("secretName", ref.get("name"))
                keys = [
                    (item.get("key"), f"{at}.secret.items[{i}].key") for i, item in enumerate(ref.get("items") or [])
                ]
                look("Secret", name, f"{at}.secret.secretName", bool(ref.get("optional")), keys)
    for path, container, _init in source.all_containers():
        for index, item in enumerate(container.get("envFrom") or []):
            if item.get("configMapRef") is not None:
                ref = item["configMapRef"]
                look(
                    "ConfigMap",
                    ref.get("name"),
                    f"{path}.envFrom[{index}].configMapRef.name",
                    bool(ref.get("optional")),
                )
            if item.get("secretRef") is not None:
                ref = item["secretRef"]
                look("Secret", ref.get("name"), f"{path}.envFrom[{index}].secretRef.name", bool(ref.get("optional")))
        for index, item in enumerate(container.get("env") or []):
            value_from = item.get("valueFrom") or {}
            for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if value_from.get(key) is not None:
                    ref = value_from[key]
                    at = f"{path}.env[{index}].valueFrom.{key}"
                    look(
                        kind, ref.get("name"), f"{at}.name", bool(ref.get("optional")), [(ref.get("key"), f"{at}.key")]
                    )
    return problems


def tcp_ports(container: dict) -> list[int]:
    return [p["containerPort"] for p in container.get("ports") or [] if p.get("protocol", "TCP") == "TCP"]


def port_problems(ctx: PodContext) -> list[str]:
    problems = []
    main = ctx.main
    for path, container, _init in ctx.source.all_containers():
        image = ctx.tree_image(container)
        is_main = main is not None and path == main[0]
        spec = ctx.spec if is_main else ctx.sidecar_specs.get(image) if image and image != ctx.image else None
        if spec is None:
            if is_main and tcp_ports(container):
                problems.append(
                    f"{path}.ports: declares {', '.join(map(str, tcp_ports(container)))}, but '{ctx.image}' "
                    "has no integration.yaml saying what it listens on"
                )
            continue
        expected = set(spec.container.ports or ())
        local = set(spec.container.local_ports)
        owner = f"{spec.path.parent.name}/integration.yaml"
        for index, port in enumerate(container.get("ports") or []):
            number = port.get("containerPort")
            if port.get("protocol", "TCP") != "TCP":
                continue
            where = f"{path}.ports[{index}].containerPort"
            if number in local:
                problems.append(
                    f"{where}: {number} listens on loopback only ({owner} local_ports), "
                    "so no one outside the pod can reach it"
                )
            elif spec.container.ports is None:
                problems.append(f"{where}: {number}, but {owner} does not say which ports it listens on (no 'ports')")
            elif number not in expected:
                listed = ", ".join(map(str, sorted(expected))) or "none"
                problems.append(f"{where}: {number} is not a port {owner} expects listening ({listed})")
    return problems


def probe_problems(ctx: PodContext) -> list[str]:
    problems = []
    main = ctx.main
    local = set(ctx.spec.container.local_ports) if ctx.spec else set()
    for path, container, _init in ctx.source.all_containers():
        declared = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
        numbers = set(declared.values())
        places = [
            (f"{path}.{kind}", container.get(kind)) for kind in ("readinessProbe", "livenessProbe", "startupProbe")
        ]
        places += [
            (f"{path}.lifecycle.{hook}", ((container.get("lifecycle") or {}).get(hook)))
            for hook in ("postStart", "preStop")
        ]
        for where, handler in places:
            if not handler:
                continue
            for kind in ("httpGet", "tcpSocket"):
                if handler.get(kind) is None:
                    continue
                port = handler[kind].get("port")
                at = f"{where}.{kind}.port"
                if isinstance(port, str):
                    if port not in declared:
                        names = ", ".join(n for n in declared if n) or "none"
                        problems.append(
                            f"{at}: '{port}' is not a port name of container {container.get('name')} (names: {names})"
                        )
                        continue
                    port = declared[port]
                elif port not in numbers:
                    listed = ", ".join(map(str, sorted(n for n in numbers if n))) or "none"
                    problems.append(
                        f"{at}: {port} is not a containerPort of container {container.get('name')} (declared: {listed})"
                    )
                    continue
                if main is not None and path == main[0] and port in local and not handler[kind].get("host"):
                    problems.append(
                        f"{at}: {port} listens on loopback only (integration.yaml local_ports), "
                        "and the kubelet connects to the pod's address"
                    )
    return problems


def _static_env(ctx: PodContext, container: dict) -> dict[str, str]:
    tls_secret = ctx.tls_secret()
    values = PodValues.static(ctx.source, {tls_secret: {}} if tls_secret else None)
    try:
        return values.environment(container)
    except (CcpError, KeyError, ValueError):
        return {}  # a reference the reference check reports, or a quantity the API rules do


def _under_mount(container: dict, path: str) -> bool:
    for mount in container.get("volumeMounts") or []:
        target = mount.get("mountPath", "").rstrip("/")
        if path == target or path.startswith(target + "/"):
            return True
    return False


def command_problems(ctx: PodContext, files_for: Callable[[dict], ImageFiles | None]) -> list[str]:
    problems = []
    for path, container, _init in ctx.source.all_containers():
        files = files_for(container)
        if files is None:
            continue
        env = _static_env(ctx, container)
        path_env = env.get("PATH") or next(
            (e.split("=", 1)[1] for e in files.config.get("Env") or [] if e.startswith("PATH=")), ""
        )
        workdir = container.get("workingDir") or files.config.get("WorkingDir") or "/"
        if container.get("command") or container.get("args"):
            argv = effective_argv(container, files.config, env)
            where = f"{path}.command" if container.get("command") else f"{path}.args"
            if not argv:
                problems.append(f"{where}: the container would have no command at all")
            elif not _under_mount(container, argv[0] if argv[0].startswith("/") else "/-"):
                _info, why = files.which(argv[0], path_env, workdir)
                if why:
                    origin = (
                        ""
                        if container.get("command") or not files.config.get("Entrypoint")
                        else " (the image's ENTRYPOINT)"
                    )
                    problems.append(f"{where}: {why}{origin}")
            words = [(f"{path}.command[{i}]", w) for i, w in enumerate(container.get("command") or [])]
            words += [(f"{path}.args[{i}]", w) for i, w in enumerate(container.get("args") or [])]
            for at, word in words:
                word = str(word)
                if (
                    word.startswith("/")
                    and word != (argv[0] if argv else None)
                    and " " not in word
                    and not (word + "/").startswith(UNCHECKED_PATH_PREFIXES)
                    and not _under_mount(container, word)
                    and "$(" not in word
                ):
                    if files.stat(word) is None:
                        problems.append(f"{at}: {word} does not exist in the image")
        handlers = [
            (f"{path}.{kind}.exec.command", (container.get(kind) or {}).get("exec"))
            for kind in ("readinessProbe", "livenessProbe", "startupProbe")
        ]
        handlers += [
            (f"{path}.lifecycle.{hook}.exec.command", ((container.get("lifecycle") or {}).get(hook) or {}).get("exec"))
            for hook in ("postStart", "preStop")
        ]
        for at, handler in handlers:
            command = (handler or {}).get("command") or []
            if command and not _under_mount(container, str(command[0])):
                _info, why = files.which(str(command[0]), path_env, workdir)
                if why:
                    problems.append(f"{at}: {why}")
    return problems


def _passwd(files: ImageFiles) -> list[list[str]] | None:
    data = files.read("/etc/passwd")
    if data is None:
        return None
    return [
        line.split(":") for line in data.decode("utf-8", "replace").splitlines() if line and not line.startswith("#")
    ]


def user_problems(ctx: PodContext, files_for: Callable[[dict], ImageFiles | None]) -> list[str]:
    problems = []
    pod_security = ctx.source.spec.get("securityContext") or {}
    sp = ctx.source.spec_path
    for path, container, _init in ctx.source.all_containers():
        files = files_for(container)
        if files is None:
            continue
        security = {**pod_security, **(container.get("securityContext") or {})}
        where_uid = (
            f"{path}.securityContext.runAsUser"
            if "runAsUser" in (container.get("securityContext") or {})
            else f"{sp}.securityContext.runAsUser"
        )
        uid = security.get("runAsUser")
        image_user = (files.config.get("User") or "").split(":")[0]
        entries = None
        if uid is not None:
            entries = _passwd(files)
            if entries is None:
                problems.append(f"{where_uid}: {uid}, but the image has no /etc/passwd to find it in")
            elif not any(len(e) > 2 and e[2] == str(uid) for e in entries):
                problems.append(f"{where_uid}: uid {uid} is not in the image's /etc/passwd")
        elif image_user and not image_user.isdigit():
            entries = _passwd(files)
            if entries is None or not any(e[0] == image_user for e in entries):
                problems.append(f"{path}.image: the image's USER '{image_user}' is not in its /etc/passwd")
        why = verify_non_root(ctx.source, container, files.config.get("User") or "")
        if why:
            where = (
                f"{path}.securityContext.runAsNonRoot"
                if "runAsNonRoot" in (container.get("securityContext") or {})
                else f"{sp}.securityContext.runAsNonRoot"
            )
            problems.append(f"{where}: the kubelet would refuse to start container {container.get('name')}: {why}")
    return problems


def _first_difference(old: bytes, new: bytes) -> str:
    a = old.decode("utf-8", "replace").splitlines()
    b = new.decode("utf-8", "replace").splitlines()
    for number, (x, y) in enumerate(zip(a, b), 1):
        if x != y:
            return f"line {number}: {show(x)} -> {show(y)}"
    return f"{len(a)} lines -> {len(b)}"


def mounted_files(ctx: PodContext, container: dict, overrides: dict | None = None) -> dict[str, tuple[str, bytes, int]]:
    """Container path -> (where it comes from, bytes, mode) of every file the
    container gets from a configMap, secret, downwardAPI or projected volume."""
    values = PodValues.static(ctx.source, overrides)
    found = {}
    for mount in container.get("volumeMounts") or []:
        volume = _volume(ctx.source, mount.get("name"))
        if not volume or not any(volume.get(k) is not None for k in PROJECTED_KINDS):
            continue
        try:
            files, default_mode = volume_files(values, volume)
        except CcpError:
            continue  # reported by the reference check
        kind = next(k for k in PROJECTED_KINDS if volume.get(k) is not None)
        name = (volume[kind] or {}).get("name") or (volume[kind] or {}).get("secretName") or volume["name"]
        label = {"configMap": "ConfigMap", "secret": "Secret"}.get(kind, f"{kind} volume")
        target = mount.get("mountPath", "").rstrip("/")
        sub = mount.get("subPath")
        for rel, (data, mode) in files.items():
            origin = f"{label} {name} key {rel}"
            if sub:
                if rel == sub:
                    found[target] = (origin, data, mode if mode is not None else default_mode)
            else:
                found[f"{target}/{rel}"] = (origin, data, mode if mode is not None else default_mode)
    return found


def config_problems(ctx: PodContext) -> list[str]:
    if ctx.spec is None or ctx.main is None:
        return []
    spec = ctx.spec
    path, container = ctx.main
    problems = []
    tls_secret = ctx.tls_secret()
    overrides = {tls_secret: {name: b"" for name in integration.TLS_FILES}} if tls_secret else None
    pod_files = mounted_files(ctx, container, overrides)
    context = {
        **ctx.variables,
        **spec.variables,
        "image_name": ctx.image,
        "services": [s.alias for s in spec.services],
        "tls_dir": spec.tls.dir if spec.tls else None,
    }
    with tempfile.TemporaryDirectory(prefix="ccp-kube-") as scratch:
        rendered = integration.render_files(spec, spec.container, context, Path(scratch))
        expected = {}
        for (host, target), mount in zip(rendered, spec.container.files):
            expected[target] = (mount.template, Path(host).read_bytes(), mount.mode)
    owner = f"{spec.path.parent.name}/integration.yaml"
    for target, (template, data, mode) in expected.items():
        if target not in pod_files:
            problems.append(f"{path}.volumeMounts: {target} is mounted by {owner} (from {template}), not by the pod")
            continue
        origin, got, got_mode = pod_files[target]
        if got != data:
            problems.append(
                f"{target}: {origin} differs from {template} as the integration test renders it: "
                f"{_first_difference(data, got)}"
            )
        if got_mode != mode:
            problems.append(f"{target}: mode {got_mode:04o} in the pod ({origin}), {mode:04o} in {owner}")
    tls_dir = spec.tls.dir if spec.tls else None
    for target, (origin, _data, _mode) in sorted(pod_files.items()):
        if target in expected or (tls_dir and target.startswith(tls_dir + "/")):
            continue
        problems.append(f"{target}: the pod mounts it ({origin}), {owner} does not: its checks never ran with it")
    if spec.tls and not tls_secret:
        problems.append(
            f"{path}.volumeMounts: {owner}'s tls gives the container its certificate in {spec.tls.dir}; "
            "mount a Secret volume there (the run fills it with its throwaway certificate)"
        )
    return problems


def _result(name: str, kind: str, problems: list[str], started: float) -> CheckResult:
    return CheckResult(
        name,
        kind,
        not problems,
        "; ".join(problems),
        round(time.monotonic() - started, 3),
        "\n".join(problems) if len(problems) > 1 else "",
    )


def static_checks(
    ctx: PodContext, version: str, files_for: Callable[[dict], ImageFiles | None] | None
) -> list[CheckResult]:
    """The checks before anything runs; later ones are skipped once one fails
    that they build on (schema, API rules). `files_for` None: skip what reads the images."""
    results = []
    begin = time.monotonic()
    results.append(_result(f"schema (Kubernetes {version})", "schema", schema_problems(ctx.documents, version), begin))
    if not results[-1].passed:
        return results
    begin = time.monotonic()
    results.append(_result("API rules", "schema", api_problems(ctx.documents, ctx.source), begin))
    if not results[-1].passed:
        return results
    checks: list[tuple[str, Callable[[], list[str]]]] = [
        ("runnable on the Docker engine", lambda: runnable_problems(ctx.source)),
        ("image references", lambda: image_problems(ctx)),
        ("ConfigMap and Secret references", lambda: reference_problems(ctx)),
        ("container ports", lambda: port_problems(ctx)),
        ("probe ports", lambda: probe_problems(ctx)),
    ]
    if files_for is not None:
        checks += [
            ("commands exist in the images", lambda: command_problems(ctx, files_for)),
            ("users", lambda: user_problems(ctx, files_for)),
        ]
    checks.append(("config files", lambda: config_problems(ctx)))
    for name, check in checks:
        begin = time.monotonic()
        results.append(_result(name, "cross-check", check(), begin))
    return results
