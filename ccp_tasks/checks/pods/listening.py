"""Which container of the pod listens where: the pod's TCP listening sockets
from its /proc tables on this host, each attributed to the container whose
process holds it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ccp_tasks.checks.integration.ports import DOCKER_DNS_ADDRESS, parse_proc_net
from ccp_tasks.checks.pods.restarts import Instance
from ccp_tasks.core.errors import EngineError
from ccp_tasks.engine.containers import Containers


def listening(
    containers: Containers, holder_id: str, instances: Iterable[Instance]
) -> tuple[dict[str | None, dict[int, set[str]]], bool]:
    """Per container name (None: owner unknown), port -> addresses its
    processes listen on, read from the pod's /proc tables on this host;
    and whether owners could be told apart."""
    pid = containers.inspect(holder_id)["State"].get("Pid")
    sockets = []  # (address, port, inode)
    for name in ("tcp", "tcp6"):
        try:
            text = Path(f"/proc/{pid}/net/{name}").read_text()
        except OSError:
            continue
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":
                continue
            parsed = parse_proc_net("header\n" + line, ipv6=name == "tcp6")
            if parsed and parsed[0][0] != DOCKER_DNS_ADDRESS:
                sockets.append((parsed[0][0], parsed[0][1], fields[9]))
    owners: dict[str, str] = {}
    attributed = True
    for instance in instances:
        if instance.state != "running":
            continue
        try:
            pids = containers.top_pids(instance.container_id)
        except EngineError:
            attributed = False
            continue
        for process in pids:
            try:
                for fd in os.listdir(f"/proc/{process}/fd"):
                    link = os.readlink(f"/proc/{process}/fd/{fd}")
                    if link.startswith("socket:["):
                        owners.setdefault(link[8:-1], instance.name)
            except OSError:
                attributed = False
    found: dict[str | None, dict[int, set[str]]] = {}
    for address, port, inode in sockets:
        owner = owners.get(inode)
        found.setdefault(owner, {}).setdefault(port, set()).add(address)
    return found, attributed
