"""Probes and lifecycle hooks: parsed from the container spec, and run the
way the kubelet runs them (HTTP and TCP from this host to the pod's address,
exec in the container)."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from ccp_tasks.core.errors import CcpError, EngineError
from ccp_tasks.engine.containers import Containers

HOOK_TIMEOUT = 30.0


@dataclass
class Handler:
    action: str  # exec, http, tcp
    command: list[str] = field(default_factory=list)
    port: int = 0
    host: str = ""
    path: str = "/"
    scheme: str = "HTTP"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> str:
        if self.action == "exec":
            return "exec " + " ".join(self.command)
        if self.action == "http":
            return f"{self.scheme} GET {self.host}:{self.port}{self.path}"
        return f"TCP {self.host}:{self.port}"


@dataclass
class Probe:
    kind: str  # readiness, liveness, startup
    handler: Handler
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    grace: float | None = None

    def describe(self) -> str:
        return f"{self.kind} probe {self.handler.describe()}"

    def budget(self) -> float:
        """How long it takes at most to decide, from the container's start."""
        return self.initial_delay + self.period * (self.failure_threshold + self.success_threshold - 1) + self.timeout


def container_ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports") or [] if p.get("name")}


def resolve_port(value: int | str, container: dict) -> int:
    if isinstance(value, int):
        return value
    ports = container_ports(container)
    if str(value) in ports:
        return ports[str(value)]
    if str(value).isdigit():
        return int(value)
    raise CcpError(f"container '{container.get('name')}' has no port named '{value}'")


def parse_handler(data: dict, container: dict) -> Handler:
    if "exec" in data:
        return Handler("exec", command=[str(w) for w in (data["exec"] or {}).get("command") or []])
    if "httpGet" in data:
        get = data["httpGet"]
        headers = [(h["name"], str(h.get("value", ""))) for h in get.get("httpHeaders") or []]
        return Handler(
            "http",
            port=resolve_port(get["port"], container),
            host=get.get("host") or "",
            path=get.get("path") or "/",
            scheme=(get.get("scheme") or "HTTP").upper(),
            headers=headers,
        )
    if "tcpSocket" in data:
        sock = data["tcpSocket"]
        return Handler("tcp", port=resolve_port(sock["port"], container), host=sock.get("host") or "")
    raise CcpError(
        f"container '{container.get('name')}': a probe or hook without exec, httpGet or tcpSocket cannot be run here"
    )


def parse_probe(kind: str, data: dict, container: dict) -> Probe:
    return Probe(
        kind=kind,
        handler=parse_handler(data, container),
        initial_delay=float(data.get("initialDelaySeconds") or 0),
        period=float(data.get("periodSeconds") or 10),
        timeout=float(data.get("timeoutSeconds") or 1),
        success_threshold=int(data.get("successThreshold") or 1),
        failure_threshold=int(data.get("failureThreshold") or 3),
        grace=float(data["terminationGracePeriodSeconds"])
        if data.get("terminationGracePeriodSeconds") is not None
        else None,
    )


@dataclass
class ProbeWorker:
    """One probe of one container instance: when it is due, and its run of successes or failures."""

    probe: Probe
    next_due: float
    successes: int = 0
    failures: int = 0
    result: bool | None = None  # None: not decided yet
    last: str = ""
    runs: int = 0

    def record(self, ok: bool, message: str, now: float) -> None:
        self.runs += 1
        self.last = message
        self.next_due = now + self.probe.period
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.probe.success_threshold:
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.probe.failure_threshold:
                self.result = False


def run_exec(
    containers: Containers, container_id: str, command: list[str], timeout: float | None
) -> tuple[int | None, str]:
    """(exit code, output) of a command run in the container; (None, why) when it
    failed to run or did not finish within `timeout` (it is left running, as a
    kubelet leaves it)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            code, output = containers.exec_run(container_id, command)
            outcome["code"], outcome["output"] = code, output.decode("utf-8", "replace")
        except EngineError as exc:  # reported as the probe's failure (NotRunning included)
            outcome["error"] = str(exc)
        except BaseException as exc:  # a bug: raised in the caller's thread, not lost in this one
            outcome["bug"] = exc

    if timeout is None:
        run()
    else:
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            return None, f"timed out after {timeout:g}s"
    if "bug" in outcome:
        raise outcome["bug"]
    if "error" in outcome:
        return None, outcome["error"]
    return outcome.get("code"), outcome.get("output", "")


def run_handler(
    containers: Containers,
    handler: Handler,
    container_id: str,
    pod_ip: str,
    timeout: float,
    agent: str = "kube-probe/1",
) -> tuple[bool, str]:
    """(passed, what happened) of one probe or hook."""
    if handler.action == "exec":
        code, output = run_exec(containers, container_id, handler.command, timeout)
        if code == 0:
            return True, "exit code 0"
        if code is None:
            return False, output
        tail = output.strip().splitlines()[-1:] if output.strip() else []
        return False, f"exit code {code}" + (f": {tail[0][:120]}" if tail else "")
    host = handler.host or pod_ip
    if handler.action == "tcp":
        try:
            with socket.create_connection((host, handler.port), timeout=timeout):
                return True, "connected"
        except TimeoutError:
            return False, f"{host}:{handler.port} did not answer within {timeout:g}s"
        except OSError as exc:
            return False, f"{host}:{handler.port}: {exc.strerror or exc}"
    return _http_get(handler, host, timeout, agent)


def _http_get(handler: Handler, host: str, timeout: float, agent: str) -> tuple[bool, str]:
    # Imported on the first HTTP probe: task generation imports this module and never probes.
    import http.client
    import ssl

    headers = {"User-Agent": agent, "Accept": "*/*"}
    headers.update(dict(handler.headers))
    if handler.scheme == "HTTPS":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the kubelet does not verify probe certificates
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, handler.port, timeout=timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection(host, handler.port, timeout=timeout)
    try:
        connection.request("GET", handler.path, headers=headers)
        response = connection.getresponse()
        response.read(10240)
        status = response.status
    except TimeoutError:
        return False, f"no answer from {host}:{handler.port} within {timeout:g}s"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{host}:{handler.port}: {getattr(exc, 'strerror', None) or exc or type(exc).__name__}"
    finally:
        connection.close()
    if 200 <= status < 400:
        return True, f"HTTP {status}"
    return False, f"HTTP {status}"
