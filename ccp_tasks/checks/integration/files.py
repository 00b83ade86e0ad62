"""What a run mounts: its templated files and a throwaway TLS CA and certificate."""

from __future__ import annotations

import os
from pathlib import Path

from ccp_tasks.checks.integration.spec import ContainerSpec, IntegrationSpec, TlsSettings
from ccp_tasks.core.errors import TemplateError


def _template_env(spec_dir: Path):
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    # Sandboxed as the Dockerfile templates are (render._tree_environment).
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(spec_dir)),
        undefined=jinja2.StrictUndefined,
        # the same rendering rules as the Dockerfile templates
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _template_line(tb, spec_dir: Path, default: str) -> str:
    import traceback

    where = default
    for frame in traceback.extract_tb(tb):
        if Path(frame.filename).parent == spec_dir or frame.filename.startswith(str(spec_dir) + os.sep):
            where = f"{frame.filename}:{frame.lineno}"
    return where


def render_files(
    spec: IntegrationSpec, container: ContainerSpec, context: dict, out_dir: Path
) -> list[tuple[Path, str]]:
    """Render a container's files; return (host file, container path) pairs to mount."""
    import jinja2

    spec_dir = spec.path.parent
    env = _template_env(spec_dir)
    mounts = []
    for mount in container.files:
        source = spec_dir / mount.template
        try:
            text = env.get_template(mount.template).render(context)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"{exc.filename or source}:{exc.lineno}: template syntax error: {exc.message}"
            ) from None
        except jinja2.TemplateNotFound as exc:
            line = _template_line(exc.__traceback__, spec_dir, str(source))
            raise TemplateError(f"{line}: includes '{exc.name}', which is not beside {spec.path}") from None
        except jinja2.UndefinedError as exc:
            line = _template_line(exc.__traceback__, spec_dir, str(source))
            raise TemplateError(
                f"{line}: {exc.message} (define it under 'variables:' in {spec.path.name} or ccp.yaml)"
            ) from None
        except Exception as exc:  # a filter raised: still the template's fault
            line = _template_line(exc.__traceback__, spec_dir, str(source))
            raise TemplateError(f"{line}: {type(exc).__name__}: {exc}") from None
        host = out_dir / mount.target.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_text(text)
        # The container's user is rarely ours: the mounted file keeps these bits.
        host.chmod(mount.mode)
        mounts.append((host.resolve(), mount.target))
    return mounts


def make_tls(tls: TlsSettings, out_dir: Path) -> str:
    """Write a fresh CA's server certificate, key, CA and bundle; return the CA's PEM."""
    import trustme

    key_type = trustme.KeyType.RSA if tls.key_type == "rsa" else trustme.KeyType.ECDSA
    ca = trustme.CA(key_type=key_type)
    leaf = ca.issue_cert(*tls.hostnames, common_name=tls.common_name, key_type=key_type)
    cert = b"".join(pem.bytes() for pem in leaf.cert_chain_pems)
    key = leaf.private_key_pem.bytes()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in (
        ("cert.pem", cert),
        ("key.pem", key),
        ("ca.pem", ca.cert_pem.bytes()),
        ("bundle.pem", cert + key),
    ):
        target = out_dir / name
        target.write_bytes(data)
        # Readable by whatever user the service drops to; the key is thrown away with the run.
        target.chmod(0o644)
    return ca.cert_pem.bytes().decode()
