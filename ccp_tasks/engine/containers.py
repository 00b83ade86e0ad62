"""Containers, exec, logs, archives, networks and volumes: what the check harness runs on."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ccp_tasks.core.errors import EngineNotFound
from ccp_tasks.engine.api import engine_errors
from ccp_tasks.engine.docker_ops import stream_archive
from ccp_tasks.engine.leftovers import remove_labelled


class Containers:
    def __init__(self, client) -> None:
        self._client = client

    # --- containers, exec, logs, archives, networks (structure and integration tests, the harness) ---

    # (section kept apart so that two branches can add methods without touching each other's lines)

    # --- volumes, top, and what else the pod runner needs ---

    def image_config(self, ref: str) -> dict:
        """The image's Config (Entrypoint, Cmd, User, Env, WorkingDir)."""
        with engine_errors(f"inspecting image {ref}"):
            return self._client.inspect_image(ref).get("Config") or {}

    def has_image(self, ref: str) -> bool:
        try:
            self.image_config(ref)
        except EngineNotFound:
            return False
        return True

    def import_image(self, data: bytes, repository: str, tag: str, changes: list[str]) -> None:
        """An image of one layer, the tar archive `data`, with Dockerfile `changes` (ENTRYPOINT, LABEL)."""
        with engine_errors(f"importing image {repository}:{tag}"):
            self._client.import_image_from_data(data, repository=repository, tag=tag, changes=changes)

    def create_volume(self, name: str, labels: dict[str, str], driver_opts: dict[str, str]) -> None:
        with engine_errors(f"creating volume {name}"):
            self._client.create_volume(name, driver="local", driver_opts=driver_opts, labels=labels)

    def network_gateway(self, network: str) -> str:
        """The address of this host on `network` ('' when the engine does not say)."""
        with engine_errors(f"inspecting network {network}"):
            config = self._client.inspect_network(network).get("IPAM", {}).get("Config") or [{}]
        return config[0].get("Gateway", "")

    def create_network(self, name: str, labels: dict[str, str]) -> None:
        with engine_errors(f"creating network {name}"):
            self._client.create_network(name, driver="bridge", labels=labels, check_duplicate=True)

    def create(
        self,
        name: str | None,
        image: str,
        labels: dict[str, str],
        config: dict[str, Any],
        host: dict[str, Any],
        network: str | None = None,
        aliases: list[str] | None = None,
    ) -> str:
        """Create (not start) a container; `config` and `host` are docker
        create's container and host settings (None values left out), `network`
        the one it is attached to, under `aliases`. Returns its ID."""
        with engine_errors(f"creating container {name or 'from ' + image}"):
            networking = None
            if network is not None:
                endpoint = self._client.create_endpoint_config(aliases=aliases)
                networking = self._client.create_networking_config({network: endpoint})
            host_config = self._client.create_host_config(**{k: v for k, v in host.items() if v is not None})
            created = self._client.create_container(
                name=name,
                image=image,
                labels=labels,
                host_config=host_config,
                networking_config=networking,
                use_config_proxy=False,
                **config,
            )
        return created["Id"]

    def start(self, container_id: str) -> None:
        with engine_errors(f"starting container {container_id[:12]}"):
            self._client.start(container_id)

    def state(self, container_id: str) -> dict:
        """The container's State (Running, ExitCode, OOMKilled, Pid)."""
        with engine_errors(f"inspecting container {container_id[:12]}"):
            return self._client.inspect_container(container_id)["State"]

    def address(self, container_id: str, network: str) -> str:
        """The container's IP address on `network`."""
        with engine_errors(f"inspecting container {container_id[:12]}"):
            settings = self._client.inspect_container(container_id)["NetworkSettings"]
        return settings["Networks"][network]["IPAddress"]

    def exec(self, container_id: str, command: list[str]) -> tuple[int | None, str]:
        """(exit code, stdout and stderr) of `command` run in the container."""
        with engine_errors(f"running {command[:1]} in container {container_id[:12]}"):
            exec_id = self._client.exec_create(container_id, command, stdout=True, stderr=True)["Id"]
            output = self._client.exec_start(exec_id)
            code = self._client.exec_inspect(exec_id).get("ExitCode")
        return code, output.decode("utf-8", "replace")

    def stop(self, container_id: str, timeout: int) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        with engine_errors(f"stopping container {container_id[:12]}"):
            self._client.stop(container_id, timeout=timeout)

    def top_pids(self, container_id: str) -> list[str]:
        """The host PIDs of the container's processes."""
        with engine_errors(f"listing the processes of container {container_id[:12]}"):
            top = self._client.top(container_id)
        column = top["Titles"].index("PID")
        return [row[column] for row in top["Processes"] or []]

    def output(self, container_id: str) -> str:
        """Everything the container wrote to stdout and stderr ('' when it is gone)."""
        try:
            with engine_errors(f"reading the log of container {container_id[:12]}"):
                return self._client.logs(container_id, stdout=True, stderr=True).decode("utf-8", "replace")
        except EngineNotFound:
            return ""

    def remove(self, container_id: str) -> None:
        """Remove the container and its anonymous volumes, running or not; gone already is fine."""
        try:
            with engine_errors(f"removing container {container_id[:12]}"):
                self._client.remove_container(container_id, force=True, v=True)
        except EngineNotFound:
            pass

    @contextmanager
    def archive(self, container_id: str, path: str) -> Iterator[tarfile.TarFile | None]:
        """`path` in the container's file system as a streaming tar archive
        (read only as far as the caller reads it), or None when there is no such path."""
        what = f"reading {path} from container {container_id[:12]}"
        try:
            with engine_errors(what):
                chunks, _ = self._client.get_archive(container_id, path)
        except EngineNotFound:
            yield None
            return
        try:
            with engine_errors(what):
                yield stream_archive(chunks)
        finally:
            chunks.close()

    def remove_labelled(self, labels: dict[str, str], what: str = "", spare_run: str | None = None) -> int:
        """Remove the containers (pod holders last), volumes and networks
        carrying all of `labels`; `what` says whose they are, for the error."""
        with engine_errors(what or "removing what carries " + ", ".join(f"{k}={v}" for k, v in labels.items())):
            return remove_labelled(self._client, labels, spare_run)
