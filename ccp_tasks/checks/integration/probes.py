"""The checks of `integration.yaml` (http, send, exec, tls) against the container under test."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import time
import warnings
from collections.abc import Callable
from typing import cast

from ccp_tasks.checks.integration.containers import IntegrationRun
from ccp_tasks.checks.integration.ports import exec_text
from ccp_tasks.checks.integration.regression import regression_check
from ccp_tasks.checks.integration.spec import TLS_VERSIONS, Check, ExecCheck, HttpCheck, SendCheck, TlsCheck, quoted
from ccp_tasks.checks.records import CheckResult
from ccp_tasks.engine.containers import NotRunning

SEND_QUIET_SECONDS = 0.5  # an answer is complete after this long without more
_RETRY_STATUSES = (502, 503, 504)


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
        return f"to match {quoted(expected['regex'], 200)}"
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
                problems.append(f"header {name}: expected to match {quoted(expected['regex'], 200)}, got {got!r}")
        elif got != expected:
            problems.append(f"header {name}: expected {expected!r}, got {got!r}")
    parsed, is_json = None, False
    try:
        parsed, is_json = json.loads(text), True
    except ValueError:
        pass
    if spec.expect_json:
        if not is_json:
            problems.append(f"expected a JSON body, got {quoted(text, 60)}")
        else:
            for path, expected in spec.expect_json.items():
                found, got = _lookup(parsed, path)
                if not found:
                    problems.append(f"json {path}: missing")
                elif not _matches(expected, got):
                    problems.append(f"json {path}: expected {_show(expected)}, got {json.dumps(got)}")
    if spec.expect_body and not re.search(spec.expect_body, text):
        problems.append(f"body does not match {quoted(spec.expect_body, 200)}: got {quoted(text, 60)}")
    if not problems and check.regression:
        answer = {"status": status, "json": parsed} if is_json else {"status": status, "text": text}
        return regression_check(run, check, answer)
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
                check.name, "send", False, f"expected an answer matching {quoted(expect.pattern, 200)}, got {how}"
            )
        message = f"answer does not match {quoted(expect.pattern, 200)}: got {quoted(text)}"
        return CheckResult(check.name, "send", False, message, detail=text[:2000])
    if check.regression:
        return regression_check(run, check, {"text": text})
    return CheckResult(check.name, "send", True)


def _check_exec(run: IntegrationRun, check: Check) -> CheckResult:
    spec = cast(ExecCheck, check.spec)  # CHECKS dispatches on check.kind, which load_spec paired with this type
    try:
        code, output = exec_text(run.client, run.under_test.container_id, spec.command, spec.user)
    except NotRunning as exc:  # the container stopped: the check's failure, not the engine's
        return CheckResult(check.name, "exec", False, f"cannot run it: {exc.reason}")
    problems = []
    if code != spec.exit_code:
        problems.append(f"exit code {code}, expected {spec.exit_code}")
    if spec.output and not re.search(spec.output, output):
        problems.append(f"output does not match {quoted(spec.output, 200)}: got {quoted(output.strip(), 60)}")
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


# The check kinds of integration.yaml, by key.
CHECKERS: dict[str, Callable[[IntegrationRun, Check], CheckResult | list[CheckResult]]] = {
    "http": _check_http,
    "send": _check_send,
    "exec": _check_exec,
    "tls": _check_tls,
}
