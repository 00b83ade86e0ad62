"""Spec tests on a rendered Dockerfile, before any image exists (`lint:<image>`).

Each rule has an id and a one-line message; a finding names the rendered
Dockerfile's file:line. A rule is waived for an image in ccp.yaml
(`lint: {waive: {<image>: [CCP001]}}`) or by a comment in its template
(`# lint: ignore=CCP001,CCP005`, a Dockerfile comment, or the same inside a
Jinja comment).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from .render import logical_lines

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
WAIVER_RE = re.compile(r"lint:\s*ignore=([A-Z0-9_,\s]+)")
SECRET_RE = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|PRIVATE_KEY|API_KEY|CREDENTIAL", re.IGNORECASE)
APT_RE = re.compile(r"\bapt(?:-get)?\s+(?:[-\w=]+\s+)*install\b")
PIP_RE = re.compile(r"\bpip3?\s+install\b|\b-m\s+pip\s+install\b")


@dataclass(frozen=True)
class Finding:
    rule: str
    line: int
    detail: str = ""

    def format(self, path: str) -> str:
        extra = f": {self.detail}" if self.detail else ""
        return f"{path}:{self.line}: {self.rule} {RULES[self.rule]}{extra}"


def waivers_in(template_text: str) -> set[str]:
    found = set()
    for match in WAIVER_RE.finditer(template_text):
        found.update(rule.strip() for rule in match.group(1).split(",") if rule.strip())
    return found


def _commands(shell: str) -> list[list[str]]:
    """A RUN's shell text split into simple commands (on && || ; |), each as words."""
    try:
        lexer = shlex.shlex(shell, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError:  # unbalanced quotes: fall back to plain splitting
        words = shell.split()
    commands, current = [], []
    for word in words:
        if word and set(word) <= set(";&|"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(word)
    if current:
        commands.append(current)
    return commands


def _apt_install_args(command: list[str]) -> list[str] | None:
    for i, word in enumerate(command):
        if word in ("apt-get", "apt") and "install" in command[i + 1:]:
            return command[command.index("install", i) + 1:]
    return None


def _run_findings(line: int, shell: str) -> list[Finding]:
    findings = []
    commands = _commands(shell)
    updates = any(("apt-get" in c or "apt" in c) and "update" in c for c in commands)
    installs = False
    for command in commands:
        args = _apt_install_args(command)
        if args is not None:
            installs = True
            options = [a for a in args if a.startswith("-")]
            packages = [a for a in args if not a.startswith("-")]
            if not {"-y", "--yes", "--assume-yes"} & set(options) and not any(re.fullmatch(r"-[a-z]*y[a-z]*", o) for o in options):
                findings.append(Finding("CCP003", line))
            if "--no-install-recommends" not in options:
                findings.append(Finding("CCP004", line))
            pinned = [p for p in packages if "=" in p]
            if pinned:
                findings.append(Finding("CCP001", line, ", ".join(pinned)))
        if any(w == "pip" or w == "pip3" or w.endswith("/pip") for w in command) or "-m" in command and "pip" in command:
            if "install" in command:
                pinned = [w for w in command[command.index("install") + 1:] if "==" in w and not w.startswith("-")]
                if pinned:
                    findings.append(Finding("CCP002", line, ", ".join(pinned)))
    if updates and not installs:
        findings.append(Finding("CCP006", line))
    if (updates or installs) and "/var/lib/apt/lists" not in shell:
        findings.append(Finding("CCP005", line))
    return findings


def lint_dockerfile(text: str, external_images: tuple[str, ...] = ()) -> list[Finding]:
    """Every rule that `text` (a rendered Dockerfile) breaks, in line order."""
    findings: list[Finding] = []
    for line, instruction in logical_lines(text):
        keyword, _, rest = instruction.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "RUN":
            if not rest.startswith("["):
                findings.extend(_run_findings(line, rest))
        elif keyword == "FROM":
            ref = next((w for w in rest.split() if not w.startswith("--")), "")
            if ref in external_images:
                name = ref.rsplit("/", 1)[-1]
                if "@" not in ref and (":" not in name or name.endswith(":latest")):
                    findings.append(Finding("CCP007", line, ref))
        elif keyword == "ADD":
            sources = [w for w in rest.split() if not w.startswith("--")][:-1]
            remote = [s for s in sources if re.match(r"^(https?|ftp)://", s)]
            if remote:
                findings.append(Finding("CCP008", line, ", ".join(remote)))
        elif keyword in ("ENV", "ARG"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", rest)
            secret = [n for n in names if SECRET_RE.search(n)]
            if secret:
                findings.append(Finding("CCP009", line, ", ".join(secret)))
        elif keyword in ("ENTRYPOINT", "CMD"):
            try:
                exec_form = isinstance(json.loads(rest), list)
            except ValueError:
                exec_form = False
            if not exec_form:
                findings.append(Finding("CCP010", line, keyword))
    return findings


def lint_image(dockerfile_text: str, template_text: str, waived: set[str], external_images=()) -> tuple[list[Finding], list[Finding]]:
    """(findings that count, findings waived) for one image."""
    waived = set(waived) | waivers_in(template_text)
    findings = lint_dockerfile(dockerfile_text, external_images)
    return [f for f in findings if f.rule not in waived], [f for f in findings if f.rule in waived]
