"""How a build's apt-get reaches the apt proxy (build.apt_proxy).

The proxy goes in as Docker's predefined `http_proxy` build argument: RUN
steps see it, the image's history and environment do not, and it stays out of
the input digest (a proxy changes where packages come from, not what is
installed). A proxy on the host's loopback is reached by building on the
host's network; any other address (a shared apt-cacher-ng for several CI
agents) through the default bridge.
"""

from __future__ import annotations

import urllib.parse

from ccp_tasks.core.net import is_loopback


def build_args(apt_proxy: str) -> dict[str, str]:
    """The build arguments (besides the digested ones) that send apt-get through the proxy."""
    return {"http_proxy": apt_proxy} if apt_proxy else {}


def network_mode(apt_proxy: str) -> str | None:
    """The network a build needs to reach the proxy; None for the engine's default."""
    return "host" if apt_proxy and is_loopback(urllib.parse.urlsplit(apt_proxy).hostname or "") else None


def environment(apt_proxy: str) -> dict[str, str]:
    """What mmdebstrap's apt on the host needs: the proxy through the environment,
    so nothing of it is written into the root filesystem."""
    return {"http_proxy": apt_proxy} if apt_proxy else {}
