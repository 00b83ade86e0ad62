"""Real container registries for tests: Debian's `docker-registry` (Distribution 2.8).

    with RegistryServer(tmp_path / "reg") as registry:          # htpasswd + TLS
        RegistryClient(registry.host, credentials=..., ca_bundle=registry.ca_path)

`RegistryServer` runs `docker-registry serve config.yml` on a free loopback
port with filesystem storage (deletes enabled) under `root`, TLS from a
throwaway trustme CA, and one of three authentications: none, htpasswd
(bcrypt lines), or token auth with a small token service in a thread that
checks Basic credentials and signs RS256 JWTs the registry trusts.
`FaultProxy` sits in front of a registry and answers chosen requests with an
error status or a dropped connection, for retry tests.

Only loopback addresses are used. The Docker engine treats 127.0.0.0/8 as an
insecure registry, so it pushes here despite the untrusted certificate;
skopeo needs `--tls-verify=false` (or `--cert-dir`).

Debian packages: docker-registry (the server), apache2-utils (htpasswd for the
bcrypt lines; Python's `bcrypt` or the `crypt` module of Python < 3.13 serve
too), skopeo (the independent client the tests compare with).
"""

from __future__ import annotations

import atexit
import base64
import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests
import trustme
import yaml

REGISTRY_BINARY = "docker-registry"
ALL_ACTIONS = frozenset({"pull", "push", "delete", "*"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loopback_server(port: int, handler, tls_ca=None) -> tuple[ThreadingHTTPServer, str]:
    """An HTTP server on 127.0.0.1:`port` (HTTPS with a certificate from `tls_ca`); returns it and its scheme."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    if tls_ca is None:
        return server, "http"
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server, "https"


def _die_with_parent():  # pragma: no cover - runs in the child
    """A registry outlives a killed pytest otherwise (Linux: PR_SET_PDEATHSIG).

    The signal follows the death of the *thread* that forked, so this is used
    only for registries started from the main thread."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


def htpasswd_line(user: str, password: str) -> str:
    """One bcrypt htpasswd line: Distribution reads bcrypt only."""
    if shutil.which("htpasswd"):
        out = subprocess.run(["htpasswd", "-nbB", user, password], check=True, capture_output=True, text=True)
        return out.stdout.strip()
    try:
        import bcrypt

        return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}"
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 5))
        if hashed and hashed.startswith("$2"):
            return f"{user}:{hashed}"
    except ImportError:
        pass
    raise RuntimeError("no bcrypt for htpasswd lines: install Debian's apache2-utils (htpasswd)")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """The token service of Docker's token auth: GET /token?service=…&scope=…
    with Basic credentials answers a JWT granting the requested actions.

    Signs RS256 with its own key; the registry trusts the self-signed
    certificate of that key (`rootcertbundle`), found through the token's
    `x5c` header."""

    def __init__(
        self,
        root: Path,
        *,
        service: str,
        issuer: str,
        users: dict[str, str],
        permissions: dict[str, set[str]] | None,
        tls_ca: trustme.CA | None,
    ):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.service = service
        self.issuer = issuer
        self.users = dict(users)
        self.permissions = permissions or {}
        self.token_field = "token"  # "token", "access_token" or "both": what the answer carries
        self.expires_in = 300
        self.requests: list[dict] = []  # (user, scopes) of each token request, for tests
        self.issued: list[str] = []  # every token handed out, so tests can look for leaks
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ccp test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.signer_cert_path = root / "token-signer.pem"
        self.signer_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

        self.port = free_port()
        self._httpd, scheme = loopback_server(self.port, self._handler(), tls_ca)
        self.realm = f"{scheme}://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="token-server", daemon=True)
        self._thread.start()

    def close(self):
        self._httpd.shutdown()
        self._httpd.server_close()

    def sign(self, claims: dict) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._cert_der).decode()]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def _grant(self, user: str, scopes: list[str]) -> list[dict]:
        allowed = self.permissions.get(user, ALL_ACTIONS)
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            requested = [a for a in actions.split(",") if a]
            granted = requested if "*" in allowed else [a for a in requested if a in allowed]
            access.append({"type": kind, "name": name, "actions": granted})
        return access

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    try:
                        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    except Exception:
                        user, password = None, None
                    if server.users.get(user) != password:
                        user = None
                scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
                server.requests.append({"user": user, "scopes": scopes, "service": query.get("service", [""])[0]})
                if url.path != "/token":
                    return self._answer(404, {"errors": [{"code": "NOT_FOUND"}]})
                if user is None:
                    return self._answer(
                        401,
                        {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                        {"WWW-Authenticate": 'Basic realm="ccp-test-token"'},
                    )
                now = int(time.time())
                token = server.sign(
                    {
                        "iss": server.issuer,
                        "sub": user,
                        "aud": server.service,
                        "exp": now + server.expires_in,
                        "nbf": now - 10,
                        "iat": now,
                        "jti": uuid.uuid4().hex,
                        "access": server._grant(user, scopes),
                    }
                )
                server.issued.append(token)
                body = {"expires_in": server.expires_in, "issued_at": datetime.datetime.now(datetime.UTC).isoformat()}
                if server.token_field in ("token", "both"):
                    body["token"] = token
                if server.token_field in ("access_token", "both"):
                    body["access_token"] = token
                self._answer(200, body)

            def _answer(self, status, body, headers=None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


_RUNNING: set[RegistryServer] = set()


@atexit.register
def _stop_all():
    for server in list(_RUNNING):
        server.stop()


class RegistryServer:
    """A `docker-registry serve` process on 127.0.0.1:<free port>; a context manager."""

    def __init__(
        self,
        root: Path,
        *,
        auth: str = "htpasswd",
        tls: bool = True,
        users: dict[str, str] | None = None,
        delete: bool = True,
        permissions: dict[str, set[str]] | None = None,
        binary: str = REGISTRY_BINARY,
    ):
        if auth not in ("none", "htpasswd", "token"):
            raise ValueError(f"auth must be none, htpasswd or token, not {auth!r}")
        if not shutil.which(binary):
            raise RuntimeError(f"{binary} is not installed: apt-get install docker-registry")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.auth = auth
        self.tls = tls
        self.users = dict(users if users is not None else {"ci": "s3cret"})
        self.delete = delete
        self.binary = binary
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self.log_path = self.root / "registry.log"
        self.config_path = self.root / "config.yml"
        self.ca: trustme.CA | None = None
        self.ca_path: str | None = None
        self.token_server: TokenServer | None = None
        self._process: subprocess.Popen | None = None
        self._log = None
        if tls:
            self.ca = trustme.CA()
            self.ca_path = str(self.root / "ca.pem")
            self.ca.cert_pem.write_to_path(self.ca_path)
            server_cert = self.ca.issue_cert("127.0.0.1", "localhost")
            server_cert.private_key_pem.write_to_path(str(self.root / "server.key"))
            with open(self.root / "server.pem", "wb") as out:
                for blob in server_cert.cert_chain_pems:
                    out.write(blob.bytes())
        if auth == "token":
            self.token_server = TokenServer(
                self.root,
                service="ccp-test-registry",
                issuer="ccp-test-issuer",
                users=self.users,
                permissions=permissions,
                tls_ca=self.ca,
            )
        self._write_config()

    def _write_config(self):
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "fields": {"service": "registry"}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "storage")},
                "delete": {"enabled": self.delete},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            # A fixed secret: a restart keeps upload state valid.
            "http": {
                "addr": self.host,
                "secret": "ccp-test-" + self.root.name,
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        if self.tls:
            config["http"]["tls"] = {"certificate": str(self.root / "server.pem"), "key": str(self.root / "server.key")}
        if self.auth == "htpasswd":
            htpasswd = self.root / "htpasswd"
            htpasswd.write_text("".join(htpasswd_line(u, p) + "\n" for u, p in self.users.items()))
            config["auth"] = {"htpasswd": {"realm": "ccp-test", "path": str(htpasswd)}}
        elif self.auth == "token":
            config["auth"] = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": self.token_server.service,
                    "issuer": self.token_server.issuer,
                    "rootcertbundle": str(self.token_server.signer_cert_path),
                }
            }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    # -- life cycle ---------------------------------------------------------

    def start(self, timeout: float = 20) -> RegistryServer:
        if self.running:
            return self
        # REGISTRY_* variables override the config file: none of the caller's apply.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self._log = open(self.log_path, "ab")
        self._process = subprocess.Popen(
            [self.binary, "serve", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
        )
        _RUNNING.add(self)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._close_log()
                raise RuntimeError(f"docker-registry exited ({self._process.returncode}):\n{self.log_tail()}")
            try:
                status = requests.get(f"{self.url}/v2/", verify=self.ca_path or True, timeout=2).status_code
                if status in (200, 401):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer on {self.url} within {timeout}s:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self):
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(10)
            self._process = None
        _RUNNING.discard(self)
        self._close_log()

    def restart(self):
        """Stop and start again on the same port with the same storage."""
        self.stop()
        self.start()

    def close(self):
        self.stop()
        if self.token_server is not None:
            self.token_server.close()
            self.token_server = None

    def _close_log(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RegistryServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()

    # -- helpers for tests ---------------------------------------------------

    def skopeo(self, *args: str, user: str | None = "ci", check: bool = True) -> subprocess.CompletedProcess:
        """Run skopeo against this registry (an independent client), credentials of `user`."""
        command = ["skopeo", args[0], "--tls-verify=false"]
        if user is not None and self.auth != "none":
            command += ["--creds", f"{user}:{self.users[user]}"]
        command += list(args[1:])
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command[:2])} … failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def skopeo_digest(self, reference: str, **kwargs) -> str:
        """`skopeo inspect`'s Digest of `repo:tag` here."""
        out = self.skopeo("inspect", f"docker://{self.host}/{reference}", **kwargs).stdout
        return json.loads(out)["Digest"]

    def skopeo_tags(self, repository: str, **kwargs) -> list[str]:
        out = self.skopeo("list-tags", f"docker://{self.host}/{repository}", **kwargs).stdout
        return sorted(json.loads(out).get("Tags") or [])


class FaultProxy:
    """A plain-HTTP (or TLS, with a certificate from `tls_ca`) front that forwards
    every request to `upstream` and can answer the next N requests with an
    error status or drop their connections instead.

        with FaultProxy(registry.url, upstream_ca=registry.ca_path) as proxy:
            proxy.fail(3, 503)           # the next 3 requests get 503
            proxy.fail(1, 429, {"Retry-After": "1"})
            proxy.drop(2)                # the next 2 connections close unanswered

    With `paginate_tags` set, tag lists are cut into pages of the request's
    `n` with a Link header to the next (the spec's pagination, which
    Distribution 2.8 ignores for tags: it answers every tag, unsorted).
    """

    HOP_BY_HOP = {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }

    def __init__(self, upstream: str, *, upstream_ca: str | None = None, tls_ca: trustme.CA | None = None):
        parts = urlsplit(upstream)
        self._upstream_https = parts.scheme == "https"
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or (443 if self._upstream_https else 80)
        self._upstream_context = ssl.create_default_context(cafile=upstream_ca) if self._upstream_https else None
        self._faults: list[tuple[str, int, dict]] = []
        self._lock = threading.Lock()
        self.seen: list[tuple[float, str, str, str]] = []  # (time, method, path, what was done)
        self.paginate_tags = False
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._httpd, scheme = loopback_server(self.port, self._handler(), tls_ca)
        self.url = f"{scheme}://{self.host}"
        self._thread: threading.Thread | None = None

    def fail(self, count: int, status: int = 503, headers: dict | None = None):
        with self._lock:
            self._faults.extend([("status", status, dict(headers or {}))] * count)

    def drop(self, count: int):
        with self._lock:
            self._faults.extend([("drop", 0, {})] * count)

    def clear(self):
        with self._lock:
            self._faults.clear()
            self.seen.clear()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._faults)

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _next_fault(self):
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    @staticmethod
    def _page(path: str, data: bytes) -> tuple[bytes, str | None]:
        url = urlsplit(path)
        query = parse_qs(url.query)
        body = json.loads(data)
        tags = sorted(body.get("tags") or [])
        if "last" in query:
            tags = [t for t in tags if t > query["last"][0]]
        if "n" not in query:
            return data, None
        size = int(query["n"][0])
        page, rest = tags[:size], tags[size:]
        body["tags"] = page
        link = f'<{url.path}?n={size}&last={page[-1]}>; rel="next"' if rest and page else None
        return json.dumps(body).encode(), link

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: a drop drops one request

            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._next_fault()
                if fault and fault[0] == "drop":
                    proxy.seen.append((time.monotonic(), self.command, self.path, "dropped"))
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if fault:
                    _, status, headers = fault
                    proxy.seen.append((time.monotonic(), self.command, self.path, str(status)))
                    data = json.dumps(
                        {"errors": [{"code": "UNAVAILABLE", "message": "injected by FaultProxy"}]}
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    return
                proxy.seen.append((time.monotonic(), self.command, self.path, "forwarded"))
                if proxy._upstream_https:
                    conn = http.client.HTTPSConnection(
                        proxy._upstream_host, proxy._upstream_port, context=proxy._upstream_context, timeout=30
                    )
                else:
                    conn = http.client.HTTPConnection(proxy._upstream_host, proxy._upstream_port, timeout=30)
                try:
                    # The client's Host header goes through: URLs the registry
                    # builds (Location, Link) then name the proxy.
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for key, value in self.headers.items():
                        if key.lower() not in proxy.HOP_BY_HOP and key.lower() != "content-length":
                            conn.putheader(key, value)
                    if body is not None:
                        conn.putheader("Content-Length", str(len(body)))
                    conn.endheaders(body)
                    response = conn.getresponse()
                    data = response.read()
                    headers = [(k, v) for k, v in response.getheaders() if k.lower() not in proxy.HOP_BY_HOP]
                    if (
                        proxy.paginate_tags
                        and self.command == "GET"
                        and response.status == 200
                        and urlsplit(self.path).path.endswith("/tags/list")
                    ):
                        data, link = proxy._page(self.path, data)
                        headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "link")]
                        headers.append(("Content-Length", str(len(data))))
                        if link:
                            headers.append(("Link", link))
                    self.send_response(response.status, response.reason)
                    for key, value in headers:
                        self.send_header(key, value)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except OSError as exc:
                    self.send_error(502, f"upstream: {exc}")
                finally:
                    conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _any

        return Handler
