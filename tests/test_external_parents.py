"""External parents pinned by digest, on the real engine and a real local
registry (Debian's docker-registry, plain http on loopback, which the engine
pushes to without configuration): a tiny busybox image is pushed as the
external parent, and moved by pushing another image under the same tag."""

from __future__ import annotations

import io
import re
import shutil
import tarfile

import pytest
from conftest import BUSYBOX, child_template

from tests.registry_server import RegistryServer

pytestmark = pytest.mark.skipif(not shutil.which("docker-registry"), reason="needs Debian's docker-registry")


def _context(namespace: str, motd: str) -> io.BytesIO:
    """A build context (tar) of an image of busybox and an /etc/motd, labelled for the test's cleanup."""
    dockerfile = (
        f"FROM scratch\nCOPY busybox /bin/busybox\nCOPY motd /etc/motd\nLABEL ccp.test.namespace={namespace}\n"
    ).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data, mode in (
            ("Dockerfile", dockerfile, 0o644),
            ("busybox", BUSYBOX.read_bytes(), 0o755),
            ("motd", motd.encode(), 0o644),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


class External:
    """The external parent `<registry>/<namespace>-ext/tiny:1`, made and pushed by the test."""

    def __init__(self, docker_client, registry: RegistryServer | None, namespace: str):
        self.client, self.namespace = docker_client, namespace
        # No registry: a Docker Hub name, which this machine cannot reach.
        self.repository = f"{registry.host}/{namespace}-ext/tiny" if registry else f"{namespace}-ext/tiny"
        self.ref = f"{self.repository}:1"
        self.image_ids: list[str] = []

    def push(self, motd: str) -> str:
        """Build an image whose /etc/motd says `motd`, push it as the reference; its registry digest."""
        image_id = self.build(motd)
        self.client.tag(image_id, self.repository, "1")
        chunks = list(self.client.push(self.repository, tag="1", stream=True, decode=True))
        assert not [chunk for chunk in chunks if "error" in chunk], chunks
        return next(chunk["aux"]["Digest"] for chunk in chunks if "Digest" in (chunk.get("aux") or {}))

    def build(self, motd: str) -> str:
        chunks = list(
            self.client.build(
                fileobj=_context(self.namespace, motd), custom_context=True, decode=True, nocache=True, rm=True
            )
        )
        ids = [chunk["aux"]["ID"] for chunk in chunks if "ID" in (chunk.get("aux") or {})]
        assert ids, chunks
        self.image_ids.append(ids[-1])
        return ids[-1]

    def cleanup(self):
        for entry in self.client.images():
            for ref in [*(entry.get("RepoTags") or []), *(entry.get("RepoDigests") or [])]:
                if ref.startswith(self.repository):
                    try:
                        self.client.remove_image(ref, force=True)
                    except Exception:
                        pass


@pytest.fixture
def registry(tmp_path):
    with RegistryServer(tmp_path / "registry", auth="none", tls=False) as server:
        yield server


@pytest.fixture
def ext(project, registry, docker_client):
    parent = External(docker_client, registry, project.namespace)
    yield parent
    parent.cleanup()


def _on_external(project, ext: External, config_ref: str | None = None):
    """child and child2 on the external parent, grand on child, and bb -> other beside them."""
    project.config["external_images"] = [config_ref or ext.ref]
    project.write_config()
    project.busybox_base("bb")
    project.image("other", child_template("bb", "COPY motd /etc/other"), {"motd": "other\n"})
    project.image("child", f"FROM {ext.ref}\n{{% include 'header.j2' %}}\nCOPY motd /child\n", {"motd": "child\n"})
    project.image("child2", f"FROM {ext.ref}\n{{% include 'header.j2' %}}\nCOPY motd /child2\n", {"motd": "two\n"})
    project.image("grand", child_template("child", "COPY motd /grand"), {"motd": "grand\n"})


def _first_line(output: str, pattern: str) -> list[str]:
    return [line for line in output.splitlines() if re.search(pattern, line)]


def test_a_moved_external_parent_rebuilds_exactly_its_children_once(project, ext, registry, docker_client):
    first_digest = ext.push("one\n")
    _on_external(project, ext)
    first = project.ok()
    assert first.built == {"bb", "other", "child", "child2", "grand"}, first.output
    child = docker_client.inspect_image(project.stamp("child")["image_id"])
    assert child["Config"]["Labels"][f"io.ccp.parent.{ext.ref}.digest"] == first_digest
    assert child["RootFS"]["Layers"][: len(ext_layers := _layers(docker_client, ext.image_ids[0]))] == ext_layers
    assert project.ok().rebuilt == set()  # resolved again (one HEAD), nothing moved

    second_digest = ext.push("two\n")
    assert second_digest != first_digest
    moved = project.ok()
    assert moved.rebuilt == {"child", "child2", "grand"}, moved.output
    assert moved.built == {"child", "child2", "grand"}
    lines = _first_line(moved.output, "moved:")
    assert lines == [f"external parent {ext.ref} moved: {first_digest[:19]}… → {second_digest[:19]}…"], moved.output
    child = docker_client.inspect_image(project.stamp("child")["image_id"])
    assert child["Config"]["Labels"][f"io.ccp.parent.{ext.ref}.digest"] == second_digest
    assert child["RootFS"]["Layers"][: len(layers := _layers(docker_client, ext.image_ids[1]))] == layers

    heads_before = _manifest_heads(registry)
    again = project.ok()
    assert again.rebuilt == set() and not _first_line(again.output, "moved:"), again.output
    assert _manifest_heads(registry) - heads_before == 1  # the no-op's whole cost at the registry


def _manifest_heads(registry: RegistryServer) -> int:
    """The manifest HEADs the registry has answered, by its access log."""
    return len(re.findall(r'"HEAD /v2/[^"]*/manifests/', registry.log_path.read_text(errors="replace")))


def _layers(docker_client, image_id: str) -> list[str]:
    return docker_client.inspect_image(image_id)["RootFS"]["Layers"]


def test_the_child_builds_on_the_resolved_digest_when_the_local_tag_moved(project, ext, docker_client):
    """Someone tags another image as the reference on this engine: the registry's
    digest is what the child's inputs name, so it is built on that, not on the tag."""
    ext.push("one\n")
    _on_external(project, ext)
    project.ok()
    impostor = ext.build("impostor\n")
    docker_client.tag(impostor, ext.repository, "1")
    project.doit("forget", "build:child")
    result = project.ok("build:child")
    child = project.stamp("child")["image_id"]
    assert _layers(docker_client, child)[: len(_layers(docker_client, ext.image_ids[0]))] == _layers(
        docker_client, ext.image_ids[0]
    ), result.output
    assert _layers(docker_client, impostor)[-1] not in _layers(docker_client, child)


def test_a_damaged_record_is_resolved_again_and_rebuilds_nothing(project, ext):
    ext.push("one\n")
    _on_external(project, ext)
    project.ok()
    records = list((project.root / "cache" / "external").glob("*.json"))
    assert len(records) == 1
    for damage in ("", '{"ref": 1}', "[]", '{"ref": "x", "digest"'):
        records[0].write_text(damage)
        result = project.ok()
        assert result.rebuilt == set(), result.output
        assert "external:" + ext.ref in result.executed
    records[0].unlink()
    assert project.ok().rebuilt == set()


def test_a_pin_is_used_without_the_registry_and_a_wrong_one_is_one_error_line(project, ext, registry):
    digest = ext.push("one\n")
    _on_external(project, ext, f"{ext.ref}@{digest}")
    assert project.ok().built == {"bb", "other", "child", "child2", "grand"}
    ext.push("two\n")  # the tag moves; the pin holds
    assert project.ok().rebuilt == set()

    wrong = "sha256:" + "0" * 64
    project.config["external_images"] = [f"{ext.ref}@{wrong}"]
    project.write_config()
    failed = project.doit("--continue")
    assert failed.returncode != 0
    errors = _first_line(failed.output, "is pinned to")
    assert len(errors) == 1, failed.output
    assert ext.ref in errors[0] and wrong in errors[0] and "Traceback" not in failed.output
    assert failed.summary, failed.output
    assert {name for name, entry in failed.summary["images"].items() if entry["outcome"] == "blocked"} >= {
        "child",
        "child2",
        "grand",
    }
    assert failed.summary["images"]["other"]["outcome"] == "up to date"


def test_a_malformed_pin_is_a_config_error(project, ext):
    _on_external(project, ext, f"{ext.ref}@sha256:abc")
    result = project.doit()
    assert result.returncode != 0
    assert "external_images[0]" in result.output and "Traceback" not in result.output


def test_an_unreachable_registry_uses_the_engines_digest_with_a_warning(project, ext, registry):
    digest = ext.push("one\n")
    _on_external(project, ext)
    project.ok()
    registry.stop()
    result = project.ok()
    warnings = _first_line(result.output, "warning: external parent")
    assert len(warnings) == 1 and ext.ref in warnings[0], result.output
    assert result.rebuilt == set()  # the engine's RepoDigests give the same digest
    assert digest[:19] in warnings[0]


def test_a_local_only_parent_without_a_registry_builds_on_its_image_id(project, docker_client):
    """A Docker Hub name (unreachable from here) that only this engine has: its image ID is the digest."""
    ext = External(docker_client, None, project.namespace)
    try:
        image_id = ext.build("local\n")
        docker_client.tag(image_id, ext.repository, "1")
        _on_external(project, ext)
        result = project.ok("build:child")
        assert _first_line(result.output, "warning: external parent"), result.output
        labels = docker_client.inspect_image(project.stamp("child")["image_id"])["Config"]["Labels"]
        assert labels[f"io.ccp.parent.{ext.ref}.digest"] == image_id
        docker_client.remove_image(ext.ref, force=True)
        project.doit("forget", f"external:{ext.ref}")
        for record in (project.root / "cache" / "external").glob("*.json"):
            record.unlink()
        failed = project.doit("--continue", "build:child")
        assert failed.returncode != 0
        errors = _first_line(failed.output, "this engine has no copy")
        assert len(errors) == 1 and ext.ref in errors[0], failed.output
        assert failed.summary["images"]["child"]["outcome"] == "blocked"
    finally:
        ext.cleanup()
