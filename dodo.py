"""ccp image pipeline. `doit list` shows the stages, `doit` builds every image,
`doit test` runs every check, `doit tree` prints the image graph. Settings
live in ccp.yaml."""

from pathlib import Path

from ccp_tasks.glue import pipeline, tasks

PIPELINE = pipeline.load(Path(__file__).resolve().parent)

DOIT_CONFIG = PIPELINE.doit_config()


def task_base():
    """Make the Debian root filesystem with mmdebstrap."""
    yield from PIPELINE.tasks("base", tasks.base_tasks)


def task_sources():
    """Fetch application sources that moved upstream."""
    yield from PIPELINE.tasks("sources", tasks.sources_tasks)


def task_render():
    """Render Dockerfile templates and stage build contexts."""
    yield from PIPELINE.tasks("render", tasks.render_tasks)


def task_external():
    """Resolve external parents to their digests."""
    yield from PIPELINE.tasks("external", tasks.external_tasks)


def task_build():
    """Build the images, parents first."""
    yield from PIPELINE.tasks("build", tasks.build_tasks)


def task_lint():
    """Spec-test the rendered Dockerfiles."""
    yield from PIPELINE.tasks("lint", tasks.lint_tasks)


def task_spec():
    """Run structure tests on the built images."""
    yield from PIPELINE.tasks("spec", tasks.spec_tasks)


def task_test():
    """Run every check: spec tests, structure tests, integration tests."""
    yield from PIPELINE.tasks("test", tasks.test_tasks, PIPELINE.integration)


def task_kube():
    """Check each image's pod definition and run it as a pod."""
    yield from PIPELINE.tasks("kube", tasks.kube_tasks, PIPELINE.integration)


def task_sbom():
    """Write each image's CycloneDX SBOM."""
    yield from PIPELINE.tasks("sbom", tasks.sbom_tasks)


def task_push():
    """Push every checked image; moving tags last."""
    yield from PIPELINE.tasks("push", tasks.push_tasks)


def task_publish():
    """Move the moving tags once every image is pushed."""
    yield from PIPELINE.tasks("publish", tasks.publish_task)


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
