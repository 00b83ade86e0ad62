"""Modules whose body runs on first use, imported at the top like any other.

Every run, a no-op included, imports the glue to generate its tasks, and the
glue names the action of every stage. The stages that run containers or talk
to servers (the check runners, retention, Artifactory) pull in ssl,
http.client, the harness and the pod runner: about 60 ms of a 0.3 s no-op
(-X importtime, sample tree), for code a no-op never calls. `lazy_module`
keeps that import where imports are, at module level, so the dependency is
read (and checked by tests/test_layout.py) where every other one is, while
the standard library's LazyLoader defers executing the module until an
attribute of it is first read.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """The module `name`, loaded now and executed when first used.

    A module already imported is returned as it is. A name that does not
    exist fails here, at import time, as a plain import would."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        # What `from parent import child` finds, as after an eager import.
        setattr(sys.modules[parent], child, module)
    return module
