"""Containers, exec, logs, archives, networks and volumes: what the check harness runs on.

Every method goes to the engine once (or a few times for one step, such as
an exec) inside `engine_errors(...)` naming the container, image or network,
so a failure comes back as EngineError (EngineNotFound when the engine said
it does not exist) with the docker-py exception as `__cause__`. Methods whose
point is that something is gone (remove, kill) take its being gone already as
done. docker-py is imported only when a method runs: a no-op run that never
needs the engine does not pay for it.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ccp_tasks.core.errors import EngineError, EngineNotFound
from ccp_tasks.engine.docker_ops import engine_errors, stream_archive


def _short(container: str) -> str:
    # An ID is 64 hex digits; its first 12 are how `docker ps` names it.
    return container[:12] if len(container) == 64 else container


class NotRunning(EngineError):
    """The engine refused an exec or a kill because the container is not running
    (it ended, or is gone): the check's failure, not the engine's."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.reason = reason


# Every run's things carry its id; a pod's carry their role (holder, init,
# container, service), and a pod is taken down holder last.
RUN_LABEL = "io.ccp.run"
ROLE_LABEL = "io.ccp.pod.role"


def _label_filters(labels: Mapping[str, str]) -> dict[str, list[str]]:
    return {"label": [f"{key}={value}" for key, value in labels.items()]}


class Containers:
    def __init__(self, client: Any) -> None:  # docker-py's APIClient
        self._client = client

    @classmethod
    def of(cls, engine: object) -> Containers:
        """The Containers of an Engine, a Containers itself, or a docker-py
        APIClient wrapped (what the glue, kube.run_pod and the tests still pass)."""
        if isinstance(engine, Containers):
            return engine
        found = getattr(engine, "containers", None)
        return found if isinstance(found, Containers) else cls(engine)

    # --- containers, exec, logs, archives, networks (structure and integration tests, the harness) ---

    def create(
        self,
        image: str,
        *,
        labels: Mapping[str, str],
        command: Sequence[str] | str | None = None,
        entrypoint: Sequence[str] | str | None = None,
        environment: Mapping[str, str] | None = None,
        name: str | None = None,
        hostname: str | None = None,
        user: str | None = None,
        binds: Sequence[str] = (),
        network: str | None = None,
        aliases: Sequence[str] = (),
        use_config_proxy: bool = True,
        host_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> str:
        """Create (not start) a container of `image`; its ID. `binds` are
        docker's "host:container[:ro]"; `network` (with `aliases`) is the one
        it joins instead of the default bridge; `use_config_proxy=False` keeps
        ~/.docker/config.json's proxy variables out; `host_options` go to the
        host config, `options` to the create call as docker-py names them.
        EngineNotFound when the image (or the network) does not exist."""
        client = self._client
        with engine_errors(f"creating a container of {image}"):
            host_config = client.create_host_config(binds=list(binds) or None, **dict(host_options or {}))
            networking = None
            if network is not None:
                networking = client.create_networking_config(
                    {network: client.create_endpoint_config(aliases=list(aliases) or None)}
                )
            created = client.create_container(
                image=image,
                command=command,
                entrypoint=entrypoint,
                environment=dict(environment) if environment else None,
                user=user or None,
                hostname=hostname,
                labels=dict(labels),
                name=name,
                host_config=host_config,
                networking_config=networking,
                use_config_proxy=use_config_proxy,
                **options,
            )
        return created["Id"]

    def start(self, container: str) -> None:
        with engine_errors(f"starting container {_short(container)}"):
            self._client.start(container)

    def start_refusal(self, container: str) -> str:
        """Start the container: "" when it started, else the engine's one-line
        reason for refusing its command (not found, not executable), which a
        check reports as its own failure. A lost engine is still EngineError."""
        from docker.errors import APIError

        with engine_errors(f"starting container {_short(container)}"):
            try:
                self._client.start(container)
            except APIError as exc:
                text = str(exc.explanation or exc).strip()
                return text.splitlines()[0] if text else type(exc).__name__
        return ""

    def wait(self, container: str, timeout: float) -> int | None:
        """Wait until the container ends: its exit code, or None after `timeout` seconds."""
        from requests.exceptions import ConnectionError as RequestsConnectionError
        from requests.exceptions import Timeout

        with engine_errors(f"waiting for container {_short(container)}"):
            try:
                status = self._client.wait(container, timeout=timeout)
            except (Timeout, RequestsConnectionError) as exc:
                # urllib3 reports a read timeout as a ConnectionError saying so.
                if isinstance(exc, Timeout) or "timed out" in str(exc).lower():
                    return None
                raise
        return int(status.get("StatusCode", -1))

    def kill(self, container: str) -> None:
        """Kill the container; one that ended or is gone meanwhile is fine."""
        from docker.errors import APIError

        with engine_errors(f"killing container {_short(container)}"):
            try:
                self._client.kill(container)
            except APIError as exc:
                if exc.status_code not in (404, 409):  # 409: not running
                    raise

    def stop(self, container: str, timeout: float) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; one that is gone is fine."""
        from docker.errors import NotFound

        with engine_errors(f"stopping container {_short(container)}"):
            try:
                self._client.stop(container, timeout=int(timeout))
            except NotFound:
                pass

    def remove(self, container: str) -> bool:
        """Remove the container, running or not, with its anonymous volumes
        (an image's VOLUMEs make some, which would outlive it). False when it
        was gone already."""
        from docker.errors import NotFound

        with engine_errors(f"removing container {_short(container)}"):
            try:
                self._client.remove_container(container, force=True, v=True)
            except NotFound:
                return False
        return True

    def inspect(self, container: str) -> dict:
        with engine_errors(f"inspecting container {_short(container)}"):
            return self._client.inspect_container(container)

    def labelled(self, labels: Mapping[str, str]) -> list[dict]:
        """Every container (running or not) carrying all of `labels`."""
        with engine_errors("listing containers by label"):
            return self._client.containers(all=True, filters=_label_filters(labels))

    def logs(self, container: str, *, stdout: bool = True, stderr: bool = True) -> bytes:
        with engine_errors(f"reading the log of container {_short(container)}"):
            return self._client.logs(container, stdout=stdout, stderr=stderr)

    def exec_run(self, container: str, command: Sequence[str] | str, user: str | None = None) -> tuple[int, bytes]:
        """Run `command` in the running container: (exit code, stdout and
        stderr as they came). NotRunning when the container ended or is gone."""
        from docker.errors import APIError

        what = f"running {command if isinstance(command, str) else ' '.join(command)!r} in {_short(container)}"
        with engine_errors(what):
            try:
                exec_id = self._client.exec_create(container, command, user=user or "", stdout=True, stderr=True)
            except APIError as exc:
                if exc.status_code in (404, 409):
                    raise NotRunning(what, str(exc.explanation or exc)) from exc
                raise
            output = self._client.exec_start(exec_id["Id"])
            code = self._client.exec_inspect(exec_id["Id"]).get("ExitCode")
        return (code if code is not None else -1), output

    def get_archive(self, container: str, path: str) -> _Chunks:
        """The tar stream of `path` in the container, as chunks (close them when
        done). EngineNotFound when the path does not exist."""
        with engine_errors(f"reading {path} from container {_short(container)}"):
            chunks, _stat = self._client.get_archive(container, path)
        return _Chunks(chunks, f"reading {path} from container {_short(container)}")

    def put_archive(self, container: str, path: str, data: bytes) -> None:
        """Unpack the tar `data` into directory `path` of the container."""
        with engine_errors(f"writing into {path} of container {_short(container)}"):
            if not self._client.put_archive(container, path, data):
                raise EngineError(f"writing into {path} of container {_short(container)}: the engine refused")

    def commit(self, container: str) -> str:
        """The container's file system and configuration (labels included) as a new image; its ID."""
        with engine_errors(f"committing container {_short(container)}"):
            return self._client.commit(container)["Id"]

    def inspect_image(self, image: str) -> dict:
        """EngineNotFound when no image has that ID or reference."""
        with engine_errors(f"inspecting image {image}"):
            return self._client.inspect_image(image)

    def images(self, labels: Mapping[str, str]) -> list[dict]:
        """The images carrying all of `labels` (listing costs seconds on a large engine)."""
        with engine_errors("listing images by label"):
            return self._client.images(filters=_label_filters(labels))

    def remove_image(self, image: str) -> bool:
        """Remove an image this run made, leaving its parents (noprune: the
        parent may be the untagged image under test). False when it was gone."""
        from docker.errors import NotFound

        with engine_errors(f"removing image {image}"):
            try:
                self._client.remove_image(image, noprune=True)
            except NotFound:
                return False
        return True

    def create_network(self, name: str, labels: Mapping[str, str]) -> str:
        """A new bridge network; its ID."""
        with engine_errors(f"creating network {name}"):
            return self._client.create_network(name, driver="bridge", labels=dict(labels), check_duplicate=True)["Id"]

    def connect_network(self, network: str, container: str, aliases: Sequence[str] = ()) -> None:
        with engine_errors(f"connecting container {_short(container)} to network {network}"):
            self._client.connect_container_to_network(container, network, aliases=list(aliases) or None)

    def remove_network(self, network: str) -> bool:
        """False when it was gone already."""
        from docker.errors import NotFound

        with engine_errors(f"removing network {network}"):
            try:
                self._client.remove_network(network)
            except NotFound:
                return False
        return True

    def networks(self, labels: Mapping[str, str]) -> list[dict]:
        with engine_errors("listing networks by label"):
            return self._client.networks(filters=_label_filters(labels))

    def remove_labelled(self, labels: Mapping[str, str], spare_run: str | None = None) -> int:
        """Remove every container (pod holders last), volume and network
        carrying all of `labels`, except run `spare_run`'s: the one sweep
        (leftovers.sweep and the harness call it). How many were removed."""
        with engine_errors("removing what carries the labels " + ", ".join(f"{k}={v}" for k, v in labels.items())):
            return self._remove_labelled(dict(labels), spare_run)

    def _remove_labelled(self, labels: dict[str, str], spare_run: str | None) -> int:
        from docker.errors import NotFound

        client = self._client

        def spared(entry) -> bool:
            return spare_run is not None and (entry.get("Labels") or {}).get(RUN_LABEL) == spare_run

        filters = _label_filters(labels)
        removed = 0
        found = [c for c in client.containers(all=True, filters=filters) if not spared(c)]
        # The holder owns the network namespace the pod's other containers joined.
        found.sort(key=lambda c: (c.get("Labels") or {}).get(ROLE_LABEL) == "holder")
        for entry in found:
            try:
                client.remove_container(entry["Id"], force=True, v=True)
                removed += 1
            except NotFound:
                pass
        for volume in (client.volumes(filters=filters) or {}).get("Volumes") or []:
            if not spared(volume):
                try:
                    client.remove_volume(volume["Name"], force=True)
                    removed += 1
                except NotFound:
                    pass
        for network in client.networks(filters=filters):
            if not spared(network):
                try:
                    client.remove_network(network["Id"])
                    removed += 1
                except NotFound:
                    pass
        return removed

    # (section kept apart so that two branches can add methods without touching each other's lines)

    # --- volumes, top, and what else the pod runner needs ---

    def import_image(self, data: bytes, repository: str, tag: str, changes: Sequence[str]) -> None:
        """An image of one layer, the tar archive `data`, with Dockerfile `changes` (ENTRYPOINT, LABEL)."""
        with engine_errors(f"importing image {repository}:{tag}"):
            self._client.import_image_from_data(data, repository=repository, tag=tag, changes=list(changes))

    def create_volume(self, name: str, labels: Mapping[str, str], driver_opts: Mapping[str, str]) -> None:
        """A volume of the local driver (`driver_opts`: a tmpfs one, for a pod's medium: Memory emptyDir)."""
        with engine_errors(f"creating volume {name}"):
            self._client.create_volume(name, driver="local", driver_opts=dict(driver_opts), labels=dict(labels))

    def network_gateway(self, network: str) -> str:
        """The address of this host on `network` ('' when the engine does not say)."""
        with engine_errors(f"inspecting network {network}"):
            config = self._client.inspect_network(network).get("IPAM", {}).get("Config") or [{}]
        return config[0].get("Gateway", "")

    def top_pids(self, container: str) -> list[str]:
        """The host PIDs of the container's processes."""
        with engine_errors(f"listing the processes of container {_short(container)}"):
            top = self._client.top(container)
        column = top["Titles"].index("PID")
        return [row[column] for row in top["Processes"] or []]

    @contextmanager
    def archive(self, container: str, path: str) -> Iterator[tarfile.TarFile | None]:
        """`path` in the container's file system as a streaming tar archive
        (read only as far as the caller reads it), or None when there is no such path."""
        try:
            chunks = self.get_archive(container, path)
        except EngineNotFound:
            yield None
            return
        try:
            yield stream_archive(chunks)
        finally:
            chunks.close()


class _Chunks:
    """get_archive's chunks, whose reading also maps engine failures."""

    def __init__(self, chunks, what: str) -> None:
        self._chunks = chunks
        self._what = what

    def __iter__(self) -> _Chunks:
        return self

    def __next__(self) -> bytes:
        with engine_errors(self._what):
            chunk = next(self._chunks, None)
        if chunk is None:
            raise StopIteration
        return chunk

    def close(self) -> None:
        self._chunks.close()
