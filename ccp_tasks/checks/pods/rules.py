"""Small Kubernetes rules: resource quantities, `$(VAR)` expansion, and how
`command`/`args` map onto the image's ENTRYPOINT/CMD."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_QUANTITY_RE = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_SUFFIXES = {
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def parse_quantity(value: object) -> Decimal:
    """A Kubernetes resource quantity (`128Mi`, `500m`, `1.5`, `1e3`) as a number; ValueError if it is none."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    match = _QUANTITY_RE.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a quantity (such as 128Mi, 500m or 2)")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number) * (Decimal(10) ** int(suffix[1:]))
        return Decimal(number) * _SUFFIXES[suffix]
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a quantity") from None


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion (its forked Go `expansion.Expand`): a
    defined variable is replaced, an undefined one left as written, `$$` is
    one `$`, any other `$` stays."""
    out = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1 :]
            if rest[0] == "$":
                out.append("$")
                advance = 1
            elif rest[0] == "(":
                close = rest.find(")", 1)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = rest[1:close]
                    out.append(env[name] if name in env else f"$({name})")
                    advance = close + 1
            else:
                out.append("$" + rest[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def docker_command(container: dict, env: dict[str, str]) -> tuple[list[str] | None, list[str] | None]:
    """(entrypoint, cmd) for docker create, as the kubelet maps command/args:
    `command` replaces the image's ENTRYPOINT and its CMD is not used; `args`
    replace CMD; `args` alone keep ENTRYPOINT. None means "the image's"."""
    command = [expand(str(word), env) for word in container.get("command") or []]
    args = [expand(str(word), env) for word in container.get("args") or []]
    if command:
        # Docker drops the image's CMD whenever the request names an entrypoint.
        return command, (args or None)
    return None, (args or None)


def effective_argv(container: dict, image_config: dict, env: dict[str, str]) -> list[str]:
    """The argv the container's process gets (what the kubelet's mapping makes of the image's ENTRYPOINT/CMD)."""
    entrypoint, cmd = docker_command(container, env)
    if entrypoint is not None:
        return entrypoint + (cmd or [])
    return list(image_config.get("Entrypoint") or []) + (
        cmd if cmd is not None else list(image_config.get("Cmd") or [])
    )
