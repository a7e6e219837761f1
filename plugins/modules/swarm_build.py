#!/usr/bin/python
# Copyright: build-swarm contributors
# MIT License (see pyproject.toml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: swarm_build
short_description: Build one Gentoo binary package with real portage, as a build-swarm drone does
version_added: "0.1.0"
description:
  - Runs C(emerge --buildpkg --oneshot --usepkg [--getbinpkg] --usepkg-exclude CATEGORY/PN =CPV)
    with an argv list, writing all output to a log file, and returns the C(.gpkg.tar) file(s)
    written for exactly that CPV with their SHA256 and size.
  - Dependencies come from the binhost as binary packages when a binhost is configured; the
    target itself is always built from source.
  - Uses the same builder as the swarmctl drone daemon (C(swarmctl.drone.portage_builder)).
  - Failures are classified like the drone does it (C(build), C(dependency), C(drone), C(hung)).
options:
  cpv:
    description:
      - The package version to build, C(category/name-version), e.g. C(app-misc/hello-1).
    type: str
    required: true
  prefix:
    description:
      - Root of a self-contained portage prefix (see swarmctl.portage_env.prefix).
      - When O(repo) is also given the prefix is created or refreshed first.
      - When omitted the host's own portage configuration is used.
    type: path
  repo:
    description:
      - Ebuild repository for the prefix; with O(prefix), (re)creates the prefix from it.
    type: path
  binhost_url:
    description:
      - Binhost base URL for dependencies (C(--getbinpkg)).
      - With O(repo) it is written to the prefix's binrepos.conf.
    type: str
  log_path:
    description:
      - Where emerge's output is written. Default C(<prefix>/var/log/swarm-build/<category>_<PF>.log),
        or C(/var/log/swarm-build/...) without a prefix.
    type: path
  timeout:
    description:
      - Seconds after which the build's whole process group is killed. C(0) means no limit.
    type: int
    default: 0
  extra_args:
    description:
      - Extra emerge arguments, one list item each (never a shell string).
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: partial
    details:
      - Runs C(emerge --pretend) in the prefix and reports what would be merged and built; nothing
        is built and the prefix is neither created nor refreshed.
      - When O(prefix) does not exist yet and O(repo) is given (a real run would create it), there
        is nothing to ask C(emerge --pretend). The module then reports that it would create the
        prefix and build O(cpv) (C(changed=true), RV(plan) empty). Whether the build would succeed
        is not known before it runs.
  diff_mode:
    support: none
requirements:
  - build-swarm (swarmctl) and portage importable by the module's Python interpreter.
author:
  - build-swarm contributors
"""

EXAMPLES = r"""
- name: Build hello in the drone's prefix, dependencies from the binhost.
  swarm_build:
    cpv: app-misc/hello-1
    prefix: /var/lib/build-swarm/prefix
    binhost_url: http://binhost.example:8770
  register: build

- name: Show what building greeter would merge, without building.
  swarm_build:
    cpv: app-misc/greeter-1
    prefix: /var/lib/build-swarm/prefix
  check_mode: true
"""

RETURN = r"""
cpv:
  description: The package built.
  returned: always
  type: str
  sample: app-misc/hello-1
ok:
  description: Whether the build succeeded (false only in the failure result).
  returned: always
  type: bool
fault:
  description: C(none), C(build), C(dependency), C(drone) or C(hung).
  returned: always
  type: str
  sample: none
reason:
  description: One line explaining a failure; empty on success.
  returned: always
  type: str
artifacts:
  description: Binary packages written for exactly this CPV.
  returned: success
  type: list
  elements: dict
  sample:
    - path: /var/lib/build-swarm/prefix/var/cache/binpkgs/app-misc/hello/hello-1-1.gpkg.tar
      cpv: app-misc/hello-1
      sha256: c6a4de0051915544fa6ae89ed4c86f24c4ae747610b62eb184a89a62ff54db44
      size: 10240
log_path:
  description: The build log.
  returned: always
  type: str
duration:
  description: Seconds the build took.
  returned: when not in check mode
  type: float
plan:
  description:
    - What emerge would merge (C(kind) is C(ebuild) for a source build, C(binary) for a binary).
    - Empty when the prefix does not exist yet (see the check mode attribute).
  returned: check mode
  type: list
  elements: dict
  sample:
    - cpv: app-misc/hello-1
      kind: ebuild
      flags: N
would_build:
  description: CPVs that would be built from source.
  returned: check mode
  type: list
  elements: str
"""

import threading  # noqa: E402 - Ansible modules import after their docs
import time  # noqa: E402 - Ansible modules import after their docs
from pathlib import Path  # noqa: E402 - Ansible modules import after their docs

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 - Ansible modules import after their docs
from ansible.module_utils.swarm_core import artifact_dict, require_swarmctl  # noqa: E402 - Ansible modules import after their docs


def _default_log(prefix, cpv):
    base = Path(prefix) / "var/log/swarm-build" if prefix else Path("/var/log/swarm-build")
    return str(base / (cpv.replace("/", "_") + ".log"))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            cpv=dict(type="str", required=True),
            prefix=dict(type="path"),
            repo=dict(type="path"),
            binhost_url=dict(type="str"),
            log_path=dict(type="path"),
            timeout=dict(type="int", default=0),
            extra_args=dict(type="list", elements="str", default=[]),
        ),
        required_by=dict(repo=("prefix",)),
        supports_check_mode=True,
    )
    require_swarmctl(module)
    from ansible.module_utils.swarm_core import PortageBuilder, load_prefix, make_prefix

    params = module.params
    cpv = params["cpv"]
    result = dict(changed=False, cpv=cpv, ok=False, fault="none", reason="", artifacts=[])
    try:
        from swarmctl.atoms import validate_cpv

        cpv = validate_cpv(cpv)
    except ValueError as exc:
        module.fail_json(msg=str(exc), **result)
    result["cpv"] = cpv

    prefix = None
    if params["prefix"] and module.check_mode and params["repo"]:
        try:
            load_prefix(Path(params["prefix"]))
        except (OSError, ValueError):
            _would_create_prefix(module, result, cpv, params)
    if params["prefix"]:
        try:
            if params["repo"] and not module.check_mode:
                prefix = make_prefix(Path(params["prefix"]), Path(params["repo"]), params["binhost_url"])
            else:
                prefix = load_prefix(Path(params["prefix"]))
        except (OSError, ValueError) as exc:
            module.fail_json(msg=f"portage prefix: {exc}", fault="drone", **_without(result, "fault"))
    try:
        builder = PortageBuilder(prefix, params["binhost_url"], extra_args=params["extra_args"])
    except ValueError as exc:
        module.fail_json(msg=str(exc), **result)
    log_path = params["log_path"] or _default_log(params["prefix"], cpv)
    result["log_path"] = log_path

    if module.check_mode:
        try:
            plan = builder.plan(cpv)
        except (RuntimeError, OSError) as exc:
            module.fail_json(msg=f"emerge --pretend failed: {exc}", **result)
        result["plan"] = [dict(cpv=p.cpv, kind=p.kind, flags=p.flags) for p in plan]
        result["would_build"] = [p.cpv for p in plan if p.kind == "ebuild"]
        result["ok"] = True
        result["changed"] = bool(result["would_build"])
        module.exit_json(msg=f"would build {', '.join(result['would_build']) or 'nothing'}", **result)

    abort = threading.Event()
    timer = None
    if params["timeout"] > 0:
        timer = threading.Timer(params["timeout"], abort.set)
        timer.daemon = True
        timer.start()
    started = time.monotonic()
    try:
        outcome = builder.build(cpv, Path(log_path), abort)
    finally:
        if timer is not None:
            timer.cancel()
    result["duration"] = round(time.monotonic() - started, 3)
    result["ok"] = outcome.ok
    result["fault"] = outcome.fault if not outcome.aborted else "hung"
    result["reason"] = outcome.reason
    result["artifacts"] = [artifact_dict(a) for a in outcome.artifacts]
    if not outcome.ok:
        if outcome.aborted:
            result["reason"] = f"build exceeded the {params['timeout']} s timeout and was killed"
        module.fail_json(msg=result["reason"], **result)
    result["changed"] = True
    module.exit_json(**result)


def _would_create_prefix(module, result, cpv, params):
    """Check mode on a host without the prefix yet: a real run would create it from the repo and build."""
    if not Path(params["repo"]).is_dir():
        module.fail_json(msg=f"portage prefix: the ebuild repository {params['repo']} does not exist",
                         fault="drone", **_without(result, "fault"))
    result.update(ok=True, changed=True, plan=[], would_build=[cpv],
                  log_path=params["log_path"] or _default_log(params["prefix"], cpv))
    module.exit_json(msg=f"would create the prefix {params['prefix']} from {params['repo']} and build {cpv}", **result)


def _without(data, *keys):
    return {k: v for k, v in data.items() if k not in keys}


if __name__ == "__main__":
    main()
