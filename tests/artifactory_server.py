"""A local stand-in for the part of Artifactory's REST API that ccp_tasks.publish.artifactory uses.

No Artifactory can run where these tests run, so this server plays one over
real HTTP (http.server in a thread) and checks every request the way JFrog's
pages describe (their URLs are in ccp_tasks/publish/artifactory.py), keeping a small
in-memory store:

- context path /artifactory; Basic and Bearer authentication, 401 with
  Artifactory's error body {"errors": [{"status": 401, "message": ...}]};
- GET api/system/ping -> "OK";
- PUT {repo}/{path};k=v;k2=v1,v2 (Deploy Artifact): matrix parameters parsed
  like the docs (';' between parameters, ',' between values, values
  URL-decoded), X-Checksum-Sha1/-Sha256/-Md5/X-Checksum checked against the
  body (409 on a mismatch), X-Checksum-Deploy: true answered from known
  content or 404;
- GET/DELETE {repo}/{path} (Retrieve Artifact, Delete Item);
- GET/PUT/DELETE api/storage/{repo}/{path}?properties... (Item Properties),
  with the documented backslash escapes and recursion on folders;
- POST api/search/aql: only text/plain (415 otherwise), items.find(...) with
  $and/$or, $eq/$ne/$match/$nmatch (* and ?)/$lt/$lte/$gt/$gte on item fields
  and "@key" properties, and .include(...) of the documented fields (anything
  else is a 400, like a syntax error on the real server).

Where the docs leave a question open and Artifactory versions differ, this
server refuses with 400 and a message starting "test server:", so that a client
passing these tests is proven to stay out of the gray zone: a matrix parameter
given twice, a URL-decoded matrix value holding ',' or '\\', a '%' in a matrix
parameter name, and a backslash in a Set Item Properties value that does not
escape one of , = | ;. It also refuses chunked request bodies (411), which
the client never needs. Faults can be injected: N answers with a status (500,
503, 429 + Retry-After), or N dropped connections (the body is read, then the
socket is closed without an answer).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

CONTEXT = "/artifactory"
# Set Item Properties: "The following special characters are forbidden in the key field".
KEY_FORBIDDEN = set(")(}{][*+^$\\/~`!@#%&<>;=,±§ ")
ITEM_FIELDS = {
    "repo": "string",
    "path": "string",
    "name": "string",
    "type": "string",
    "size": "int",
    "depth": "int",
    "created": "date",
    "modified": "date",
    "updated": "date",
    "created_by": "string",
    "modified_by": "string",
    "original_md5": "string",
    "actual_md5": "string",
    "original_sha1": "string",
    "actual_sha1": "string",
    "sha256": "string",
}
DEFAULT_OUTPUT = ["repo", "path", "name", "type", "size", "created", "created_by", "modified", "modified_by", "updated"]
OPERATORS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$match", "$nmatch"}
ALL_PERMISSIONS = frozenset({"read", "deploy", "annotate", "delete"})


class RequestError(Exception):
    def __init__(self, status: int, message: str, json_body: bool = True, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.json_body = json_body
        self.headers = headers or {}


@dataclass
class Item:
    sha1: str
    sha256: str
    md5: str
    size: int
    created: datetime
    created_by: str
    properties: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Recorded:
    method: str
    target: str  # the raw request target, as sent
    headers: dict[str, str]  # Authorization shown as its scheme only
    body: bytes
    status: int | None = None  # None: the connection was dropped


@dataclass
class _Fault:
    kind: str  # "status" | "drop"
    remaining: int
    status: int = 500
    method: str | None = None
    path_contains: str | None = None
    retry_after: str | None = None
    with_body: bool | None = None  # True: only requests with a body, False: only without


def iso(moment: datetime) -> str:
    """Joda's ISODateTimeFormat.dateTime() in UTC, as AQL and the deploy answer print dates."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def strict_unquote(text: str, plus_is_space: bool = False) -> str:
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise RequestError(400, f"malformed percent-encoding in {text!r}")
    if plus_is_space:
        text = text.replace("+", " ")
    return unquote(text, errors="strict")


class ArtifactoryServer:
    """Start with `with ArtifactoryServer() as server:`; `server.url` is the base URL with the context path."""

    def __init__(
        self,
        *,
        repos: tuple[str, ...] = ("ci-generic",),
        users: dict[str, str] | None = None,
        tokens: dict[str, str] | None = None,
        permissions: dict[str, set[str]] | None = None,
        anonymous: bool = False,
    ):
        self.repos = set(repos)
        self.users = {"ci": "s3cret-pass"} if users is None else dict(users)
        self.tokens = {"tok-0123456789": "ci"} if tokens is None else dict(tokens)  # token -> user
        self.permissions = permissions or {}
        self.anonymous = anonymous
        self.items: dict[tuple[str, str], Item] = {}
        self.folder_properties: dict[tuple[str, str], dict[str, list[str]]] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> content
        self.sha1_index: dict[str, str] = {}  # sha1 -> sha256
        self.requests: list[Recorded] = []
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> ArtifactoryServer:
        server = self

        class Handler(_Handler):
            state = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="artifactory-test-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ArtifactoryServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{CONTEXT}"

    # -- test controls ----------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        status: int = 500,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        with self._lock:
            self._faults.append(_Fault("status", count, status, method, path_contains, retry_after))

    def drop_next(
        self, count: int, *, method: str | None = None, path_contains: str | None = None, with_body: bool | None = None
    ) -> None:
        with self._lock:
            self._faults.append(_Fault("drop", count, method=method, path_contains=path_contains, with_body=with_body))

    def set_created(self, repo: str, path: str, when: datetime) -> None:
        with self._lock:
            self.items[(repo, path)].created = when

    def content(self, repo: str, path: str) -> bytes:
        return self.blobs[self.items[(repo, path)].sha256]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def _take_fault(self, method: str, target: str, has_body: bool) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if (
                    fault.remaining > 0
                    and (fault.method in (None, method))
                    and (fault.path_contains is None or fault.path_contains in target)
                    and fault.with_body in (None, has_body)
                ):
                    fault.remaining -= 1
                    return fault
        return None

    # -- the store ----------------------------------------------------------------------

    def _is_folder(self, repo: str, path: str) -> bool:
        prefix = path + "/" if path else ""
        return any(r == repo and p.startswith(prefix) for r, p in self.items) or (repo, path) in self.folder_properties

    def _files_under(self, repo: str, path: str) -> list[tuple[str, str]]:
        prefix = path + "/"
        return [(r, p) for r, p in self.items if r == repo and p.startswith(prefix)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes; don't wait for an ACK between them
    state: ArtifactoryServer  # set by ArtifactoryServer.start
    server_version = "Artifactory-test/6"

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet tests
        pass

    def do_GET(self):
        self._handle("GET")

    def do_PUT(self):
        self._handle("PUT")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    # -- framing --------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        body = b""
        record = Recorded(method, self.path, self._safe_headers(), b"")
        with self.state._lock:
            self.state.requests.append(record)
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self.close_connection = True
                raise RequestError(411, "test server: send a Content-Length, not a chunked body")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            record.body = body
            fault = self.state._take_fault(method, self.path, bool(body))
            if fault and fault.kind == "drop":
                self.close_connection = True  # nothing written: the client sees the connection closed
                return
            if fault:
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                raise RequestError(fault.status, f"injected fault {fault.status}", headers=headers)
            status, payload, content_type, headers = self._route(method, body)
        except RequestError as exc:
            status, headers = exc.status, exc.headers
            if exc.json_body:
                payload, content_type = (
                    json.dumps({"errors": [{"status": exc.status, "message": exc.message}]}, indent=2),
                    "application/json",
                )
            else:
                payload, content_type = exc.message, "text/plain"
        record.status = status
        data = payload if isinstance(payload, bytes) else payload.encode("utf-8")
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
        else:
            data = b""
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _safe_headers(self) -> dict[str, str]:
        headers = {k: v for k, v in self.headers.items()}
        for name in list(headers):
            if name.lower() == "authorization":
                headers[name] = headers[name].split(" ", 1)[0] + " ***"
        return headers

    def _route(self, method: str, body: bytes):
        raw_path, _, query = self.path.partition("?")
        if not (raw_path == CONTEXT or raw_path.startswith(CONTEXT + "/")):
            raise RequestError(404, "Not Found", json_body=False)
        rest = raw_path[len(CONTEXT) + 1 :]
        user = self._authenticate()
        if rest == "api/system/ping":
            if method != "GET":
                raise RequestError(405, "Method Not Allowed")
            return 200, "OK", "text/plain", {}
        if rest.startswith("api/storage/"):
            return self._storage(method, rest[len("api/storage/") :], query, user)
        if rest == "api/search/aql":
            if method != "POST":
                raise RequestError(405, "Method Not Allowed")
            return self._aql(body, user)
        if rest.startswith("api/"):
            raise RequestError(404, f"test server: no such API {rest!r}")
        if query:
            raise RequestError(400, "test server: no query string is expected on an item URL")
        if method == "PUT":
            return self._deploy(rest, body, user)
        if method == "GET":
            return self._download(rest, user)
        if method == "DELETE":
            return self._delete(rest, user)
        raise RequestError(405, "Method Not Allowed")

    # -- security -------------------------------------------------------------------------

    def _authenticate(self) -> str | None:
        header = self.headers.get("Authorization")
        challenge = {"WWW-Authenticate": 'Basic realm="Artifactory Realm"'}
        if not header:
            if self.state.anonymous:
                return None
            raise RequestError(401, "Authentication is required", headers=challenge)
        scheme, _, credentials = header.partition(" ")
        if scheme == "Basic":
            try:
                user, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                raise RequestError(401, "Bad credentials", headers=challenge) from None
            if self.state.users.get(user) == password and user:
                return user
        elif scheme == "Bearer":
            user = self.state.tokens.get(credentials)
            if user:
                return user
        raise RequestError(401, "Bad credentials", headers=challenge)

    def _require(self, user: str | None, permission: str, what: str) -> None:
        granted = (
            ALL_PERMISSIONS
            if user is None and self.state.anonymous
            else self.state.permissions.get(user, ALL_PERMISSIONS)
        )
        if permission not in granted:
            raise RequestError(403, f"User {user or 'anonymous'} is not permitted to {permission} '{what}'.")

    # -- items ------------------------------------------------------------------------------

    def _split_item_path(self, rest: str, allow_matrix: bool) -> tuple[str, str, dict[str, list[str]]]:
        """repo, path and matrix parameters of `rest`, the raw path after the context path."""
        props: dict[str, list[str]] = {}
        names = []
        for segment in rest.split("/"):
            name, *params = segment.split(";")
            if params and not allow_matrix:
                raise RequestError(400, "test server: matrix parameters are only expected on a deploy")
            names.append(strict_unquote(name))
            for param in params:
                key, eq, raw_value = param.partition("=")
                if not key:
                    continue  # "no key declared, ignore" (ArtifactoryRequestBase.processMatrixParams)
                if "%" in key:
                    raise RequestError(
                        400,
                        f"test server: matrix parameter name {key!r} is percent-encoded; "
                        "Artifactory 6.20 does not decode names",
                    )
                if KEY_FORBIDDEN & set(key):
                    raise RequestError(400, f"Property key: {key} is invalid due to forbidden characters")
                if key in props:
                    raise RequestError(
                        400,
                        f"test server: matrix parameter {key!r} given twice; the docs define "
                        "',' for several values, and servers differ on repeated keys",
                    )
                values = []
                # Docs: "All matrix parameters can support multiple values by separating values with a comma".
                for part in raw_value.split(",") if eq else [""]:
                    value = strict_unquote(part)
                    if "," in value or "\\" in value:
                        raise RequestError(
                            400,
                            f"test server: matrix value {value!r} holds ',' or '\\' once decoded; "
                            "whether that splits or escapes differs between Artifactory versions",
                        )
                    values.append(value)
                props[key] = values
        if not names or not names[0]:
            raise RequestError(400, "no repository key in the path")
        repo, path = names[0], "/".join(names[1:])
        if repo not in self.state.repos:
            raise RequestError(404, f"Repository '{repo}' not found")
        return repo, path, props

    def _deploy(self, rest: str, body: bytes, user: str | None):
        repo, path, props = self._split_item_path(rest, allow_matrix=True)
        if not path or path.endswith("/") or "" in path.split("/"):
            raise RequestError(400, "test server: deploy needs a file path (folders are not created explicitly)")
        self._require(user, "deploy", f"{repo}:{path}")
        headers = {k.lower(): v.strip() for k, v in self.headers.items()}
        given = {
            "sha1": headers.get("x-checksum-sha1"),
            "sha256": headers.get("x-checksum-sha256"),
            "md5": headers.get("x-checksum-md5"),
        }
        generic = headers.get("x-checksum")
        if generic:
            kind = {32: "md5", 40: "sha1", 64: "sha256"}.get(len(generic))
            if not kind:
                raise RequestError(400, f"X-Checksum value of unknown length {len(generic)}")
            given[kind] = given[kind] or generic
        with self.state._lock:
            parent = path.rsplit("/", 1)[0] if "/" in path else ""
            if self.state._is_folder(repo, path):
                raise RequestError(409, f"'{repo}:{path}' is a folder")
            while parent:
                if (repo, parent) in self.state.items:
                    raise RequestError(409, f"'{repo}:{parent}' is a file, not a folder")
                parent = parent.rsplit("/", 1)[0] if "/" in parent else ""
            if headers.get("x-checksum-deploy", "").lower() == "true":
                # Deploy Artifact by Checksum: copy known content, else 404 "content upload is expected".
                sha256 = given["sha256"]
                if not sha256 and given["sha1"]:
                    sha256 = self.state.sha1_index.get(given["sha1"].lower())
                if not (given["sha256"] or given["sha1"]):
                    raise RequestError(
                        404, "Checksum deploy failed. no checksum header 'X-Checksum-Sha1/X-Checksum-Sha256' was found."
                    )
                content = self.state.blobs.get((sha256 or "").lower())
                if content is None:
                    raise RequestError(
                        404,
                        f"Checksum deploy failed. Unable to find content for the given checksum in '{repo}:{path}'.",
                    )
                if given["sha1"] and hashlib.sha1(content).hexdigest() != given["sha1"].lower():
                    raise RequestError(
                        409, "Checksum deploy failed: the SHA-1 and SHA-256 headers name different content"
                    )
            else:
                content = body
                actual = {
                    "sha1": hashlib.sha1(content).hexdigest(),
                    "sha256": hashlib.sha256(content).hexdigest(),
                    "md5": hashlib.md5(content).hexdigest(),
                }
                for kind, value in given.items():
                    # "Artifactory rejects the deployment if the checksums do not match."
                    if value and value.lower() != actual[kind]:
                        raise RequestError(
                            409,
                            f"Checksum error for '{repo}:{path}': received '{value}' but actual is '{actual[kind]}'",
                        )
            sha256 = hashlib.sha256(content).hexdigest()
            sha1 = hashlib.sha1(content).hexdigest()
            self.state.blobs[sha256] = content
            self.state.sha1_index[sha1] = sha256
            granted = self.state.permissions.get(user, ALL_PERMISSIONS)
            item = Item(
                sha1=sha1,
                sha256=sha256,
                md5=hashlib.md5(content).hexdigest(),
                size=len(content),
                created=datetime.now(UTC),
                created_by=user or "anonymous",
                # 6.20 drops (with a warning) properties a user may not annotate.
                properties=props if "annotate" in granted else {},
            )
            self.state.items[(repo, path)] = item
        base = f"http://{self.headers.get('Host')}{CONTEXT}"
        answer = {
            "repo": repo,
            "path": "/" + path,
            "created": iso(item.created),
            "createdBy": item.created_by,
            "downloadUri": f"{base}/{repo}/{path}",
            "mimeType": "application/octet-stream",
            "size": str(item.size),
            "checksums": {"sha1": item.sha1, "md5": item.md5, "sha256": item.sha256},
            "originalChecksums": {"sha1": item.sha1, "md5": item.md5, "sha256": item.sha256},
            "uri": f"{base}/{repo}/{path}",
        }
        return 201, json.dumps(answer, indent=2), "application/json", {}

    def _download(self, rest: str, user: str | None):
        repo, path, _ = self._split_item_path(rest, allow_matrix=False)
        self._require(user, "read", f"{repo}:{path}")
        with self.state._lock:
            item = self.state.items.get((repo, path))
            if item is None:
                raise RequestError(404, "File not found.")
            return 200, self.state.blobs[item.sha256], "application/octet-stream", {}

    def _delete(self, rest: str, user: str | None):
        repo, path, _ = self._split_item_path(rest, allow_matrix=False)
        self._require(user, "delete", f"{repo}:{path}")
        with self.state._lock:
            if (repo, path) in self.state.items:
                del self.state.items[(repo, path)]
            elif path and self.state._is_folder(repo, path):
                for key in self.state._files_under(repo, path):
                    del self.state.items[key]
                for key in [
                    k
                    for k in self.state.folder_properties
                    if k[0] == repo and (k[1] == path or k[1].startswith(path + "/"))
                ]:
                    del self.state.folder_properties[key]
            else:
                raise RequestError(404, f"Could not locate artifact '{repo}:{path}'.")
        return 204, "", "text/plain", {}

    # -- item properties -----------------------------------------------------------------------

    def _storage(self, method: str, rest: str, query: str, user: str | None):
        repo, path, _ = self._split_item_path(rest, allow_matrix=False)
        params: dict[str, str | None] = {}
        for part in query.split("&") if query else []:
            name, eq, value = part.partition("=")
            params[name] = value if eq else None
        if "properties" not in params:
            raise RequestError(400, "test server: only the ?properties form of api/storage is implemented")
        recursive = params.get("recursive")
        if recursive not in (None, "0", "1"):
            raise RequestError(400, f"recursive must be 0 or 1, got {recursive!r}")
        recursive_flag = recursive != "0"  # "When a folder is used property attachment is recursive by default"
        with self.state._lock:
            is_file = (repo, path) in self.state.items
            if not is_file and not (path and self.state._is_folder(repo, path)):
                raise RequestError(404, f"Unable to find item '{repo}:{path}'")
            if is_file:
                targets = [self.state.items[(repo, path)].properties]
            elif method == "GET":
                targets = [self.state.folder_properties.get((repo, path), {})]
            else:
                targets = [self.state.folder_properties.setdefault((repo, path), {})]
            if not is_file and recursive_flag and method in ("PUT", "DELETE"):
                targets += [self.state.items[key].properties for key in self.state._files_under(repo, path)]
            if method == "GET":
                self._require(user, "read", f"{repo}:{path}")
                wanted = strict_unquote(params["properties"]).split(",") if params["properties"] else None
                props = {k: v for k, v in targets[0].items() if wanted is None or k in wanted}
                if not props:
                    raise RequestError(404, "No properties could be found.")
                base = f"http://{self.headers.get('Host')}{CONTEXT}"
                answer = {"properties": props, "uri": f"{base}/api/storage/{repo}/{path}"}
                return (
                    200,
                    json.dumps(answer, indent=2),
                    "application/vnd.org.jfrog.artifactory.storage.ItemProperties+json",
                    {},
                )
            self._require(user, "annotate", f"{repo}:{path}")
            if method == "PUT":
                props = parse_set_properties(params["properties"] or "")
                for target in targets:
                    target.update({k: list(v) for k, v in props.items()})
                return 204, "", "text/plain", {}
            if method == "DELETE":
                names = [strict_unquote(n, plus_is_space=True) for n in (params["properties"] or "").split(",") if n]
                if not names:
                    raise RequestError(400, "no property names given")
                for target in targets:
                    for name in names:
                        target.pop(name, None)
                return 204, "", "text/plain", {}
        raise RequestError(405, "Method Not Allowed")

    # -- AQL --------------------------------------------------------------------------------

    def _aql(self, body: bytes, user: str | None):
        if user is None:
            raise RequestError(403, "Only non-anonymous users are allowed to access AQL queries")
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "text/plain":
            # AqlResource is @Consumes(text/plain): JAX-RS answers 415 to anything else.
            raise RequestError(
                415, f"Unsupported Media Type: {content_type or 'none'} (AQL consumes text/plain)", json_body=False
            )
        try:
            query = parse_aql(body.decode("utf-8"))
        except RequestError:
            raise
        except Exception as exc:  # a parse error on the real server is a 400 with text
            raise RequestError(400, f"Failed to parse query: {exc}", json_body=False) from None
        with self.state._lock:
            rows = []
            for (repo, path), item in sorted(self.state.items.items()):
                record = item_record(repo, path, item)
                if query.criteria_match(record, item.properties):
                    row = query.output(record, item.properties)
                    if row is not None:
                        rows.append(row)
        answer = {"results": rows, "range": {"start_pos": 0, "end_pos": len(rows), "total": len(rows)}}
        return 200, json.dumps(answer, indent=2), "application/json", {}


def parse_set_properties(raw: str) -> dict[str, list[str]]:
    """Set Item Properties' `properties` parameter: k=v1,v2;k2=v3 with backslash escapes, like KeyValueList."""
    decoded = strict_unquote(raw, plus_is_space=True)  # JAX-RS decodes query parameters
    for match in re.finditer(r"\\(.?)", decoded):
        if match.group(1) not in (",", "=", "|", ";"):
            raise RequestError(
                400,
                "test server: a backslash that does not escape one of , = | ; "
                "is stored differently by different Artifactory versions",
            )
    props: dict[str, list[str]] = {}
    for entry in re.split(r"(?<!\\)[|;]", decoded):
        if not entry.strip():
            continue
        key, *rest = re.split(r"(?<!\\)=", entry, maxsplit=1)
        key = _unescape(key)
        if not key or KEY_FORBIDDEN & set(key):
            raise RequestError(400, f"Property key: {key!r} is invalid")
        values = [_unescape(v) for v in re.split(r"(?<!\\),", rest[0])] if rest else [""]
        props[key] = list(dict.fromkeys(values))
    if not props:
        raise RequestError(400, "no properties given")
    return props


def _unescape(text: str) -> str:
    return re.sub(r"\\([,=|;])", r"\1", text)


def item_record(repo: str, path: str, item: Item) -> dict:
    folder, _, name = path.rpartition("/")
    return {
        "repo": repo,
        "path": folder or ".",
        "name": name,
        "type": "file",
        "size": item.size,
        "depth": path.count("/") + 1,
        "created": item.created,
        "modified": item.created,
        "updated": item.created,
        "created_by": item.created_by,
        "modified_by": item.created_by,
        "original_md5": item.md5,
        "actual_md5": item.md5,
        "original_sha1": item.sha1,
        "actual_sha1": item.sha1,
        "sha256": item.sha256,
    }


# -- the AQL subset ---------------------------------------------------------------------------


class _Obj(list):
    """A JSON object of an AQL query, kept as its (key, value) pairs: AQL may repeat a key."""


@dataclass
class AqlQuery:
    criteria: list  # the JSON objects given to find(), each an _Obj
    include: list[str] | None

    def criteria_match(self, record: dict, props: dict[str, list[str]]) -> bool:
        if not any(_has_field(c, "type") for c in self.criteria) and record["type"] != "file":
            return False  # "If type is not specified in the query, the default type searched for is file"
        return all(_match_object(c, record, props) for c in self.criteria)

    def output(self, record: dict, props: dict[str, list[str]]) -> dict | None:
        include = self.include or []
        item_fields = [f for f in include if f in ITEM_FIELDS]
        fields = item_fields or DEFAULT_OUTPUT
        row = {f: (iso(record[f]) if ITEM_FIELDS[f] == "date" else record[f]) for f in fields}
        wanted_keys: set[str] | None = None
        if any(f in ("property.*", "property", "property.key", "property.value") for f in include):
            wanted_keys = set(props)
        picked = [f[1:] for f in include if f.startswith("@")]
        if picked:
            # ".include will also filter out items that do not have this property"
            if not any(k in props for k in picked):
                return None
            wanted_keys = (wanted_keys or set()) | {k for k in picked if k in props}
        if wanted_keys is not None:
            row["properties"] = [{"key": k, "value": v} for k in sorted(wanted_keys) for v in props[k]]
        return row


def _has_field(obj: list, name: str) -> bool:
    for key, value in obj:
        if key == name:
            return True
        if key in ("$and", "$or") and any(isinstance(v, _Obj) and _has_field(v, name) for v in value):
            return True
    return False


def parse_aql(text: str) -> AqlQuery:
    position = 0
    text = text.strip()
    domain = re.match(r"(\w+(?:\.\w+)*)\.find\(", text)
    if not domain:
        raise RequestError(400, "Failed to parse query: expected <domain>.find(...)", json_body=False)
    if domain.group(1) != "items":
        raise RequestError(
            400, f"test server: only the items domain is implemented, not {domain.group(1)!r}", json_body=False
        )
    position = domain.end()
    decoder = json.JSONDecoder(object_pairs_hook=_Obj)
    criteria = []
    position = _skip_ws(text, position)
    if text[position : position + 1] != ")":
        while True:
            obj, position = decoder.raw_decode(text, _skip_ws(text, position))
            if not isinstance(obj, _Obj):
                raise RequestError(400, "Failed to parse query: criteria must be JSON objects", json_body=False)
            _check_criteria(obj)
            criteria.append(obj)
            position = _skip_ws(text, position)
            if text[position : position + 1] == ",":
                position += 1
                continue
            break
    if text[position : position + 1] != ")":
        raise RequestError(400, "Failed to parse query: expected ')' after the criteria", json_body=False)
    position += 1
    include = None
    while position < len(text):
        position = _skip_ws(text, position)
        if position >= len(text):
            break
        modifier = re.compile(r"\.(\w+)\(").match(text, position)
        if not modifier:
            raise RequestError(400, f"Failed to parse query near {text[position : position + 20]!r}", json_body=False)
        if modifier.group(1) != "include" or include is not None:
            raise RequestError(400, f"test server: .{modifier.group(1)}() is not implemented", json_body=False)
        position = modifier.end()
        include = []
        while True:
            field_name, position = json.JSONDecoder().raw_decode(text, _skip_ws(text, position))
            if not isinstance(field_name, str):
                raise RequestError(400, "Failed to parse query: include takes field names", json_body=False)
            if not (
                field_name in ITEM_FIELDS
                or field_name in ("property.*", "property", "property.key", "property.value")
                or (field_name.startswith("@") and len(field_name) > 1)
            ):
                raise RequestError(400, f"Failed to parse query: unknown include field {field_name!r}", json_body=False)
            include.append(field_name)
            position = _skip_ws(text, position)
            if text[position : position + 1] == ",":
                position += 1
                continue
            if text[position : position + 1] == ")":
                position += 1
                break
            raise RequestError(400, "Failed to parse query: expected ',' or ')' in include", json_body=False)
    return AqlQuery(criteria, include)


def _skip_ws(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _check_criteria(obj: list) -> None:
    for key, value in obj:
        if key in ("$and", "$or"):
            if (
                isinstance(value, _Obj)
                or not isinstance(value, list)
                or not value
                or not all(isinstance(v, _Obj) for v in value)
            ):
                raise RequestError(
                    400, f"Failed to parse query: {key} takes a non-empty list of objects", json_body=False
                )
            for sub in value:
                _check_criteria(sub)
            continue
        if key.startswith("$"):
            raise RequestError(
                400, f"Failed to parse query: unknown operator {key!r} at the criteria level", json_body=False
            )
        if key.startswith("@"):
            if key == "@*" or len(key) == 1:
                raise RequestError(400, "test server: the '@*' catch-all is not implemented", json_body=False)
            kind = "string"
        elif key in ITEM_FIELDS:
            kind = ITEM_FIELDS[key]
        else:
            raise RequestError(400, f"Failed to parse query: unknown field {key!r}", json_body=False)
        if isinstance(value, list) and not isinstance(value, _Obj):
            raise RequestError(
                400, f"Failed to parse query: {key!r} takes a value or an object of comparators", json_body=False
            )
        conditions = value if isinstance(value, _Obj) else [("$eq", value)]
        for operator, operand in conditions:
            if operator in ("$before", "$last"):
                raise RequestError(
                    400, f"test server: relative time operator {operator} is not implemented", json_body=False
                )
            if operator not in OPERATORS:
                raise RequestError(400, f"Failed to parse query: unknown comparator {operator!r}", json_body=False)
            if operator in ("$match", "$nmatch") and kind != "string":
                raise RequestError(
                    400, f"Failed to parse query: {operator} applies to strings, not to {key!r}", json_body=False
                )
            _operand(kind, operand)


def _operand(kind: str, operand):
    if kind == "date":
        if isinstance(operand, int) and not isinstance(operand, bool):
            return datetime.fromtimestamp(operand / 1000, UTC)
        if isinstance(operand, str):
            text = operand[:-1] + "+00:00" if operand.endswith("Z") else operand
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                pass
            else:
                return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        # AqlValue's own message:
        raise RequestError(
            400, f"Invalid Date format: {operand}, AQL expect ISODateTimeFormat or long number", json_body=False
        )
    if kind == "int":
        if isinstance(operand, bool):
            raise RequestError(400, f"Failed to parse query: {operand!r} is not a number", json_body=False)
        try:
            return int(operand)
        except (TypeError, ValueError):
            raise RequestError(400, f"Failed to parse query: {operand!r} is not a number", json_body=False) from None
    if not isinstance(operand, (str, int, float)) or isinstance(operand, bool):
        raise RequestError(400, f"Failed to parse query: {operand!r} is not a string", json_body=False)
    return str(operand)


def _wildcard(pattern: str) -> re.Pattern:
    # "the '*' wildcard replaces any string and the '?' wildcard replaces a single character"
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.S)


def _compare(operator: str, actual, operand) -> bool:
    if operator == "$eq":
        return actual == operand
    if operator == "$ne":
        return actual != operand
    if operator == "$match":
        return bool(_wildcard(operand).fullmatch(actual))
    if operator == "$nmatch":
        return not _wildcard(operand).fullmatch(actual)
    return {"$gt": actual > operand, "$gte": actual >= operand, "$lt": actual < operand, "$lte": actual <= operand}[
        operator
    ]


def _match_object(obj: list, record: dict, props: dict[str, list[str]]) -> bool:
    for key, value in obj:
        if key == "$and":
            ok = all(_match_object(sub, record, props) for sub in value)
        elif key == "$or":
            ok = any(_match_object(sub, record, props) for sub in value)
        else:
            conditions = value if isinstance(value, _Obj) else [("$eq", value)]
            if key.startswith("@"):
                values = props.get(key[1:], [])
                # An item matches when one of its values satisfies every condition (a join on
                # the property table); '*' as an $eq value means "any value" (the catch-all notation).
                ok = any(
                    all(
                        (op == "$eq" and operand == "*") or _compare(op, v, _operand("string", operand))
                        for op, operand in conditions
                    )
                    for v in values
                )
            else:
                kind = ITEM_FIELDS[key]
                ok = all(_compare(op, record[key], _operand(kind, operand)) for op, operand in conditions)
        if not ok:
            return False
    return True
