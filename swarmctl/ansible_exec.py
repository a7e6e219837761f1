"""Run the healing and maintenance playbooks through ansible-runner.

This is the one place swarmctl starts Ansible: the self-healing levels 2 (restart a drone's
service, ``drone-restart.yml``) and 3 (reboot it, ``drone-reboot.yml``) call
:func:`run_playbook` and get a :class:`PlaybookResult` with one line per host.

Secrets never reach a command line, a log or the summary: extra vars are written to
``env/extravars`` (mode 0600) inside a private data dir (mode 0700) that ansible-runner reads
with ``-e @file``; Ansible's own output is not echoed; values of extra vars whose names look
secret (token, password, secret, key, vault) are masked in every message returned. Playbooks
mark the tasks that handle tokens ``no_log: true``.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmctl import ansible_assets

log = logging.getLogger("swarmctl.ansible_exec")

#: Extra-var names whose values are masked in messages (and never logged).
SECRET_NAME_RE = re.compile(r"token|passw|secret|key|vault|credential", re.IGNORECASE)
MASK = "********"
#: Longest failure message kept per host in a summary line.
MAX_MSG = 240
#: A collection playbook's fully qualified name (``build_swarm.swarm.site``), run by that name.
PLAYBOOK_FQCN_RE = re.compile(r"(?![^.]*\.ya?ml$)[A-Za-z_]\w*\.[A-Za-z_]\w*\.[A-Za-z_]\w*")


@dataclass(frozen=True)
class PlaybookResult:
    """What one playbook run did.

    Attributes:
        ok: True when ansible-playbook succeeded (rc 0) on every targeted host.
        rc: ansible-playbook's exit code (0 ok, 2 a task failed, 4 a host unreachable, ...).
        status: ansible-runner's status: successful, failed, timeout, canceled or error.
        hosts: One summary line per host, e.g. ``"failed: Refuse a protected host.: h2 is protected"``.
        summary: One line for logs: the playbook, the status and each host's line.
        artifact_dir: Where ansible-runner kept this run's artifacts (events, stdout).
        changed: Per host, the names of the tasks that changed something (or would, in check mode).
        diffs: Per host and changed task, one short line per file or state it changes (``--diff``).
    """

    ok: bool
    rc: int
    status: str
    hosts: dict[str, str]
    summary: str
    artifact_dir: Path | None = field(default=None, compare=False)
    changed: dict[str, list[str]] = field(default_factory=dict, compare=False)
    diffs: dict[str, dict[str, list[str]]] = field(default_factory=dict, compare=False)


def run_playbook(
    playbook: str | Path,
    inventory: str | Path,
    limit: str,
    extra_vars: Mapping[str, Any],
    private_data_dir_root: Path,
    keep_artifacts: int = 10,
    *,
    timeout: int | None = None,
    playbook_dir: str | Path | None = None,
    single_host: bool = False,
    collections_path: str | Path | None = None,
    check: bool = False,
) -> PlaybookResult:
    """Run ``playbook`` against ``limit`` in ``inventory`` and summarise it per host.

    Args:
        playbook: Path of the playbook, a bare name (``drone-restart.yml``) looked up in
            ``playbook_dir`` (default: the package's, see :mod:`swarmctl.ansible_assets`), or
            an installed collection's playbook by its fully qualified name (``ns.coll.site``).
        inventory: Inventory file or directory.
        limit: Ansible host pattern the run is limited to (e.g. one drone's name).
        extra_vars: Extra variables; written to a mode-0600 file, never put on a command line.
        private_data_dir_root: Directory under which each run gets its own private data dir.
        keep_artifacts: Run dirs kept under ``private_data_dir_root`` (older ones are deleted).
        timeout: Seconds before the run is cancelled (None: no limit).
        playbook_dir: Where bare playbook names are looked up.
        single_host: ``limit`` must name exactly one host of the inventory, by its own name:
            checked before anything runs (see :func:`single_host_problem`), else the result
            is a refusal and Ansible never starts.
        collections_path: Where collections are installed (ANSIBLE_COLLECTIONS_PATH, before
            the environment's own).
        check: Run in check and diff mode (``--check --diff``): nothing changes; the result's
            ``changed`` and ``diffs`` say what would.

    Returns:
        The run's :class:`PlaybookResult`. Ansible failures are results, not exceptions.

    Raises:
        FileNotFoundError: The playbook or the inventory does not exist.
    """
    import ansible_runner  # slow import: only when a playbook really runs

    if isinstance(playbook, str) and PLAYBOOK_FQCN_RE.fullmatch(playbook):
        play_path, play_name, play_stem = None, playbook, playbook.rsplit(".", 1)[1]
    else:
        play_path = _resolve_playbook(playbook, playbook_dir)
        play_name, play_stem = play_path.name, play_path.stem
    inv_path = Path(inventory).resolve()
    if not inv_path.exists():
        raise FileNotFoundError(f"inventory not found: {inv_path}")
    if single_host:
        problem = single_host_problem(inv_path, limit)
        if problem:
            summary = f"{play_name} [{limit}]: REFUSED: {problem}; nothing was run"
            log.warning("%s", summary)
            return PlaybookResult(ok=False, rc=-1, status="refused", hosts={}, summary=summary)
    root = Path(private_data_dir_root)
    root.mkdir(parents=True, exist_ok=True)
    data_dir = root / f"{time.strftime('%Y%m%dT%H%M%S')}-{play_stem}-{uuid.uuid4().hex[:8]}"
    (data_dir / "env").mkdir(parents=True)
    (data_dir / "tmp").mkdir()
    os.chmod(data_dir, 0o700)
    _write_private(data_dir / "env" / "extravars", unsafe_yaml(dict(extra_vars)))

    secrets = _secret_values(extra_vars)
    envvars = _environment(data_dir, play_path, collections_path)
    log.info("running %s on %s (data dir %s)", play_name, limit, data_dir)
    runner = ansible_runner.run(
        private_data_dir=str(data_dir),
        playbook=str(play_path or play_name),
        inventory=str(inv_path),
        limit=limit,
        envvars=envvars,
        quiet=True,
        rotate_artifacts=keep_artifacts,
        timeout=timeout,
        ident="run",
        cmdline="--check --diff" if check else None,
    )
    rc = runner.rc if isinstance(runner.rc, int) else 1
    status = str(runner.status)
    hosts = summarize_events(runner.events, runner.stats or {})
    hosts = {h: mask(line, secrets) for h, line in hosts.items()}
    ok = status == "successful" and rc == 0
    summary = f"{play_name} [{limit}]: {status} rc={rc}"
    if hosts:
        summary += "; " + "; ".join(f"{h}: {line}" for h, line in sorted(hosts.items()))
    elif not ok:
        summary += "; " + mask(_stdout_tail(runner), secrets)
    artifact_dir = Path(runner.config.artifact_dir) if getattr(runner, "config", None) else None
    # The secrets file has served its purpose: do not keep tokens in the artifacts we keep.
    (data_dir / "env" / "extravars").unlink(missing_ok=True)
    _prune(root, keep_artifacts, data_dir)
    return PlaybookResult(ok=ok, rc=rc, status=status, hosts=hosts, summary=summary, artifact_dir=artifact_dir,
                          changed=changed_tasks(runner.events), diffs=diff_summaries(runner.events))


_RESOLVE_SCRIPT = """
import json, sys
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
inventory = InventoryManager(loader=DataLoader(), sources=[sys.argv[1]])
name = sys.argv[2]
print(json.dumps({"group": name in inventory.groups, "host": name in inventory.hosts,
                  "matches": sorted(h.name for h in inventory.get_hosts(pattern=name))}))
"""


def single_host_problem(inventory: str | Path, name: str, timeout: float = 120.0) -> str | None:
    """Why ``name`` is not safe to use as a one-host limit in ``inventory``; None if it is.

    An Ansible host pattern matches groups before hosts: a drone enrolled as ``binhost``
    (or ``all``, or an inventory alias) would aim a playbook at every host of that group.
    So the inventory is resolved the way ansible-playbook resolves it (its own
    ``InventoryManager``, in a subprocess so the caller's process stays free of Ansible's
    global state) and the name must be an inventory host, not a group, and resolve to
    exactly that one host.
    """
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "ANSIBLE_NOCOLOR": "1",
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        done = subprocess.run([sys.executable, "-c", _RESOLVE_SCRIPT, str(inventory), name], env=env,
                              capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return f"cannot resolve {name!r} in the inventory {inventory}"
    if found["group"]:
        return f"{name!r} is an inventory group, not one host"
    if not found["host"]:
        return f"{name!r} is not a host of the inventory {inventory}"
    if found["matches"] != [name]:
        return f"{name!r} matches {len(found['matches'])} hosts ({', '.join(found['matches'][:5])}), not one"
    return None


def summarize_events(events: Iterable[Mapping[str, Any]], stats: Mapping[str, Any]) -> dict[str, str]:
    """Reduce ansible-runner events to one line per host.

    The line starts with the host's outcome (``ok``, ``changed``, ``failed``, ``unreachable``,
    ``skipped``) and the counters; a failed or unreachable host gets the first failing
    task's name and message appended.

    Args:
        events: ``Runner.events`` (dicts with ``event`` and ``event_data``).
        stats: ``Runner.stats`` (``ok``/``changed``/``failures``/``dark``/... per host).

    Returns:
        host -> summary line.
    """
    first_failure: dict[str, str] = {}
    for ev in events:
        kind = ev.get("event", "")
        data = ev.get("event_data") or {}
        host = data.get("host")
        if not host or host in first_failure:
            continue
        if kind == "runner_on_failed" and data.get("ignore_errors"):
            continue
        if kind in ("runner_on_failed", "runner_on_unreachable"):
            res = data.get("res") or {}
            task = (data.get("task") or "").strip()
            first_failure[host] = f"{task}: {_result_message(res)}" if task else _result_message(res)

    def count(key: str, host: str) -> int:
        return int((stats.get(key) or {}).get(host, 0))

    names = set(first_failure)
    for key in ("ok", "changed", "failures", "dark", "skipped", "processed"):
        names.update((stats.get(key) or {}).keys())
    lines = {}
    for host in sorted(names):
        failures, dark = count("failures", host), count("dark", host)
        if dark:
            state = "unreachable"
        elif failures or (host in first_failure and not stats):
            state = "failed"
        elif count("changed", host):
            state = "changed"
        elif count("ok", host):
            state = "ok"
        else:
            state = "skipped"
        line = f"{state} ok={count('ok', host)} changed={count('changed', host)} failed={failures} unreachable={dark}"
        if state in ("failed", "unreachable") and host in first_failure:
            line += f" - {first_failure[host]}"
        lines[host] = line
    return lines


def changed_tasks(events: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Per host, the names of the tasks whose result says changed, in run order."""
    found: dict[str, list[str]] = {}
    for ev in events:
        data = ev.get("event_data") or {}
        if ev.get("event") == "runner_on_ok" and _changed(ev) and data.get("host"):
            names = found.setdefault(data["host"], [])
            task = (data.get("task") or "").strip()
            if task not in names:
                names.append(task)
    return found


def _changed(ev: Mapping[str, Any]) -> bool:
    res = (ev.get("event_data") or {}).get("res") or {}
    if res.get("censored"):  # no_log hides "changed" too; the event's own output line still says it
        return str(ev.get("stdout") or "").lstrip().startswith("changed:")
    return bool(res.get("changed"))


def diff_summaries(events: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """Per host and changed task, one line per part of its ``--diff``: what, and how much.

    Only counts and states, never contents: a diff of a file may hold a secret (tasks that
    write secrets are ``no_log`` and have no diff at all, but a summary must not depend on it).
    Ansible sends each diff as a ``runner_on_file_diff`` event before the task's result.
    """
    parts: dict[tuple[str, str], list[Any]] = {}
    found: dict[str, dict[str, list[str]]] = {}
    for ev in events:
        data = ev.get("event_data") or {}
        host, task = data.get("host"), (data.get("task") or "").strip()
        if not host:
            continue
        diff = data.get("diff") if ev.get("event") == "runner_on_file_diff" else (data.get("res") or {}).get("diff")
        parts.setdefault((host, task), []).extend(diff if isinstance(diff, list) else [diff] if diff else [])
        if ev.get("event") == "runner_on_ok" and _changed(ev):
            # The same diff comes twice: as its own event and in the result.
            lines = list(dict.fromkeys(line for part in parts.pop((host, task), []) if isinstance(part, Mapping)
                                       for line in [_diff_line(part)] if line))
            if lines:
                found.setdefault(host, {})[task] = lines
    return found


def _diff_line(part: Mapping[str, Any]) -> str:
    """``/etc/x: +2 -1 lines``, ``/etc/y: state absent -> file``, or ``(prepared)``."""
    what = str(part.get("after_header") or part.get("before_header") or "").strip()
    before, after = part.get("before"), part.get("after")
    if isinstance(before, str) and isinstance(after, str):
        old, new = before.splitlines(), after.splitlines()
        changes = list(difflib.unified_diff(old, new, lineterm="", n=0))[2:]
        added = sum(1 for c in changes if c.startswith("+"))
        removed = sum(1 for c in changes if c.startswith("-"))
        how = f"+{added} -{removed} lines" if added or removed else ""
    elif isinstance(before, Mapping) and isinstance(after, Mapping):
        how = ", ".join(f"{k} {before.get(k)} -> {after.get(k)}" for k in sorted(set(before) | set(after), key=str)
                        if before.get(k) != after.get(k) and k != "path")
    elif part.get("prepared"):
        how = "(prepared)"
    else:
        return ""
    if not how:
        return ""
    line = f"{what}: {how}" if what else how
    return line if len(line) <= MAX_MSG else line[: MAX_MSG - 3] + "..."


def mask(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret value in ``text`` with ``********``."""
    for value in sorted(set(secrets), key=len, reverse=True):
        if value:
            text = text.replace(value, MASK)
    return text


def _secret_values(extra_vars: Mapping[str, Any]) -> list[str]:
    """String values (at any depth) of extra vars whose names look secret."""
    found: list[str] = []

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, secret or bool(SECRET_NAME_RE.search(str(k))))
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v, secret)
        elif secret and value is not None and len(str(value)) >= 4:
            found.append(str(value))

    walk(extra_vars, False)
    return found


def _result_message(res: Mapping[str, Any]) -> str:
    if res.get("censored"):
        return str(res["censored"])
    msg = res.get("msg") or res.get("stderr") or res.get("reason") or ""
    if not msg and res.get("rc") is not None:
        msg = f"rc={res['rc']}"
    text = " ".join(str(msg).split())
    return text if len(text) <= MAX_MSG else text[: MAX_MSG - 3] + "..."


def _resolve_playbook(playbook: str | Path, playbook_dir: str | Path | None) -> Path:
    path = Path(playbook)
    if not path.is_absolute() and not path.exists():
        base = Path(playbook_dir) if playbook_dir else ansible_assets.playbook_dir()
        path = base / playbook
    path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(f"playbook not found: {path}")
    return path


def _environment(data_dir: Path, play_path: Path | None, collections_path: str | Path | None = None,
                 ) -> dict[str, str]:
    """Environment of ansible-playbook: our venv first on PATH, UTF-8, temp inside the data dir."""
    bindir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env = {
        "PATH": f"{bindir}{os.pathsep}{path}",
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "ANSIBLE_LOCAL_TEMP": str(data_dir / "tmp"),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        # One ssh round trip per task instead of three (root logins: no requiretty issue).
        "ANSIBLE_PIPELINING": os.environ.get("ANSIBLE_PIPELINING", "True"),
        # The ssh plugin retries a failed connection with exponential backoff.
        "ANSIBLE_SSH_RETRIES": os.environ.get("ANSIBLE_SSH_RETRIES", "2"),
    }
    # The package's roles and modules are found by playbooks run from a path (those outside it may use them).
    assets = ansible_assets.find_assets()
    search: dict[str, list[Path]] = {
        # A collection's playbook finds its own roles; one from a path, those beside it.
        "ANSIBLE_ROLES_PATH": [play_path.parent / "roles", play_path.parent.parent / "roles"] if play_path else [],
        "ANSIBLE_LIBRARY": [],
        "ANSIBLE_MODULE_UTILS": [],
        "ANSIBLE_COLLECTIONS_PATH": [Path(collections_path)] if collections_path else [],
    }
    if assets and play_path is not None:  # an installed collection brings its own
        search["ANSIBLE_ROLES_PATH"].append(assets.roles)
        search["ANSIBLE_LIBRARY"].append(assets.modules)
        search["ANSIBLE_MODULE_UTILS"].append(assets.module_utils)
    for name, candidates in search.items():
        found = [str(p) for p in candidates if p.is_dir()]
        if os.environ.get(name):
            found.append(os.environ[name])
        if found:
            env[name] = os.pathsep.join(dict.fromkeys(found))
    return env


def unsafe_yaml(values: Any) -> str:
    """Extra vars with every string marked unsafe: no ``{{ }}`` ever renders.

    Written as JSON (which Ansible's YAML loader reads) with each string as
    ``{"__ansible_unsafe": "..."}``: unlike a ``!unsafe`` YAML tag, which ansible-core 2.19
    resolves like an untagged scalar (so "true" became a boolean and "60" a number), this keeps
    every string a string.
    """
    def mark(value: Any) -> Any:
        if isinstance(value, str):
            return {"__ansible_unsafe": value}
        if isinstance(value, Mapping):
            return {str(k): mark(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [mark(v) for v in value]
        return value

    return json.dumps(mark(values))


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def _stdout_tail(runner: Any, lines: int = 3) -> str:
    try:
        text = runner.stdout.read()
    except Exception:
        return "no output"
    tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(tail)[:MAX_MSG] or "no output"


def _prune(root: Path, keep_runs: int, current: Path) -> None:
    """Delete the oldest run dirs under ``root`` so at most ``keep_runs`` remain (never ``current``)."""
    runs = sorted((p for p in root.iterdir() if p.is_dir() and (p / "env").is_dir()), key=lambda p: p.name)
    excess = len(runs) - max(keep_runs, 1)
    for old in runs:
        if excess <= 0:
            break
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
            excess -= 1
