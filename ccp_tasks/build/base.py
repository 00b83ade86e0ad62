"""The Debian root filesystem the tree's root image is made from.

`mmdebstrap` builds a minbase tarball of the configured suite from the
configured mirror. With a fixed SOURCE_DATE_EPOCH the tarball is
bit-identical while Debian publishes no update, so the weekly refresh only
changes the image (and cascades) when packages really changed.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ccp_tasks.core.errors import CcpError
from ccp_tasks.core.state import dump_json, fields, hash_file, read_record, write_atomic
from ccp_tasks.model.config import BaseSettings

ROOTFS_NAME = "rootfs.tar"


class RootfsError(CcpError):
    """mmdebstrap could not make the root filesystem."""


# Documentation, man pages and translations are left out of the root filesystem
# and, through dpkg's configuration that mmdebstrap keeps in the image, out of
# every package later installed on top of it.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
)
# The host's hostname and resolver would make the tarball differ from host to
# host; Docker supplies both at run time.
HOST_FILES_HOOK = 'rm -f "$1/etc/hostname" "$1/etc/resolv.conf"'


def rootfs_command(settings: BaseSettings, output: Path) -> list[str]:
    command = ["mmdebstrap", f"--variant={settings.variant}", "--mode=root", "--format=tar"]
    command += [f"--dpkgopt={option}" for option in DPKG_EXCLUDES]
    command.append(f"--customize-hook={HOST_FILES_HOOK}")
    if settings.packages:
        command.append("--include=" + ",".join(sorted(settings.packages)))
    return command + [settings.suite, str(output), settings.mirror]


def _read_manifest(path: Path) -> dict | None:
    return read_record(
        path, "a root filesystem record", lambda raw: fields(raw, settings=dict, sha256=str, refreshed_at=float)
    )


def is_fresh(settings: BaseSettings, tarball: Path, manifest: Path, now: float | None = None) -> bool:
    """The tarball exists, was made with these settings, and is younger than max_age_days."""
    recorded = _read_manifest(manifest)
    if recorded is None or not tarball.exists() or recorded.get("settings") != settings.manifest():
        return False
    age = (now if now is not None else time.time()) - recorded["refreshed_at"]
    return age < settings.max_age_days * 86400


def make_rootfs(
    settings: BaseSettings, tarball: Path, manifest: Path, log_path: Path, proxy_env: dict[str, str] | None = None
) -> dict:
    """Run mmdebstrap into a temporary file; replace the tarball only if its bytes changed.
    `proxy_env` (http_proxy) sends its apt through an apt proxy without writing it into the tarball."""
    tarball.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_name(tarball.name + ".partial")
    command = rootfs_command(settings, partial)
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(settings.source_date_epoch), **(proxy_env or {}))
    print(f"   base: {shlex.join(command)}", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        with open(log_path, "w") as log:
            log.write(f"# SOURCE_DATE_EPOCH={settings.source_date_epoch} {shlex.join(command)}\n")
            log.flush()
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        if result.returncode != 0:
            tail = log_path.read_text().splitlines()[-15:]
            raise RootfsError(
                f"mmdebstrap failed (exit {result.returncode}) for suite '{settings.suite}' from {settings.mirror}:\n"
                + "\n".join("    " + line for line in tail)
                + f"\nfull log: {log_path}"
            )
    except FileNotFoundError:
        raise RootfsError("mmdebstrap is not installed; run `./ccp setup` (or apt-get install mmdebstrap)") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    sha256 = hash_file(partial).hexdigest()
    previous = _read_manifest(manifest)
    changed = previous is None or not (tarball.exists() and previous["sha256"] == sha256)
    if changed:
        os.replace(partial, tarball)
    else:
        partial.unlink()
    write_atomic(
        manifest,
        dump_json({"settings": settings.manifest(), "sha256": sha256, "refreshed_at": int(time.time())}),
    )
    seconds = round(time.monotonic() - started, 1)
    return {"outcome": "refreshed" if changed else "unchanged", "sha256": sha256, "seconds": seconds}
