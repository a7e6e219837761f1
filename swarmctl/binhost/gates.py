"""The gates a generation passes before it is published (``binhost promote``, the nightly).

- Dependency closure: every run-time dependency (RDEPEND, PDEPEND, as the index
  carries them: USE conditionals already evaluated) of every package in the
  candidate is satisfied by a package of the candidate or by the profile's
  ``package.provided``. Blockers are not dependencies; of an any-of group one member
  suffices. The first unsatisfied ones are named.
- Smoke install: a throwaway client (a fresh portage prefix from the tree, default
  signature verification: it trusts ``PKGDIR/KEYS.asc`` only) installs the packages
  that changed since the published generation with ``emerge --getbinpkgonly``, from
  a private loopback server that serves the candidate index over the shared files.
  Above ``limit`` changed packages, the first ``limit`` in CPV order are installed
  (the closure gate has checked them all).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmctl.binhost.index import COMPRESSED_NAME, INDEX_NAME, PackagesIndex
from swarmctl.binhost.signing import KEYS_NAME

_RUNTIME_KEYS = ("RDEPEND", "PDEPEND")


@dataclass(frozen=True)
class GateSettings:
    """What the gates need: the tree (repository) and profile clients use, and limits."""

    repo: Path | None = None
    profile: str = "default/linux/amd64"
    smoke: bool = True
    smoke_limit: int = 50
    timeout: float = 1800.0


def profile_provided(repo: Path, profile: str) -> set[str]:
    """CPVs the profile's ``package.provided`` files (its parents' too) declare."""
    provided: set[str] = set()
    seen: set[Path] = set()

    def walk(directory: Path) -> None:
        directory = directory.resolve()
        if directory in seen or not directory.is_dir():
            return
        seen.add(directory)
        with contextlib.suppress(OSError):
            for line in (directory / "parent").read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.startswith("#"):
                    walk(directory / line.strip())
        with contextlib.suppress(OSError):
            for line in (directory / "package.provided").read_text(encoding="utf-8").splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    provided.add(line)

    walk(Path(repo) / "profiles" / profile)
    return provided


def closure_problems(candidate: Path, provided: Iterable[str] = (), limit: int = 5) -> list[str]:
    """Unsatisfied run-time dependencies of the candidate index (empty: closed)."""
    from portage.dep import Atom, match_from_list, use_reduce
    from portage.exception import InvalidAtom, InvalidDependString
    from portage.versions import _pkg_str

    index = PackagesIndex.read(candidate)
    pool = []
    for cpv in provided:
        with contextlib.suppress(Exception):
            pool.append(_pkg_str(cpv, slot="0"))
    for entry in index.entries.values():
        with contextlib.suppress(Exception):
            pool.append(_pkg_str(entry["CPV"], slot=entry.get("SLOT", "0") or "0"))

    @functools.cache
    def satisfied(atom: str) -> bool:
        parsed = Atom(atom)
        # The index knows versions and slots, not the USE of each dependency.
        return bool(match_from_list(parsed.without_use if parsed.use else parsed, pool))

    def unmet(tree: list[Any]) -> list[str]:
        """What an all-of list (use_reduce's form: ``"||"`` then its group) leaves unsatisfied."""
        missing: list[str] = []
        items = iter(tree)
        for item in items:
            if item == "||":
                group = next(items)
                if not any_met(group):
                    missing.append("|| ( " + " ".join(_flat(group)) + " )")
            elif isinstance(item, list):
                missing += unmet(item)
            elif not item.blocker and not satisfied(str(item)):
                missing.append(str(item))
        return missing

    def any_met(group: list[Any]) -> bool:
        items = iter(group)
        for item in items:
            if item == "||":
                if any_met(next(items)):
                    return True
            elif isinstance(item, list):
                if not unmet(item):
                    return True
            elif item.blocker or satisfied(str(item)):
                return True
        return False

    problems = []
    for _rel_path, entry in sorted(index.entries.items(), key=lambda item: item[1]["CPV"]):
        for key in _RUNTIME_KEYS:
            value = entry.get(key, "")
            if not value:
                continue
            try:
                tree = use_reduce(value, uselist=frozenset(entry.get("USE", "").split()), token_class=Atom)
            except (InvalidDependString, InvalidAtom) as exc:
                problems.append(f"{entry['CPV']}: {key} unreadable: {exc}")
                continue
            for atom in unmet(tree):
                problems.append(f"{entry['CPV']} needs {atom} ({key}): in neither the generation nor the profile")
            if len(problems) >= limit:
                return problems
    return problems


def _flat(tree: list[Any]) -> list[str]:
    return ["( " + " ".join(_flat(x)) + " )" if isinstance(x, list) else str(x) for x in tree]


def changed_cpvs(candidate: Path, published: Path | None) -> list[str]:
    """CPVs the candidate adds or rebuilds relative to the published index (all without one)."""
    from swarmctl.binhost.generations import diff

    if published is None or not published.is_file():
        return sorted(PackagesIndex.read(candidate).cpvs())
    changes = diff(published, candidate)
    return sorted(changes.added + changes.rebuilt)


@contextlib.contextmanager
def serve_view(pkgdir: Path, index: Path) -> Iterator[str]:
    """A loopback HTTP server: ``index`` as Packages(.gz), every other path from PKGDIR."""
    pkgdir = Path(pkgdir).resolve()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path: str) -> str:
            name = path.split("?", 1)[0].lstrip("/")
            if name in (INDEX_NAME, COMPRESSED_NAME):
                return str(index.with_name(name))
            if any(part.startswith(".") for part in name.split("/")):
                return str(pkgdir / "no-such-file")
            return super().translate_path(path)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Handler, directory=str(pkgdir)))
    thread = threading.Thread(target=server.serve_forever, name="gate-view", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def smoke_install(pkgdir: Path, candidate: Path, cpvs: list[str], settings: GateSettings) -> tuple[bool, str]:
    """A fresh default client installs ``cpvs`` from the candidate, binaries only; (ok, reason)."""
    from swarmctl.overlay import install_overlay
    from swarmctl.portage_env.prefix import make_prefix

    keys = Path(pkgdir) / KEYS_NAME
    if not keys.is_file():
        return False, f"no {KEYS_NAME} in {pkgdir}: a client could verify no signature"
    # gpg's socket path is capped and, as root, portage verifies as nobody: a short,
    # world-traversable directory under /tmp.
    root = Path(tempfile.mkdtemp(prefix="swarm-smoke-", dir="/tmp"))
    try:
        root.chmod(0o755)
        repo = settings.repo or install_overlay(root / "repo")
        with serve_view(Path(pkgdir), candidate) as url:
            client = make_prefix(root / "client", Path(repo), url, binhost_keys=keys.read_text(encoding="utf-8"),
                                 profile=settings.profile, verify_as_nobody=os.geteuid() == 0)
            done = subprocess.run([str(client.tool("emerge")), "--getbinpkgonly", "--oneshot", "--color=n",
                                   "--nospinner", "--quiet-build=y", *[f"={cpv}" for cpv in cpvs]],
                                  env=client.env(), capture_output=True, text=True, timeout=settings.timeout,
                                  stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"smoke install timed out after {settings.timeout:.0f} s"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if done.returncode == 0:
        return True, f"installed {len(cpvs)} package(s)"
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    interesting = [line for line in lines if "!!!" in line or "verification failed" in line.lower()
                   or "error" in line.lower()]
    detail = (interesting or lines or ["no output"])[-1]
    return False, f"smoke install of {', '.join(cpvs[:3])}{' ...' if len(cpvs) > 3 else ''} failed " \
                  f"(emerge exit {done.returncode}): {detail}"[:600]


def run_gates(pkgdir: Path, settings: GateSettings) -> Any:
    """The gate runner ``generations.promote`` calls: closure first, then the smoke install."""

    def gates(candidate: Path, published: Path | None) -> dict[str, Any]:
        result: dict[str, Any] = {"ok": True, "reason": ""}
        start = time.monotonic()
        from swarmctl.overlay import overlay_source

        provided = profile_provided(settings.repo or overlay_source(), settings.profile)
        problems = closure_problems(candidate, provided)
        result["closure"] = {"ok": not problems, "problems": problems,
                             "seconds": round(time.monotonic() - start, 2)}
        if problems:
            result.update(ok=False, reason=f"dependency closure: {problems[0]}"
                          + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
            return result
        changed = changed_cpvs(candidate, published)
        if not settings.smoke:
            result["smoke"] = {"ok": True, "skipped": "disabled"}
        elif not changed:
            result["smoke"] = {"ok": True, "skipped": "nothing changed since the published generation"}
        else:
            sample = changed[:max(1, settings.smoke_limit)]
            start = time.monotonic()
            ok, reason = smoke_install(pkgdir, candidate, sample, settings)
            result["smoke"] = {"ok": ok, "installed": sample, "of": len(changed), "reason": reason,
                               "seconds": round(time.monotonic() - start, 2)}
            if not ok:
                result.update(ok=False, reason=reason)
                return result
        result["reason"] = "closure and smoke install passed"
        return result

    return gates
