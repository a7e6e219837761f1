#!/usr/bin/python
# Copyright: build-swarm contributors
# MIT License (see pyproject.toml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: swarm_upload
short_description: Upload a built Gentoo binary package to the build-swarm binhost
version_added: "0.1.0"
description:
  - Sends one C(.gpkg.tar) file with its SHA256 and size to the binhost's upload endpoint,
    as the drone that owns the job (drone name, token and the job's lease).
  - The binhost verifies token and ownership before reading the body, then size, SHA256,
    the gpkg's internal Manifest and the package's CPV, publishes atomically, updates its
    C(Packages) index and marks the job built.
  - Transient failures (network, DNS, busy, timeouts, checksum damaged in transit) are retried
    with exponential backoff and jitter.
  - Uses the same client as the swarmctl drone daemon (C(swarmctl.binhost.client)).
  - Idempotent - re-uploading a build that is already published with the same content
    reports C(changed=false).
options:
  path:
    description: The package file.
    type: path
    required: true
  cpv:
    description: The job's package version; the package must be exactly this CPV.
    type: str
    required: true
  binhost_url:
    description: Binhost base URL, e.g. C(http://binhost:8770).
    type: str
    required: true
  drone:
    description: Name of the enrolled drone that owns the job.
    type: str
    required: true
  token:
    description: That drone's enrollment token.
    type: str
    required: true
  lease:
    description: The lease of the drone's claim on the job.
    type: str
    required: true
  sha256:
    description:
      - Expected SHA256 of O(path). Computed from the file when omitted; when given and the file
        differs, the module fails before uploading.
    type: str
  duration:
    description: Build seconds, recorded with the completed job.
    type: float
    default: 0.0
  attempts:
    description: Upload attempts for transient failures.
    type: int
    default: 5
  timeout:
    description: Socket timeout in seconds for each connect, read and write.
    type: float
    default: 30.0
attributes:
  check_mode:
    support: partial
    details:
      - Computes size and SHA256 and looks the package up in the binhost's staging index (the index
        uploads are published into); nothing is sent. Already there with the same SHA256 is
        C(changed=false) and C(code=duplicate), as a real run would report it.
      - Whether the binhost would accept the upload (token, lease, free space, content checks) is
        only known by uploading; when the index cannot be read the module warns and reports the
        upload as a change.
  diff_mode:
    support: none
requirements:
  - build-swarm (swarmctl) importable by the module's Python interpreter.
author:
  - build-swarm contributors
"""

EXAMPLES = r"""
- name: Upload the package built by swarm_build.
  swarm_upload:
    path: "{{ build.artifacts[0].path }}"
    cpv: "{{ build.cpv }}"
    sha256: "{{ build.artifacts[0].sha256 }}"
    binhost_url: http://binhost.example:8770
    drone: drone-01
    token: "{{ swarm_drone_token }}"
    lease: "{{ claim.lease }}"
"""

RETURN = r"""
code:
  description:
    - C(published), C(duplicate) (same build already there), or the refusal code.
    - In check mode C(check_mode) (the upload would happen) or C(duplicate).
  returned: always
  type: str
  sample: published
reason:
  description: One line from the binhost or the network.
  returned: always
  type: str
status:
  description: HTTP status of the final reply (null when no reply came).
  returned: always
  type: int
  sample: 201
attempts:
  description: Attempts made.
  returned: when not in check mode
  type: int
sha256:
  description: SHA256 of the file.
  returned: always
  type: str
size:
  description: Size of the file in bytes.
  returned: always
  type: int
binhost_path:
  description: Path of the package on the binhost, relative to its PKGDIR.
  returned: when published
  type: str
  sample: app-misc/hello/hello-1-1.gpkg.tar
build_id:
  description: BUILD_ID of the published package.
  returned: when published
  type: int
queue:
  description: What the queue said when the binhost completed the job (C(ok), C(stale)).
  returned: when published
  type: str
outcome:
  description: What the drone daemon would do next - C(ok), C(stale) or C(retry-later).
  returned: always
  type: str
"""

from pathlib import Path  # noqa: E402 - Ansible modules import after their docs

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 - Ansible modules import after their docs
from ansible.module_utils.swarm_core import require_swarmctl  # noqa: E402 - Ansible modules import after their docs


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            cpv=dict(type="str", required=True),
            binhost_url=dict(type="str", required=True),
            drone=dict(type="str", required=True),
            token=dict(type="str", required=True, no_log=True),
            lease=dict(type="str", required=True, no_log=False),
            sha256=dict(type="str"),
            duration=dict(type="float", default=0.0),
            attempts=dict(type="int", default=5),
            timeout=dict(type="float", default=30.0),
        ),
        supports_check_mode=True,
    )
    require_swarmctl(module)
    from ansible.module_utils.swarm_core import BinhostClient, artifact_for, outcome_of

    params = module.params
    result = dict(changed=False, code="", reason="", status=None)
    path = Path(params["path"])
    try:
        artifact = artifact_for(path, params["cpv"])
    except OSError as exc:
        module.fail_json(msg=f"cannot read {path}: {exc.strerror or exc}", **result)
    result.update(sha256=artifact.sha256, size=artifact.size)
    if params["sha256"] and params["sha256"].lower() != artifact.sha256:
        module.fail_json(msg=f"{path} has sha256 {artifact.sha256}, expected {params['sha256']}", **result)
    try:
        client = BinhostClient(params["binhost_url"], params["drone"], params["token"],
                               attempts=params["attempts"], timeout=params["timeout"])
    except ValueError as exc:
        module.fail_json(msg=str(exc), **result)

    if module.check_mode:
        would = f"would upload {path.name} ({artifact.size} bytes) to {params['binhost_url']}"
        try:
            already = client.published(params["cpv"], artifact.sha256)
        except (OSError, ValueError) as exc:
            module.warn(f"cannot tell whether the binhost already has {params['cpv']}: {exc}")
            already = False
        if already:
            result.update(code="duplicate", outcome="ok",
                          reason=f"{params['cpv']} with this sha256 is already published")
        else:
            result.update(changed=True, code="check_mode", outcome="ok", reason=would)
        module.exit_json(msg=result["reason"], **result)

    verdict = client.upload(path, params["cpv"], params["lease"], sha256=artifact.sha256, size=artifact.size,
                            duration=params["duration"])
    result.update(code=verdict.code, reason=verdict.reason, status=verdict.status, attempts=verdict.attempts,
                  outcome=outcome_of(verdict))
    if verdict.accepted:
        result.update(changed=True, binhost_path=verdict.payload.get("path"),
                      build_id=verdict.payload.get("build_id"), queue=verdict.payload.get("queue"))
        module.exit_json(**result)
    if verdict.code == "duplicate" and verdict.payload.get("same_content"):
        module.exit_json(msg="already published with the same content", **result)
    module.fail_json(msg=verdict.reason, **result)


if __name__ == "__main__":
    main()
