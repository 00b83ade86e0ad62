"""One rule for "this host only": an apt proxy on loopback is reached from the
host's network, a registry on loopback is spoken to without TLS (as Docker
does), and a service listening on loopback only cannot be reached from
another container."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """`localhost`, or an IPv4/IPv6 loopback address (brackets allowed); a
    `host:port` as a registry reference spells it is taken without its port."""
    name = host
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
