"""ccp: an exact, incremental build pipeline for a tree of container images.

dodo.py calls `load()` once and hands the result to the task generators in
`ccp_tasks.tasks`; everything else is plain functions on dataclasses.
"""

__version__ = "0.1.0"
