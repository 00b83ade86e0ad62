"""Every error the pipeline raises on purpose roots at CcpError.

Library code raises these and never exits; the boundaries (dodo.py loading,
task actions) turn them into one line for the user.
"""

import os

# Set to anything but the empty string, the boundaries show an error with its
# traceback and the chain of its causes instead of its one line.
DEBUG_ENV = "CCP_DEBUG"


def debugging() -> bool:
    return bool(os.environ.get(DEBUG_ENV))


class CcpError(Exception):
    """An expected failure with a message a user can act on."""


class ConfigError(CcpError):
    """ccp.yaml (or an override) is malformed, has an unknown key or a wrong type."""


class TemplateError(CcpError):
    """A Dockerfile.j2 does not render: syntax error, undefined variable, bad helper call."""


class ContextError(CcpError):
    """An image's build context would take in what must not reach an image: a symlink
    out of its template repository, a dangling one, a bad .dockerignore line."""


class GraphError(CcpError):
    """The image graph is inconsistent: duplicate name, unknown parent, cycle."""


class EngineError(CcpError):
    """The Docker engine cannot be reached or refused a request."""


class EngineNotFound(EngineError):
    """The engine answered that a container, image, network or volume does not exist."""


class BuildError(CcpError):
    """docker build failed; carries the image name and the last lines of its log."""

    def __init__(self, image: str, reason: str, log_tail: list[str] | None = None, log_path: str | None = None):
        self.image = image
        self.reason = reason
        self.log_tail = log_tail or []
        self.log_path = log_path
        super().__init__(self.__str__())

    def __str__(self) -> str:
        lines = [f"build of image '{self.image}' failed: {self.reason}"]
        if self.log_tail:
            lines.append("last lines of the build log:")
            lines.extend("    " + line for line in self.log_tail)
        if self.log_path:
            lines.append(f"full log: {self.log_path}")
        return "\n".join(lines)


class LockError(CcpError):
    """Another doit run holds the lock on this checkout's cache/."""
