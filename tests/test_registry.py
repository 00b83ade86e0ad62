"""The registry client against real registries (Debian's docker-registry,
Distribution 2.8), images pushed by the real Docker engine, and skopeo as the
independent client that says what the registry really holds."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import prune_namespace

from ccp_tasks.core.errors import CcpError
from ccp_tasks.publish.registry import (
    DOCKER_MANIFEST,
    Credentials,
    RegistryClient,
    RegistryError,
    credentials_for,
)
from tests.registry_server import FaultProxy, RegistryServer, free_port

PASSWORD = "s3cret-Pa55"
USERS = {"ci": PASSWORD, "reader": "r3ader-Pa55"}
CI = Credentials("ci", PASSWORD)
WRONG = "wr0ng-" + uuid.uuid4().hex[:8]  # a name, not a literal: test sources show up in failure reports

pytestmark = pytest.mark.skipif(
    not (shutil.which("docker-registry") and shutil.which("skopeo")),
    reason="needs Debian's docker-registry and skopeo (apt-get install docker-registry skopeo apache2-utils)",
)


@dataclass
class Pushed:
    namespace: str
    base_id: str
    victim_id: str
    tags: list[str]

    @property
    def bb(self) -> str:
        return f"{self.namespace}/bb"

    @property
    def victim(self) -> str:
        return f"{self.namespace}/victim"

    @property
    def repositories(self) -> list[str]:
        return [f"{self.namespace}/{name}" for name in ("bb", "other", "third", "victim")]


def _build(client, context: Path, namespace: str, variant: str) -> str:
    (context / "Dockerfile").write_text(
        f"FROM scratch\nCOPY busybox /bin/busybox\nLABEL ccp.test.namespace={namespace} ccp.test.variant={variant}\n"
    )
    image_id = None
    for chunk in client.build(
        path=str(context), tag=f"{namespace}/{variant}:latest", rm=True, forcerm=True, decode=True
    ):
        assert "error" not in chunk, chunk
        if isinstance(chunk.get("aux"), dict) and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
    assert image_id
    return image_id


def _push(client, repository: str, tag: str):
    for chunk in client.push(
        repository, tag, auth_config={"username": "ci", "password": PASSWORD}, stream=True, decode=True
    ):
        assert "error" not in chunk, chunk


@pytest.fixture(scope="module")
def images(tmp_path_factory, docker_client):
    """Two tiny busybox images (different manifests); removed afterwards."""
    namespace = f"ccptest-{uuid.uuid4().hex[:8]}"
    context = tmp_path_factory.mktemp("ctx")
    shutil.copy("/bin/busybox", context / "busybox")
    created: list[str] = [f"{namespace}/base:latest", f"{namespace}/victim:latest"]
    try:
        base_id = _build(docker_client, context, namespace, "base")
        victim_id = _build(docker_client, context, namespace, "victim")
        yield namespace, base_id, victim_id, created
    finally:
        for ref in created:
            try:
                docker_client.remove_image(ref, force=True)
            except Exception:
                pass
        prune_namespace(docker_client, namespace)


def _push_tree(docker_client, registry: RegistryServer, images, tags) -> Pushed:
    namespace, base_id, victim_id, created = images
    plan = [(base_id, "bb", tag) for tag in tags] + [
        (base_id, "other", "1"),
        (base_id, "third", "1"),
        (victim_id, "victim", "v1"),
    ]
    for image_id, name, tag in plan:
        repository = f"{registry.host}/{namespace}/{name}"
        assert docker_client.tag(image_id, repository, tag)
        created.append(f"{repository}:{tag}")
        _push(docker_client, repository, tag)
    return Pushed(namespace, base_id, victim_id, list(tags))


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with RegistryServer(tmp_path_factory.mktemp("registry"), users=USERS) as server:
        yield server


@pytest.fixture(scope="module")
def pushed(registry, images, docker_client) -> Pushed:
    return _push_tree(docker_client, registry, images, ["t1", "t2", "t3", "t4", "t5"])


@pytest.fixture
def client(registry):
    with RegistryClient(registry.host, credentials=CI, ca_bundle=registry.ca_path, backoff=0.01) as c:
        yield c


def _urls(client: RegistryClient) -> list[str]:
    seen: list[str] = []
    client._session.hooks["response"].append(lambda response, *a, **k: seen.append(response.url))
    return seen


# -- the htpasswd + TLS registry ------------------------------------------------


def test_ping_catalog_and_tags(client, registry, pushed):
    client.ping()
    urls = _urls(client)
    repositories = client.catalog(page_size=2)
    assert set(pushed.repositories) <= set(repositories)
    assert repositories == sorted(repositories)
    assert any("last=" in url for url in urls), urls  # the Link header was followed
    assert client.tags(pushed.bb, page_size=2) == pushed.tags == registry.skopeo_tags(pushed.bb)
    assert client.tags(f"{pushed.namespace}/never-pushed") == []


def test_manifest_digest_is_what_skopeo_sees(client, registry, pushed):
    digest = client.manifest_digest(pushed.bb, "t1")
    assert digest == registry.skopeo_digest(f"{pushed.bb}:t1")
    manifest = client.get_manifest(pushed.bb, "t3")
    assert manifest.digest == digest
    assert manifest.media_type == DOCKER_MANIFEST
    assert client.get_manifest(pushed.bb, digest).raw == manifest.raw
    assert client.manifest_digest(pushed.bb, digest) == digest
    assert client.manifest_digest(pushed.bb, "no-such-tag") is None
    assert client.manifest_digest(f"{pushed.namespace}/never-pushed", "t1") is None
    assert client.blob_size(pushed.bb, manifest) > Path("/bin/busybox").stat().st_size // 3  # compressed layer
    with pytest.raises(RegistryError, match=rf"manifest {pushed.bb}:no-such-tag is unknown \(404 MANIFEST_UNKNOWN\)"):
        client.get_manifest(pushed.bb, "no-such-tag")


def test_retag_on_the_registry_then_delete(client, registry, pushed):
    manifest = client.get_manifest(pushed.victim, "v1")
    assert client.put_manifest(pushed.victim, "moved", manifest) == manifest.digest
    assert registry.skopeo_tags(pushed.victim) == ["moved", "v1"]
    assert registry.skopeo_digest(f"{pushed.victim}:moved") == manifest.digest

    # Another repository lacks the blobs: the registry refuses, and says why.
    with pytest.raises(RegistryError, match="MANIFEST_BLOB_UNKNOWN.*push the image there first"):
        client.put_manifest(f"{pushed.namespace}/elsewhere", "x", manifest)
    with pytest.raises(RegistryError, match="by digest"):
        client.delete_manifest(pushed.victim, "moved")

    # Distribution removes every tag that points at a deleted digest.
    client.delete_manifest(pushed.victim, manifest.digest)
    assert registry.skopeo_tags(pushed.victim) == []
    assert client.tags(pushed.victim) == []
    assert client.manifest_digest(pushed.victim, "v1") is None
    with pytest.raises(RegistryError, match=rf"manifest {pushed.victim}:sha256:\w+ is unknown"):
        client.delete_manifest(pushed.victim, manifest.digest)
    client.delete_manifest(pushed.victim, manifest.digest, missing_ok=True)
    assert client.manifest_digest(pushed.bb, "t1")  # the other images are untouched


def test_wrong_or_missing_credentials(registry, pushed):
    wrong = RegistryClient(registry.host, credentials=Credentials("ci", WRONG), ca_bundle=registry.ca_path)
    with pytest.raises(RegistryError) as failed:
        wrong.tags(pushed.bb)
    message = str(failed.value)
    assert message == (
        f"registry {registry.host}: authentication failed for repository {pushed.bb} (401): "
        "check CCP_REGISTRY_USERNAME/CCP_REGISTRY_PASSWORD or docker login"
    )
    assert isinstance(failed.value, CcpError)
    with pytest.raises(RegistryError, match=rf"registry {registry.host}: authentication failed \(401\)"):
        wrong.ping()
    anonymous = RegistryClient(registry.host, ca_bundle=registry.ca_path)
    with pytest.raises(
        RegistryError, match=rf"authentication required for repository {pushed.bb} \(401\) and no credentials are set"
    ):
        anonymous.manifest_digest(pushed.bb, "t1")


def test_tls_trust_and_insecure(registry, pushed):
    untrusted = RegistryClient(registry.host, credentials=CI)
    with pytest.raises(
        RegistryError, match=rf"registry {registry.host}: TLS certificate not trusted: set registry.ca_bundle"
    ):
        untrusted.ping()
    plain = RegistryClient(registry.host, credentials=CI, insecure=True)
    with pytest.raises(RegistryError, match="speaks https"):
        plain.ping()
    with pytest.raises(RegistryError, match="plain http is used only with registry.insecure"):
        RegistryClient(f"http://{registry.host}")
    with pytest.raises(RegistryError, match="does not exist"):
        RegistryClient(registry.host, ca_bundle="/nonexistent/ca.pem")
    # "https://host" and "host" are the same registry
    RegistryClient(registry.url, credentials=CI, ca_bundle=registry.ca_path).ping()


def test_registry_down_is_not_reachable():
    host = f"127.0.0.1:{free_port()}"
    client = RegistryClient(host, credentials=CI, retries=2, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(RegistryError) as failed:
        client.tags("ccp/redis")
    assert str(failed.value) == (
        f"registry {host} is not reachable (connection refused) after 3 attempts: "
        "check the address, that the registry runs and the network"
    )
    assert time.monotonic() - started < 5


def test_client_recovers_from_a_registry_restart(registry, pushed, caplog):
    caplog.set_level(logging.INFO, logger="ccp_tasks.publish.registry")
    client = RegistryClient(registry.host, credentials=CI, ca_bundle=registry.ca_path, retries=6, backoff=0.2)
    before = client.manifest_digest(pushed.bb, "t2")
    registry.stop()
    restarter = threading.Timer(0.5, registry.start)
    restarter.start()
    try:
        assert client.manifest_digest(pushed.bb, "t2") == before  # same storage, retried until it answered
        assert client.tags(pushed.bb) == pushed.tags
    finally:
        restarter.join()
        registry.start()  # no-op when running; the other tests need it
    assert "connection refused; retrying" in caplog.text
    assert PASSWORD not in caplog.text


# -- faults: a proxy in front of the registry --------------------------------


@pytest.fixture
def proxy(registry):
    with FaultProxy(registry.url, upstream_ca=registry.ca_path) as front:
        yield front


@pytest.fixture
def proxied(proxy):
    # The proxy is plain http: insecure. Warm it up so that the Basic
    # challenge is behind us and every injected fault hits the request itself.
    with RegistryClient(proxy.url, credentials=CI, insecure=True, retries=4, backoff=0.01) as c:
        c.ping()
        proxy.clear()
        yield c


def _injected(proxy) -> int:
    return sum(1 for *_, what in proxy.seen if what != "forwarded")


def test_5xx_and_dropped_connections_are_retried(proxied, proxy, pushed, caplog):
    caplog.set_level(logging.DEBUG)
    proxy.fail(3, 503)
    assert proxied.manifest_digest(pushed.bb, "t1")
    assert _injected(proxy) == 3 and proxy.pending == 0
    proxy.drop(2)
    assert proxied.tags(pushed.bb) == pushed.tags
    assert proxy.pending == 0

    proxy.fail(5, 502)  # one more than the 4 retries
    with pytest.raises(RegistryError) as failed:
        proxied.tags(pushed.bb)
    assert str(failed.value) == (
        f"registry {proxy.host}: answered 502 (UNAVAILABLE injected by FaultProxy) to list tags "
        f"for repository {pushed.bb} after 5 attempts: the registry is failing; check its logs"
    )
    proxy.drop(5)
    with pytest.raises(
        RegistryError,
        match=rf"registry {proxy.host} is not reachable \(the connection was closed without an answer\) after 5 attempts",
    ):
        proxied.ping()
    assert PASSWORD not in caplog.text and "Authorization" not in caplog.text


def test_429_retry_after_is_honoured(proxied, proxy, pushed):
    proxy.fail(1, 429, {"Retry-After": "1"})
    started = time.monotonic()
    assert proxied.tags(pushed.bb) == pushed.tags
    assert time.monotonic() - started >= 1.0  # not the 0.01 s backoff
    proxy.fail(5, 429, {"Retry-After": "0"})
    with pytest.raises(
        RegistryError, match=rf"rate limited \(429\) to list tags for repository {pushed.bb} after 5 attempts"
    ):
        proxied.tags(pushed.bb)


def test_tags_follow_link_pages(proxied, proxy, pushed):
    # Distribution 2.8 ignores n for tags; the proxy pages them as the spec says.
    proxy.paginate_tags = True
    assert proxied.tags(pushed.bb, page_size=2) == pushed.tags
    pages = [path for _, method, path, _ in proxy.seen if "/tags/list" in path]
    assert pages == [
        f"/v2/{pushed.bb}/tags/list?n=2",
        f"/v2/{pushed.bb}/tags/list?n=2&last=t2",
        f"/v2/{pushed.bb}/tags/list?n=2&last=t4",
    ]


# -- other registry set-ups ----------------------------------------------------


def test_registry_without_deletes(tmp_path):
    with RegistryServer(tmp_path / "nodelete", auth="none", tls=False, delete=False) as plain:
        client = RegistryClient(plain.host, insecure=True)
        client.ping()  # anonymous, plain http
        with pytest.raises(RegistryError) as failed:
            client.delete_manifest("ccp/redis", "sha256:" + "0" * 64)
    assert str(failed.value) == (
        f"registry {plain.host}: the registry does not allow deletes (405 UNSUPPORTED) for repository ccp/redis: "
        "set storage.delete.enabled: true in its configuration"
    )


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory, images, docker_client):
    root = tmp_path_factory.mktemp("token-registry")
    with RegistryServer(root, auth="token", users=USERS, permissions={"reader": {"pull"}}) as server:
        # The engine itself goes through the token service to push.
        pushed = _push_tree(docker_client, server, images, ["t1", "t2", "t3"])
        yield server, pushed


def test_token_auth_end_to_end(token_registry):
    registry, pushed = token_registry
    tokens = registry.token_server
    client = RegistryClient(registry.host, credentials=CI, ca_bundle=registry.ca_path, backoff=0.01)
    client.ping()
    assert set(pushed.repositories) <= set(client.catalog(page_size=2))
    assert client.tags(pushed.bb) == pushed.tags == registry.skopeo_tags(pushed.bb)
    seen_by_skopeo = registry.skopeo_digest(f"{pushed.bb}:t1")
    asked = len(tokens.requests)
    assert client.tags(pushed.bb) == pushed.tags
    assert client.manifest_digest(pushed.bb, "t1") == seen_by_skopeo
    assert len(tokens.requests) == asked  # the pull token is cached and reused across requests

    manifest = client.get_manifest(pushed.victim, "v1")
    assert client.put_manifest(pushed.victim, "moved", manifest) == manifest.digest
    assert registry.skopeo_tags(pushed.victim) == ["moved", "v1"]
    client.delete_manifest(pushed.victim, manifest.digest)
    assert tokens.requests[-1]["scopes"] == [f"repository:{pushed.victim}:delete"]
    assert registry.skopeo_tags(pushed.victim) == []
    assert all(r["user"] == "ci" and r["service"] == "ccp-test-registry" for r in tokens.requests[asked:])

    # A token service that answers access_token only (OAuth2 style).
    tokens.token_field = "access_token"
    try:
        assert RegistryClient(registry.host, credentials=CI, ca_bundle=registry.ca_path).tags(pushed.bb) == pushed.tags
    finally:
        tokens.token_field = "token"


def test_token_auth_refusals_name_the_cause_and_leak_nothing(token_registry):
    registry, pushed = token_registry
    tokens = registry.token_server
    reader = RegistryClient(
        registry.host, credentials=Credentials("reader", USERS["reader"]), ca_bundle=registry.ca_path
    )
    manifest = reader.get_manifest(pushed.bb, "t1")  # pull is granted
    with pytest.raises(RegistryError) as denied:
        reader.put_manifest(pushed.bb, "nope", manifest)
    assert str(denied.value) == (
        f"registry {registry.host}: access denied to tag nope for repository {pushed.bb} (401 insufficient_scope): "
        "the account 'reader' lacks the rights; check its permissions"
    )
    wrong = RegistryClient(registry.host, credentials=Credentials("ci", WRONG), ca_bundle=registry.ca_path)
    with pytest.raises(RegistryError) as refused:
        wrong.tags(pushed.bb)
    assert str(refused.value) == (
        f"registry {registry.host}: authentication failed for repository {pushed.bb} "
        "(401, the token service refused the credentials): check CCP_REGISTRY_USERNAME/CCP_REGISTRY_PASSWORD or docker login"
    )
    untrusted = RegistryClient(registry.host, credentials=CI, ca_bundle=None)
    with pytest.raises(RegistryError, match="TLS certificate not trusted"):
        untrusted.ping()

    texts = [
        str(denied.value),
        str(refused.value),
        repr(denied.value),
        repr(reader),
        repr(wrong),
        repr(CI),
        # what pytest prints for a failure, the frames' arguments and locals included
        # (rendered before this test holds any secret in a local of its own)
        str(denied.getrepr(style="long", showlocals=True)),
        str(refused.getrepr(style="long", showlocals=True)),
    ]
    secrets = [PASSWORD, USERS["reader"], WRONG, *tokens.issued]
    secrets += [
        base64.b64encode(f"{user}:{password}".encode()).decode()
        for user, password in [("ci", PASSWORD), ("reader", USERS["reader"]), ("ci", WRONG)]
    ]
    assert tokens.issued
    for text in texts:
        assert [secret for secret in secrets if secret in text] == [], text


# -- credentials ----------------------------------------------------------------


def test_credentials_hide_the_password():
    assert repr(CI) == "Credentials(username='ci')"
    assert PASSWORD not in str(CI) and PASSWORD not in repr(RegistryClient("127.0.0.1:5000", credentials=CI))


def _docker_config(tmp_path, config: dict) -> dict:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return {"DOCKER_CONFIG": str(tmp_path), "HOME": str(tmp_path / "home")}


def test_credentials_from_the_environment(tmp_path):
    env = {"CCP_REGISTRY_USERNAME": "ci", "CCP_REGISTRY_PASSWORD": PASSWORD, "HOME": str(tmp_path)}
    assert credentials_for("127.0.0.1:5000", env) == CI
    with pytest.raises(RegistryError, match="CCP_REGISTRY_PASSWORD is not set"):
        credentials_for("127.0.0.1:5000", {"CCP_REGISTRY_USERNAME": "ci"})
    assert credentials_for("127.0.0.1:5000", {"HOME": str(tmp_path)}) is None  # no config.json: anonymous


def test_credentials_from_docker_config(tmp_path):
    auth = base64.b64encode(f"ci:{PASSWORD}".encode()).decode()
    env = _docker_config(
        tmp_path,
        {
            "auths": {
                "127.0.0.1:5000": {"auth": auth},
                "https://registry.example.org": {"auth": base64.b64encode(b"bot:pa:ss").decode()},
                "other.example.org": {"username": "u", "password": "p"},
            }
        },
    )
    assert credentials_for("127.0.0.1:5000", env) == CI
    assert credentials_for("https://127.0.0.1:5000", env) == CI
    assert credentials_for("registry.example.org", env) == Credentials("bot", "pa:ss")
    assert credentials_for("other.example.org", env) == Credentials("u", "p")
    assert credentials_for("unknown.example.org", env) is None
    # The environment wins over docker's file.
    assert credentials_for(
        "127.0.0.1:5000", {**env, "CCP_REGISTRY_USERNAME": "x", "CCP_REGISTRY_PASSWORD": "y"}
    ) == Credentials("x", "y")
    # ~/.docker/config.json when DOCKER_CONFIG is not set
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text(json.dumps({"auths": {"127.0.0.1:5000": {"auth": auth}}}))
    assert credentials_for("127.0.0.1:5000", {"HOME": str(home)}) == CI


def test_credential_helpers_are_named_as_unsupported(tmp_path):
    env = _docker_config(
        tmp_path,
        {
            "auths": {"store.example.org": {}, "inline.example.org": {"auth": "dTpw"}},
            "credsStore": "desktop",
            "credHelpers": {"gcr.example.org": "gcloud"},
        },
    )
    with pytest.raises(RegistryError) as helper:
        credentials_for("gcr.example.org", env)
    assert str(helper.value) == (
        f"registry gcr.example.org: docker keeps its credentials in the credential helper docker-credential-gcloud "
        f"({tmp_path}/config.json), which ccp does not read: set CCP_REGISTRY_USERNAME/CCP_REGISTRY_PASSWORD"
    )
    with pytest.raises(RegistryError, match="docker-credential-desktop"):
        credentials_for("store.example.org", env)
    assert credentials_for("inline.example.org", env) == Credentials("u", "p")  # an inline entry is a source
    assert credentials_for("anonymous.example.org", env) is None
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RegistryError, match=f"cannot read docker's {tmp_path}/config.json"):
        credentials_for("127.0.0.1:5000", env)
