"""Integration tests on running containers: `test:<image>` runs the checks of
the `integration.yaml` an image ships (the format: `spec`, docs/checks.md).

Read in the order a run goes: `spec` reads and validates the file; `files`
renders what a run mounts (templates, a throwaway TLS CA); `containers`
starts the run's containers on its private network through the check
harness and waits until they answer; `ports` reads which TCP ports a
container listens on; `probes` runs the http, send, exec and tls checks;
`regression` compares an answer with the last passing run's; `run` puts
them together and tears everything down (`run_spec`).
"""

from ccp_tasks.checks.integration.containers import (
    IntegrationRun,
    StartedContainer,
    require_local_engine,
    start_container,
    wait_ready,
)
from ccp_tasks.checks.integration.files import make_tls, render_files
from ccp_tasks.checks.integration.ports import DOCKER_DNS_ADDRESS, parse_proc_net, port_problem, port_results
from ccp_tasks.checks.integration.probes import CHECKERS
from ccp_tasks.checks.integration.regression import load_recorded, recorded_path
from ccp_tasks.checks.integration.run import run_check, run_spec
from ccp_tasks.checks.integration.spec import (
    IMAGE_LABEL,
    RUN_LABEL,
    SPEC_NAME,
    TLS_FILES,
    ContainerSpec,
    IntegrationSpec,
    load_spec,
    service_images,
    spec_files,
)

__all__ = [
    "CHECKERS",
    "DOCKER_DNS_ADDRESS",
    "IMAGE_LABEL",
    "RUN_LABEL",
    "SPEC_NAME",
    "TLS_FILES",
    "ContainerSpec",
    "IntegrationRun",
    "IntegrationSpec",
    "StartedContainer",
    "load_recorded",
    "load_spec",
    "make_tls",
    "parse_proc_net",
    "port_problem",
    "port_results",
    "recorded_path",
    "render_files",
    "require_local_engine",
    "run_check",
    "run_spec",
    "service_images",
    "spec_files",
    "start_container",
    "wait_ready",
]
