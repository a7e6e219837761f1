"""Build targets: named build configurations, and the job names that carry them.

A target is a profile, CHOST, ACCEPT_KEYWORDS, make.conf fragments, package.* files
and a world. The config file declares them in a ``targets:`` mapping (name -> fields);
a config without one has a single target named ``default`` made of today's settings,
so a single-target farm keeps its layout, keys and job names unchanged.

A job of the ``default`` target is named by its CPV alone (``app-misc/foo-1.0``); a
job of any other target T is ``CPV@T`` (``app-misc/foo-1.0@server``): the same CPV
queued for two targets is two jobs, built twice. Lua derives the target from the
name the same way (swarmctl.scripts: ``target_of``), so no script needs a lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmctl.atoms import validate_atom, validate_cpv
from swarmctl.exceptions import ConfigError, InvalidAtom

#: The target of a farm that declares none, and of a job named by its bare CPV.
DEFAULT_TARGET = "default"
#: Separates a job's CPV from its target (never part of a CPV).
SEPARATOR = "@"
#: A target's name: it becomes part of Redis keys, URL paths and directory names.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}", re.ASCII)
#: Fields a target may set, and what each does (docs/configuration.md is generated from this).
FIELD_DOCS = {
    "profile": "Profile path inside the repository (e.g. default/linux/amd64/23.0); in the area's Packages header.",
    "chost": "CHOST (a target triple); written to the prefix's make.conf and the area's Packages header.",
    "accept_keywords": "ACCEPT_KEYWORDS (e.g. 'amd64 ~amd64', or a list); make.conf and the Packages header.",
    "make_conf": "More make.conf variables: a mapping such as {USE: 'X -gtk', CFLAGS: '-O2 -pipe', FEATURES: ...}.",
    "package_files": "package.* files: a mapping of file name (package.use, package.accept_keywords, "
                     "package.mask, package.unmask, package.env, package.license) to its lines.",
    "world": "The target's world: a list of atoms `queue sync` resolves for it.",
    "world_file": "Or a world file (one atom a line) for it (default: nightly.world_file).",
    "prefix": "The portage prefix a drone builds this target in (and `queue sync` resolves with); made from "
              "drone.repo with the fields above when it does not exist (default: drone.prefix).",
}
FIELDS = tuple(FIELD_DOCS)
#: package.* files a target may carry (file name under /etc/portage).
PACKAGE_FILES = ("package.use", "package.accept_keywords", "package.mask", "package.unmask", "package.env",
                 "package.license")
_MAKE_CONF_VAR = re.compile(r"[A-Z_][A-Z0-9_]*", re.ASCII)
_CHOST_RE = re.compile(r"[a-z0-9_]+(-[a-z0-9_.]+){1,3}", re.ASCII)
_KEYWORD_RE = re.compile(r"~?[a-z0-9_-]+|\*|~\*|\*\*", re.ASCII)


@dataclass(frozen=True)
class Target:
    """One named build configuration (every field optional but the name)."""

    name: str
    profile: str | None = None
    chost: str | None = None
    accept_keywords: str | None = None
    make_conf: dict[str, str] = field(default_factory=dict)
    package_files: dict[str, list[str]] = field(default_factory=dict)
    world: list[str] = field(default_factory=list)
    world_file: str | None = None
    prefix: str | None = None

    def index_header(self) -> dict[str, str]:
        """The Packages header facts a client of this target checks (CHOST, ACCEPT_KEYWORDS, PROFILE)."""
        header = {"TARGET": self.name}
        if self.chost:
            header["CHOST"] = self.chost
        if self.accept_keywords:
            header["ACCEPT_KEYWORDS"] = self.accept_keywords
        if self.profile:
            header["PROFILE"] = self.profile
        return header


def validate_target_name(name: object) -> str:
    """``name`` if it can name a target, else InvalidAtom with one line."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidAtom(f"not a valid target name {name!r} (lower-case letters, digits, '_' and '-', "
                          "at most 32, starting with a letter or digit)")
    return name


# -- job names ------------------------------------------------------------------------------------

def job_name(cpv: str, target: str = DEFAULT_TARGET) -> str:
    """The queue's name of ``cpv`` built for ``target``."""
    return cpv if target == DEFAULT_TARGET else f"{cpv}{SEPARATOR}{target}"


def split_job(name: str) -> tuple[str, str]:
    """(cpv, target) of a job name (not validated; see validate_job)."""
    cpv, sep, target = name.rpartition(SEPARATOR)
    return (cpv, target) if sep else (name, DEFAULT_TARGET)


def validate_job(text: str) -> str:
    """A job name (``CPV`` or ``CPV@TARGET``, a leading ``=`` dropped), else InvalidAtom."""
    if not isinstance(text, str):
        raise InvalidAtom(f"not a package: {text!r}")
    cpv, target = split_job(text.strip())
    return job_name(validate_cpv(cpv), validate_target_name(target))


def target_of(name: str) -> str:
    return split_job(name)[1]


def cpv_of(name: str) -> str:
    return split_job(name)[0]


# -- the config's targets -------------------------------------------------------------------------

def parse_targets(raw: Any, origin: str) -> dict[str, Target]:
    """The ``targets:`` mapping of a config file, every mistake found at once.

    Raises:
        ConfigError: one line per mistake, each naming the target and field.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{origin}: targets must be a mapping of target name -> settings")
    mistakes: list[str] = []
    targets: dict[str, Target] = {}
    for name, body in raw.items():
        where = f"{origin}: targets.{name}"
        try:
            validate_target_name(name)
        except InvalidAtom as exc:
            mistakes.append(f"{origin}: targets: {exc}")
            continue
        if body is None:
            body = {}
        if not isinstance(body, dict):
            mistakes.append(f"{where} must be a mapping of settings")
            continue
        found = _target_mistakes(where, body)
        mistakes += found
        if not found:
            targets[name] = Target(
                name=name, profile=body.get("profile"), chost=body.get("chost"),
                accept_keywords=_keywords(body.get("accept_keywords")),
                make_conf={str(k): str(v) for k, v in (body.get("make_conf") or {}).items()},
                package_files={k: [str(line) for line in v] for k, v in (body.get("package_files") or {}).items()},
                world=[validate_atom(a) for a in body.get("world") or []], world_file=body.get("world_file"),
                prefix=body.get("prefix"))
    if mistakes:
        raise ConfigError("\n".join(mistakes))
    return targets


def _keywords(value: Any) -> str | None:
    if value is None:
        return None
    return " ".join(value) if isinstance(value, list) else str(value)


def _target_mistakes(where: str, body: dict[str, Any]) -> list[str]:
    """One line per thing wrong with one target's settings."""
    found = [f"{where}: unknown field {key!r} (known: {', '.join(FIELDS)})" for key in body if key not in FIELDS]
    for key in ("profile", "world_file", "prefix"):
        if key in body and not (isinstance(body[key], str) and body[key].strip()):
            found.append(f"{where}.{key} must be a non-empty string")
    if "profile" in body and isinstance(body["profile"], str) and (".." in body["profile"].split("/")
                                                                   or body["profile"].startswith("/")):
        found.append(f"{where}.profile must be a profile path inside the repository, e.g. default/linux/amd64/23.0")
    chost = body.get("chost")
    if "chost" in body and not (isinstance(chost, str) and _CHOST_RE.fullmatch(chost)):
        found.append(f"{where}.chost must be a target triple such as x86_64-pc-linux-gnu, got {chost!r}")
    if "accept_keywords" in body:
        words = body["accept_keywords"]
        words = words.split() if isinstance(words, str) else words
        if not isinstance(words, list) or not words or not all(
                isinstance(w, str) and _KEYWORD_RE.fullmatch(w) for w in words):
            found.append(f"{where}.accept_keywords must be keywords such as 'amd64 ~amd64', "
                         f"got {body['accept_keywords']!r}")
    conf = body.get("make_conf")
    if "make_conf" in body:
        if not isinstance(conf, dict):
            found.append(f"{where}.make_conf must be a mapping of VARIABLE -> value (USE, CFLAGS, FEATURES...)")
        else:
            for var, value in conf.items():
                if not (isinstance(var, str) and _MAKE_CONF_VAR.fullmatch(var)):
                    found.append(f"{where}.make_conf: {var!r} is not a make.conf variable name")
                elif not isinstance(value, str | int | float) or any(c in str(value) for c in "\n\"\\$`"):
                    found.append(f"{where}.make_conf.{var} must be one line without quotes, '\\', '$' or '`'")
    files = body.get("package_files")
    if "package_files" in body:
        if not isinstance(files, dict):
            found.append(f"{where}.package_files must be a mapping of file name -> list of lines")
        else:
            for name, lines in files.items():
                if name not in PACKAGE_FILES:
                    found.append(f"{where}.package_files: {name!r} is not one of {', '.join(PACKAGE_FILES)}")
                elif not isinstance(lines, list) or not all(isinstance(x, str) and "\n" not in x for x in lines):
                    found.append(f"{where}.package_files.{name} must be a list of one-line strings")
    world = body.get("world")
    if "world" in body:
        if not isinstance(world, list):
            found.append(f"{where}.world must be a list of atoms")
        else:
            for atom in world:
                try:
                    validate_atom(str(atom))
                except InvalidAtom as exc:
                    found.append(f"{where}.world: {exc}")
    return found


def resolve_targets(declared: dict[str, Target]) -> dict[str, Target]:
    """The farm's targets: the declared ones, else the single ``default`` target."""
    return dict(declared) if declared else {DEFAULT_TARGET: Target(DEFAULT_TARGET)}


def drone_targets(farm: dict[str, Target], chosen: Iterable[str]) -> list[str]:
    """The targets a drone declares: ``chosen`` (each one the farm's), else the farm's only one.

    Raises:
        ConfigError: one line (an unknown target, or several targets and none chosen).
    """
    names = list(dict.fromkeys(chosen))
    if not names:
        if len(farm) > 1:
            raise ConfigError(f"this farm has several targets ({', '.join(farm)}): say which this drone builds "
                              "with --target T (repeatable) or drone.targets")
        return list(farm)
    unknown = [n for n in names if n not in farm]
    if unknown:
        raise ConfigError(f"drone.targets: no target {', '.join(map(repr, unknown))} in the config "
                          f"(known: {', '.join(farm)})")
    return names


def make_conf_of(target: Target) -> dict[str, str]:
    """The make.conf variables ``target`` sets (its fragments, CHOST, ACCEPT_KEYWORDS)."""
    conf = dict(target.make_conf)
    if target.chost:
        conf["CHOST"] = target.chost
    if target.accept_keywords:
        conf["ACCEPT_KEYWORDS"] = target.accept_keywords
    return conf


def install_package_files(config_dir: Path, target: Target) -> None:
    """Write the target's package.* files into a prefix's portage config dir (``etc/portage``):
    ``<name>/swarm-target`` when the operator keeps a directory there, else the file itself."""
    from swarmctl.atomicfile import write_atomic

    for name, lines in target.package_files.items():
        path = config_dir / name
        write_atomic(path / "swarm-target" if path.is_dir() else path, "".join(line + "\n" for line in lines))


def area_url(base: str, target: str, farm: dict[str, Target]) -> str:
    """The URL of ``target``'s binhost area: the base URL itself for a single-target farm,
    ``<base>/<target>/`` with several."""
    return base if not several(farm) else base.rstrip("/") + "/" + target + "/"


def several(farm: dict[str, Target]) -> bool:
    """Does the farm have areas per target (PKGDIR/T/) rather than today's single layout?"""
    return len(farm) > 1
