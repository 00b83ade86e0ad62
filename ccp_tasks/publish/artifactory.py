"""Build artifacts in an Artifactory *generic* repository: deploy, find, label, delete.

What Artifactory adds on top of a v2 registry is used here for the files a run
leaves behind (build logs, JUnit reports, package manifests, the run summary):
deploy them with properties (branch, commit, build number, keep), find them
again with AQL, set and read properties, and delete them. Docker repositories
in Artifactory are NOT handled here: images go through the v2 registry client,
as for any other registry.

Written against JFrog's documented REST API (no Artifactory server can run
where this was written; the tests drive a local stand-in that checks requests
the way these pages describe, tests/artifactory_server.py):

- Deploy Artifact: https://jfrog.com/help/r/jfrog-rest-apis/deploy-artifact
  (PUT {url}/{repo}/{path}, X-Checksum-Sha1/-Sha256 headers, a mismatch is rejected)
- Deploy Artifact by Checksum: https://jfrog.com/help/r/jfrog-rest-apis/deploy-artifact-by-checksum
  (X-Checksum-Deploy: true; 404 means "content unknown, upload it")
- Matrix parameters on deploy: https://jfrog.com/help/r/jfrog-artifactory-documentation/using-properties-in-deployment-and-resolution
- Set Item Properties: https://jfrog.com/help/r/jfrog-rest-apis/set-item-properties
- Get Item Properties: https://jfrog.com/help/r/jfrog-rest-apis/get-item-properties
- Delete Item Properties: https://jfrog.com/help/r/jfrog-rest-apis/delete-item-properties
- Delete Item: https://jfrog.com/help/r/jfrog-rest-apis/delete-item
- AQL: https://jfrog.com/help/r/jfrog-rest-apis/artifactory-query-language,
  https://jfrog.com/help/r/jfrog-rest-apis/aql-execution (POST api/search/aql, text/plain),
  https://jfrog.com/help/r/jfrog-rest-apis/aql-syntax, https://jfrog.com/help/r/jfrog-rest-apis/compounding-criteria,
  https://jfrog.com/help/r/jfrog-rest-apis/properties-criteria, https://jfrog.com/help/r/jfrog-rest-apis/using-wildcards,
  https://jfrog.com/help/r/jfrog-rest-apis/filtering-properties-by-key,
  https://jfrog.com/help/r/jfrog-artifactory-documentation/display-specific-fields
- System Health Ping: https://jfrog.com/help/r/jfrog-rest-apis/system-health-ping
- Error responses ({"errors": [{"status", "message"}]}): https://jfrog.com/help/r/jfrog-rest-apis/error-responses
- Authentication (Basic, or an access token as Bearer):
  https://jfrog.com/help/r/jfrog-rest-apis/introduction-to-the-artifactory-rest-apis

Where the pages leave a question open, the answer was taken from Artifactory's
own code (Artifactory OSS 6.20: ArtifactoryRequestBase.processMatrixParams,
KeyValueList, AqlRestResult.Row) and JFrog's Go client (jfrog-client-go), and
the choice is the one every reading agrees on:

- Matrix parameters carry only single, plain values. The deploy page says ','
  separates multiple values, but 6.20's parser neither splits on ',' nor knows
  a backslash escape, while JFrog's own client repeats the key instead and
  sends values with ',', '\\', '|' or '#' by another call. So properties with
  several values or with any of ``, ; = | # \\`` are set with Set Item
  Properties right after the upload, whose escaping (a backslash before
  ``, = | ;``) the docs and the code agree on.
- A backslash in a property value is refused: the docs say to escape it, 6.20
  does not unescape it, so its stored form depends on the server version.
- AQL returns properties as ``[{"key": k, "value": v}, ...]`` (one entry per
  value) and dates as ISO 8601 (Joda's dateTime()).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit

from ccp_tasks.core.errors import CcpError
from ccp_tasks.model.config import PipelineConfig

if TYPE_CHECKING:
    import requests

# requests is imported where a client is made or a request is sent, never at
# module level: it costs about 180 ms, and runs that send no request load this
# module (a retention plan without Artifactory; the no-op, once the glue imports
# the stages at the top).

# Property names the pipeline uses for what it deploys.
PROP_BRANCH = "branch"
PROP_COMMIT = "commit"
PROP_BUILD_NUMBER = "build.number"
PROP_KEEP = "keep"

ENV_USER = "CCP_ARTIFACTORY_USER"
ENV_PASSWORD = "CCP_ARTIFACTORY_PASSWORD"
ENV_TOKEN = "CCP_ARTIFACTORY_TOKEN"

DEFAULT_INCLUDE = ("repo", "path", "name", "created", "size", "sha256", "property.*")

# Property names: Set Item Properties forbids )(}{][*+^$\/~`!@#%&<>;=,±§ and space in
# names, and 6.20 does not URL-decode a name in a matrix parameter, so names are kept
# to characters that never need encoding.
_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:-]*$")
# Characters that may not ride in a matrix parameter even percent-encoded (see the
# module docstring): such values go through Set Item Properties instead.
_MATRIX_UNSAFE = frozenset(",;=|#\\")
# Escaped with a backslash inside Set Item Properties values (KeyValueList).
_SET_ESCAPED = ",=|;"
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))
_CHUNK = 1 << 20


class ArtifactoryError(CcpError):
    """Artifactory cannot be reached, refused a request, or was given something it cannot store."""


@dataclass(frozen=True)
class ArtifactoryAuth:
    """Credentials: an access token (sent as Bearer) or a user and password (Basic).

    The repr never shows the password or the token, so the object can be logged.
    """

    username: str | None = None
    password: str | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if self.token:
            return
        if self.password and not self.username:
            raise ArtifactoryError(f"{ENV_PASSWORD} is set but {ENV_USER} is not; set both, or {ENV_TOKEN} instead")
        if self.username and not self.password:
            raise ArtifactoryError(f"{ENV_USER} is set but {ENV_PASSWORD} is not; set both, or {ENV_TOKEN} instead")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ArtifactoryAuth:
        """Read CCP_ARTIFACTORY_TOKEN, or CCP_ARTIFACTORY_USER and CCP_ARTIFACTORY_PASSWORD (empty counts as unset)."""
        env = os.environ if env is None else env
        return cls(
            username=env.get(ENV_USER) or None,
            password=env.get(ENV_PASSWORD) or None,
            token=env.get(ENV_TOKEN) or None,
        )

    def header(self) -> str | None:
        """The Authorization header value, None for anonymous access."""
        if self.token:
            return f"Bearer {self.token}"
        if self.username and self.password:
            import base64

            pair = f"{self.username}:{self.password}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        return None

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.password, self.token) if s)

    def __repr__(self) -> str:
        hidden = lambda value: "None" if value is None else "'***'"  # noqa: E731
        return (
            f"ArtifactoryAuth(username={self.username!r}, password={hidden(self.password)}, token={hidden(self.token)})"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class DeployedItem:
    repo: str
    path: str
    size: int
    sha1: str
    sha256: str
    md5: str
    created: datetime | None
    download_uri: str
    checksum_deployed: bool  # True when the server already had the content and nothing was uploaded


@dataclass(frozen=True)
class FoundItem:
    repo: str
    path: str  # the folder, "." for the repository root (AQL's convention)
    name: str
    created: datetime | None = None
    size: int | None = None
    sha256: str | None = None
    properties: dict[str, list[str]] = field(default_factory=dict)

    @property
    def repo_path(self) -> str:
        """The item's path inside its repository, as deploy() and delete() take it."""
        return self.name if self.path in ("", ".") else f"{self.path}/{self.name}"


class _HeaderAuth:
    # requests calls any callable given as `auth` on the prepared request.
    # Passing an auth object on every request also stops requests from replacing
    # the header with ~/.netrc credentials (it only reads netrc when auth is None).
    def __init__(self, value: str | None):
        self.value = value

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.value:
            request.headers["Authorization"] = self.value
        return request


class Artifactory:
    """A client for one Artifactory instance; `url` includes the context path, e.g. https://host/artifactory."""

    def __init__(
        self,
        url: str,
        auth: ArtifactoryAuth,
        *,
        ca_bundle: str | os.PathLike | None = None,
        timeout: float = 30,
        retries: int = 3,
        backoff: float = 0.5,
    ):
        self.url = _check_url(url)
        self.auth = auth
        self.timeout = timeout
        self.retries = max(0, int(retries))  # retries after the first attempt
        self.backoff = backoff
        import requests  # see the note on the module's imports

        self._session = requests.Session()
        self._session.verify = str(ca_bundle) if ca_bundle else True
        self._session.headers["User-Agent"] = "ccp-artifactory"
        self._auth = _HeaderAuth(auth.header())

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Artifactory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Artifactory({self.url!r}, {self.auth!r})"

    # -- health -----------------------------------------------------------------

    def ping(self) -> None:
        """GET api/system/ping answers 200 "OK" when Artifactory works; anything else is an error."""
        resp = self._send("GET", f"{self.url}/api/system/ping", action="ping", target="api/system/ping")
        if resp.text.strip() != "OK":
            # A web server that is not Artifactory (wrong context path, a proxy's page) also says 200.
            raise ArtifactoryError(
                f"Artifactory {self.url}: ping answered {_excerpt(resp.text, self.auth.secrets())!r} instead of 'OK'; "
                "check that the URL points at Artifactory including its context path (…/artifactory)"
            )

    # -- deploy -----------------------------------------------------------------

    def deploy(self, repo: str, path: str, file: Path, properties: Mapping[str, str | list[str]]) -> DeployedItem:
        """Deploy `file` to repo/path with `properties`; by checksum first, uploading only when the server lacks the content."""
        repo, path = _check_repo(repo), _check_path(path)
        props = _normalize_properties(properties)
        file = Path(file)
        if not file.is_file():
            raise ArtifactoryError(f"cannot deploy {file}: not a file")
        sums, size = _checksums(file)
        inline = {k: v[0] for k, v in props.items() if len(v) == 1 and not (_MATRIX_UNSAFE & set(v[0]))}
        later = {k: v for k, v in props.items() if k not in inline}
        url = self._item_url(repo, path) + "".join(f";{k}={quote(v, safe='')}" for k, v in inline.items())
        headers = {"X-Checksum-Sha1": sums["sha1"], "X-Checksum-Sha256": sums["sha256"], "X-Checksum-Md5": sums["md5"]}
        target = f"{repo}/{path}"

        # Checksum deploy: the server copies content it already holds, nothing is sent.
        resp = self._send(
            "PUT",
            url,
            action="deploy",
            target=target,
            repo=repo,
            headers={**headers, "X-Checksum-Deploy": "true"},
            body=b"",
            ok=(200, 201),
            passthrough=(404,),
        )
        checksum_deployed = resp.status_code != 404
        if not checksum_deployed:
            # "Otherwise, a 404 error is returned to indicate that content upload is expected."
            resp = self._send(
                "PUT", url, action="deploy", target=target, repo=repo, headers=headers, body_file=file, ok=(200, 201)
            )
        item = self._deployed_item(resp, repo, path, sums, size, checksum_deployed)
        if later:
            try:
                self.set_properties(repo, path, later, recursive=False)
            except ArtifactoryError as exc:
                raise ArtifactoryError(
                    f"{exc} (the artifact {target} itself was deployed, without the properties {', '.join(sorted(later))})"
                ) from exc
        return item

    def deploy_tree(
        self, repo: str, prefix: str, directory: Path, properties: Mapping[str, str | list[str]]
    ) -> list[DeployedItem]:
        """Deploy every regular file under `directory` to repo/prefix/<relative path>, in a stable order."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ArtifactoryError(f"cannot deploy {directory}: not a directory")
        prefix = prefix.strip("/")
        files: list[Path] = []
        for root, dirs, names in os.walk(directory):  # symlinked directories are not followed
            dirs.sort()
            files.extend(Path(root) / name for name in sorted(names) if (Path(root) / name).is_file())
        deployed = []
        for file in files:
            relative = file.relative_to(directory).as_posix()
            deployed.append(self.deploy(repo, f"{prefix}/{relative}" if prefix else relative, file, properties))
        return deployed

    # -- properties ---------------------------------------------------------------

    def set_properties(
        self, repo: str, path: str, properties: Mapping[str, str | list[str]], recursive: bool = True
    ) -> None:
        """PUT api/storage/{repo}/{path}?properties=k=v1,v2;k2=v3&recursive=1 (recursive matters for folders only)."""
        repo, path = _check_repo(repo), _check_path(path)
        props = _normalize_properties(properties)
        if not props:
            return
        encoded = ";".join(f"{k}={','.join(_escape_set_value(v) for v in values)}" for k, values in props.items())
        url = f"{self._storage_url(repo, path)}?properties={encoded}&recursive={1 if recursive else 0}"
        self._send("PUT", url, action="set properties on", target=f"{repo}/{path}", repo=repo, ok=(200, 201, 204))

    def get_properties(self, repo: str, path: str) -> dict[str, list[str]]:
        """GET api/storage/{repo}/{path}?properties; {} when the item has none or does not exist (both are 404)."""
        repo, path = _check_repo(repo), _check_path(path)
        resp = self._send(
            "GET",
            f"{self._storage_url(repo, path)}?properties",
            action="read properties of",
            target=f"{repo}/{path}",
            repo=repo,
            passthrough=(404,),
        )
        if resp.status_code == 404:
            return {}
        body = self._json(resp, "read properties of", f"{repo}/{path}")
        props = body.get("properties") or {}
        if not isinstance(props, dict):
            raise self._protocol_error("read properties of", f"{repo}/{path}", "'properties' is not an object")
        return {str(k): [str(v) for v in (vs if isinstance(vs, list) else [vs])] for k, vs in props.items()}

    def delete_properties(self, repo: str, path: str, names: Iterable[str], recursive: bool = True) -> None:
        """DELETE api/storage/{repo}/{path}?properties=a,b&recursive=1."""
        repo, path = _check_repo(repo), _check_path(path)
        names = [_check_key(n) for n in names]
        if not names:
            return
        url = f"{self._storage_url(repo, path)}?properties={','.join(names)}&recursive={1 if recursive else 0}"
        self._send("DELETE", url, action="delete properties of", target=f"{repo}/{path}", repo=repo, ok=(200, 204))

    # -- search -------------------------------------------------------------------

    def find(self, criteria: Mapping, include: Iterable[str] = DEFAULT_INCLUDE) -> list[FoundItem]:
        """Run items.find(<criteria>).include(<fields>) and return the items found."""
        if not isinstance(criteria, Mapping):
            raise ArtifactoryError("AQL criteria must be a mapping (a JSON object)")
        fields = list(include)
        if not fields or not all(isinstance(f, str) and f for f in fields):
            raise ArtifactoryError("AQL include fields must be non-empty strings")
        query = f"items.find({json.dumps(dict(criteria), separators=(',', ':'))})"
        query += ".include(" + ",".join(json.dumps(f) for f in fields) + ")"
        resp = self._send(
            "POST",
            f"{self.url}/api/search/aql",
            action="search (AQL)",
            target=query,
            headers={"Content-Type": "text/plain"},
            body=query.encode("utf-8"),
        )
        body = self._json(resp, "search (AQL)", query)
        notice = (body.get("range") or {}).get("notification")
        if notice:
            # Partial results would make a clean-up miss items silently.
            raise ArtifactoryError(
                f"Artifactory {self.url}: AQL search {query} was cut short ({notice}); narrow the criteria"
            )
        results = body.get("results")
        if not isinstance(results, list):
            raise self._protocol_error("search (AQL)", query, "no 'results' list in the answer")
        return [_found_item(row) for row in results if isinstance(row, dict)]

    def find_builds(
        self,
        repo: str,
        *,
        branch: str | None = None,
        keep: bool | str | None = None,
        older_than: datetime | None = None,
    ) -> list[FoundItem]:
        """Files in `repo` by branch (wildcards * and ? allowed), keep flag and creation time."""
        clauses: list[dict] = [{"repo": {"$eq": _check_repo(repo)}}]
        if branch is not None:
            # Git refuses '*' and '?' in branch names, so they can only mean a pattern.
            clauses.append({f"@{PROP_BRANCH}": {"$match" if any(c in branch for c in "*?") else "$eq": branch}})
        if keep is not None:
            clauses.append({f"@{PROP_KEEP}": {"$eq": _keep_value(keep)}})
        if older_than is not None:
            clauses.append({"created": {"$lt": aql_time(older_than)}})
        return self.find({"$and": clauses})

    # -- delete -------------------------------------------------------------------

    def delete(self, repo: str, path: str) -> None:
        """DELETE {url}/{repo}/{path}; an item already gone is not an error."""
        repo, path = _check_repo(repo), _check_path(path)
        self._send(
            "DELETE",
            self._item_url(repo, path),
            action="delete",
            target=f"{repo}/{path}",
            repo=repo,
            ok=(200, 202, 204),
            passthrough=(404,),
        )

    # -- plumbing -----------------------------------------------------------------

    def _item_url(self, repo: str, path: str) -> str:
        return f"{self.url}/{quote(repo, safe='')}/{quote(path, safe='/')}"

    def _storage_url(self, repo: str, path: str) -> str:
        return f"{self.url}/api/storage/{quote(repo, safe='')}/{quote(path, safe='/')}"

    def _send(
        self,
        method: str,
        url: str,
        *,
        action: str,
        target: str,
        repo: str | None = None,
        headers: dict | None = None,
        body: bytes | None = None,
        body_file: Path | None = None,
        ok: tuple[int, ...] = (200,),
        passthrough: tuple[int, ...] = (),
    ) -> requests.Response:
        """One request with retries on connection errors, 429 and 5xx; other failures become one ArtifactoryError line."""
        import requests  # loaded with the session

        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                if body_file is not None:
                    # Reopened on every attempt: a retried upload starts from the first byte again.
                    with open(body_file, "rb") as stream:
                        size = os.fstat(stream.fileno()).st_size
                        # requests streams a file object (never reads it whole); an empty one would
                        # go out chunked, so empty content is sent as b"" with Content-Length: 0.
                        resp = self._session.request(
                            method,
                            url,
                            data=stream if size else b"",
                            headers=headers,
                            auth=self._auth,
                            timeout=self.timeout,
                            allow_redirects=False,
                        )
                else:
                    resp = self._session.request(
                        method,
                        url,
                        data=body,
                        headers=headers,
                        auth=self._auth,
                        timeout=self.timeout,
                        allow_redirects=False,
                    )
            except requests.exceptions.SSLError as exc:
                raise ArtifactoryError(
                    f"Artifactory {self.url}: TLS failed during {action} {target}: {_reason(exc)}; "
                    "check the server certificate, or pass the CA bundle that signed it"
                ) from None
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                if attempt < attempts:
                    time.sleep(self._delay(attempt, None))
                    continue
                raise ArtifactoryError(
                    f"cannot reach Artifactory at {self.url} ({action} {target}): {_reason(exc)} "
                    f"after {attempts} attempt{'s' if attempts > 1 else ''}; "
                    "check the URL, the network, and that the server is up"
                ) from None
            if resp.status_code in ok or resp.status_code in passthrough:
                return resp
            if resp.status_code in _RETRY_STATUSES and attempt < attempts:
                time.sleep(self._delay(attempt, resp.headers.get("Retry-After")))
                continue
            raise self._http_error(resp, action, target, repo, attempt)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff * (2 ** (attempt - 1))
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass  # an HTTP date: keep our own backoff
        return min(delay, 60.0)

    def _http_error(
        self, resp: requests.Response, action: str, target: str, repo: str | None, attempts: int
    ) -> ArtifactoryError:
        status = resp.status_code
        detail = _server_message(resp, self.auth.secrets())
        where = f"repository '{repo}'" if repo else "this server"
        permission = {
            "deploy": "deploy (and annotate, for properties)",
            "set properties on": "annotate",
            "delete properties of": "annotate",
            "delete": "delete",
        }.get(action, "read")
        if status == 401:
            hint = f"check {ENV_TOKEN}, or {ENV_USER} and {ENV_PASSWORD}"
        elif status == 403:
            hint = f"the user needs the '{permission}' permission on {where}"
        elif status == 404:
            hint = f"check that {where} exists and that the URL includes the context path (…/artifactory)"
        elif status == 409:
            hint = (
                "the checksums sent do not match the content received (did the file change during the upload?), "
                "or the path is taken"
                if action == "deploy"
                else "the item is in a state that refuses this"
            )
        elif status == 400 and action == "search (AQL)":
            hint = "check the AQL criteria and include fields against the AQL documentation"
        elif status in (400, 405, 411, 415):
            hint = "the server refused the request's form; report it as a bug in ccp's Artifactory client"
        elif 300 <= status < 400:
            hint = f"the server redirects to {resp.headers.get('Location', '?')}; configure that URL instead"
        elif status in _RETRY_STATUSES:
            hint = "the server is failing or overloaded; try again later"
        else:
            hint = "see the server's log"
        text = f"Artifactory {self.url}: {action} {_short(target)} failed: HTTP {status}"
        if detail:
            text += f" ({detail})"
        if attempts > 1:
            text += f" after {attempts} attempts"
        return ArtifactoryError(f"{text}; {hint}")

    def _json(self, resp: requests.Response, action: str, target: str) -> dict:
        try:
            body = resp.json()
        except ValueError as exc:
            raise self._protocol_error(action, target, "the answer is not JSON") from exc
        if not isinstance(body, dict):
            raise self._protocol_error(action, target, "the answer is not a JSON object")
        return body

    def _protocol_error(self, action: str, target: str, what: str) -> ArtifactoryError:
        return ArtifactoryError(
            f"Artifactory {self.url}: {action} {_short(target)}: {what}; "
            "check that the URL points at Artifactory including its context path (…/artifactory)"
        )

    def _deployed_item(
        self, resp: requests.Response, repo: str, path: str, sums: dict[str, str], size: int, checksum_deployed: bool
    ) -> DeployedItem:
        body = self._json(resp, "deploy", f"{repo}/{path}")
        stored = body.get("checksums") or {}
        for kind in ("sha256", "sha1", "md5"):
            # The server says what it stored; anything but what we hashed means a broken transfer.
            if stored.get(kind) and str(stored[kind]).lower() != sums[kind]:
                raise ArtifactoryError(
                    f"Artifactory {self.url}: deploy {repo}/{path}: the server stored {kind} {stored[kind]} "
                    f"but the file has {sums[kind]}; deploy it again"
                )
        return DeployedItem(
            repo=repo,
            path=path,
            size=_int(body.get("size"), size),
            sha1=sums["sha1"],
            sha256=sums["sha256"],
            md5=sums["md5"],
            created=parse_time(body.get("created")),
            download_uri=str(body.get("downloadUri") or self._item_url(repo, path)),
            checksum_deployed=checksum_deployed,
        )


# -- helpers ----------------------------------------------------------------------


def artifactory_client(cfg: PipelineConfig) -> Artifactory:
    """The client for ccp.yaml's `artifactory` section, credentials from the
    environment (CCP_ARTIFACTORY_*); the one way `doit artifacts` and
    retention reach Artifactory."""
    settings = cfg.artifactory
    if not settings.url:
        raise CcpError("no Artifactory is configured: set artifactory.url in ccp.yaml (or ccp.local.yaml)")
    return Artifactory(
        settings.url,
        ArtifactoryAuth.from_env(),
        ca_bundle=str(cfg.root / settings.ca_bundle) if settings.ca_bundle else None,
    )


def aql_time(moment: datetime) -> str:
    """An aware datetime as AQL takes it (ISO 8601, UTC, milliseconds)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ArtifactoryError(f"a time for AQL needs a time zone, got the naive {moment.isoformat()}")
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_time(value: object) -> datetime | None:
    """Artifactory's ISO 8601 times ("2024-05-01T10:00:00.123Z", "+02:00" offsets); None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    text = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", text)  # +0200 -> +02:00
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _check_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ArtifactoryError(
            f"Artifactory URL {url!r} must be http(s)://host[:port]/<context path>, e.g. https://host/artifactory"
        )
    if parts.username or parts.password:
        # Credentials in a URL end up in logs and error messages.
        raise ArtifactoryError(
            f"Artifactory URL must not contain credentials; set {ENV_TOKEN} or {ENV_USER}/{ENV_PASSWORD} instead"
        )
    if parts.query or parts.fragment:
        raise ArtifactoryError(
            f"Artifactory URL {parts.scheme}://{parts.netloc}{parts.path} must not have a query or fragment"
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _check_repo(repo: str) -> str:
    if not isinstance(repo, str) or not _REPO_RE.match(repo):
        raise ArtifactoryError(f"invalid Artifactory repository key {repo!r} (letters, digits, '.', '_' and '-')")
    return repo


def _check_path(path: str) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise ArtifactoryError(f"invalid path in repository {path!r}: a relative path with '/' separators")
    segments = path.rstrip("/").split("/")
    if any(s in ("", ".", "..") for s in segments) or any(ord(c) < 32 or c == "\x7f" for c in path):
        raise ArtifactoryError(
            f"invalid path in repository {path!r}: no empty, '.' or '..' parts, no control characters"
        )
    return "/".join(segments)


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ArtifactoryError(
            f"invalid property name {key!r}: use ASCII letters, digits, '_', '.', ':' and '-' "
            "(Artifactory forbids most punctuation and blanks in names)"
        )
    return key


def _check_value(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ArtifactoryError(f"property {key!r}: values must be strings, got {type(value).__name__}")
    if not value:
        raise ArtifactoryError(f"property {key!r}: empty values cannot be told apart from 'no value' and are refused")
    if value != value.strip():
        raise ArtifactoryError(
            f"property {key!r}: value {value!r} has leading or trailing blanks, which Artifactory trims"
        )
    if "\\" in value:
        raise ArtifactoryError(
            f"property {key!r}: value {value!r} has a backslash, whose escaping differs between Artifactory versions; "
            "use another character"
        )
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise ArtifactoryError(f"property {key!r}: value {value!r} has a control character")
    return value


def _normalize_properties(properties: Mapping[str, str | list[str]]) -> dict[str, list[str]]:
    if not isinstance(properties, Mapping):
        raise ArtifactoryError("properties must be a mapping of name -> value or list of values")
    normalized: dict[str, list[str]] = {}
    for key, values in properties.items():
        _check_key(key)
        values = [values] if isinstance(values, str) else list(values)
        if not values:
            raise ArtifactoryError(f"property {key!r} has no value")
        checked = [_check_value(key, v) for v in values]
        normalized[key] = list(dict.fromkeys(checked))  # Artifactory keeps a set per key
    return normalized


def _escape_set_value(value: str) -> str:
    # "To supply special characters (comma, backslash, pipe, equals) as key/value you must add
    # an encoded backslash (%5C) before them"; ';' too, since it separates properties.
    for ch in _SET_ESCAPED:
        value = value.replace(ch, "\\" + ch)
    return quote(value, safe="")


def _keep_value(keep: bool | str) -> str:
    if isinstance(keep, bool):
        return "true" if keep else "false"
    return _check_value(PROP_KEEP, keep)


def _checksums(file: Path) -> tuple[dict[str, str], int]:
    sha1, sha256, md5 = hashlib.sha1(), hashlib.sha256(), hashlib.md5()
    size = 0
    with open(file, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            sha1.update(chunk)
            sha256.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return {"sha1": sha1.hexdigest(), "sha256": sha256.hexdigest(), "md5": md5.hexdigest()}, size


def _found_item(row: dict) -> FoundItem:
    properties: dict[str, list[str]] = {}
    for prop in row.get("properties") or []:
        if isinstance(prop, dict) and "key" in prop:
            properties.setdefault(str(prop["key"]), []).append(str(prop.get("value", "")))
    return FoundItem(
        repo=str(row.get("repo", "")),
        path=str(row.get("path", "")),
        name=str(row.get("name", "")),
        created=parse_time(row.get("created")),
        size=_int(row.get("size"), None),
        sha256=row.get("sha256") or None,
        properties=properties,
    )


_Default = TypeVar("_Default")


def _int(value: Any, default: _Default) -> int | _Default:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _server_message(resp: requests.Response, secrets: tuple[str, ...]) -> str:
    """The server's own words: errors[0].message of Artifactory's error JSON, else the body's first line."""
    message = ""
    try:
        body = resp.json()
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            message = str(errors[0].get("message") or "")
    except ValueError:
        message = resp.text
    return _excerpt(message or resp.reason or "", secrets)


def _excerpt(text: str, secrets: tuple[str, ...]) -> str:
    line = " ".join(str(text).split())
    for secret in secrets:
        line = line.replace(secret, "***")
    return line if len(line) <= 200 else line[:197] + "..."


def _short(target: str) -> str:
    return target if len(target) <= 160 else target[:157] + "..."


def _reason(exc: Exception) -> str:
    """The root cause of a requests error in a few words ("[Errno 111] Connection refused")."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if found:
        return found.group(0).strip()
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "the server closed the connection without answering"
    import requests  # loaded already: `exc` is one of its errors

    if isinstance(exc, requests.Timeout):
        return "timed out"
    return type(exc).__name__
