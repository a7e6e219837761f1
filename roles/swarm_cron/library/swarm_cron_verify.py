#!/usr/bin/python
# Copyright: build-swarm maintainers
# MIT License
"""Ansible module: prove that a cron job is really scheduled by a running cronie."""
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: swarm_cron_verify
short_description: Prove that cron jobs are actually scheduled by a running cronie
description:
  - Finds the running cron daemon and tells cronie from dcron (and others).
  - Checks every line of a system crontab file (C(/etc/cron.d) format) for the user field
    cronie needs. A line without one (dcron style) is reported, and so is a line with a
    user field when the daemon is dcron, which would run the user name as a command.
  - Checks the syntax of the file with C(crontab -T) (after removing the user fields).
  - Asks C(cronnext) for the next run of each job and fails when a job is not scheduled,
    or is scheduled for a user that does not exist, or when C(cronnext) itself fails.
  - Read-only; never changes anything.
version_added: "0.1.0"
options:
  cron_file:
    description: System crontab file to check.
    type: path
    required: true
  jobs:
    description:
      - Jobs that must be scheduled. The entries of the swarm_cron role's C(swarm_cron_jobs) can be
        given as they are (their schedule keys are accepted and not checked here).
    type: list
    elements: dict
    required: true
    suboptions:
      match:
        description: A substring of the job's command, as C(cronnext) lists it; the job must be there.
        type: str
        required: true
      user:
        description: The user the job must run as (any existing user when omitted).
        type: str
      requires:
        description: Files the command calls (program, playbook, inventory); each must exist.
        type: list
        elements: path
        default: []
      name:
        description: The job's name (the role's; not checked).
        type: str
      job:
        description: The job's command (the role's; C(match) is what is checked).
        type: str
      minute:
        description: Schedule field (the role's; not checked, cronnext computes the next run).
        type: str
      hour:
        description: Schedule field (not checked).
        type: str
      day:
        description: Schedule field (not checked).
        type: str
      month:
        description: Schedule field (not checked).
        type: str
      weekday:
        description: Schedule field (not checked).
        type: str
  expect_daemon:
    description: Daemon that must be running.
    type: str
    choices: [cronie, dcron, any]
    default: cronie
  crontab:
    description: Path of cronie's crontab program (used for C(crontab -T)).
    type: path
    default: crontab
  cronnext:
    description: Path of cronie's cronnext program.
    type: path
    default: cronnext
attributes:
  check_mode:
    support: full
author:
  - build-swarm maintainers
"""

EXAMPLES = r"""
- name: Verify the nightly job is scheduled.
  swarm_cron_verify:
    cron_file: /etc/cron.d/build-swarm
    jobs:
      - match: playbooks/nightly.yml
        user: root
    crontab: /usr/bin/crontab
    cronnext: /usr/bin/cronnext
"""

RETURN = r"""
daemon:
  description: The running cron daemon.
  returned: always
  type: dict
  sample: {pid: 42, exe: /usr/sbin/crond, flavor: cronie, version: cronie 1.7.2}
problems:
  description: Everything found wrong, one sentence each.
  returned: always
  type: list
  elements: str
scheduled:
  description: Next run (epoch seconds) of each job, by match string.
  returned: always
  type: dict
  sample: {playbooks/nightly.yml: 1795919400}
"""

import os
import pwd
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

DAEMON_NAMES = ("crond", "cron", "cronie", "dcron")
ENV_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s*=")


def find_daemon(module):
    """The first running cron daemon: pid, exe, flavor (cronie/dcron/unknown), version."""
    for entry in sorted(os.listdir("/proc"), key=lambda e: (len(e), e)):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                comm = fh.read().strip()
            if comm not in DAEMON_NAMES:
                continue
            exe = os.readlink(f"/proc/{entry}/exe")
        except OSError:
            continue
        exe = exe.removesuffix(" (deleted)")
        _rc, out, err = module.run_command([exe, "-V"])
        text = (out + err).strip()
        if "cronie" in text.lower():
            flavor = "cronie"
        elif "dillon" in text.lower() or "dcron" in (comm + exe).lower():
            flavor = "dcron"
        else:
            flavor = "unknown"
        return {
            "pid": int(entry),
            "exe": exe,
            "comm": comm,
            "flavor": flavor,
            "version": text.splitlines()[0] if text else "",
        }
    return None


def user_exists(name):
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def check_lines(path, flavor):
    """Problems with the lines of a system crontab, and the file with user fields removed."""
    problems = []
    stripped = []
    with open(path) as fh:
        lines = fh.read().splitlines()
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#") or ENV_LINE.match(line):
            stripped.append(raw)
            continue
        fields = line.split()
        ntime = 1 if fields[0].startswith("@") else 5
        if len(fields) <= ntime:
            problems.append(f"{path}:{lineno}: too few fields: {line!r}")
            stripped.append(raw)
            continue
        user = fields[ntime]
        has_user = user_exists(user)
        rest = fields[ntime + 1 :] if has_user else fields[ntime:]
        if flavor == "dcron" and has_user:
            problems.append(
                f"{path}:{lineno}: cronie-style line (user field {user!r}) under dcron: dcron has no "
                f"user field and would run {user!r} as the command: {line!r}"
            )
        elif flavor != "dcron" and not has_user:
            problems.append(
                f"{path}:{lineno}: no valid user field ({user!r} is not a user): a dcron-style line? "
                f"cronie reads the 6th field as the user and will never run it: {line!r}"
            )
        if not rest:
            problems.append(f"{path}:{lineno}: no command: {line!r}")
        stripped.append(" ".join(fields[:ntime] + (rest or ["true"])))
    return problems, "\n".join(stripped) + "\n"


def parse_cronnext(text):
    """Entries of ``cronnext -c`` output: dicts with user, cmd, next."""
    entries = []
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("- user:") and raw.startswith("      -"):
            current = {"user": line.split(":", 1)[1].strip().strip('"')}
            entries.append(current)
        elif current is not None and line.startswith("cmd:"):
            value = line.split(":", 1)[1].strip()
            if value.startswith('"') and value.endswith('"'):
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            current["cmd"] = value
        elif current is not None and line.startswith("next:"):
            value = line.split(":", 1)[1].strip()
            if value.isdigit():
                current["next"] = int(value)
    return entries


def main():
    module = AnsibleModule(
        argument_spec=dict(
            cron_file=dict(type="path", required=True),
            jobs=dict(type="list", elements="dict", required=True, options=dict(
                match=dict(type="str", required=True),
                user=dict(type="str"),
                requires=dict(type="list", elements="path", default=[]),
                **{key: dict(type="str") for key in ("name", "job", "minute", "hour", "day", "month", "weekday")},
            )),
            expect_daemon=dict(type="str", choices=["cronie", "dcron", "any"], default="cronie"),
            crontab=dict(type="path", default="crontab"),
            cronnext=dict(type="path", default="cronnext"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    result = dict(changed=False, daemon=None, problems=[], scheduled={})
    problems = result["problems"]

    daemon = find_daemon(module)
    result["daemon"] = daemon
    if daemon is None:
        problems.append("no cron daemon is running")
        flavor = "cronie" if p["expect_daemon"] == "any" else p["expect_daemon"]
    else:
        flavor = daemon["flavor"]
        if p["expect_daemon"] != "any" and flavor != p["expect_daemon"]:
            problems.append(
                f"the running cron daemon is {flavor} ({daemon['exe']}, pid {daemon['pid']}, "
                f"{daemon['version'] or 'no version'}), not {p['expect_daemon']}"
            )

    if not os.path.isfile(p["cron_file"]):
        problems.append(f"{p['cron_file']} does not exist")
        module.fail_json(msg="cron verification FAILED: " + "; ".join(problems), **result)

    line_problems, stripped = check_lines(p["cron_file"], flavor)
    problems.extend(line_problems)

    crontab = module.get_bin_path(p["crontab"], required=False) if "/" not in p["crontab"] else p["crontab"]
    if crontab and flavor != "dcron":
        with tempfile.NamedTemporaryFile("w", suffix=".cron", delete=False) as tmp:
            tmp.write(stripped)
        try:
            rc, out, err = module.run_command([crontab, "-T", tmp.name])
        finally:
            os.unlink(tmp.name)
        if rc != 0:
            detail = " ".join((out + err).replace(tmp.name, p["cron_file"]).split())
            problems.append(f"{p['cron_file']} does not parse (crontab -T): {detail}")

    cronnext = module.get_bin_path(p["cronnext"], required=False) if "/" not in p["cronnext"] else p["cronnext"]
    if flavor != "dcron":
        if not cronnext or not os.path.exists(cronnext):
            problems.append(f"cronnext not found ({p['cronnext']}): cannot prove the jobs are scheduled")
        else:
            rc, out, err = module.run_command([cronnext, "-c"])
            entries = parse_cronnext(out)
            if rc != 0:
                detail = " ".join((err or out).split())[:300] or "no output"
                problems.append(f"cronnext -c failed (exit {rc}): {detail}: cannot prove the jobs are scheduled")
            for job in p["jobs"] if rc == 0 else []:
                match = str(job.get("match", ""))
                want_user = job.get("user")
                hits = [e for e in entries if match and match in e.get("cmd", "")]
                good = [
                    e
                    for e in hits
                    if user_exists(e["user"]) and (not want_user or e["user"] == want_user) and e.get("next")
                ]
                if good:
                    result["scheduled"][match] = min(e["next"] for e in good)
                elif hits:
                    users = ", ".join(sorted({e["user"] for e in hits}))
                    problems.append(
                        f"job {match!r} is listed by cronnext but for user(s) {users}, which cannot run it "
                        f"(wanted {want_user or 'an existing user'}): it will never run"
                    )
                else:
                    problems.append(f"job {match!r} is not scheduled: cronnext does not list it")
    for job in p["jobs"]:
        for path in job.get("requires") or []:
            if not os.path.exists(str(path)):
                problems.append(f"job {job.get('match', '?')!r} calls {path}, which does not exist: it would fail")
    if problems:
        module.fail_json(msg="cron verification FAILED: " + "; ".join(problems), **result)
    module.exit_json(
        msg="cron verification passed: " + ", ".join(f"{k} next at {v}" for k, v in result["scheduled"].items()),
        **result,
    )


if __name__ == "__main__":
    main()
