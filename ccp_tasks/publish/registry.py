"""A client for the Docker Registry HTTP API v2 (the OCI distribution API).

The engine pushes images; what it cannot do is what this module is for: list
repositories and tags, read a tag's digest without pulling, put the same
manifest under another tag on the registry side (moving tags without a
re-push) and delete manifests (retention).

Authentication follows the registry's 401 challenge: HTTP Basic, or the token
flow (`WWW-Authenticate: Bearer realm=…,service=…,scope=…`: fetch a token from
the realm, cache it per scope, repeat the request once with it). Connection
errors, 429 and 5xx answers are retried with exponential backoff. Every
failure is a RegistryError with one line naming the registry, the repository
and what to check. Credentials and tokens never appear in errors, logs or
reprs: requests' own exceptions (which carry URLs and reasons) are reduced to
a reason and not chained into tracebacks.

A client keeps a session and a token cache: use one per thread or process.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from ccp_tasks.core.errors import CcpError

if TYPE_CHECKING:
    import requests
    import requests.auth

# requests is imported where a client is made or a request is sent, never at
# module level: it costs about 180 ms, and runs that send no request load this
# module (through push and retention: the no-op, once they import it at the top).

log = logging.getLogger(__name__)

# What we can read, in the order we prefer. Distribution 2.8 answers an OCI
# manifest with 404 MANIFEST_UNKNOWN when the Accept header does not list the
# OCI type, and without any Accept it rewrites schema2 manifests to schema1
# (a different digest): the header is needed on every manifest request.
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
ACCEPT = ", ".join(MANIFEST_TYPES)

USER_AGENT = "ccp-registry-client/1"
PAGE_SIZE = 100  # Distribution's catalog answers at most catalog.maxentries (1000 by default)
MAX_PAGES = 10_000
TOKEN_MARGIN = 10  # seconds: a token this close to expiry is fetched anew
DEFAULT_TOKEN_LIFETIME = 60  # the token spec's default when the answer has no expires_in

# The grammar of the distribution spec: checking names before they go into a
# URL keeps a stray '/', '..' or '?' from addressing something else.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}

CREDENTIALS_HINT = "check CCP_REGISTRY_USERNAME/CCP_REGISTRY_PASSWORD or docker login"


class RegistryError(CcpError):
    """A registry refused, failed or could not be reached; the message says what to check."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)  # repr: Credentials(username='ci')


@dataclass(frozen=True)
class Manifest:
    raw: bytes = field(repr=False)  # exactly the registry's bytes: the digest is theirs
    media_type: str
    digest: str

    def json(self) -> dict:
        return json.loads(self.raw)


# -- credentials --------------------------------------------------------------


def registry_host(registry: str) -> str:
    """'https://Host:5000/x' -> 'host:5000'."""
    text = registry.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    return text.split("/", 1)[0].lower()


def _docker_config_path(env: Mapping[str, str]) -> Path:
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".docker" / "config.json"


def credentials_for(registry: str, env: Mapping[str, str] = os.environ) -> Credentials | None:
    """Credentials for `registry`: CCP_REGISTRY_USERNAME/CCP_REGISTRY_PASSWORD,
    else docker's config.json ($DOCKER_CONFIG/config.json or ~/.docker/config.json);
    None when neither names this registry (anonymous access)."""
    username, password = env.get("CCP_REGISTRY_USERNAME"), env.get("CCP_REGISTRY_PASSWORD")
    if username and password:
        return Credentials(username, password)
    if username or password:
        missing = "CCP_REGISTRY_PASSWORD" if username else "CCP_REGISTRY_USERNAME"
        raise RegistryError(
            f"registry {registry}: CCP_REGISTRY_USERNAME and CCP_REGISTRY_PASSWORD go together; {missing} is not set"
        )

    host = registry_host(registry)
    hosts = {host}
    if host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        hosts |= {
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
        }  # docker login's key is https://index.docker.io/v1/
    path = _docker_config_path(env)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(
            f"registry {registry}: cannot read docker's {path}: {type(exc).__name__}: fix or remove it, or set CCP_REGISTRY_USERNAME/CCP_REGISTRY_PASSWORD"
        ) from None
    if not isinstance(config, dict):
        raise RegistryError(f"registry {registry}: docker's {path} is not a JSON object")

    listed = False  # does `auths` name this registry at all (docker login with a store leaves an empty entry)
    for key, entry in (config.get("auths") or {}).items():
        if registry_host(key) not in hosts or not isinstance(entry, dict):
            continue
        listed = True
        if entry.get("auth"):
            try:
                user, sep, secret = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise RegistryError(
                    f"registry {registry}: the auth entry for {key} in {path} is not base64 of user:password; run docker login {host} again"
                )
            return Credentials(user, secret)
        if entry.get("username") and entry.get("password"):
            return Credentials(entry["username"], entry["password"])

    helper = next((h for k, h in (config.get("credHelpers") or {}).items() if registry_host(k) in hosts), None)
    if helper or (listed and config.get("credsStore")):
        name = helper or config["credsStore"]
        raise RegistryError(
            f"registry {registry}: docker keeps its credentials in the credential helper docker-credential-{name} "
            f"({path}), which ccp does not read: set CCP_REGISTRY_USERNAME/CCP_REGISTRY_PASSWORD"
        )
    return None


# -- the client ---------------------------------------------------------------


class _Headers(dict):
    """Request headers whose repr hides Authorization: tracebacks that show a
    frame's arguments (pytest's do) must not show credentials or tokens."""

    def __repr__(self) -> str:
        return repr({k: ("<hidden>" if k.lower() == "authorization" else v) for k, v in self.items()})


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="https://a/token",service="reg",scope="repository:x:pull,push"'
    -> ('bearer', {...}); values may be quoted and hold commas."""
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for match in re.finditer(r'([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))', rest):
        value = match.group(2) if match.group(2) is not None else match.group(3)
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return scheme.lower(), params


def _errors_of(response: requests.Response) -> tuple[list[str], str]:
    """The codes and first message of a distribution error body ({"errors": [...]})."""
    try:
        errors = response.json().get("errors") or []
    except (ValueError, AttributeError):
        return [], ""
    codes = [str(e.get("code")) for e in errors if isinstance(e, dict) and e.get("code")]
    message = next((str(e.get("message")) for e in errors if isinstance(e, dict) and e.get("message")), "")
    return codes, " ".join(message.split())[:200]


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _connection_reason(exc: Exception) -> str:
    """A short reason without the URL chain requests puts in its messages."""
    import requests  # loaded already: `exc` is one of its errors

    text = str(exc)
    if isinstance(exc, requests.Timeout):
        return "timed out"
    for needle, reason in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "the name does not resolve"),
        ("nodename nor servname", "the name does not resolve"),
        ("Temporary failure in name resolution", "the name does not resolve"),
        ("No route to host", "no route to host"),
        ("Network is unreachable", "network unreachable"),
        ("RemoteDisconnected", "the connection was closed without an answer"),
        ("Connection reset", "the connection was reset"),
        ("Connection aborted", "the connection was closed without an answer"),
    ):
        if needle in text:
            return reason
    return f"connection failed ({type(exc).__name__})"


def _digest(raw: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{_HASHES[algorithm](raw).hexdigest()}"


class RegistryClient:
    """One registry, e.g. RegistryClient("127.0.0.1:5000", credentials=…, ca_bundle=…).

    https by default with the certificate verified (against `ca_bundle` when
    given); plain http only with insecure=True. `retries` is how many times a
    request is repeated after a connection error, 429 or 5xx, waiting
    backoff * 2**n seconds (or the Retry-After of a 429, at most
    `max_retry_after`)."""

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | None = None,
        ca_bundle: str | None = None,
        insecure: bool = False,
        timeout: float = 30,
        retries: int = 4,
        backoff: float = 0.5,
        max_retry_after: float = 120,
    ):
        text = registry.strip().rstrip("/")
        scheme = "http" if insecure else "https"
        if "://" in text:
            scheme, text = text.split("://", 1)
            scheme = scheme.lower()
            if scheme not in ("http", "https"):
                raise RegistryError(
                    f"registry {registry}: only https:// (or http:// with registry.insecure) is supported"
                )
            if scheme == "http" and not insecure:
                raise RegistryError(f"registry {registry}: plain http is used only with registry.insecure set")
        host = text.split("/", 1)[0]
        if not host:
            raise RegistryError(f"registry {registry!r}: no host")
        if host != text or "?" in host or "#" in host:  # config validation says so first, naming the key
            raise RegistryError(
                f"registry {registry!r}: a registry is named host[:port], without a path, query or fragment"
            )
        if ca_bundle is not None and not Path(ca_bundle).is_file():
            raise RegistryError(f"registry {host}: the CA bundle {ca_bundle} does not exist (registry.ca_bundle)")
        self.name = host
        self.base_url = f"{scheme}://{host}"
        self.insecure = insecure
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        import requests  # see the note on the module's imports

        self._credentials = credentials
        self._session = requests.Session()
        # Nothing from the environment: no ~/.netrc credentials added behind
        # our back, no REQUESTS_CA_BUNDLE overriding registry.ca_bundle, and so
        # no HTTP(S)_PROXY either (a registry behind a proxy is not supported).
        self._session.trust_env = False
        self._session.verify = ca_bundle if ca_bundle else True
        self._scheme: str | None = None  # "basic" or "bearer", learnt from the first challenge
        self._tokens: dict[str | None, tuple[str, float]] = {}  # scope -> (token, monotonic expiry)
        self._sleep = time.sleep

    def __repr__(self) -> str:
        user = self._credentials.username if self._credentials else None
        return f"RegistryClient({self.base_url!r}, user={user!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API -----------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/: the registry answers, speaks API v2 and takes our credentials."""
        response = self._send("GET", "/v2/", scope=None, what="reach the API")
        if response.status_code != 200:
            raise self._error(response, None, "reach the API")

    def catalog(self, page_size: int = PAGE_SIZE) -> list[str]:
        """Every repository (GET /v2/_catalog, following Link pages of `page_size`)."""
        return self._paginate("/v2/_catalog", "repositories", "registry:catalog:*", None, page_size)

    def tags(self, repository: str, page_size: int = PAGE_SIZE) -> list[str]:
        """The tags of `repository` ([] when the registry does not know it)."""
        self._check_repository(repository)
        return self._paginate(
            f"/v2/{repository}/tags/list", "tags", self._scope(repository, "pull"), repository, page_size
        )

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest `reference` (a tag or digest) names, from a HEAD; None when unknown."""
        path = self._manifest_path(repository, reference)
        response = self._send(
            "HEAD",
            path,
            scope=self._scope(repository, "pull"),
            repository=repository,
            what=f"read manifest {reference}",
            headers={"Accept": ACCEPT},
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._error(response, repository, f"read manifest {reference}")
        digest = response.headers.get("Docker-Content-Digest")
        if digest:
            return digest
        # Docker-Content-Digest is optional in the OCI spec: compute it from the bytes.
        return self.get_manifest(repository, reference).digest

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest `reference` names, its digest checked against its bytes."""
        path = self._manifest_path(repository, reference)
        what = f"read manifest {reference}"
        response = self._send(
            "GET",
            path,
            scope=self._scope(repository, "pull"),
            repository=repository,
            what=what,
            headers={"Accept": ACCEPT},
        )
        if response.status_code != 200:
            raise self._error(response, repository, what, reference=reference)
        raw = response.content
        media_type = (response.headers.get("Content-Type") or "").split(";")[0].strip()
        if media_type not in MANIFEST_TYPES:
            try:
                media_type = json.loads(raw).get("mediaType") or media_type
            except (ValueError, AttributeError):
                pass
        claimed = response.headers.get("Docker-Content-Digest")
        if DIGEST_RE.match(reference):
            claimed = claimed or reference
            if claimed != reference:
                raise RegistryError(f"registry {self.name}: asked for {repository}@{reference} and got {claimed}")
        algorithm = (claimed or "sha256:").split(":", 1)[0]
        if algorithm not in _HASHES:
            raise RegistryError(
                f"registry {self.name}: manifest {repository}:{reference} has a digest of unsupported algorithm {algorithm}"
            )
        actual = _digest(raw, algorithm)
        if claimed and claimed != actual:
            raise RegistryError(
                f"registry {self.name}: manifest {repository}:{reference} does not match its digest "
                f"(registry says {claimed}, content is {actual}): a proxy may have altered it"
            )
        return Manifest(raw=raw, media_type=media_type, digest=actual)

    def put_manifest(self, repository: str, tag: str, manifest: Manifest) -> str:
        """Store `manifest`'s exact bytes under `tag` (registry-side retag); its digest."""
        if not TAG_RE.match(tag):
            raise RegistryError(f"registry {self.name}: {tag!r} is not a valid tag")
        path = self._manifest_path(repository, tag)
        what = f"tag {tag}"
        response = self._send(
            "PUT",
            path,
            scope=self._scope(repository, "pull,push"),
            repository=repository,
            what=what,
            headers={"Content-Type": manifest.media_type},
            data=manifest.raw,
        )
        if response.status_code not in (200, 201, 202):
            raise self._error(response, repository, what, reference=tag)
        digest = response.headers.get("Docker-Content-Digest") or manifest.digest
        if digest != manifest.digest:
            raise RegistryError(
                f"registry {self.name}: stored {repository}:{tag} as {digest}, expected {manifest.digest}"
            )
        return digest

    def delete_manifest(self, repository: str, digest: str, *, missing_ok: bool = False) -> None:
        """Delete the manifest `digest` (the API deletes by digest only).

        Distribution removes every tag of `repository` that points at it."""
        if not DIGEST_RE.match(digest):
            raise RegistryError(
                f"registry {self.name}: manifests are deleted by digest (sha256:…), not by tag {digest!r}"
            )
        path = self._manifest_path(repository, digest)
        what = f"delete manifest {digest}"
        uncertain: list[bool] = []
        response = self._send(
            "DELETE", path, scope=self._scope(repository, "delete"), repository=repository, what=what, retried=uncertain
        )
        if response.status_code in (200, 202, 204):
            return
        if response.status_code == 404 and (missing_ok or uncertain):
            # After a lost answer a 404 may be our own earlier delete.
            return
        raise self._error(response, repository, what, reference=digest)

    def get_blob(self, repository: str, digest: str) -> bytes:
        """The blob `digest` of `repository` (an image config, say), checked
        against its digest when that is sha256 or sha512."""
        what = f"read blob {digest}"
        response = self._send(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scope=self._scope(repository, "pull"),
            repository=repository,
            what=what,
        )
        if response.status_code != 200:
            raise self._error(response, repository, what, reference=digest)
        data = response.content
        algorithm, _, expected = digest.partition(":")
        if algorithm in _HASHES and _HASHES[algorithm](data).hexdigest() != expected:
            raise RegistryError(f"registry {self.name}: blob {repository}@{digest} does not match its digest")
        return data

    def has_blob(self, repository: str, digest: str) -> bool:
        """Whether `repository` holds the blob `digest` (a HEAD)."""
        self._check_repository(repository)
        what = f"look up blob {digest}"
        response = self._send(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            scope=self._scope(repository, "pull"),
            repository=repository,
            what=what,
        )
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise self._error(response, repository, what, reference=digest)
        return True

    def put_blob(self, repository: str, data: bytes) -> str:
        """Upload `data` as a blob of `repository` unless it is there already; its digest.
        One POST for an upload session, one PUT of the whole body: the two
        requests every registry takes (a single POST with the body is optional)."""
        self._check_repository(repository)
        digest = _digest(data)
        if self.has_blob(repository, digest):
            return digest
        what = f"upload blob {digest}"
        scope = self._scope(repository, "pull,push")
        response = self._send("POST", f"/v2/{repository}/blobs/uploads/", scope=scope, repository=repository, what=what)
        location = response.headers.get("Location")
        if response.status_code != 202 or not location:
            raise self._error(response, repository, what)
        url = urljoin(f"{self.base_url}/v2/{repository}/blobs/uploads/", location)
        if urlsplit(url)[:2] != urlsplit(self.base_url)[:2]:
            # Our Authorization header goes with every request: never to another host.
            raise RegistryError(
                f"registry {self.name}: the upload of {digest} is sent to another host; not following it"
            )
        url += ("&" if urlsplit(url).query else "?") + f"digest={digest}"
        response = self._send(
            "PUT",
            url,
            scope=scope,
            repository=repository,
            what=what,
            headers={"Content-Type": "application/octet-stream"},
            data=data,
        )
        if response.status_code not in (201, 204):
            raise self._error(response, repository, what)
        return digest

    def blob_size(self, repository: str, manifest: Manifest | str) -> int:
        """Bytes a manifest refers to: config and layers (the children's too for
        an index), the manifests themselves included. An upper bound of what a
        delete frees: layers shared with other images stay until they go too,
        and only the registry's garbage collection reclaims space."""
        if isinstance(manifest, str):
            manifest = self.get_manifest(repository, manifest)
        body = manifest.json()
        total = len(manifest.raw)
        if manifest.media_type in INDEX_TYPES or "manifests" in body:
            for child in body.get("manifests") or []:
                total += self.blob_size(repository, child["digest"])
            return total
        config = body.get("config") or {}
        total += int(config.get("size") or 0)
        total += sum(int(layer.get("size") or 0) for layer in body.get("layers") or [])
        return total

    # -- requests -------------------------------------------------------------

    def _scope(self, repository: str, actions: str) -> str:
        return f"repository:{repository}:{actions}"

    def _check_repository(self, repository: str) -> None:
        if not REPOSITORY_RE.match(repository or ""):
            raise RegistryError(
                f"registry {self.name}: {repository!r} is not a valid repository name (lower case, a-z0-9 separated by . _ - /)"
            )

    def _manifest_path(self, repository: str, reference: str) -> str:
        self._check_repository(repository)
        if not (TAG_RE.match(reference or "") or DIGEST_RE.match(reference or "")):
            raise RegistryError(f"registry {self.name}: {reference!r} is neither a tag nor a digest")
        return f"/v2/{repository}/manifests/{reference}"

    def _paginate(self, path: str, key: str, scope: str, repository: str | None, page_size: int) -> list[str]:
        what = "list tags" if repository else "list repositories"
        url: str | None = f"{self.base_url}{path}?n={int(page_size)}"
        items: list[str] = []
        seen: set[str] = set()
        while url:
            if url in seen or len(seen) >= MAX_PAGES:
                raise RegistryError(f"registry {self.name}: pagination of {path} loops at {url}")
            seen.add(url)
            response = self._send("GET", url, scope=scope, repository=repository, what=what)
            if response.status_code == 404 and repository is not None:
                codes, _ = _errors_of(response)
                if not codes or "NAME_UNKNOWN" in codes:
                    return []
            if response.status_code != 200:
                raise self._error(response, repository, what)
            try:
                items.extend(
                    response.json().get(key) or []
                )  # Distribution sends "tags": null for an emptied repository
            except (ValueError, AttributeError) as exc:
                raise RegistryError(f"registry {self.name}: {path} did not answer JSON") from exc
            following = response.links.get("next", {}).get("url")
            url = urljoin(url, following) if following else None
            if url and urlsplit(url)[:2] != urlsplit(self.base_url)[:2]:
                # Our Authorization header goes with every request: never to another host.
                raise RegistryError(
                    f"registry {self.name}: the next page of {path} is on another host; not following it"
                )
        # The spec pages in lexical order; Distribution 2.8 lists tags in storage order.
        return sorted(items)

    def _auth_headers(self, scope: str | None) -> dict[str, str]:
        if self._scheme == "basic" and self._credentials:
            pair = f"{self._credentials.username}:{self._credentials.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        if self._scheme == "bearer":
            cached = self._tokens.get(scope)
            if cached and cached[1] > time.monotonic():
                return {"Authorization": "Bearer " + cached[0]}
        return {}

    def _send(
        self,
        method: str,
        path_or_url: str,
        *,
        scope: str | None,
        what: str,
        repository: str | None = None,
        headers: dict | None = None,
        data: bytes | None = None,
        retried: list | None = None,
    ) -> requests.Response:
        """One API request with authentication: answered as is unless a 401
        can be met by authenticating (then repeated once)."""
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        authenticated = False
        while True:
            sent = _Headers({**(headers or {}), **self._auth_headers(scope)})
            response = self._http(
                method,
                url,
                headers=sent,
                data=data,
                target=f"registry {self.name}",
                repository=repository,
                what=what,
                retried=retried,
            )
            if response.status_code != 401 or authenticated:
                return response
            authenticated = True
            if not self._authenticate(response, scope, repository, sent_auth="Authorization" in sent):
                return response

    def _authenticate(
        self, response: requests.Response, scope: str | None, repository: str | None, sent_auth: bool
    ) -> bool:
        """Meet a 401 challenge; True when the request is worth repeating."""
        scheme, params = _parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if not self._credentials or (sent_auth and self._scheme == "basic"):
                return False  # nothing to send, or what we sent was refused
            self._scheme = "basic"
            return True
        if scheme == "bearer" and params.get("realm"):
            self._scheme = "bearer"
            self._tokens.pop(scope, None)
            # The challenge's scope is what this request needs; ours is only a prediction.
            wanted = params.get("scope", scope)
            token, lifetime = self._fetch_token(params["realm"], params.get("service"), wanted, repository)
            self._tokens[scope] = (token, time.monotonic() + max(1, lifetime - TOKEN_MARGIN))
            return True
        return False

    def _fetch_token(
        self, realm: str, service: str | None, scope: str | None, repository: str | None
    ) -> tuple[str, float]:
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RegistryError(f"registry {self.name}: its token realm {realm!r} is not an http(s) URL")
        if parts.scheme == "http" and self._credentials and not self.insecure:
            raise RegistryError(
                f"registry {self.name}: its token service {realm} is plain http; not sending credentials there (set registry.insecure to allow it)"
            )
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        for one in (scope or "").split():
            params.append(("scope", one))
        auth = None
        if self._credentials:
            params.append(("account", self._credentials.username))
            import requests.auth  # loaded with the session

            # An object, not a (user, password) tuple: its repr holds no password.
            auth = requests.auth.HTTPBasicAuth(self._credentials.username, self._credentials.password)
        target = f"token service {parts.scheme}://{parts.netloc}{parts.path} of registry {self.name}"
        what = "get a token" + (f" for {scope}" if scope else "")
        response = self._http(
            "GET", realm, headers={}, params=params, auth=auth, target=target, repository=repository, what=what
        )
        if response.status_code in (401, 403):
            raise RegistryError(
                self._auth_failed_message(repository, response.status_code, "the token service refused the credentials")
            )
        if response.status_code != 200:
            codes, message = _errors_of(response)
            raise RegistryError(
                f"{target}: answered {response.status_code} {' '.join(codes)} to {what}{': ' + message if message else ''}"
            )
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not token or not isinstance(token, str):
            raise RegistryError(f"{target}: the answer carries no token (neither 'token' nor 'access_token')")
        return token, lifetime

    def _http(
        self,
        method: str,
        url: str,
        *,
        headers: dict,
        target: str,
        what: str,
        repository: str | None,
        data: bytes | None = None,
        params: list[tuple[str, str]] | None = None,
        auth: requests.auth.AuthBase | None = None,
        retried: list | None = None,
    ) -> requests.Response:
        """One request, repeated on connection errors, 429 and 5xx."""
        import requests  # loaded with the session

        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._session.request(
                    method,
                    url,
                    headers={"User-Agent": USER_AGENT, **headers},
                    data=data,
                    params=params,
                    auth=auth,
                    timeout=self.timeout,
                    allow_redirects=method in ("GET", "HEAD"),
                )
            except requests.exceptions.SSLError as exc:
                raise RegistryError(self._tls_message(exc, target)) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                reason = _connection_reason(exc)
                if attempt == attempts:
                    raise RegistryError(
                        f"{target} is not reachable ({reason}) after {attempts} attempts: "
                        "check the address, that the registry runs and the network"
                    ) from None
                delay = self.backoff * 2 ** (attempt - 1)
                log.info(
                    "%s: %s %s: %s; retrying in %.1fs (%d/%d)",
                    target,
                    method,
                    urlsplit(url).path,
                    reason,
                    delay,
                    attempt,
                    self.retries,
                )
            else:
                status = response.status_code
                if status != 429 and not (500 <= status < 600 and status not in (501, 505)):
                    return response
                if attempt == attempts:
                    scope = f" for repository {repository}" if repository else ""
                    if status == 429:
                        raise RegistryError(
                            f"{target}: rate limited (429) to {what}{scope} after {attempts} attempts: retry later or raise the registry's limits"
                        )
                    codes, message = _errors_of(response)
                    detail = " ".join(filter(None, [" ".join(codes), message]))
                    raise RegistryError(
                        f"{target}: answered {status}{' (' + detail + ')' if detail else ''} to {what}{scope} "
                        f"after {attempts} attempts: the registry is failing; check its logs"
                    )
                delay = self.backoff * 2 ** (attempt - 1)
                hinted = _retry_after(response) if status in (429, 503) else None
                if hinted is not None:  # the server knows best when to come back, within reason
                    delay = min(hinted, self.max_retry_after)
                log.info(
                    "%s: %s %s answered %d; retrying in %.1fs (%d/%d)",
                    target,
                    method,
                    urlsplit(url).path,
                    status,
                    delay,
                    attempt,
                    self.retries,
                )
            if retried is not None:
                retried.append(True)
            self._sleep(delay)
        raise AssertionError("unreachable")

    # -- errors ---------------------------------------------------------------

    def _tls_message(self, exc: Exception, target: str) -> str:
        text = str(exc)
        if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text or "wrong version number" in text:
            return f"{target} does not speak TLS on {self.base_url}: for a plain-http registry set registry.insecure"
        if "mismatch" in text or "doesn't match" in text:
            return f"{target}: TLS certificate does not name this host: use the name the certificate was made for"
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return (
                f"{target}: TLS certificate not trusted: set registry.ca_bundle to the CA that signed it "
                "(or registry.insecure for a plain-http registry)"
            )
        return f"{target}: TLS handshake failed: check registry.ca_bundle and that it serves https"

    def _auth_failed_message(self, repository: str | None, status: int, why: str = "") -> str:
        about = f" for repository {repository}" if repository else ""
        if not self._credentials:
            return (
                f"registry {self.name}: authentication required{about} ({status}) and no credentials are set: "
                f"set CCP_REGISTRY_USERNAME/CCP_REGISTRY_PASSWORD or docker login {self.name}"
            )
        return f"registry {self.name}: authentication failed{about} ({status}{', ' + why if why else ''}): {CREDENTIALS_HINT}"

    def _error(
        self, response: requests.Response, repository: str | None, what: str, reference: str | None = None
    ) -> RegistryError:
        status = response.status_code
        codes, message = _errors_of(response)
        code = " ".join(codes)
        about = f" for repository {repository}" if repository else ""
        if status == 401:
            _, params = _parse_challenge(response.headers.get("WWW-Authenticate", ""))
            if params.get("error") == "insufficient_scope" and self._credentials:
                return RegistryError(
                    f"registry {self.name}: access denied to {what}{about} (401 insufficient_scope): "
                    f"the account {self._credentials.username!r} lacks the rights; check its permissions"
                )
            return RegistryError(self._auth_failed_message(repository, status))
        if status == 403:
            return RegistryError(
                f"registry {self.name}: access denied to {what}{about} (403{' ' + code if code else ''}): check the account's permissions"
            )
        if status == 404:
            if "NAME_UNKNOWN" in codes:
                return RegistryError(
                    f"registry {self.name}: repository {repository} is unknown (404 NAME_UNKNOWN): check the name, or push it first"
                )
            if reference and ("MANIFEST_UNKNOWN" in codes or not codes):
                return RegistryError(
                    f"registry {self.name}: manifest {repository}:{reference} is unknown (404{' ' + code if code else ''}): check the tag or digest"
                )
            return RegistryError(
                f"registry {self.name}: not found: cannot {what}{about} (404{' ' + code if code else ''}): is {self.base_url} a registry?"
            )
        if status == 405 and what.startswith("delete"):
            return RegistryError(
                f"registry {self.name}: the registry does not allow deletes (405{' ' + code if code else ''}){about}: "
                "set storage.delete.enabled: true in its configuration"
            )
        if status == 400 and "Client sent an HTTP request to an HTTPS server" in response.text:
            return RegistryError(f"registry {self.name}: it speaks https; do not set registry.insecure")
        if "MANIFEST_BLOB_UNKNOWN" in codes:
            return RegistryError(
                f"registry {self.name}: cannot {what}{about}: the blobs of the manifest are not in that repository (400 MANIFEST_BLOB_UNKNOWN): push the image there first"
            )
        detail = f"{code}: {message}" if code and message else code or message
        return RegistryError(f"registry {self.name}: cannot {what}{about} ({status}{' ' + detail if detail else ''})")
