"""The Artifactory helper over real HTTP, against the documented-protocol stand-in in artifactory_server.py.

No Docker and no real Artifactory: every test starts its own server on a free
loopback port.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from datetime import UTC, datetime, timedelta

import pytest
import requests
from artifactory_server import ArtifactoryServer

from ccp_tasks.core.errors import CcpError
from ccp_tasks.publish import artifactory as art
from ccp_tasks.publish.artifactory import Artifactory, ArtifactoryAuth, ArtifactoryError

REPO = "ci-generic"
TOKEN = "tok-0123456789"
BUILD_PROPS = {"branch": "main", "commit": "0123abcd", "build.number": "42", "keep": "false"}


@pytest.fixture
def server():
    with ArtifactoryServer() as srv:
        yield srv


@pytest.fixture
def client(server):
    with Artifactory(server.url, ArtifactoryAuth(token=TOKEN), backoff=0.01) as c:
        yield c


@pytest.fixture
def run_dir(tmp_path):
    """What a run leaves behind: a build log, a JUnit report, a package manifest and the summary."""
    root = tmp_path / "run"
    (root / "logs").mkdir(parents=True)
    (root / "reports").mkdir()
    (root / "manifests").mkdir()
    (root / "logs" / "redis.log").write_text("Step 1/4 : FROM ccp/base-tools:latest\nSuccessfully built 0123\n")
    (root / "reports" / "junit-spec.xml").write_text('<testsuites><testsuite name="redis" tests="1"/></testsuites>\n')
    (root / "manifests" / "redis.tsv").write_text("base-files\t12.4\ncurl\t7.88\n")
    (root / "summary.json").write_text(json.dumps({"images": {"redis": {"outcome": "built"}}}))
    return root


def header(recorded, name):
    return {k.lower(): v for k, v in recorded.headers.items()}.get(name.lower())


def puts_to(server, fragment):
    return [r for r in server.requests if r.method == "PUT" and fragment in r.target]


def assert_one_line(message: str, *secrets: str):
    assert "\n" not in message and message.strip() == message
    for secret in secrets:
        assert secret not in message


# -- credentials -----------------------------------------------------------------------------


def test_auth_repr_hides_secrets_and_reads_the_environment():
    auth = ArtifactoryAuth(username="ci", password="pa55-word", token="tok-secret")
    for text in (repr(auth), str(auth), f"{auth}", repr(Artifactory("https://h/artifactory", auth))):
        assert "pa55-word" not in text and "tok-secret" not in text
    assert "username='ci'" in repr(auth)

    env = {"CCP_ARTIFACTORY_TOKEN": "t0k", "CCP_ARTIFACTORY_USER": "", "CCP_ARTIFACTORY_PASSWORD": ""}
    assert ArtifactoryAuth.from_env(env) == ArtifactoryAuth(token="t0k")
    assert ArtifactoryAuth.from_env(env).header() == "Bearer t0k"
    basic = ArtifactoryAuth.from_env({"CCP_ARTIFACTORY_USER": "ci", "CCP_ARTIFACTORY_PASSWORD": "pw"})
    assert basic.header() == "Basic " + base64.b64encode(b"ci:pw").decode()
    assert ArtifactoryAuth.from_env({}).header() is None  # anonymous
    with pytest.raises(ArtifactoryError, match="CCP_ARTIFACTORY_PASSWORD is not"):
        ArtifactoryAuth.from_env({"CCP_ARTIFACTORY_USER": "ci"})
    assert issubclass(ArtifactoryError, CcpError)


def test_url_must_not_carry_credentials_and_a_naive_time_is_refused():
    with pytest.raises(ArtifactoryError) as err:
        Artifactory("https://ci:hunter2@host/artifactory", ArtifactoryAuth())
    assert "hunter2" not in str(err.value)
    with pytest.raises(ArtifactoryError, match="time zone"):
        art.aql_time(datetime(2024, 1, 1))


# -- ping ---------------------------------------------------------------------------------------


def test_ping(server, client):
    client.ping()
    assert server.requests[-1].target == "/artifactory/api/system/ping"
    assert header(server.requests[-1], "Authorization") == "Bearer ***"


def test_ping_without_the_context_path_says_what_to_check(server):
    with Artifactory(server.url.removesuffix("/artifactory"), ArtifactoryAuth(token=TOKEN), backoff=0.01) as c:
        with pytest.raises(ArtifactoryError) as err:
            c.ping()
    assert_one_line(str(err.value), TOKEN)
    assert "HTTP 404" in str(err.value) and "/artifactory" in str(err.value)


# -- deploy ---------------------------------------------------------------------------------------


def test_deploy_tree_uploads_every_artifact_with_its_properties(server, client, run_dir):
    deployed = client.deploy_tree(REPO, "main/42", run_dir, BUILD_PROPS)

    paths = [d.path for d in deployed]
    assert paths == [
        "main/42/summary.json",
        "main/42/logs/redis.log",
        "main/42/manifests/redis.tsv",
        "main/42/reports/junit-spec.xml",
    ]
    for item, relative in zip(
        deployed, ["summary.json", "logs/redis.log", "manifests/redis.tsv", "reports/junit-spec.xml"]
    ):
        data = (run_dir / relative).read_bytes()
        assert server.content(REPO, item.path) == data
        assert (item.size, item.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert item.created is not None and item.created.tzinfo is not None
        assert item.download_uri.endswith(f"/artifactory/{REPO}/{item.path}")
        assert client.get_properties(REPO, item.path) == {k: [v] for k, v in BUILD_PROPS.items()}

        # First the checksum deploy (no body), then, on its 404, the upload with the same headers.
        probe, upload = puts_to(server, f"/{REPO}/{item.path};")
        assert header(probe, "X-Checksum-Deploy") == "true" and probe.body == b"" and probe.status == 404
        assert header(upload, "X-Checksum-Deploy") is None and upload.body == data and upload.status == 201
        for recorded in (probe, upload):
            assert header(recorded, "X-Checksum-Sha1") == hashlib.sha1(data).hexdigest()
            assert header(recorded, "X-Checksum-Sha256") == hashlib.sha256(data).hexdigest()
            assert header(recorded, "X-Checksum-Md5") == hashlib.md5(data).hexdigest()
            assert recorded.target.endswith(";branch=main;commit=0123abcd;build.number=42;keep=false")
    # plain values ride in the matrix parameters: no second call for properties
    assert not [r for r in server.requests if "/api/storage/" in r.target and r.method == "PUT"]


def test_checksum_deploy_hit_copies_known_content_without_sending_it(server, client, tmp_path):
    log = tmp_path / "build.log"
    log.write_bytes(b"same bytes\n" * 100)

    miss = client.deploy(REPO, "main/1/build.log", log, {"branch": "main"})
    server.clear_log()
    hit = client.deploy(REPO, "main/2/build.log", log, {"branch": "main", "build.number": "2"})

    assert (miss.checksum_deployed, hit.checksum_deployed) == (False, True)
    assert [(r.method, r.status, r.body) for r in server.requests] == [("PUT", 201, b"")]
    assert header(server.requests[0], "X-Checksum-Deploy") == "true"
    assert server.content(REPO, "main/2/build.log") == log.read_bytes()
    assert client.get_properties(REPO, "main/2/build.log") == {"branch": ["main"], "build.number": ["2"]}


def test_an_empty_file_deploys(server, client, tmp_path):
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    item = client.deploy(REPO, "main/3/empty.log", empty, {"branch": "main"})
    assert item.size == 0 and server.content(REPO, "main/3/empty.log") == b""


def test_content_that_does_not_match_its_checksums_is_refused(server, client, tmp_path, monkeypatch):
    file = tmp_path / "summary.json"
    file.write_text("{}")
    real = art._checksums

    def stale(path):  # as if the file changed between hashing and uploading
        sums, size = real(path)
        return {**sums, "sha1": hashlib.sha1(b"other").hexdigest()}, size

    monkeypatch.setattr(art, "_checksums", stale)
    with pytest.raises(ArtifactoryError) as err:
        client.deploy(REPO, "main/4/summary.json", file, {"branch": "main"})
    message = str(err.value)
    assert_one_line(message, TOKEN)
    assert "HTTP 409" in message and "checksums" in message and f"{REPO}/main/4/summary.json" in message
    assert (REPO, "main/4/summary.json") not in server.items


def test_values_matrix_parameters_cannot_carry_go_through_set_item_properties(server, client, tmp_path):
    file = tmp_path / "junit.xml"
    file.write_text("<testsuites/>")
    props = {"branch": "feature/a,b", "build.number": "7", "tags": ["nightly", "x;y=z|w"]}

    client.deploy(REPO, "feature/7/junit.xml", file, props)

    deploy_targets = {r.target for r in puts_to(server, f"/artifactory/{REPO}/feature/7/junit.xml")}
    assert deploy_targets == {f"/artifactory/{REPO}/feature/7/junit.xml;build.number=7"}
    [storage] = puts_to(server, "/api/storage/")
    assert storage.target.endswith("&recursive=0")
    assert client.get_properties(REPO, "feature/7/junit.xml") == {
        "branch": ["feature/a,b"],
        "build.number": ["7"],
        "tags": ["nightly", "x;y=z|w"],
    }


def test_unusable_properties_are_refused_before_any_request(server, client, tmp_path):
    file = tmp_path / "a.log"
    file.write_text("x")
    for props, complaint in [
        ({"path": "C:\\build"}, "backslash"),
        ({"branch": ""}, "empty"),
        ({"branch": " main"}, "blanks"),
        ({"bad key": "v"}, "invalid property name"),
        ({"a=b": "v"}, "invalid property name"),
        ({"branch": []}, "no value"),
    ]:
        with pytest.raises(ArtifactoryError, match=complaint):
            client.deploy(REPO, "main/5/a.log", file, props)
    for path in ("/main/a.log", "main/../a.log", "main//a.log", ""):
        with pytest.raises(ArtifactoryError, match="invalid path"):
            client.deploy(REPO, path, file, {})
    assert server.requests == []


# -- finding builds -------------------------------------------------------------------------------


@pytest.fixture
def builds(server, client, run_dir):
    client.deploy_tree(REPO, "main/41", run_dir, {**BUILD_PROPS, "build.number": "41", "keep": "true"})
    client.deploy_tree(REPO, "main/42", run_dir, BUILD_PROPS)
    client.deploy_tree(
        REPO, "feature/login/7", run_dir, {**BUILD_PROPS, "branch": "feature/login", "build.number": "7"}
    )
    month_ago = datetime.now(UTC) - timedelta(days=30)
    for repo, path in list(server.items):
        if path.startswith("main/41/"):
            server.set_created(repo, path, month_ago)
    return month_ago


def build_numbers(items):
    return sorted({item.properties["build.number"][0] for item in items})


def test_find_builds_by_branch_keep_and_age(client, builds):
    by_branch = client.find_builds(REPO, branch="main")
    assert build_numbers(by_branch) == ["41", "42"] and len(by_branch) == 8
    assert build_numbers(client.find_builds(REPO, branch="feature/*")) == ["7"]
    assert build_numbers(client.find_builds(REPO, keep=True)) == ["41"]
    assert build_numbers(client.find_builds(REPO, branch="main", keep=False)) == ["42"]

    week_ago = datetime.now(UTC) - timedelta(days=7)
    old = client.find_builds(REPO, older_than=week_ago)
    assert build_numbers(old) == ["41"]
    assert all(abs(item.created - builds) < timedelta(seconds=1) for item in old)
    assert client.find_builds(REPO, branch="feature/login", older_than=week_ago) == []


def test_found_items_carry_what_a_clean_up_needs(server, client, builds):
    [summary] = [i for i in client.find_builds(REPO, branch="main", keep=True) if i.name == "summary.json"]
    assert (summary.repo, summary.path, summary.repo_path) == (REPO, "main/41", "main/41/summary.json")
    assert summary.sha256 == server.items[(REPO, "main/41/summary.json")].sha256
    assert summary.size == server.items[(REPO, "main/41/summary.json")].size
    assert summary.properties == {"branch": ["main"], "build.number": ["41"], "commit": ["0123abcd"], "keep": ["true"]}


def test_find_with_own_criteria_and_include(server, client, builds):
    found = client.find(
        {"$and": [{"repo": REPO}, {"$or": [{"name": {"$match": "junit-*.xml"}}, {"name": {"$eq": "redis.tsv"}}]}]},
        include=("repo", "path", "name", "@build.number"),
    )
    assert sorted(i.repo_path for i in found) == [
        "feature/login/7/manifests/redis.tsv",
        "feature/login/7/reports/junit-spec.xml",
        "main/41/manifests/redis.tsv",
        "main/41/reports/junit-spec.xml",
        "main/42/manifests/redis.tsv",
        "main/42/reports/junit-spec.xml",
    ]
    assert all(set(i.properties) == {"build.number"} and i.created is None for i in found)
    [aql] = [r for r in server.requests if r.target.endswith("/api/search/aql")][-1:]
    assert header(aql, "Content-Type") == "text/plain"
    assert aql.body.decode().startswith("items.find({")


# -- properties -----------------------------------------------------------------------------------


def test_set_get_delete_properties_round_trip_special_characters(client, tmp_path):
    file = tmp_path / "summary.json"
    file.write_text("{}")
    client.deploy(REPO, "main/9/summary.json", file, {"branch": "main"})
    tricky = {
        "branch": "main",
        "note": ["a,b", "c;d", "e=f", "g|h", "spaces and + plus", "100%", "ünïcödé", "#hash"],
        "commit": "0123abcd",
    }
    client.set_properties(REPO, "main/9/summary.json", tricky)
    assert client.get_properties(REPO, "main/9/summary.json") == {
        "branch": ["main"],
        "note": tricky["note"],
        "commit": ["0123abcd"],
    }

    client.set_properties(REPO, "main/9/summary.json", {"note": "replaced"})
    assert client.get_properties(REPO, "main/9/summary.json")["note"] == ["replaced"]

    client.delete_properties(REPO, "main/9/summary.json", ["note", "commit"])
    assert client.get_properties(REPO, "main/9/summary.json") == {"branch": ["main"]}
    client.delete_properties(REPO, "main/9/summary.json", ["branch"])
    assert client.get_properties(REPO, "main/9/summary.json") == {}
    assert client.get_properties(REPO, "main/404/nothing.json") == {}


def test_properties_on_a_folder_recurse_unless_told_not_to(client, run_dir):
    client.deploy_tree(REPO, "main/43", run_dir, {**BUILD_PROPS, "build.number": "43"})
    client.set_properties(REPO, "main/43", {"keep": "true"}, recursive=False)
    assert client.get_properties(REPO, "main/43")["keep"] == ["true"]
    assert client.get_properties(REPO, "main/43/logs/redis.log")["keep"] == ["false"]

    client.set_properties(REPO, "main/43", {"keep": "true"})
    assert build_numbers(client.find_builds(REPO, keep=True)) == ["43"]
    assert len(client.find_builds(REPO, keep=True)) == 4


# -- delete ---------------------------------------------------------------------------------------


def test_delete_an_item_then_it_is_not_found_again(server, client, builds):
    client.delete(REPO, "main/42/summary.json")
    names = {i.repo_path for i in client.find_builds(REPO, branch="main")}
    assert "main/42/summary.json" not in names and "main/41/summary.json" in names
    client.delete(REPO, "main/42/summary.json")  # already gone: fine

    for item in client.find_builds(REPO, older_than=datetime.now(UTC) - timedelta(days=7)):
        client.delete(item.repo, item.repo_path)
    assert build_numbers(client.find_builds(REPO, branch="main")) == ["42"]
    assert [r.status for r in server.requests if r.method == "DELETE"].count(404) == 1


# -- failures -------------------------------------------------------------------------------------


def test_a_wrong_token_is_one_line_naming_what_to_check_and_never_the_token(server, tmp_path):
    file = tmp_path / "a.log"
    file.write_text("x")
    wrong = "tok-WRONG-987654321"
    with Artifactory(server.url, ArtifactoryAuth(token=wrong), backoff=0.01) as c:
        with pytest.raises(ArtifactoryError) as err:
            c.deploy(REPO, "main/1/a.log", file, {"branch": "main"})
    message = str(err.value)
    assert_one_line(message, wrong)
    assert message.startswith(
        f"Artifactory {server.url}: deploy {REPO}/main/1/a.log failed: HTTP 401 (Bad credentials)"
    )
    assert "CCP_ARTIFACTORY_TOKEN" in message
    assert len(server.requests) == 1  # a 401 is not retried

    with Artifactory(server.url, ArtifactoryAuth(username="ci", password="not-the-pass"), backoff=0.01) as c:
        with pytest.raises(ArtifactoryError) as err:
            c.find_builds(REPO, branch="main")
    assert_one_line(str(err.value), "not-the-pass", base64.b64encode(b"ci:not-the-pass").decode())
    assert "HTTP 401" in str(err.value)


def test_basic_credentials_work(server, tmp_path):
    with Artifactory(server.url, ArtifactoryAuth(username="ci", password="s3cret-pass")) as c:
        c.ping()
    assert header(server.requests[-1], "Authorization") == "Basic ***"


def test_missing_permission_names_it(tmp_path):
    file = tmp_path / "a.log"
    file.write_text("x")
    with ArtifactoryServer(permissions={"ci": {"read"}}) as srv:
        with Artifactory(srv.url, ArtifactoryAuth(token=TOKEN), backoff=0.01) as c:
            with pytest.raises(ArtifactoryError) as err:
                c.deploy(REPO, "main/1/a.log", file, {"branch": "main"})
    assert_one_line(str(err.value), TOKEN)
    assert "HTTP 403" in str(
        err.value
    ) and f"'deploy (and annotate, for properties)' permission on repository '{REPO}'" in str(err.value)


def test_an_unknown_repository_is_named(client, tmp_path):
    file = tmp_path / "a.log"
    file.write_text("x")
    with pytest.raises(ArtifactoryError) as err:
        client.deploy("no-such-repo", "main/1/a.log", file, {"branch": "main"})
    assert "HTTP 404 (Repository 'no-such-repo' not found)" in str(err.value)
    assert "repository 'no-such-repo' exists" in str(err.value)


@pytest.mark.parametrize("status, retry_after", [(500, None), (503, None), (502, None), (429, "0")])
def test_server_errors_and_throttling_are_retried(server, client, tmp_path, status, retry_after):
    file = tmp_path / "a.log"
    file.write_text("retried")
    server.fail_next(2, status, method="PUT", retry_after=retry_after)
    item = client.deploy(REPO, "main/1/a.log", file, {"branch": "main"})
    assert server.content(REPO, item.path) == b"retried"
    assert [r.status for r in server.requests] == [status, status, 404, 201]


def test_a_dropped_connection_is_retried_and_the_upload_starts_over(server, client, tmp_path):
    file = tmp_path / "a.log"
    file.write_bytes(b"0123456789" * 10_000)
    server.drop_next(1, method="PUT", with_body=False)  # the checksum probe
    server.drop_next(1, method="PUT", with_body=True)  # the upload
    client.deploy(REPO, "main/1/a.log", file, {"branch": "main"})
    assert [r.status for r in server.requests] == [None, 404, None, 201]
    dropped_upload, upload = server.requests[2:]
    assert dropped_upload.body == upload.body == file.read_bytes()
    assert server.content(REPO, "main/1/a.log") == file.read_bytes()


def test_retries_give_up_with_one_line(server, client):
    server.fail_next(100, 503, retry_after="0")
    with pytest.raises(ArtifactoryError) as err:
        client.find_builds(REPO, branch="main")
    message = str(err.value)
    assert_one_line(message, TOKEN)
    assert "HTTP 503 (injected fault 503) after 4 attempts" in message and "try again later" in message
    assert len(server.requests) == 4


def test_a_server_that_is_down_gives_a_clear_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again at once: nothing listens there
    with Artifactory(
        f"http://127.0.0.1:{port}/artifactory", ArtifactoryAuth(token=TOKEN), retries=2, backoff=0.01
    ) as c:
        with pytest.raises(ArtifactoryError) as err:
            c.ping()
    message = str(err.value)
    assert_one_line(message, TOKEN)
    assert message.startswith(f"cannot reach Artifactory at http://127.0.0.1:{port}/artifactory (ping api/system/ping)")
    assert "Connection refused" in message and "after 3 attempts" in message and "server is up" in message


# -- the stand-in refuses what the docs refuse (so passing against it means something) -------------


def raw(server, method, path, *, token=TOKEN, **kwargs):
    headers = kwargs.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, server.url + path, headers=headers, timeout=5, **kwargs)


def test_server_checks_credentials_like_artifactory(server):
    resp = raw(server, "GET", "/api/system/ping", token="nope")
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Basic")
    assert resp.json() == {"errors": [{"status": 401, "message": "Bad credentials"}]}
    assert raw(server, "GET", "/api/system/ping", token=None).status_code == 401
    assert raw(server, "GET", "/api/system/ping").text == "OK"


def test_server_rejects_a_body_that_does_not_match_its_checksum_headers(server):
    resp = raw(server, "PUT", f"/{REPO}/x/a.bin", data=b"abc", headers={"X-Checksum-Sha256": "0" * 64})
    assert resp.status_code == 409 and "Checksum error" in resp.json()["errors"][0]["message"]
    resp = raw(server, "PUT", f"/{REPO}/x/a.bin", data=b"abc", headers={"X-Checksum": hashlib.md5(b"abc").hexdigest()})
    assert resp.status_code == 201
    resp = raw(server, "PUT", f"/{REPO}/x/b.bin", headers={"X-Checksum-Deploy": "true", "X-Checksum-Sha1": "1" * 40})
    assert resp.status_code == 404


@pytest.mark.parametrize(
    "query, content_type, status",
    [
        ('items.find({"repo":"ci-generic"})', "application/json", 415),
        ('items.find({"repo":"ci-generic"})', None, 415),
        ('items.find({"repo":"ci-generic"}).include("nonsense")', "text/plain", 400),
        ('items.find({"colour":"blue"})', "text/plain", 400),
        ('items.find({"created":{"$lt":"last tuesday"}})', "text/plain", 400),
        ('items.find({"name":{"$like":"*.xml"}})', "text/plain", 400),
        ('items.find({"size":{"$match":"1*"}})', "text/plain", 400),
        ('builds.find({"name":"x"})', "text/plain", 400),
        ('items.find({"repo":"ci-generic"})', "text/plain", 200),
    ],
)
def test_server_accepts_only_documented_aql(server, query, content_type, status):
    headers = {"Content-Type": content_type} if content_type else {}
    resp = raw(server, "POST", "/api/search/aql", data=query.encode(), headers=headers)
    assert resp.status_code == status, resp.text


@pytest.mark.parametrize("suffix", [";k=a;k=b", ";k=a%2Cb", ";k=a%5Cb", ";k%3A=a", ";bad key=v"])
def test_server_refuses_matrix_parameters_whose_meaning_depends_on_the_version(server, suffix):
    resp = raw(server, "PUT", f"/{REPO}/x/a.bin{suffix}", data=b"abc")
    assert resp.status_code == 400, resp.text


def test_server_parses_documented_matrix_and_property_syntax(server):
    assert raw(server, "PUT", f"/{REPO}/x/a.bin;os=win,linux;qa=done%20ok", data=b"abc").status_code == 201
    props = raw(server, "GET", f"/api/storage/{REPO}/x/a.bin?properties").json()["properties"]
    assert props == {"os": ["win", "linux"], "qa": ["done ok"]}
    # the docs' own example: "?properties=a=1%5C=1 will attach key a with 1=1 as value"
    assert raw(server, "PUT", f"/api/storage/{REPO}/x/a.bin?properties=a=1%5C=1").status_code == 204
    assert raw(server, "GET", f"/api/storage/{REPO}/x/a.bin?properties=a").json()["properties"] == {"a": ["1=1"]}
    assert raw(server, "PUT", f"/api/storage/{REPO}/x/a.bin?properties=p=C:%5Cx").status_code == 400
