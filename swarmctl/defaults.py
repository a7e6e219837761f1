"""Every setting swarmctl knows, with its default and what it does.

This list is the single source of truth for the configuration file, the
environment overrides (``SWARM_<SECTION>_<KEY>``) and the generated reference
in docs/configuration.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One configuration key: ``section.key``, its default, type and doc."""

    section: str
    key: str
    default: Any
    type: type
    doc: str
    secret: bool = False
    #: Inclusive bounds of a numeric setting (every int and float has both; floats must be finite).
    min: float | None = None
    max: float | None = None

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        return f"SWARM_{self.section.upper()}_{self.key.upper()}"

    @property
    def range(self) -> str:
        """The bounds as text (``0.01 ... 3600``), or "" for a non-numeric setting."""
        if self.min is None and self.max is None:
            return ""
        return f"{_number(self.min)} ... {_number(self.max)}"


def _number(value: float | None) -> str:
    if value is None:
        return "any"
    if float(value).is_integer():
        whole = int(value)
        if whole >= 1024**3 and whole % 1024**3 == 0:
            return f"{whole // 1024**3} GiB"
        return str(whole)
    return f"{value:g}"


HOUR, DAY, YEAR = 3600.0, 86400.0, 365 * 86400.0


SETTINGS: tuple[Setting, ...] = (
    # Redis: where the queue lives.
    Setting("redis", "url", None, str,
            "redis://, rediss:// or unix:// URL of the server. Empty: the embedded local server.", secret=True),
    Setting("redis", "username", None, str, "ACL user name (overrides the URL's)."),
    Setting("redis", "password", None, str, "Password (overrides the URL's).", secret=True),
    Setting("redis", "sentinels", [], list, "Redis Sentinel addresses as host:port; set with service_name."),
    Setting("redis", "service_name", "build-swarm", str, "Sentinel service (master) name."),
    Setting("redis", "socket_timeout", 5.0, float, "Seconds before a Redis call times out.", min=0.01, max=HOUR),
    Setting("redis", "allow_no_password", False, bool,
            "Allow a server on a non-loopback address without a password (refused by default)."),
    Setting("redis", "memory_warn", 0.8, float,
            "status/doctor warn when Redis's used memory reaches this fraction of its maxmemory.",
            min=0.01, max=1.0),
    Setting("redis", "memory_critical", 0.95, float,
            "status/doctor go red when Redis's used memory reaches this fraction of its maxmemory.",
            min=0.01, max=1.0),
    Setting("redis", "data_dir", None, str,
            "Embedded server's data dir. Empty: $XDG_DATA_HOME/build-swarm/redis."),
    # Queue: jobs, priorities, blocking.
    Setting("queue", "policy", "critical-path", str,
            "Which ready job goes first: critical-path (longest remaining chain) or fifo."),
    Setting("queue", "default_estimate", 600.0, float,
            "Estimated build seconds for a package with no recorded history.", min=0.0, max=YEAR),
    Setting("queue", "block_after_drones", 2, int,
            "A package that fails on this many different drones is blocked (the package's fault).",
            min=1, max=1000),
    Setting("queue", "max_attempts", 6, int, "Attempts before a job is marked failed for good.",
            min=1, max=1_000_000),
    Setting("queue", "constraints_file", None, str,
            "YAML file of packages' needs, e.g. 'dev-qt/qtwebengine: {memory_mb: 12000, disk_mb: 30000}' "
            "(by category/package or CPV); a job is handed only to a drone with that much free. Packages "
            "not named there need what their recent builds peaked at."),
    Setting("queue", "claim_scan", 64, int,
            "Ready jobs a claim looks at, best first (bounds claim cost whatever the queue length).",
            min=1, max=100_000),
    Setting("queue", "events_max", 10000, int, "Events kept in the event stream (older ones trimmed).",
            min=1, max=100_000_000),
    Setting("queue", "log_tail_lines", 40, int, "Lines of a failed build's log kept with the job.",
            min=0, max=10_000),
    # Drone daemon.
    Setting("drone", "name", None, str, "This drone's name (or --name)."),
    Setting("drone", "targets", [], list,
            "Build targets this drone builds (or --target, repeatable); it is handed no job of another. "
            "Empty: the farm's only target (a farm with several must say)."),
    Setting("drone", "token", None, str, "Enrollment token (or SWARM_DRONE_TOKEN; --token shows it in ps).",
            secret=True),
    Setting("drone", "state_dir", None, str,
            "Where build logs live. Empty: $XDG_STATE_HOME/build-swarm/drones/NAME."),
    Setting("drone", "heartbeat_interval", 2.0, float, "Seconds between heartbeats.", min=0.01, max=HOUR),
    Setting("drone", "poll_interval", 1.0, float, "Seconds between claims while the queue is empty.",
            min=0.01, max=HOUR),
    Setting("drone", "builder", "command", str, "Builder: command or portage."),
    Setting("drone", "prefix", None, str,
            "Portage prefix the portage builder uses (PORTAGE_OVERRIDE_EPREFIX). Empty: drone.build_root, "
            "else the host's portage only with drone.live_root."),
    Setting("drone", "repo", None, str,
            "Ebuild repository to create the prefix from when drone.prefix does not exist yet."),
    Setting("drone", "build_root", None, str,
            "Chroot the portage builder builds in (a stage3 or a copy of a system, with its own "
            "/etc/portage naming the binhost); see docs/deploy-gentoo.md. Not with drone.prefix."),
    Setting("drone", "build_root_binds", ["/var/db/repos", "/var/cache/distfiles"], list,
            "Host directories bound at the same path inside drone.build_root (ebuild trees, DISTDIR); "
            "/proc, /dev and /sys always are."),
    Setting("drone", "live_root", False, bool,
            "Let the portage builder without drone.prefix or drone.build_root build in this host's "
            "live system (every build merges into it, toolchain included)."),
    Setting("drone", "emerge_args", [], list, "Extra emerge arguments for the portage builder."),
    Setting("drone", "build_user", "portage", str,
            "User a root drone runs prefix builds as (the prefix is handed to it). Empty, or no such "
            "user: builds run as the drone's own user and can read what it can read."),
    Setting("drone", "build_env", [], list,
            "Environment variables passed to builds beyond PATH, HOME, TERM, TZ, locale and proxies "
            "(SWARM_* never)."),
    Setting("drone", "command", [], list,
            "Argv template for the command builder; {cpv} {category} {pn} {pv} are substituted."),
    Setting("drone", "log_keep_jobs", 50, int, "Build logs kept (the newest N jobs).", min=1, max=1_000_000),
    Setting("drone", "log_max_bytes", 200 * 1024 * 1024, int, "Total bytes of build logs kept.",
            min=1024, max=2**40),
    Setting("drone", "hung_idle_seconds", 1800.0, float,
            "A build with no log output and no CPU for this long is flagged as hung.", min=0.1, max=YEAR),
    Setting("drone", "hung_kill_seconds", 3600.0, float,
            "A build hung for this long is killed and its job returned to the queue.", min=0.1, max=YEAR),
    Setting("drone", "preflight_interval", 300.0, float,
            "Seconds between the drone's preflight checks (its builder's tools, dirs, repositories).",
            min=0.1, max=DAY),
    Setting("drone", "preflight_retry", 30.0, float,
            "Seconds between preflight checks while a drone is misconfigured (it resumes when one passes).",
            min=0.1, max=DAY),
    Setting("drone", "preflight_min_free_mb", 256, int,
            "Free MiB PKGDIR, PORTAGE_TMPDIR and DISTDIR need for the preflight to pass.", min=0, max=2**30),
    Setting("drone", "slots", 1, int,
            "Builds this drone runs at once (or --slots); 0: one per 4 cores. With several, each build gets "
            "MAKEOPTS=-jC -lC (C: the cores) unless drone.build_env passes MAKEOPTS.", min=0, max=256),
    Setting("drone", "speed", 0.0, float,
            "How fast this drone builds, relative to the others (e.g. its cores x their clock); 0: its "
            "core count. A slower drone leaves the longest critical-path job to a faster idle one.",
            min=0.0, max=1e6),
    Setting("drone", "cores", 0, int,
            "Cores this drone offers its builds (MAKEOPTS, the core shares, its default speed); 0: the "
            "cores it may run on (its CPU affinity).", min=0, max=65536),
    Setting("drone", "cpu_cgroup", "", str,
            "A CPU cgroup directory the drone may manage (cgroup v2 with the cpu controller, or v1's cpu "
            "hierarchy, e.g. /sys/fs/cgroup/cpu): each build of a multi-slot drone runs in its own group "
            "and the longest critical-path chain gets the larger CPU share (drone/cpu_shares.py). Empty: "
            "the cores are pooled evenly."),
    Setting("drone", "memory_mb", 0, int,
            "Memory this drone offers its builds, in MiB; 0: the host's total.", min=0, max=2**30),
    Setting("drone", "build_disk_gb", 0.0, float,
            "Build disk this drone offers its builds, in GiB (claims fit jobs' disk needs within it and "
            "within what is free); 0: the size of its build directory's file system.", min=0.0, max=1e6),
    Setting("drone", "memory_margin_mb", 512, int,
            "MiB of memory a drone keeps free: it claims only jobs whose expected peak fits in its "
            "available memory less this and what its running builds are still expected to use.",
            min=0, max=2**30),
    Setting("drone", "min_free_gb", 2.0, float,
            "A drone with less free GiB in its build dir or PKGDIR claims nothing and shows low-disk "
            "until space returns (not a failure; 0: never).", min=0.0, max=1e6),
    Setting("drone", "keep_uploaded", False, bool,
            "Keep a package in the drone's PKGDIR after the binhost accepted it (default: delete it)."),
    Setting("drone", "pkgdir_max_gb", 10.0, float,
            "Largest total GiB of package files in the drone's PKGDIR (binary dependencies fetched from "
            "the binhost, builds kept); the oldest go first, between builds (0: no limit).", min=0.0, max=1e6),
    Setting("drone", "distfiles_max_gb", 10.0, float,
            "Largest total GiB of the drone's DISTDIR (fetched sources); the oldest go first, between "
            "builds (0: no limit).", min=0.0, max=1e6),
    Setting("drone", "overdue_factor", 4.0, float,
            "A build running longer than factor x its estimate is flagged as overdue.", min=1.0, max=1000.0),
    # Orchestrator.
    Setting("orchestrator", "interval", 2.0, float, "Seconds between maintenance sweeps.", min=0.01, max=HOUR),
    Setting("orchestrator", "offline_after", 10.0, float,
            "A drone silent for this long is offline and its jobs are reclaimed.", min=0.1, max=DAY),
    Setting("orchestrator", "integrity_interval", 300.0, float,
            "Seconds between checks that the queue's counts agree with its jobs (repairs and reports; 0: off).",
            min=0.0, max=DAY),
    Setting("orchestrator", "leader_ttl", 6.0, float,
            "Seconds the leader lease lasts; a standby takes over after it expires.", min=0.1, max=HOUR),
    Setting("orchestrator", "metrics_port", 0, int, "Prometheus metrics port (0: off).", min=0, max=65535),
    Setting("orchestrator", "metrics_address", "127.0.0.1", str, "Address the metrics server binds."),
    # Circuit breaker.
    Setting("breaker", "failures", 5, int, "Consecutive failures that ground a drone.", min=1, max=1000),
    Setting("breaker", "ground_seconds", 300.0, float, "How long a grounding lasts.", min=0.0, max=YEAR),
    Setting("breaker", "backoff_factor", 1.0, float,
            "Each repeated grounding lasts factor^(n-1) times longer (3 is Hydra's); 1 disables.",
            min=1.0, max=100.0),
    Setting("breaker", "ground_max_seconds", 86400.0, float, "Longest grounding with backoff.", min=0.0, max=YEAR),
    # Self-healing.
    Setting("healing", "enabled", False, bool, "Run restart/reboot playbooks for grounded drones."),
    Setting("healing", "inventory", None, str, "Ansible inventory for the healing playbooks."),
    Setting("healing", "playbook_dir", None, str, "Where drone-restart.yml and drone-reboot.yml live."),
    Setting("healing", "restarts_before_reboot", 2, int, "Failed restarts before a reboot is considered.",
            min=0, max=100),
    Setting("healing", "allow_reboot", False, bool, "Allow level-3 reboots without an operator."),
    Setting("healing", "cooldown_seconds", 600.0, float, "Minimum seconds between actions on one drone.",
            min=0.0, max=YEAR),
    # Binhost.
    Setting("binhost", "url", None, str, "Binhost base URL for uploads and --getbinpkg."),
    Setting("binhost", "dir", None, str, "PKGDIR the binhost serves (binhost serve --dir)."),
    Setting("binhost", "listen", "127.0.0.1:8770", str, "Address:port the binhost serves on."),
    Setting("binhost", "max_upload_bytes", 4 * 1024**3, int, "Largest upload accepted.", min=1, max=2**40),
    Setting("binhost", "read_timeout", 30.0, float, "Seconds an upload may stall before it is dropped.",
            min=0.1, max=DAY),
    Setting("binhost", "min_upload_rate", 65536.0, float,
            "Bytes per second an upload must average (deadline: read_timeout + size / rate).", min=1.0, max=1e12),
    Setting("binhost", "max_uploads", 8, int, "Uploads received at once; more are answered 503 (busy).",
            min=1, max=10_000),
    Setting("binhost", "header_timeout", 10.0, float,
            "Seconds a connection has to send its request line and headers (against slow-loris).",
            min=0.1, max=HOUR),
    Setting("binhost", "max_connections", 64, int, "Connections served at once; more get 503 at once.",
            min=1, max=100_000),
    Setting("binhost", "max_connections_per_address", 16, int, "Connections one client address may hold.",
            min=1, max=100_000),
    Setting("binhost", "upload_retries", 5, int, "Upload attempts before giving up.", min=1, max=100),
    Setting("binhost", "gnupg_home", None, str,
            "GnuPG home holding the binhost's signing key (owned by its user, mode 0700). "
            "Empty: $XDG_DATA_HOME/build-swarm/binhost-gnupg."),
    Setting("binhost", "gpg", "gpg", str, "The gpg program the binhost signs and verifies with."),
    Setting("binhost", "key_passphrase_file", None, str,
            "File holding the signing key's passphrase (owned by the binhost's user, mode 0600; read by gpg "
            "only, never logged). Empty: keys have no passphrase (the home's mode protects them)."),
    Setting("binhost", "key_uid", "build-swarm binhost <binhost@build-swarm.invalid>", str,
            "User id of signing keys made by 'binhost key init/rotate'."),
    Setting("binhost", "key_expiry_days", 730, int, "Lifetime of a new signing key, in days.", min=1, max=36500),
    Setting("binhost", "key_warn_days", 180, int, "status/doctor warn when the signing key expires this soon.",
            min=0, max=36500),
    Setting("binhost", "key_critical_days", 30, int,
            "status/doctor go red when the signing key expires this soon.", min=0, max=36500),
    Setting("binhost", "keys_file", None, str,
            "KEYS.asc a drone trusts for binary dependencies (from the binhost's PKGDIR). "
            "Empty: fetched from binhost.url at drone start (trust on first use)."),
    Setting("binhost", "index_ttl", 300, int,
            "TTL (seconds) written into the Packages header: clients skip refreshes this long (0: none).",
            min=0, max=86400),
    # Binhost lifecycle (swarmctl/binhost/generations.py, gates.py, retention.py).
    Setting("binhost", "min_free_mb", 1024, int,
            "Free MiB PKGDIR's file system keeps: an upload that would go below is refused with 507 "
            "(the drone builds it again later) and status is red (0: no check).", min=0, max=2**30),
    Setting("binhost", "keep_generations", 5, int,
            "Generations 'binhost gc' keeps (the published and the previous one are always kept).",
            min=1, max=10000),
    Setting("binhost", "keep_instances", 2, int,
            "Builds (BUILD_IDs) of one CPV 'binhost gc' keeps in staging beyond those kept generations name.",
            min=1, max=10000),
    Setting("binhost", "gate_repo", None, str,
            "Ebuild repository (tree) whose profile the promote gates use: package.provided for the "
            "dependency closure, the smoke-install client's profile. Empty: drone.repo, else the bundled overlay."),
    Setting("binhost", "gate_profile", "default/linux/amd64", str, "Profile (below gate_repo/profiles) of the gates."),
    Setting("binhost", "smoke_install", True, bool,
            "Gate a promote on a throwaway client installing the changed packages (--getbinpkgonly)."),
    Setting("binhost", "smoke_limit", 50, int,
            "Most changed packages the smoke install installs (the first in CPV order above it).",
            min=1, max=100000),
    # Binhost content policy (swarmctl/binhost/policy.py): what a package may contain.
    Setting("binhost", "repositories", ["swarm-sample"], list,
            "Repositories a published package may come from (its REPO); list every repository the "
            "drones build from, e.g. [gentoo, my-overlay]. Empty: any."),
    Setting("binhost", "protected_paths", [
        "/etc/cron.d", "/etc/cron.hourly", "/etc/cron.daily", "/etc/cron.weekly", "/etc/cron.monthly",
        "/etc/crontab", "/var/spool/cron", "/etc/sudoers", "/etc/sudoers.d", "/etc/doas.conf",
        "/etc/ld.so.preload", "/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/ssh",
        "/etc/portage", "/root", "/home", "/var/db/pkg"], list,
            "Installed paths no package may write to or below, nor link to (unless path_allow allows it)."),
    Setting("binhost", "path_allow", [
        "sys-apps/baselayout:*", "sys-process/*:/etc/cron*", "sys-process/*:/var/spool/cron*",
        "app-admin/logrotate:/etc/cron.daily/*", "sys-apps/man-db:/etc/cron.daily/*",
        "sys-apps/mlocate:/etc/cron.daily/*", "sys-apps/plocate:/etc/cron.daily/*",
        "sys-fs/mdadm:/etc/cron.weekly/*", "app-admin/sudo:/etc/sudoers*", "app-admin/doas:/etc/doas.conf",
        "net-misc/openssh*:/etc/ssh*"], list,
            "Exceptions to protected_paths: CATEGORY/PN-GLOB:PATH-GLOB (or PATH-GLOB for any package)."),
    Setting("binhost", "mode_allow", [
        "sys-apps/shadow:*", "sys-apps/util-linux:*", "app-admin/sudo:*", "app-admin/doas:*", "sys-auth/polkit:*",
        "sys-apps/dbus:*", "net-misc/iputils:*", "sys-process/*:*", "net-misc/openssh*:*", "app-misc/screen:*",
        "sys-fs/fuse*:*", "sys-apps/bubblewrap:*", "mail-mta/*:*", "x11-base/xorg-server:*",
        "sys-apps/man-db:*"], list,
            "Files that may be setuid, setgid or world-writable: CATEGORY/PN-GLOB:PATH-GLOB (or PATH-GLOB)."),
    Setting("binhost", "max_metadata_bytes", 64 * 1024**2, int,
            "Largest unpacked metadata tar of a package (checked while it streams).", min=64 * 1024, max=2**40),
    Setting("binhost", "max_unpacked_bytes", 16 * 1024**3, int,
            "Largest unpacked image of a package (checked while it streams).", min=1024**2, max=2**50),
    Setting("binhost", "max_unpacked_ratio", 200.0, float,
            "Largest unpacked/packed size ratio of a package's metadata or image above 256 MiB "
            "unpacked (decompression bombs); 0: no ratio cap.", min=0.0, max=1e9),
    Setting("binhost", "max_index_value_bytes", 32 * 1024, int,
            "Longest metadata value (DESCRIPTION, RDEPEND...) a package may put in the Packages index.",
            min=256, max=64 * 1024**2),
    # Logs.
    Setting("log", "json", False, bool, "Log one JSON object a line (for log shippers)."),
    Setting("log", "file", None, str, "Also log to this file, rotated."),
    Setting("log", "max_bytes", 10 * 1024 * 1024, int, "Rotate the log file at this size.", min=0, max=2**40),
    Setting("log", "backups", 5, int, "Rotated log files kept.", min=0, max=1000),
    # Nightly.
    Setting("nightly", "status_file", None, str,
            "Where the nightly playbook logs STARTED/FINISHED. Empty: /var/lib/build-swarm/nightly.status."),
    Setting("nightly", "world_file", None, str,
            "World file `queue sync` resolves when given no --world (the nightly run). "
            "Empty: /var/lib/portage/world."),
)

SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(s.section for s in SETTINGS))

#: Where a system install keeps its configuration.
SYSTEM_CONFIG = "/etc/build-swarm/swarm.yml"
