# Copyright: build-swarm contributors
# MIT License (see pyproject.toml)
#
# Private to build-swarm's modules: a thin shim over the swarmctl package, so the
# Ansible modules and the drone daemon share ONE implementation of build and upload.
# swarmctl must be importable by the interpreter the module runs with
# (ansible_python_interpreter = the venv that has build-swarm and portage).

from __future__ import annotations

import traceback

from ansible.module_utils.basic import missing_required_lib

try:
    from swarmctl.binhost.client import BinhostClient, outcome_of  # noqa: F401
    from swarmctl.drone.builders import artifact_for  # noqa: F401
    from swarmctl.drone.portage_builder import PortageBuilder  # noqa: F401
    from swarmctl.portage_env.prefix import load_prefix, make_prefix  # noqa: F401
except ImportError:
    HAS_SWARMCTL = False
    SWARMCTL_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_SWARMCTL = True
    SWARMCTL_IMPORT_ERROR = None


def require_swarmctl(module):
    """fail_json cleanly when swarmctl is not importable on the target."""
    if not HAS_SWARMCTL:
        module.fail_json(
            msg=missing_required_lib(
                "swarmctl (build-swarm)",
                reason="set ansible_python_interpreter to the venv where build-swarm is installed",
            ),
            exception=SWARMCTL_IMPORT_ERROR,
        )


def artifact_dict(artifact):
    """An Artifact as plain data for the module's result."""
    return {
        "path": str(artifact.path),
        "cpv": artifact.cpv,
        "sha256": artifact.sha256,
        "size": artifact.size,
    }
