"""A multi-host test bed on one machine: network namespaces with real sshd, reboots, power cuts.

Each host ``hN`` (N = 1..n) is a named network namespace ``{prefix}-hN`` at ``10.77.0.(10+N)``
on a bridge ``{prefix}br0`` (``10.77.0.1/24``, no default route). Its "PID 1" is
``hostinit.sh`` started under ``unshare --kill-child --mount --uts --pid --fork --mount-proc
--propagation private`` by a supervisor loop that starts it again ``restart_delay`` seconds
after it dies: SIGKILL on PID 1 is a power cut, ``kill -TERM 1`` inside the host a reboot.
The host sees private overlays of /etc and /var (upper dirs under the bed's temp dir, kept
across reboots), a tmpfs /run with ``/run/fake_boot_id`` (new each boot), its own
/etc/machine-id, an sshd with its own host key that accepts the bed's generated client key,
and Debian-style init links: whatever is enabled in the host's ``/etc/rc2.d`` (``update-rc.d``,
Ansible's sysvinit service module) starts at boot and is stopped on a clean shutdown.

Example:
    with TestBed(3) as bed:
        bed.inventory(tmp / "hosts.yml")
        bed.power_cut(1)
        bed.wait_booted(1)

The names come from ``prefix``, so leftovers of a crashed run with the same prefix are
cleaned before start; two beds with different prefixes share the 10.77.0.0/24 addresses and
therefore take turns (the second waits while the first is alive).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from . import _net

__all__ = ["Host", "TestBed", "TestBedError", "missing_requirements", "teardown_prefix"]

HERE = Path(__file__).resolve().parent
HOSTINIT = HERE / "hostinit.sh"
SUPERVISOR = HERE / "supervisor.sh"
#: Registry of live beds (prefix.json), used to find and clean leftovers of crashed runs.
REGISTRY_DIR = Path("/run/build-swarm-testbed")
#: The bed's /24 (first three octets). Beds on one subnet take turns; a long run (the soak) can
#: take another one with SWARM_TESTBED_SUBNET so other beds need not wait for it.
SUBNET = os.environ.get("SWARM_TESTBED_SUBNET", "10.77.0")
if not re.fullmatch(r"10\.\d{1,3}\.\d{1,3}", SUBNET):
    raise ValueError(f"SWARM_TESTBED_SUBNET={SUBNET!r}: expected three octets in 10.0.0.0/8, like 10.78.0")
GATEWAY = f"{SUBNET}.1"
SSHD = "/usr/sbin/sshd"
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_MARKER = ".build-swarm-testbed"


class TestBedError(RuntimeError):
    """The test bed could not be set up or a host did not respond."""

    __test__ = False  # not a pytest test class


def missing_requirements() -> str | None:
    """Why a test bed cannot run here (not root, missing tools), or None when it can."""
    if os.geteuid() != 0:
        return "the test bed needs root (network namespaces, mounts)"
    for tool in ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", "start-stop-daemon"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"the test bed needs `{tool}` (apt-get install iproute2 util-linux openssh-client)"
    if not Path(SSHD).exists():
        return f"the test bed needs {SSHD} (apt-get install openssh-server)"
    return None


@dataclass(frozen=True)
class Host:
    """One test-bed host, as seen from the controller (the root namespace)."""

    index: int
    name: str
    address: str
    netns: str
    veth: str
    hostdir: Path
    machine_id: str
    key_file: Path
    known_hosts: Path
    ssh_options: tuple[str, ...] = field(default=())

    @property
    def ssh_args(self) -> list[str]:
        """``ssh`` options to reach this host as root (append the command)."""
        return ["-i", str(self.key_file), *self.ssh_options]

    def ssh_argv(self, command: str) -> list[str]:
        """A full argv that runs ``command`` on the host over ssh."""
        return ["ssh", *self.ssh_args, f"root@{self.address}", command]


class TestBed:
    """Hosts in network namespaces with real sshd, power cuts and reboots. See the module doc.

    Args:
        n_hosts: Number of hosts (h1..hN), 1..40.
        prefix: Names of the bridge (``{prefix}br0``), namespaces (``{prefix}-hN``) and host
            side veths (``{prefix}v-hN``): lowercase, at most 8 characters.
        restart_delay: Seconds between a host's PID 1 dying and its next boot.
        boot_timeout: Seconds to wait for all hosts to accept ssh connections.
        wait_timeout: Seconds to wait for another live bed using 10.77.0.0/24 to go away.
        workdir: Where host dirs, keys and known_hosts go (default: a new temp dir).
    """

    __test__ = False

    def __init__(
        self,
        n_hosts: int,
        prefix: str = "sw",
        *,
        restart_delay: float = 3.0,
        boot_timeout: float = 30.0,
        wait_timeout: float = 600.0,
        workdir: str | Path | None = None,
    ) -> None:
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"prefix {prefix!r}: lowercase letters/digits, 1-8 chars, letter first")
        if not 1 <= n_hosts <= 40:
            raise ValueError("n_hosts must be between 1 and 40")
        self.n_hosts = n_hosts
        self.prefix = prefix
        self.bridge = f"{prefix}br0"
        self.restart_delay = restart_delay
        self.boot_timeout = boot_timeout
        self.wait_timeout = wait_timeout
        self._workdir_arg = Path(workdir) if workdir else None
        self.workdir: Path | None = None
        self._hosts: list[Host] = []
        self._supervisors: dict[int, subprocess.Popen[bytes] | int] = {}
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> TestBed:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> TestBed:
        """Create the bridge, the hosts and their supervisors; wait until every host takes ssh."""
        reason = missing_requirements()
        if reason:
            raise TestBedError(reason)
        teardown_prefix(self.prefix)
        self._wait_subnet_free()
        clear_stale_rehash_lock()
        self._started = True
        try:
            self._create()
            self.wait_ready(timeout=self.boot_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Tear everything down: processes (reaped), links, namespaces, mounts, temp dirs."""
        if not self._started:
            return
        self._started = False
        for i, sup in self._supervisors.items():
            with contextlib.suppress(OSError):
                (self._hosts[i - 1].hostdir / "halt").touch()
            if isinstance(sup, subprocess.Popen):
                _net.kill_group(sup.pid)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    sup.wait(timeout=10)
        teardown_prefix(self.prefix)
        self._supervisors.clear()

    @classmethod
    def attach(cls, prefix: str = "sw") -> TestBed:
        """Rebuild a handle on a bed started by another process (``cli.py up``)."""
        data = _read_registry(prefix)
        if data is None:
            raise TestBedError(f"no live test bed with prefix {prefix!r}")
        bed = cls(data["n_hosts"], prefix, restart_delay=data["restart_delay"], workdir=data["workdir"])
        bed.workdir = Path(data["workdir"])
        bed._hosts = [bed._make_host(i) for i in range(1, bed.n_hosts + 1)]
        bed._hosts = [Host(**{**h.__dict__, "machine_id": data["machine_ids"][str(h.index)]}) for h in bed._hosts]
        bed._supervisors = {int(k): v for k, v in data["supervisors"].items()}
        bed._started = True
        return bed

    # ------------------------------------------------------------------ hosts
    @property
    def hosts(self) -> list[Host]:
        """All hosts, h1 first."""
        return list(self._hosts)

    def host(self, i: int) -> Host:
        """Host ``hI`` (1-based)."""
        if not 1 <= i <= len(self._hosts):
            raise IndexError(f"no host h{i} (bed has {len(self._hosts)})")
        return self._hosts[i - 1]

    def pid1(self, i: int) -> int | None:
        """Host pid (root namespace) of host ``hI``'s PID 1, or None while it is down."""
        sup = self._supervisors.get(i)
        sup_pid = sup.pid if isinstance(sup, subprocess.Popen) else sup
        if sup_pid is None:
            return None
        for unshare_pid in _net.children(sup_pid):
            for pid in _net.children(unshare_pid):
                if _net.is_live(pid):
                    return pid
        return None

    def read_file(self, i: int, path: str) -> str | None:
        """Read a file as host ``hI`` sees it (through /proc/PID1/root), None if absent/down."""
        pid = self.pid1(i)
        if pid is None:
            return None
        try:
            return Path(f"/proc/{pid}/root/{path.lstrip('/')}").read_text()
        except OSError:
            return None

    def boot_id(self, i: int) -> str | None:
        """The host's current /run/fake_boot_id (None while it is down or booting)."""
        text = self.read_file(i, "/run/fake_boot_id")
        return text.strip() if text else None

    def is_ready(self, i: int) -> bool:
        """True when host ``hI`` has finished booting and its sshd accepts connections."""
        if self.read_file(i, "/run/testbed.ready") is None:
            return False
        try:
            with socket.create_connection((self.host(i).address, 22), timeout=0.5):
                return True
        except OSError:
            return False

    def wait_ready(self, i: int | None = None, timeout: float = 30.0) -> None:
        """Wait until host ``hI`` (or every host) is up and takes ssh connections."""
        targets = [i] if i is not None else list(range(1, len(self._hosts) + 1))
        deadline = time.monotonic() + timeout
        for t in targets:
            left = max(0.1, deadline - time.monotonic())
            try:
                _net.wait_for(lambda t=t: self.is_ready(t), left, what=f"host h{t} to boot")
            except TimeoutError as exc:
                log = self.host(t).hostdir / "console.log"
                tail = log.read_text()[-2000:] if log.exists() else "(no console log)"
                raise TestBedError(f"{exc}\n--- h{t} console.log ---\n{tail}") from None

    def wait_booted(self, i: int, previous_boot_id: str | None = None, timeout: float = 30.0) -> str:
        """Wait for host ``hI`` to be up with a boot id other than ``previous_boot_id``; return it."""
        clear_stale_rehash_lock()  # the power cut may have killed a login mid-rehash

        def booted() -> str | None:
            bid = self.boot_id(i)
            if bid and bid != previous_boot_id and self.is_ready(i):
                return bid
            return None

        return _net.wait_for(booted, timeout, interval=0.1, what=f"host h{i} to reboot")

    # ------------------------------------------------------------------ faults
    def power_cut(self, i: int) -> None:
        """Hard power cut: SIGKILL the host's PID 1 (its whole PID namespace dies at once).

        The supervisor boots it again ``restart_delay`` seconds later.
        """
        pid = self.pid1(i)
        if pid is None:
            raise TestBedError(f"host h{i} is not running")
        os.kill(pid, signal.SIGKILL)
        _net.wait_dead([pid], timeout=5)

    def net_down(self, i: int) -> None:
        """Cut host ``hI`` off the network (its bridge port goes down)."""
        _net.ip("link", "set", self.host(i).veth, "down")

    def net_up(self, i: int) -> None:
        """Reconnect host ``hI``."""
        _net.ip("link", "set", self.host(i).veth, "up")

    def run(
        self,
        i: int,
        argv: list[str] | str,
        *,
        check: bool = False,
        timeout: float = 60.0,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside host ``hI`` (all its namespaces), without ssh.

        Args:
            argv: Program and arguments, or a string run by ``/bin/sh -c``.
            check: Raise CalledProcessError on a non-zero exit.
            timeout: Seconds before the command is killed.
            input: Text for its stdin.
            env: Environment (default: a minimal PATH/LC_ALL one).
        """
        pid = self.pid1(i)
        if pid is None:
            raise TestBedError(f"host h{i} is not running")
        if isinstance(argv, str):
            argv = ["/bin/sh", "-c", argv]
        env = env or {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C.UTF-8",
            "HOME": "/root",
        }
        cmd = ["nsenter", "-t", str(pid), "-m", "-u", "-n", "-p", "--wd=/", "--", *argv]
        return subprocess.run(cmd, check=check, timeout=timeout, input=input, capture_output=True, text=True, env=env)

    def ssh(self, i: int, command: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on host ``hI`` over real ssh (checks the host key)."""
        return subprocess.run(
            self.host(i).ssh_argv(command),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    # ------------------------------------------------------------------ ansible
    def inventory(
        self,
        path: str | Path,
        extra_vars: dict[str, Any] | None = None,
        *,
        groups: dict[str, list[int]] | None = None,
        host_vars: dict[int, dict[str, Any]] | None = None,
    ) -> Path:
        """Write an Ansible YAML inventory of the bed's hosts.

        Args:
            path: File to write.
            extra_vars: Variables for group ``all`` (override the connection defaults).
            groups: Child groups, name -> host indexes (e.g. ``{"drones": [1, 2]}``).
            host_vars: Per-host variables, index -> vars.

        Returns:
            The path written.
        """
        assert self.workdir is not None
        path = Path(path)
        first = self.host(1)
        all_vars: dict[str, Any] = {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(first.key_file),
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_common_args": " ".join(shlex.quote(o) for o in first.ssh_options),
            "ansible_control_path_dir": str(self.workdir / "cp"),
            "swarm_service_manager": "sysvinit",
            "swarm_identity_file": "/etc/machine-id",
        }
        all_vars.update(extra_vars or {})
        hosts: dict[str, dict[str, Any]] = {}
        for h in self._hosts:
            hv: dict[str, Any] = {
                "ansible_host": h.address,
                "swarm_machine_id": h.machine_id,
                "testbed_index": h.index,
            }
            hv.update((host_vars or {}).get(h.index, {}))
            hosts[h.name] = hv
        data: dict[str, Any] = {"all": {"vars": all_vars, "hosts": hosts}}
        if groups:
            data["all"]["children"] = {
                g: {"hosts": {self.host(i).name: None for i in idx}} for g, idx in groups.items()
            }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("---\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
        return path

    # ------------------------------------------------------------------ internals
    def _make_host(self, i: int) -> Host:
        assert self.workdir is not None
        hostdir = self.workdir / f"h{i}"
        key = self.workdir / "client_key"
        known = self.workdir / "known_hosts"
        options = (
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
        )
        mid_file = hostdir / "etc.upper" / "machine-id"
        mid = mid_file.read_text().strip() if mid_file.exists() else ""
        return Host(
            index=i,
            name=f"h{i}",
            address=f"{SUBNET}.{10 + i}",
            netns=f"{self.prefix}-h{i}",
            veth=f"{self.prefix}v-h{i}",
            hostdir=hostdir,
            machine_id=mid,
            key_file=key,
            known_hosts=known,
            ssh_options=options,
        )

    def _wait_subnet_free(self) -> None:
        """Wait while another live bed holds the gateway address; clean a dead one's leftovers."""

        def free() -> bool:
            owner = _net.address_owner(GATEWAY)
            if owner is None:
                return True
            other = _owner_prefix(owner)
            if other is None:
                raise TestBedError(f"{GATEWAY} is held by {owner}, which is not a test bed bridge")
            data = _read_registry(other)
            if data is None or not _registry_alive(data):
                teardown_prefix(other)
                return _net.address_owner(GATEWAY) is None
            return False

        try:
            _net.wait_for(free, self.wait_timeout, interval=0.5, what=f"another test bed to free {GATEWAY}")
        except TimeoutError as exc:
            raise TestBedError(str(exc)) from None

    def _create(self) -> None:
        if self._workdir_arg:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"testbed-{self.prefix}-"))
        wd = self.workdir
        (wd / _MARKER).write_text(self.prefix)
        (wd / "cp").mkdir(exist_ok=True)
        os.chmod(wd, 0o755)
        _keygen(wd / "client_key", f"testbed-{self.prefix}-client")

        known_lines = []
        for i in range(1, self.n_hosts + 1):
            hostdir = wd / f"h{i}"
            for sub in ("etc.upper", "etc.work", "var.upper", "var.work"):
                (hostdir / sub).mkdir(parents=True, exist_ok=True)
            upper = hostdir / "etc.upper"
            # Hide the machine's own init links: each host starts only what was enabled in it.
            for rc in ("rc0.d", "rc1.d", "rc2.d", "rc3.d", "rc4.d", "rc5.d", "rc6.d", "rcS.d"):
                d = upper / rc
                d.mkdir(exist_ok=True)
                os.setxattr(d, "trusted.overlay.opaque", b"y")
            (upper / "machine-id").write_text(secrets.token_hex(16) + "\n")
            (upper / "hostname").write_text(f"h{i}\n")
            _keygen(hostdir / "ssh_host_ed25519_key", f"h{i}")
            host = self._make_host(i)
            self._hosts.append(host)
            (hostdir / "sshd_config").write_text(_sshd_config(host, wd / "client_key.pub"))
            pub = (hostdir / "ssh_host_ed25519_key.pub").read_text().split()
            known_lines.append(f"{host.address} {pub[0]} {pub[1]}\n")
        (wd / "known_hosts").write_text("".join(known_lines))

        lines = [
            f"link add {self.bridge} type bridge",
            f"addr add {GATEWAY}/24 dev {self.bridge}",
            f"link set {self.bridge} up",
        ]
        for h in self._hosts:
            lines += [
                f"netns add {h.netns}",
                f"link add {h.veth} type veth peer name eth0 netns {h.netns}",
                f"link set {h.veth} master {self.bridge} up",
            ]
        _net.ip_batch(lines)
        for h in self._hosts:
            _net.ip_batch([f"addr add {h.address}/24 dev eth0", "link set eth0 up", "link set lo up"], netns=h.netns)

        for h in self._hosts:
            proc = subprocess.Popen(
                [str(SUPERVISOR), h.netns, h.name, str(h.hostdir), str(HOSTINIT), str(self.restart_delay)],
                stdin=subprocess.DEVNULL,
                stdout=open(h.hostdir / "supervisor.log", "ab"),  # noqa: SIM115 - child keeps it
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
            self._supervisors[h.index] = proc
        self._write_registry()

    def _write_registry(self) -> None:
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        data = {
            "prefix": self.prefix,
            "n_hosts": self.n_hosts,
            "workdir": str(self.workdir),
            "restart_delay": self.restart_delay,
            "owner": os.getpid(),
            "supervisors": {
                str(i): (p.pid if isinstance(p, subprocess.Popen) else p) for i, p in self._supervisors.items()
            },
            "machine_ids": {str(h.index): h.machine_id for h in self._hosts},
        }
        tmp = REGISTRY_DIR / f".{self.prefix}.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(REGISTRY_DIR / f"{self.prefix}.json")


def _keygen(path: Path, comment: str) -> None:
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def _sshd_config(host: Host, authorized_keys: Path) -> str:
    return "\n".join(
        [
            f"ListenAddress {host.address}",
            "Port 22",
            f"HostKey {host.hostdir / 'ssh_host_ed25519_key'}",
            # The bed's client key for root, and the accounts' own keys (the healing account's).
            f"AuthorizedKeysFile {authorized_keys} .ssh/authorized_keys",
            "PidFile /run/sshd.pid",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "UseDNS no",
            "StrictModes no",
            "MaxStartups 50",
            "MaxSessions 50",
            "PrintMotd no",
            "AcceptEnv LANG LC_*",
            "Subsystem sftp /usr/lib/openssh/sftp-server",
            "",
        ]
    )


def _read_registry(prefix: str) -> dict[str, Any] | None:
    try:
        return json.loads((REGISTRY_DIR / f"{prefix}.json").read_text())
    except (OSError, ValueError):
        return None


def clear_stale_rehash_lock() -> None:
    """Remove a pyenv rehash lock left by a login that a power cut killed.

    The hosts share root's home with this machine, so every ssh login runs its shell
    profile; where that runs ``pyenv init``, a login killed mid-rehash leaves
    ``$PYENV_ROOT/shims/.pyenv-shim`` behind and every later login waits 60 s for it.
    The lock is stale when no rehash is running (or it is older than any rehash takes).
    """
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    lock = root / "shims" / ".pyenv-shim"
    with contextlib.suppress(OSError):
        age = time.time() - lock.stat().st_mtime
        rehashing = any("pyenv-rehash" in " ".join(proc.info["cmdline"] or [])
                        for proc in psutil.process_iter(["cmdline"]))
        if age > 90 or not rehashing:
            lock.unlink()


def _registry_alive(data: dict[str, Any]) -> bool:
    return any(_net.is_live(int(p)) for p in data.get("supervisors", {}).values())


def _owner_prefix(link: str) -> str | None:
    m = re.match(r"^([a-z][a-z0-9]{0,7})br0$", link)
    return m.group(1) if m else None


def teardown_prefix(prefix: str) -> None:
    """Remove every trace of the bed named ``prefix``: live, or left over by a crashed run.

    Kills its supervisors and every process in its namespaces (waiting until they are dead),
    its ssh control masters, deletes its links and namespaces, unmounts anything left under
    its temp dir and deletes the dir and the registry entry. Safe to call when nothing exists.
    """
    data = _read_registry(prefix)
    workdir = data.get("workdir") if data else None
    victims: list[int] = []
    if data:
        for hostdir in Path(workdir).glob("h*") if workdir else []:
            with contextlib.suppress(OSError):
                (hostdir / "halt").touch()
        for pid in data.get("supervisors", {}).values():
            _net.kill_group(int(pid))
            victims.append(int(pid))
    ns_re = re.compile(rf"^{re.escape(prefix)}-h\d+$")
    namespaces = [n for n in _net.netns_names() if ns_re.match(n)]
    for ns in namespaces:
        pids = _net.pids_in_netns(ns)
        _net.kill_all(pids)
        victims += pids
    if workdir:
        # ssh ControlPersist masters and anything else started with the bed's paths.
        pids = _net.pids_with_cmdline(workdir)
        _net.kill_all(pids)
        victims += pids
    left = _net.wait_dead(victims, timeout=10)
    if left:
        raise TestBedError(f"test bed {prefix}: processes survived SIGKILL: {left}")
    _net.wait_gone(victims, timeout=3)  # zombies of our own children are reaped by their parents

    veth_re = re.compile(rf"^{re.escape(prefix)}v-h\d+$")
    links = [name for name in _net.link_names() if veth_re.match(name) or name == f"{prefix}br0"]
    if links or namespaces:
        _net.ip_batch([f"link del {name}" for name in links] + [f"netns del {ns}" for ns in namespaces], force=True)
    if workdir and Path(workdir, _MARKER).exists():
        for mnt in _net.mounts_under(workdir):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (REGISTRY_DIR / f"{prefix}.json").unlink()
