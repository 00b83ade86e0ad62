"""Images on the engine: inspect, tag, remove, push, pull, and a file out of one.

Every method turns an engine failure into EngineError (EngineNotFound when the
engine says there is no such image) naming the image or reference asked about.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator
from typing import IO, Any, cast

from ccp_tasks.core.errors import EngineError, EngineNotFound
from ccp_tasks.core.state import DIGEST_LABEL
from ccp_tasks.engine.docker_ops import engine_errors


def labels_of(info: dict) -> dict[str, str]:
    """The labels of an image, from what Images.inspect gave."""
    return (info.get("Config") or {}).get("Labels") or {}


class _ChunkReader(io.RawIOBase):
    """The chunks of a streamed answer as a file, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class Images:
    def __init__(self, client: Any) -> None:
        self._client = client

    def inspect(self, ref: str) -> dict:
        """The engine's record of `ref` (an image ID or a reference)."""
        with engine_errors(f"inspecting image {ref}"):
            return self._client.inspect_image(ref)

    def id_of(self, ref: str) -> str | None:
        """The image ID `ref` names, or None when the engine has no such image."""
        try:
            return self.inspect(ref)["Id"]
        except EngineNotFound:
            return None

    def adoptable(self, digest: str, ref: str) -> str | None:
        """The image `ref` names, if it was built from inputs with this digest.

        Only the reference itself is asked (one inspect): labels are inherited, so
        intermediate stages of a multi-stage build, or any image built FROM ours,
        carry our digest label too; the image tagged in our own repository is the
        image itself. Searching the whole store for the label would cost as much as
        listing it."""
        try:
            found = self.inspect(ref)
        except EngineNotFound:
            return None
        return found["Id"] if labels_of(found).get(DIGEST_LABEL) == digest else None

    def tag(self, image_id: str, ref: str) -> None:
        """Point `ref` (`repository:tag`) at `image_id`, wherever it pointed before."""
        repository, _, tag_name = ref.rpartition(":")
        with engine_errors(f"tagging {image_id} as {ref}"):
            tagged = self._client.tag(image_id, repository, tag_name, force=True)
        if not tagged:
            raise EngineError(f"the engine refused to tag {image_id} as {ref}")

    def remove(self, ref: str) -> None:
        """Remove the reference `ref` (the image goes with its last reference; its parents stay)."""
        with engine_errors(f"removing image {ref}"):
            self._client.remove_image(ref, noprune=True)

    def untag_if(self, ref: str, image_id: str) -> bool:
        """Remove `ref` while it still names `image_id` (another run may have
        moved it); whether it was removed. Gone already, moved, or refused: the
        reference is not ours to remove any more, and nothing is raised."""
        try:
            if self.id_of(ref) == image_id:
                self.remove(ref)
                return True
        except EngineError:
            pass
        return False

    def built_on(self, image_id: str, parent_id: str) -> bool:
        """Whether `image_id` extends `parent_id`: the parent's layers are the first of its own."""
        child = (self.inspect(image_id).get("RootFS") or {}).get("Layers") or []
        parent = (self.inspect(parent_id).get("RootFS") or {}).get("Layers") or []
        return child[: len(parent)] == parent

    def push(self, repository: str, tag: str, auth_config: dict | None = None) -> Iterator[dict]:
        """Push `repository:tag`, yielding the engine's status chunks as they come.
        A failed push is a chunk with `error` inside a successful answer: the
        caller reads them all."""
        with engine_errors(f"pushing {repository}:{tag}"):
            yield from self._client.push(repository, tag=tag, stream=True, decode=True, auth_config=auth_config)

    def pull(self, repository: str, tag: str, auth_config: dict | None = None) -> Iterator[dict]:
        """Pull `repository:tag`, yielding the engine's status chunks as they come (see push)."""
        with engine_errors(f"pulling {repository}:{tag}"):
            yield from self._client.pull(repository, tag=tag, stream=True, decode=True, auth_config=auth_config)

    def listing(self) -> list[dict]:
        """Every image the engine holds (GET /images/json); docker_ops.list_images is the no-op's cheaper way."""
        with engine_errors("listing the engine's images"):
            return self._client.images()

    def read_file(self, image: str, path: str, labels: dict[str, str]) -> bytes | None:
        """The bytes of the regular file at `path` in `image`, or None when the
        image has none. Read through a container that is created but never
        started: the image needs no shell, and nothing runs. The container
        carries `labels` (see leftovers.py): a kill between its creation and its
        removal leaves it for the next run to sweep."""
        with engine_errors(f"creating a container from {image} to read {path}"):
            container = self._client.create_container(
                image, command=["/ccp-manifest-never-runs"], entrypoint=[], labels=labels
            )
        try:
            try:
                with engine_errors(f"reading {path} from image {image}"):
                    stream, _ = self._client.get_archive(container["Id"], path)
                    data = b"".join(stream)
            except EngineNotFound:
                return None
        finally:
            with engine_errors(f"removing the container that read {path} from image {image}"):
                self._client.remove_container(container["Id"], force=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            member = archive.extractfile(archive.getmembers()[0])
            return member.read() if member else None

    def read_files(self, image: str, wanted: Callable[[str], int], labels: dict[str, str]) -> dict[str, bytes]:
        """path -> the first `wanted(path)` bytes of every regular file of `image`
        (by absolute path) for which that is not 0. For files whose place is not known
        beforehand (a Python package can live in any site-packages): the
        filesystem of a created, never started container is streamed once and
        only the wanted files are kept, so nothing runs and memory stays
        bounded whatever the image holds. Labelled as read_file's container."""
        with engine_errors(f"creating a container from {image} to read its files"):
            container = self._client.create_container(
                image, command=["/ccp-manifest-never-runs"], entrypoint=[], labels=labels
            )
        found: dict[str, bytes] = {}
        try:
            with engine_errors(f"reading the filesystem of image {image}"):
                stream = io.BufferedReader(_ChunkReader(iter(self._client.export(container["Id"]))), 1 << 16)
                try:
                    with tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|") as archive:
                        for member in archive:
                            path = "/" + member.name.removeprefix("./").lstrip("/")
                            limit = wanted(path) if member.isreg() else 0
                            if limit:
                                handle = archive.extractfile(member)
                                found[path] = handle.read(limit) if handle else b""
                except tarfile.TarError as exc:
                    raise EngineError(f"reading the filesystem of image {image}: not a tar stream ({exc})") from None
        finally:
            with engine_errors(f"removing the container that read the files of image {image}"):
                self._client.remove_container(container["Id"], force=True)
        return found
