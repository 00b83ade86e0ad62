"""ccp image pipeline. `doit list` shows the stages, `doit` builds every image,
`doit test` runs every check, `doit tree` prints the image graph. Settings
live in ccp.yaml."""

from pathlib import Path

from ccp_tasks.glue import pipeline, tasks

PIPELINE = pipeline.load(Path(__file__).resolve().parent)

DOIT_CONFIG = PIPELINE.doit_config()


def task_base():
    """Make the Debian root filesystem with mmdebstrap."""
    yield from tasks.base_tasks(*PIPELINE.args)


def task_sources():
    """Fetch application sources that moved upstream."""
    yield from tasks.sources_tasks(*PIPELINE.args)


def task_render():
    """Render Dockerfile templates and stage build contexts."""
    yield from tasks.render_tasks(*PIPELINE.args)


def task_external():
    """Resolve external parents to their digests."""
    yield from tasks.external_tasks(*PIPELINE.args)


def task_build():
    """Build the images, parents first."""
    yield from tasks.build_tasks(*PIPELINE.args)


def task_lint():
    """Spec-test the rendered Dockerfiles."""
    yield from tasks.lint_tasks(*PIPELINE.args)


def task_spec():
    """Run structure tests on the built images."""
    yield from tasks.spec_tasks(*PIPELINE.args)


def task_test():
    """Run every check: spec tests, structure tests, integration tests."""
    yield from tasks.test_tasks(*PIPELINE.args, PIPELINE.integration)


def task_kube():
    """Check each image's pod definition and run it as a pod."""
    yield from tasks.kube_tasks(*PIPELINE.args, PIPELINE.integration)


def task_sbom():
    """Write each image's CycloneDX SBOM."""
    yield from tasks.sbom_tasks(*PIPELINE.args)


def task_push():
    """Push every checked image; moving tags last."""
    yield from tasks.push_tasks(*PIPELINE.args)


def task_publish():
    """Move the moving tags once every image is pushed."""
    return tasks.publish_task(*PIPELINE.args)


def task_artifacts():
    """Deploy the build artifacts to Artifactory."""
    return tasks.artifacts_task(*PIPELINE.args)


def task_retention():
    """Plan the retention policy; delete with --apply."""
    return tasks.retention_task(*PIPELINE.args)


def task_tree():
    """Print the image tree."""
    return tasks.tree_task(PIPELINE.graph)


def task_graph():
    """Draw the image graph, coloured by the last run."""
    return tasks.graph_task(PIPELINE.graph, PIPELINE.layout)
