"""Which TCP ports a running container listens on, and whether this host reaches them."""

from __future__ import annotations

import socket
from collections.abc import Collection, Sequence
from pathlib import Path

from ccp_tasks.checks.records import CheckResult
from ccp_tasks.core.net import is_loopback
from ccp_tasks.engine.containers import Containers, NotRunning

# Docker's embedded DNS server listens inside every container on a user-defined
# network; it is the engine's, not the service's.
DOCKER_DNS_ADDRESS = "127.0.0.11"


def can_connect(ip: str, port: int, timeout: float = 1.0) -> str | None:
    """None when ip:port accepts a TCP connection, else why not."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "refuses connections"
    except TimeoutError:
        return "does not answer"
    except OSError as exc:
        return exc.strerror or str(exc)


def parse_proc_net(text: str, ipv6: bool) -> list[tuple[str, int]]:
    """(address, port) of each LISTEN socket in a /proc/net/tcp{,6} table."""
    import ipaddress

    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != "0A":
            continue
        address_hex, _, port_hex = fields[1].partition(":")
        try:
            raw = bytes.fromhex(address_hex)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address: ipaddress.IPv4Address | ipaddress.IPv6Address
            if ipv6:
                address = ipaddress.IPv6Address(raw)
                address = address.ipv4_mapped or address
            else:
                address = ipaddress.IPv4Address(raw)
            found.append((str(address), int(port_hex, 16)))
        except ValueError:
            continue
    return found


def exec_text(
    engine: object, container_id: str, command: Sequence[str] | str, user: str | None = None
) -> tuple[int, str]:
    code, output = Containers.of(engine).exec_run(container_id, command, user)
    return code, output.decode("utf-8", "replace")


def listening_ports(client: object, container_id: str) -> dict[int, set[str]]:
    """Port -> addresses the container listens on, from its own /proc/net tables."""
    tables = {}
    for name in ("tcp", "tcp6"):
        try:
            code, output = exec_text(client, container_id, ["cat", f"/proc/net/{name}"])
        except NotRunning as exc:
            raise OSError(f"cannot read the container's listening sockets: {exc.reason}") from exc
        if code == 0:
            tables[name] = output
    if "tcp" not in tables:
        # No `cat` in the image (distroless, scratch): the engine is local, so
        # the same tables are readable through the container's process on this host.
        pid = Containers.of(client).inspect(container_id)["State"].get("Pid")
        for name in ("tcp", "tcp6"):
            try:
                tables[name] = Path(f"/proc/{pid}/net/{name}").read_text()
            except OSError:
                pass
    if "tcp" not in tables:
        raise OSError("cannot read /proc/net/tcp in the container (no `cat`) nor through its process on this host")
    ports: dict[int, set[str]] = {}
    for name, text in tables.items():
        for address, port in parse_proc_net(text, ipv6=name == "tcp6"):
            if address != DOCKER_DNS_ADDRESS:
                ports.setdefault(port, set()).add(address)
    return ports


def port_problem(
    port: int, addresses: Collection[str] | None, ip: str, *, absent: str, loopback: str, unreachable: str = ""
) -> str:
    """What is wrong with `port`, which a container declares and listens on at
    `addresses` (None: it does not listen on it), seen from this host at `ip`:
    `absent`, `loopback` (it listens on loopback addresses only), or
    `unreachable` followed by why ip:port cannot be connected to; "" when it answers."""
    if not addresses:
        return absent
    if all(is_loopback(a) for a in addresses):
        return loopback
    problem = can_connect(ip, port, timeout=3.0)
    return f"{unreachable}{ip}:{port} {problem} from this host" if problem else ""


def port_results(
    ports: Collection[int],
    local_ports: Collection[int],
    listening: dict[int, set[str]],
    ip: str,
    detail: str,
    *,
    outside: str = "other containers cannot reach",
) -> list[CheckResult]:
    """The port checks of a running container listening on `listening` (port ->
    addresses), at `ip`: each of `ports` listened on and reachable from this
    host, each of `local_ports` listened on, and no port the config does not
    name. `outside` completes "listens on <port> on <addresses> only, which ..."."""
    shown = ", ".join(str(p) for p in sorted(listening)) or "no TCP port"
    results = []
    for port in ports:
        addresses = listening.get(port)
        message = port_problem(
            port,
            addresses,
            ip,
            absent=f"does not listen on {port} (listens on {shown})",
            loopback=f"listens on {port} on {', '.join(sorted(addresses or ()))} only, which {outside}",
            unreachable=f"listens on {port} but ",
        )
        results.append(CheckResult(f"port {port}", "port", not message, message, detail=detail if message else ""))
    for port in local_ports:
        addresses = listening.get(port)
        message = "" if addresses else f"does not listen on {port} (listens on {shown})"
        results.append(
            CheckResult(f"port {port} (local)", "port", not message, message, detail=detail if message else "")
        )
    named = set(ports) | set(local_ports)
    for port in sorted(set(listening) - named):
        message = f"listens on {port}, which the config does not name"
        results.append(CheckResult(f"port {port} (not in config)", "port", False, message, detail=detail))
    return results
