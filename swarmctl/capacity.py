"""What a job needs (peak memory, build disk) and which drones can ever give it that.

A job's needs come from the operators' constraints file (``queue.constraints_file``, like OBS's
_constraints) when it names the package, else from the peaks its recent builds recorded in the
history. They are stored with the job when it is queued; a claim hands a drone only a job that fits
what the drone has free (scripts.CLAIM), and ``swarmctl status`` names the jobs no enrolled drone
could ever fit, instead of letting them wait silently.

The constraints file is YAML, keyed by ``category/package`` or by one version's CPV::

    dev-qt/qtwebengine: {memory_mb: 12000, disk_mb: 30000}
    sys-devel/llvm-17.0.6: {memory_mb: 8000}
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
import yaml

from swarmctl import keys
from swarmctl.atoms import cp_of, validate_cpv
from swarmctl.exceptions import ConfigError, InvalidAtom
from swarmctl.targets import cpv_of

if TYPE_CHECKING:
    from swarmctl.history import History
    from swarmctl.registry import DroneInfo

MB = 1024 * 1024
FIELDS = ("memory_mb", "disk_mb")


@dataclass(frozen=True)
class Need:
    """Peak memory and build disk a job needs, in MiB (0: unknown)."""

    memory_mb: int = 0
    disk_mb: int = 0

    def __bool__(self) -> bool:
        return bool(self.memory_mb or self.disk_mb)

    def arg(self) -> str:
        """As the ADD script takes it ('' when unknown)."""
        return f"{self.memory_mb} {self.disk_mb}" if self else ""


def load_constraints(path: str | Path | None) -> dict[str, Need]:
    """The constraints file's needs by package or CPV; {} when none is configured."""
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"queue.constraints_file: cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"queue.constraints_file: {path} must map packages to their needs")
    needs: dict[str, Need] = {}
    for name, spec in data.items():
        needs[_package(name, path)] = _need(name, spec, path)
    return needs


def _package(name: Any, path: str | Path) -> str:
    text = str(name)
    try:
        return validate_cpv(text)
    except InvalidAtom:
        pass
    parts = text.split("/")
    if len(parts) == 2 and all(parts) and not any(c.isspace() for c in text):
        return text
    raise ConfigError(f"queue.constraints_file: {path}: {text!r} is neither category/package nor a CPV")


def _need(name: Any, spec: Any, path: str | Path) -> Need:
    if not isinstance(spec, dict) or not spec or set(spec) - set(FIELDS):
        raise ConfigError(f"queue.constraints_file: {path}: {name}: give memory_mb and/or disk_mb")
    values = []
    for field in FIELDS:
        value = spec.get(field, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"queue.constraints_file: {path}: {name}: {field} must be a whole number >= 0")
        values.append(value)
    return Need(*values)


def needs_for(cpvs: Iterable[str], history: History, constraints: dict[str, Need]) -> dict[str, Need]:
    """Each job's needs: stated (its CPV, then its package), else learned; only known ones."""
    cpvs = list(cpvs)
    found: dict[str, Need] = {}
    unstated = []
    for cpv in cpvs:  # job names (CPV@TARGET, swarmctl.targets): a package needs alike for every target
        package = cpv_of(cpv)
        stated = constraints.get(package) or constraints.get(cp_of(package))
        if stated:
            found[cpv] = stated
        else:
            unstated.append(cpv)
    for cpv, (rss, disk) in history.peaks(unstated).items():
        need = Need(math.ceil(rss / MB), math.ceil(disk / MB))
        if need:
            found[cpv] = need
    return found


@dataclass(frozen=True)
class Unfit:
    """A queued job no enrolled drone could ever hold: what it needs, and the largest drone's."""

    cpv: str
    memory_mb: int
    largest_mb: int
    disk_mb: int = 0
    largest_disk_mb: int = 0

    @property
    def reason(self) -> str:
        if self.memory_mb > self.largest_mb:
            return f"needs {self.memory_mb} MiB of memory; the largest enrolled drone has {self.largest_mb} MiB"
        if self.disk_mb > self.largest_disk_mb:
            return (f"needs {self.disk_mb} MiB of build disk; the largest enrolled drone has "
                    f"{self.largest_disk_mb} MiB")
        return (f"needs {self.memory_mb} MiB of memory and {self.disk_mb} MiB of build disk; no enrolled drone "
                f"has both (the largest: {self.largest_mb} MiB, {self.largest_disk_mb} MiB of disk)")


def fits_some(memory_mb: int, disk_mb: int, drones: list[tuple[int | None, int | None]]) -> bool:
    """Could one of the drones ((memory, disk) MiB, None: not reported, no limit) hold both needs?"""
    return any((mem is None or memory_mb <= mem) and (disk is None or disk_mb <= disk) for mem, disk in drones)


def unfit_jobs(client: redis.Redis, drones: list[DroneInfo], limit: int = 20) -> list[Unfit]:
    """Open jobs no single enrolled drone has the memory and the build disk for (its declared sizes;
    a size no drone reports is not judged)."""
    sizes = [(d.mem_total or None, d.disk_total or None) for d in drones if not d.revoked]
    mems = [m for m, _ in sizes if m]
    disks = [d for _, d in sizes if d]
    if not mems and not disks:
        return []
    # Candidates: beyond the smallest drone's memory or disk (cheap: both needs are indexed).
    suspects: set[str] = set()
    if mems and all(m for m, _ in sizes):
        suspects.update(client.zrangebyscore(keys.NEEDS, f"({min(mems)}", "+inf"))
    if disks and all(d for _, d in sizes):
        suspects.update(client.zrangebyscore(keys.NEEDS_DISK, f"({min(disks)}", "+inf"))
    if not suspects:
        return []
    ordered = sorted(suspects)
    with client.pipeline(transaction=False) as pipe:
        for cpv in ordered:
            pipe.hmget(keys.job(cpv), "state", "mem", "disk")
        rows = pipe.execute()
    found = []
    for cpv, (state, mem, disk) in zip(ordered, rows, strict=True):
        need_mem, need_disk = int(mem or 0), int(disk or 0)
        if state == "needed" and not fits_some(need_mem, need_disk, sizes):
            found.append(Unfit(cpv, need_mem, max(mems, default=0), need_disk, max(disks, default=0)))
    found.sort(key=lambda u: (-u.memory_mb, -u.disk_mb, u.cpv))
    return found[:limit]
