"""The system packages build-swarm needs, how to install them, and a check that says what is missing.

Standard library only: ``make demo`` and ``make test`` run it with the system's python3
(``python3 -m swarmctl.prereqs demo``) before any virtualenv exists, so a missing
``python3-venv`` is reported like any other tool. The drone preflight uses the same table
for its fixes.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Package:
    """One system package: what it provides and its name on each distribution."""

    what: str
    debian: str
    gentoo: str


#: Tool (a program on PATH) -> the package that provides it.
PACKAGES: dict[str, Package] = {
    "python3-venv": Package("Python virtualenv support (make builds .venv)", "python3-venv", "dev-lang/python"),
    "zstd": Package("zstd compressor (binary packages, BINPKG_COMPRESS=zstd)", "zstd", "app-arch/zstd"),
    "xz": Package("xz compressor (BINPKG_COMPRESS=xz)", "xz-utils", "app-arch/xz-utils"),
    "bzip2": Package("bzip2 compressor (BINPKG_COMPRESS=bzip2)", "bzip2", "app-arch/bzip2"),
    "gzip": Package("gzip compressor (BINPKG_COMPRESS=gzip)", "gzip", "app-arch/gzip"),
    "lz4": Package("lz4 compressor (BINPKG_COMPRESS=lz4)", "lz4", "app-arch/lz4"),
    "lzip": Package("lzip compressor (BINPKG_COMPRESS=lzip)", "lzip", "app-arch/lzip"),
    "lzop": Package("lzop compressor (BINPKG_COMPRESS=lzop)", "lzop", "app-arch/lzop"),
    "brotli": Package("brotli compressor (BINPKG_COMPRESS=brotli)", "brotli", "app-arch/brotli"),
    "gcc": Package("C compiler (the sample packages compile C)", "gcc", "sys-devel/gcc"),
    "cc": Package("C compiler", "gcc", "sys-devel/gcc"),
    "make": Package("make", "make", "dev-build/make"),
    "bash": Package("bash (portage's build phases)", "bash", "app-shells/bash"),
    "tar": Package("tar", "tar", "app-arch/tar"),
    "tmux": Package("tmux (the monitor's tmux tests)", "tmux", "app-misc/tmux"),
    "ip": Package("ip (test-bed network namespaces)", "iproute2", "sys-apps/iproute2"),
    "unshare": Package("unshare/nsenter (test-bed namespaces)", "util-linux", "sys-apps/util-linux"),
    "ssh": Package("ssh client (Ansible to test-bed hosts)", "openssh-client", "virtual/openssh"),
    "sshd": Package("sshd (test-bed hosts)", "openssh-server", "virtual/openssh"),
    "start-stop-daemon": Package("start-stop-daemon (test-bed services)", "dpkg", "sys-apps/openrc"),
    "redis-server": Package("Redis from the distribution (the site.yml test's binhost role)", "redis-server",
                            "dev-db/redis"),
    "sudo": Package("sudo (the healing account's rules in the site.yml test)", "sudo", "app-admin/sudo"),
}

#: What the local swarm (``make demo``) cannot run without.
DEMO_TOOLS = ("python3-venv", "zstd", "gcc", "bash", "tar")
#: What ``make test`` cannot run without (more is optional: see TEST_OPTIONAL).
TEST_TOOLS = DEMO_TOOLS
#: Tools whose tests skip when they are missing (fail under SWARM_REQUIRE_ALL=1), with what skips.
TEST_OPTIONAL: dict[str, str] = {
    "tmux": "the monitor's tmux tests",
    "ip": "the test-bed tests (Ansible, healing, chaos)",
    "unshare": "the test-bed tests",
    "ssh": "the test-bed tests",
    "sshd": "the test-bed tests",
    "start-stop-daemon": "the test-bed tests",
    "redis-server": "the site.yml end-to-end test",
    "sudo": "the site.yml end-to-end test",
}
#: What needs root; named when ``make test`` runs as another user.
ROOT_ONLY = ("the test-bed tests (network namespaces, sshd hosts: Ansible, healing, chaos)",
             "the tests that hide a tool from a drone in a private mount namespace")

_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def distribution(os_release: Path = Path("/etc/os-release")) -> str:
    """``debian`` (Debian, Ubuntu and their kin), ``gentoo`` or ``other``."""
    try:
        text = os_release.read_text()
    except OSError:
        return "other"
    ids: list[str] = []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key in ("ID", "ID_LIKE"):
            ids += value.strip().strip("\"'").split()
    if "gentoo" in ids:
        return "gentoo"
    if "debian" in ids or "ubuntu" in ids:
        return "debian"
    return "other"


def install_command(tools: Iterable[str], distro: str | None = None) -> str:
    """The one command that installs the packages providing ``tools`` on this distribution."""
    distro = distro or distribution()
    packages = list(dict.fromkeys(PACKAGES[t] for t in tools))
    debian = "apt-get install -y " + " ".join(dict.fromkeys(p.debian for p in packages))
    gentoo = "emerge --ask --noreplace " + " ".join(dict.fromkeys(p.gentoo for p in packages))
    if distro == "debian":
        return debian
    if distro == "gentoo":
        return gentoo
    return f"{debian} (Debian/Ubuntu) or {gentoo} (Gentoo)"


def find_tool(tool: str, path: str | None = None) -> str | None:
    """Where ``tool`` is on ``path`` (default: PATH; sbin directories too), or None."""
    if tool == "python3-venv":
        return sys.executable if _has_venv() else None
    search = path if path is not None else os.environ.get("PATH", os.defpath)
    if path is None:
        search = os.pathsep.join([search, *_SBIN])
    return shutil.which(tool, path=search)


def _has_venv() -> bool:
    # Debian splits ensurepip out of python3 (python3-venv): without it `python3 -m venv` fails.
    try:
        import ensurepip  # noqa: F401
        import venv  # noqa: F401
    except ImportError:
        return False
    return True


def missing(tools: Sequence[str], path: str | None = None) -> list[str]:
    """The tools of ``tools`` that are not installed."""
    return [t for t in tools if find_tool(t, path) is None]


def report(tools: Sequence[str], distro: str | None = None) -> list[str]:
    """One line per missing tool with the command that installs it (empty: all present)."""
    return [f"missing: {tool} - {PACKAGES[tool].what}; install it with: {install_command([tool], distro)}"
            for tool in tools]


def check(purpose: str, require_all: bool = False, is_root: bool | None = None) -> tuple[list[str], list[str]]:
    """(errors, notes) for ``demo`` or ``test``: errors stop the run, notes say what will be skipped."""
    required = list(DEMO_TOOLS if purpose == "demo" else TEST_TOOLS)
    notes: list[str] = []
    if purpose == "test":
        absent = missing(list(TEST_OPTIONAL))
        if require_all:
            required += absent
        else:
            for tool in absent:
                notes.append(f"{TEST_OPTIONAL[tool]} will be skipped: {tool} is missing "
                             f"({install_command([tool])})")
        root = os.geteuid() == 0 if is_root is None else is_root
        if not root:
            notes += [f"not root: {what} will be skipped" for what in ROOT_ONLY]
    errors = report(missing(required))
    if len(errors) > 1:
        errors.append(f"all at once: {install_command(missing(required))}")
    return errors, notes


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    purpose = args[0] if args else "demo"
    if purpose not in ("demo", "test"):
        print("usage: python3 -m swarmctl.prereqs demo|test", file=sys.stderr)
        return 2
    errors, notes = check(purpose, require_all=os.environ.get("SWARM_REQUIRE_ALL", "") not in ("", "0"))
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    for line in errors:
        print(line, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
