"""The lint rules by id: the vocabulary that ccp.yaml's waivers (checked when
the configuration loads) and the lint stage (checks/lint.py) share."""

from __future__ import annotations

import re

RULES = {
    "CCP001": "apt package pinned to an exact version",
    "CCP002": "pip package pinned to an exact version",
    "CCP003": "apt-get install without -y",
    "CCP004": "apt-get install without --no-install-recommends",
    "CCP005": "apt lists not removed in the same RUN that fetched them",
    "CCP006": "apt-get update alone in a RUN (a later cached layer installs from stale lists)",
    "CCP007": "external parent image without a fixed tag (latest or none)",
    "CCP008": "ADD of a remote URL (use curl in a RUN, checked, or COPY)",
    "CCP009": "secret-like name in ENV or ARG (it stays in the image's history)",
    "CCP010": "ENTRYPOINT or CMD in shell form (signals do not reach the process)",
}

# hadolint rules that are always off, with why (a waiver naming one is a config error).
_PINNING = "hadolint's version-pinning rules are always off: this tree never pins a package version"
HADOLINT_OFF = {
    "DL3008": _PINNING,  # apt-get install <pkg>=<version>
    "DL3013": _PINNING,  # pip
    "DL3016": _PINNING,  # npm
    "DL3018": _PINNING,  # apk add
    "DL3028": _PINNING,  # gem install
    "DL3033": _PINNING,  # yum install
    "DL3037": _PINNING,  # zypper install
    "DL3041": _PINNING,  # dnf install
    "DL3062": _PINNING,  # go install <pkg>@<version>
    "DL3006": "parent image tags are CCP007's (external images); tree images are tagged by the pipeline",
    "DL3007": "parent image tags are CCP007's (external images); tree images are tagged by the pipeline",
}

HADOLINT_ID_RE = re.compile(r"^(?:DL|SC)[0-9]{4}$")


def waiver_problem(rule: str) -> str | None:
    """Why `rule` cannot be waived in ccp.yaml (None: it can)."""
    if rule in RULES or (HADOLINT_ID_RE.match(rule) and rule not in HADOLINT_OFF):
        return None
    if rule in HADOLINT_OFF:
        return f"{rule} is never reported ({HADOLINT_OFF[rule]}); remove it"
    return f"unknown rule {rule!r}; rules are {', '.join(RULES)} and hadolint's DLnnnn and SCnnnn"
