"""SBOMs as a user meets them: `doit sbom` writes cache/sbom/<image>.cdx.json
(valid CycloneDX, every package dpkg reports, the Python packages), the same
bytes for the same image, a damaged file made again; `doit push` puts it
beside the image under cosign's tag (skopeo, an independent client, reads
it back); `doit artifacts` deploys it to the Artifactory stand-in.

The images are busybox with a dpkg status file and Python metadata copied
in: what a Debian image holds for these readers, at a fraction of its build."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from artifactory_server import ArtifactoryServer
from conftest import child_template
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from test_push import ENV, EngineFaultProxy, make_project, remove_namespace

from tests.registry_server import RegistryServer

STATUS = """\
Package: base-files
Essential: yes
Status: install ok installed
Priority: required
Maintainer: Santiago Vila <sanvila@debian.org>
Architecture: amd64
Version: 12.4+deb12u5
Description: Debian base system miscellaneous files

Package: removed-one
Status: deinstall ok config-files
Maintainer: Nobody <nobody@example.org>
Architecture: amd64
Version: 1.0
Description: a package removed, its configuration kept

Package: libc6
Status: install ok installed
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u7
Description: GNU C Library: Shared libraries
 Contains the standard libraries. Version: 9.9 is no field.

Package: tzdata
Status: install ok installed
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: all
Multi-Arch: foreign
Version: 2024a-0+deb12u1
Description: time zone and daylight-saving time data

Package: libpam0g
Status: install ok installed
Maintainer: Steve Langasek <vorlon@debian.org>
Architecture: amd64
Multi-Arch: same
Version: 1:1.5.2-6+deb12u1
Description: Pluggable Authentication Modules library
"""

# A real image's status file is megabytes (descriptions, conffiles): this one
# is past the bytes the Python metadata files are read to.
BIG_STATUS = STATUS + "".join(
    f"\nPackage: filler{n}\nStatus: install ok installed\nMaintainer: Nobody <nobody@example.org>\n"
    f"Architecture: amd64\nVersion: 1.{n}\nDescription: filler\n" + " a long description line.\n" * 20
    for n in range(600)
)


def metadata(name: str, version: str) -> str:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: x\n\nName: not-this\n"


# Where Python packages live: a dist-info (pip), an egg-info file (Debian's
# python3-* packages), an egg-info directory (setup.py installs), in a venv too.
PYTHON_FILES = {
    "root/usr/local/lib/python3.11/site-packages/Flask-2.3.2.dist-info/METADATA": metadata("Flask", "2.3.2"),
    "root/usr/lib/python3/dist-packages/six-1.16.0.egg-info": metadata("six", "1.16.0"),
    "root/opt/venv/lib/python3.11/site-packages/zope_interface-6.0-py3.11.egg-info/PKG-INFO": metadata(
        "zope.interface", "6.0"
    ),
    # Not in a site-packages directory: no installed package.
    "root/usr/share/doc/stray-1.0.dist-info/METADATA": metadata("stray", "1.0"),
}
PYTHON_PURLS = {"pkg:pypi/flask@2.3.2", "pkg:pypi/six@1.16.0", "pkg:pypi/zope.interface@6.0"}


def deb_image(project, name: str = "deb", python: bool = True, status: str = STATUS):
    body = "COPY status /var/lib/dpkg/status" + ("\nCOPY root/ /" if python else "")
    project.image(name, child_template("bb", body), {"status": status, **(PYTHON_FILES if python else {})})


def sbom_path(project, image: str) -> Path:
    return project.root / "cache" / "sbom" / f"{image}.cdx.json"


def validate(text: str) -> dict:
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert errors is None, errors
    return json.loads(text)


def dpkg_query(docker_client, image_id: str, tmp_path: Path) -> set[str]:
    """purls of what the host's dpkg-query reports installed in the image's dpkg database
    (copied out with the docker CLI)."""
    admin = tmp_path / f"dpkg-{uuid.uuid4().hex[:6]}"
    admin.mkdir()
    container = subprocess.run(["docker", "create", image_id, "x"], capture_output=True, text=True, check=True)
    cid = container.stdout.strip()
    try:
        subprocess.run(["docker", "cp", f"{cid}:/var/lib/dpkg/status", str(admin / "status")], check=True)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=True)
    out = subprocess.run(
        [
            "dpkg-query",
            f"--admindir={admin}",
            "-W",
            "-f=${Package}\t${Version}\t${Architecture}\t${db:Status-Status}\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    purls = set()
    for line in out.splitlines():
        name, version, arch, status = line.split("\t")
        if status == "installed":
            purls.add(f"pkg:deb/debian/{name}@{version.replace('+', '%2B')}?arch={arch}")
    return purls


def purls(document: dict) -> set[str]:
    return {component["purl"] for component in document.get("components", [])}


def test_sbom_lists_what_dpkg_reports_and_the_python_packages_and_validates(project, docker_client, tmp_path):
    project.busybox_base("bb")
    deb_image(project, status=BIG_STATUS)
    assert len(BIG_STATUS) > (256 << 10)
    result = project.ok("sbom")
    assert {"build:deb", "sbom:deb", "sbom:bb"} <= result.executed, result.output
    document = validate(sbom_path(project, "deb").read_text())
    assert document["specVersion"] == "1.6"
    image_id = project.stamp("deb")["image_id"]
    expected = dpkg_query(docker_client, image_id, tmp_path)
    assert len(expected) == 604 and "pkg:deb/debian/libpam0g@1:1.5.2-6%2Bdeb12u1?arch=amd64" in expected, expected
    assert "pkg:deb/debian/tzdata@2024a-0%2Bdeb12u1?arch=all" in expected
    assert purls(document) == expected | PYTHON_PURLS
    # The image is the subject: its name, its ID, the engine's creation time.
    subject = document["metadata"]["component"]
    assert subject["type"] == "container" and subject["name"] == f"{project.namespace}/deb"
    assert subject["version"] == image_id and subject["hashes"] == [{"alg": "SHA-256", "content": image_id[7:]}]
    created = docker_client.inspect_image(image_id)["Created"]
    assert document["metadata"]["timestamp"][:19] == created[:19]
    # An image with neither a dpkg database nor Python: an SBOM of nothing, still valid.
    assert purls(validate(sbom_path(project, "bb").read_text())) == set()

    again = project.ok("sbom")
    assert again.executed == set(), again.output


def test_the_same_image_gives_the_same_bytes_and_a_damaged_sbom_is_made_again(project):
    project.busybox_base("bb")
    deb_image(project, python=False)
    project.ok("sbom")
    path = sbom_path(project, "deb")
    first = path.read_bytes()
    image_id = project.stamp("deb")["image_id"]

    # Forget the stamp: the build adopts the same image, the SBOM is its SBOM again, byte for byte.
    (project.root / "cache" / "images" / "deb.json").unlink()
    path.unlink()
    rebuilt = project.ok("sbom")
    assert "build:deb" in rebuilt.executed and rebuilt.images("adopted") == {"deb"}, rebuilt.output
    assert project.stamp("deb")["image_id"] == image_id
    assert path.read_bytes() == first

    # Truncated (a disk, a hand): one warning line, written again, the same bytes.
    path.write_bytes(first[: len(first) // 2])
    repaired = project.ok("sbom")
    assert repaired.executed == {"sbom:deb"}, repaired.output
    assert [line for line in repaired.stderr.splitlines() if "deb.cdx.json" in line] == [
        "ccp: warning: cache/sbom/deb.cdx.json is unreadable (not JSON); treating it as missing"
    ]
    assert path.read_bytes() == first
    # No temporary file is left beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["bb.cdx.json", "deb.cdx.json"]

    # A new image (a package upgraded): a new SBOM.
    project.write("dockerfiles/deb/status", STATUS.replace("12.4+deb12u5", "12.4+deb12u6"))
    changed = project.ok("sbom")
    assert "sbom:deb" in changed.executed and "sbom:bb" not in changed.executed, changed.output
    assert "pkg:deb/debian/base-files@12.4%2Bdeb12u6?arch=amd64" in purls(json.loads(path.read_text()))


# -- the registry and Artifactory ----------------------------------------------

needs_registry = pytest.mark.skipif(
    not (shutil.which("docker-registry") and shutil.which("skopeo")),
    reason="needs Debian's docker-registry and skopeo (apt-get install docker-registry skopeo apache2-utils)",
)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, docker_client):
    """A checkout (bb, app, deb) pushed once to a fresh registry, shared by the
    tests below (in their order: each leaves the registry as it found it)."""
    root = tmp_path_factory.mktemp("sbom-push")
    with RegistryServer(root / "registry", users={"ci": ENV["CCP_REGISTRY_PASSWORD"]}) as registry:
        namespace = f"ccptest-{uuid.uuid4().hex[:8]}"
        project = make_project(root / "proj", namespace, registry, images=("bb", "app"))
        deb_image(project)
        try:
            first = project.ok("push", env=ENV)
            yield project, registry, first
        finally:
            remove_namespace(docker_client, namespace)


def _record(project, image: str) -> dict:
    return json.loads((project.root / "cache" / "pushed" / f"{image}.json").read_text())


def _blob_uploads(registry: RegistryServer) -> int:
    return registry.log_path.read_text(errors="replace").count('method=PUT uri="/v2/')


@needs_registry
def test_push_attaches_the_sbom_under_the_cosign_tag_and_a_second_push_uploads_nothing(pushed, tmp_path):
    project, registry, first = pushed
    record = _record(project, "deb")
    tag = "sha256-" + record["digest"].partition(":")[2] + ".sbom"
    assert record["sbom_tag"] == tag and record["sbom_outcome"] == "attached", record
    reference = f"docker://{registry.host}/{project.namespace}/deb:{tag}"
    raw = json.loads(registry.skopeo("inspect", "--raw", reference).stdout)
    assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert [layer["mediaType"] for layer in raw["layers"]] == ["application/vnd.cyclonedx+json"]
    assert raw["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert json.loads(registry.skopeo("inspect", reference).stdout)["Digest"] == record["sbom_digest"]
    # The blob is the very file, and it validates.
    copied = tmp_path / "copied"
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", "--src-creds", f"ci:{ENV['CCP_REGISTRY_PASSWORD']}"]
        + [reference, f"dir:{copied}"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    layer = copied / raw["layers"][0]["digest"].partition(":")[2]
    assert layer.read_bytes() == sbom_path(project, "deb").read_bytes()
    validate(layer.read_text())
    assert f"SBOM attached as :{tag}" in first.stderr

    # Pushed again (its record lost): image and SBOM are present, nothing is uploaded.
    (project.root / "cache" / "pushed" / "deb.json").unlink()
    before = _blob_uploads(registry)
    again = project.ok("push", env=ENV)
    assert again.executed == {"push:deb", "publish"}, again.output  # publish reads the record anew
    assert _record(project, "deb")["sbom_outcome"] == "present"
    assert _record(project, "deb")["sbom_digest"] == record["sbom_digest"]
    assert _blob_uploads(registry) == before, "a second push uploaded something"


@needs_registry
def test_a_failed_sbom_upload_fails_the_push_with_one_line_naming_registry_and_image(pushed):
    project, registry, _ = pushed
    # The image is in the registry, its SBOM not (deleted by another client).
    tag = _record(project, "app")["sbom_tag"]
    registry.skopeo("delete", f"docker://{registry.host}/{project.namespace}/app:{tag}")
    (project.root / "cache" / "pushed" / "app.json").unlink()
    with EngineFaultProxy(registry.url, upstream_ca=registry.ca_path, tls_ca=registry.ca) as proxy:
        project.config["registry"]["url"] = proxy.host
        project.write_config()
        try:
            proxy.fail_when(10, 403, method="PUT", path=".sbom", agent="ccp-registry-client")
            failed = project.doit("push", env=ENV)
        finally:
            project.config["registry"]["url"] = registry.host
            project.write_config()
    assert failed.returncode != 0 and "Traceback" not in failed.output, failed.output
    lines = [line for line in failed.output.splitlines() if "SBOM of 'app'" in line]
    assert len(lines) == 1, failed.output
    assert f"SBOM of 'app' to {proxy.host}/{project.namespace}/app:sha256-" in lines[0]
    assert "access denied" in lines[0], lines[0]
    assert failed.summary["pushes"]["app"]["outcome"] == "failed"
    assert not (project.root / "cache" / "pushed" / "app.json").exists()
    # Once the registry takes it, the push completes.
    assert project.ok("push", env=ENV).summary["pushes"]["app"]["outcome"] == "present"
    assert _record(project, "app")["sbom_outcome"] == "attached"


@needs_registry
def test_artifacts_deploys_the_sboms(pushed):
    project, _, first = pushed
    with ArtifactoryServer(tokens={"tok-ci": "ci"}) as server:
        project.config["artifactory"] = {"url": server.url, "repository": "ci-generic"}
        project.write_config()
        (project.root / "cache" / "summary.json").write_text(json.dumps(first.summary))
        env = {**os.environ, **ENV, "CCP_ARTIFACTORY_TOKEN": "tok-ci", "CCP_BRANCH": "main", "BUILD_NUMBER": "3"}
        result = subprocess.run(
            [sys.executable, "-m", "doit", "artifacts"],
            cwd=project.root,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        prefix = f"{project.namespace}/main/3/sbom"
        for image in ("bb", "app", "deb"):
            deployed = server.content("ci-generic", f"{prefix}/{image}.cdx.json")
            assert deployed == sbom_path(project, image).read_bytes()
