"""What the binhost publishes: the content policy a verified gpkg must pass.

A matching Manifest proves a package is intact, not that it is harmless: a drone (or
any build script it ran) can write a gpkg whose image holds a device node, a setuid
shell or a file for ``/etc/cron.d``, or whose metadata says ``SLOT: ../../evil``. Every
client that installs from the binhost would get it. So before publishing -- and in
``swarmctl binhost verify --manifests`` -- every member of the image and every
metadata value the index carries is checked:

Image members (the tree portage merges into ROOT):

- paths are relative, normalized and below ``image/``: no absolute path, no ``..``,
  ``.`` or empty component, no control character, at most 4096 bytes; no path twice;
- only regular files, directories, symlinks and hard links: no device node, no fifo;
- setuid/setgid files, world-writable files and world-writable directories without
  the sticky bit only where ``binhost.mode_allow`` allows them;
- nothing in a protected place (``binhost.protected_paths``: cron, sudoers, the
  account databases, ``/root``...) unless ``binhost.path_allow`` allows it for that
  package; in a prefix package (EPREFIX set) the path inside the prefix counts too,
  since portage relocates the image below the client's own EPREFIX;
- symlinks: a link may point anywhere, relative or absolute, because portage merges
  it as a link and a link grants nothing by itself; but a link into a protected place
  (e.g. to ``/etc/shadow``) is refused like a file there, and nothing may be written
  through a link: no member below a symlink member, no symlink where the image also
  has a directory. Hard links must name an earlier regular file of the same image.
  The binhost itself never extracts an image, so no link is ever followed here.

Metadata (what reaches ``Packages``): every value the index carries is one line of
valid UTF-8 without control characters and at most ``binhost.max_index_value_bytes``
long; SLOT/SUBSLOT, EAPI, KEYWORDS, IUSE, USE, CHOST follow portage's grammar; the
dependency strings (DEPEND, RDEPEND, BDEPEND, PDEPEND, IDEPEND) and LICENSE,
RESTRICT, PROPERTIES parse with portage's own parser; the repository is one of
``binhost.repositories``. (The CPV is compared with the job's by the publisher.)

Allow-list entries are ``GLOB`` or ``CATEGORY/PN-GLOB:GLOB`` (``fnmatch``; ``*``
also matches ``/``), e.g. ``sys-process/*:/etc/cron.d/*``.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import stat
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmctl.atoms import split_cpv
from swarmctl.binhost.contents import UnpackLimits, inner_tar
from swarmctl.binhost.gpkg import GpkgInfo, PolicyViolation, reader_for

#: Image entries a package may have (bounds the memory a scan needs).
MAX_IMAGE_ENTRIES = 1_000_000
#: Longest member path (PATH_MAX).
MAX_PATH_BYTES = 4096
#: Problems listed in one refusal.
MAX_LISTED = 5

#: Metadata keys the index carries (plus CATEGORY and PF, which name the package).
INDEX_KEYS = ("BDEPEND", "BUILD_ID", "BUILD_TIME", "CATEGORY", "CHOST", "DEFINED_PHASES", "DEPEND",
              "DESCRIPTION", "EAPI", "IDEPEND", "IUSE", "KEYWORDS", "LICENSE", "PDEPEND", "PF", "PROPERTIES",
              "PROVIDES", "RDEPEND", "repository", "REQUIRES", "RESTRICT", "SLOT", "USE")
_DEPENDENCIES = ("BDEPEND", "DEPEND", "IDEPEND", "PDEPEND", "RDEPEND")
_PLAIN_DEP_STRINGS = ("LICENSE", "PROPERTIES", "RESTRICT")
_NAME = r"[A-Za-z0-9_][A-Za-z0-9+_.-]*"
_GRAMMAR = {
    "SLOT": re.compile(rf"{_NAME}(/{_NAME})?"),
    "EAPI": re.compile(_NAME),
    "CHOST": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*"),
    "BUILD_ID": re.compile(r"[1-9][0-9]{0,9}"),
    "BUILD_TIME": re.compile(r"[0-9]{1,12}"),
    "repository": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*"),
}
_TOKENS = {
    "KEYWORDS": re.compile(r"[-~]?(\*|[A-Za-z0-9_][A-Za-z0-9_-]*)|-\*"),
    "IUSE": re.compile(r"[+-]?[A-Za-z0-9][A-Za-z0-9+_@.-]*"),
    "USE": re.compile(r"[A-Za-z0-9][A-Za-z0-9+_@.-]*"),
    "DEFINED_PHASES": re.compile(r"[a-z_]+|-"),
}
# C0 and C1 controls, DEL, and the Unicode line/paragraph separators; U+FFFD marks bytes
# that were not UTF-8.
_BAD_CHARS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ufffd]")
_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID


@dataclass(frozen=True)
class ContentPolicy:
    """The rules a package must pass before it is published.

    Attributes:
        repositories: Repository names a package may come from (empty: any well-formed name).
        protected_paths: Installed paths nothing may be written to or below (nor linked to).
        path_allow: ``[CATEGORY/PN-GLOB:]PATH-GLOB`` entries exempt from ``protected_paths``.
        mode_allow: ``[CATEGORY/PN-GLOB:]PATH-GLOB`` entries that may be setuid, setgid or
            world-writable.
        limits: Caps on unpacked sizes and value lengths.
    """

    repositories: tuple[str, ...] = ()
    protected_paths: tuple[str, ...] = ()
    path_allow: tuple[str, ...] = ()
    mode_allow: tuple[str, ...] = ()
    limits: UnpackLimits = field(default_factory=UnpackLimits)

    @classmethod
    def from_config(cls, binhost: Any) -> ContentPolicy:
        """The policy of a config's ``binhost`` section (``config.binhost``)."""
        return cls(
            repositories=tuple(binhost.repositories or ()),
            protected_paths=tuple(_clean_path(p) for p in binhost.protected_paths or () if p.strip()),
            path_allow=tuple(binhost.path_allow or ()),
            mode_allow=tuple(binhost.mode_allow or ()),
            limits=UnpackLimits(metadata_bytes=binhost.max_metadata_bytes, image_bytes=binhost.max_unpacked_bytes,
                                ratio=binhost.max_unpacked_ratio, value_bytes=binhost.max_index_value_bytes),
        )

    @classmethod
    def default(cls) -> ContentPolicy:
        """The policy of the documented defaults (swarmctl.defaults)."""
        from types import SimpleNamespace

        from swarmctl.defaults import SETTINGS

        return cls.from_config(SimpleNamespace(**{s.key: s.default for s in SETTINGS if s.section == "binhost"}))

    # -- the checks ------------------------------------------------------------------------

    def check(self, path: Path, info: GpkgInfo) -> None:
        """Check a verified package (``info`` from ``inspect_gpkg``): metadata, then image.

        Raises:
            PolicyViolation: With up to five problems, most important first.
        """
        _raise(info, self._metadata_problems(info) + self._image_problems(Path(path), info))

    def check_metadata(self, info: GpkgInfo) -> None:
        """Check the metadata values the index will carry.

        Raises:
            PolicyViolation: A value is malformed, too long or names a foreign repository.
        """
        _raise(info, self._metadata_problems(info))

    def check_image(self, path: Path, info: GpkgInfo) -> None:
        """Stream the image and check every member (nothing is extracted).

        Raises:
            PolicyViolation: A member breaks a rule, or the image unpacks past its caps.
        """
        _raise(info, self._image_problems(Path(path), info))

    def _metadata_problems(self, info: GpkgInfo) -> list[str]:
        problems = [f"{key} is longer than {self.limits.value_bytes} bytes"
                    for key in sorted(info.oversized) if key in INDEX_KEYS]
        meta = info.metadata
        for key in INDEX_KEYS:
            value = meta.get(key)
            if value is None:
                continue
            if len(value.encode("utf-8")) > self.limits.value_bytes:
                problems.append(f"{key} is longer than {self.limits.value_bytes} bytes")
            elif _BAD_CHARS.search(value):
                problems.append(f"{key} has a line break, a control character or bytes that are not UTF-8")
            else:
                problem = _value_problem(key, value, meta.get("EAPI", ""))
                if problem:
                    problems.append(problem)
        if not meta.get("SLOT"):
            problems.append("SLOT is missing")
        repo = meta.get("repository", "")
        if not repo:
            problems.append("the repository is missing")
        elif self.repositories and repo not in self.repositories and _GRAMMAR["repository"].fullmatch(repo):
            problems.append(f"repository {repo!r} is not one of the swarm's ({', '.join(self.repositories)}; "
                            "binhost.repositories)")
        return problems

    def _image_problems(self, path: Path, info: GpkgInfo) -> list[str]:
        category, pn, _ = split_cpv(info.cpv)
        eprefix = info.metadata.get("EPREFIX", "").rstrip("/")
        if eprefix and _image_path("image" + eprefix) != eprefix:
            return [f"EPREFIX {_show(eprefix)} is not a normalized absolute path"]
        scan = _ImageScan(self, f"{category}/{pn}", eprefix)
        with inner_tar(path, reader_for(path), "image", self.limits.image_bytes, self.limits) as tar:
            for member in tar:
                scan.add(member)
                if len(scan.problems) >= MAX_LISTED:
                    # Enough to say why; stop unpacking (raising here kills the decompressor).
                    _raise(info, scan.problems)
            scan.finish()
        return scan.problems

    # -- allow lists ---------------------------------------------------------------------------

    def protected(self, dest: str, cpn: str, eprefix: str = "") -> str | None:
        """The protected path ``dest`` falls in, unless allowed for ``cpn``; else None.

        A prefix package (EPREFIX set) is installed at its full path by clients with the
        same EPREFIX and relocated below their own EPREFIX by others, so both the full
        path and the path inside the prefix count. The directories leading to EPREFIX,
        and protected paths strictly above it (a prefix in ``/home/me``), do not.
        """
        if eprefix and (dest == eprefix or eprefix.startswith(dest + "/")):
            return None
        views = _views(dest, eprefix)
        for root in self.protected_paths:
            for full, view in zip((True, False), views, strict=False):
                if full and len(views) > 1 and eprefix != root and _under(eprefix, root):
                    continue  # inside a prefix that itself lives below this protected path
                if _under(view, root):
                    allowed = any(_allowed(self.path_allow, v, cpn) for v in views)
                    return None if allowed else root
        return None

    def mode_allowed(self, dest: str, cpn: str, eprefix: str = "") -> bool:
        return any(_allowed(self.mode_allow, view, cpn) for view in _views(dest, eprefix))


class _ImageScan:
    """The state of one pass over an image's members."""

    def __init__(self, policy: ContentPolicy, cpn: str, eprefix: str) -> None:
        self.policy, self.cpn, self.eprefix = policy, cpn, eprefix
        self.problems: list[str] = []
        self.entries = 0
        self.files: set[str] = set()  # regular files (hard-link targets)
        self.seen: set[str] = set()
        self.links: set[str] = set()  # symlink members
        self.dirs: set[str] = set()  # directory members and every member's ancestors

    def add(self, member: tarfile.TarInfo) -> None:
        self.entries += 1
        if self.entries > MAX_IMAGE_ENTRIES:
            raise PolicyViolation(f"the image has more than {MAX_IMAGE_ENTRIES} entries")
        problem = self._problem(member)
        if problem:
            self.problems.append(problem)

    def finish(self) -> None:
        for link in sorted(self.links & self.dirs)[:MAX_LISTED]:
            self.problems.append(f"{link}: a symlink where the image also has a directory "
                                 "(files would be written through the link)")

    def _problem(self, member: tarfile.TarInfo) -> str | None:
        name = member.name
        if name == "image" and member.isdir():
            return None
        dest = _image_path(name)
        if dest is None:
            return f"{name!r}: not a normalized relative path below image/"
        shown = dest
        if member.isdev() or member.isfifo():
            kind = "a fifo" if member.isfifo() else "a device node"
            return f"{shown}: {kind} (packages may hold files, directories and links only)"
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            return f"{shown}: unsupported tar member type {member.type!r}"
        if dest in self.seen:
            return f"{shown}: appears twice in the image"
        self.seen.add(dest)
        for ancestor in _ancestors(dest):
            if ancestor in self.links:
                return f"{shown}: below the symlink {ancestor} (would be written through the link)"
            self.dirs.add(ancestor)
        root = self.policy.protected(dest, self.cpn, self.eprefix)
        if root is not None:
            return f"{shown}: installs into the protected path {root} (binhost.protected_paths, path_allow)"
        mode_problem = self._mode_problem(member, dest)
        if mode_problem:
            return mode_problem
        if member.isdir():
            self.dirs.add(dest)
        elif member.issym():
            self.links.add(dest)
            return self._link_problem(member, dest)
        elif member.islnk():
            target = _image_path(member.linkname)
            if target is None or target not in self.files:
                return f"{shown}: a hard link to {member.linkname!r}, which is not an earlier file of the image"
        else:
            self.files.add(dest)
        return None

    def _mode_problem(self, member: tarfile.TarInfo, dest: str) -> str | None:
        mode = member.mode
        if member.issym():
            return None  # a link's own mode means nothing
        if member.isdir():
            bad = "a world-writable directory without the sticky bit" \
                if mode & stat.S_IWOTH and not mode & stat.S_ISVTX else None
        elif mode & _SPECIAL_BITS:
            bad = {stat.S_ISUID: "setuid", stat.S_ISGID: "setgid"}.get(mode & _SPECIAL_BITS, "setuid and setgid")
        else:
            bad = "world-writable" if mode & stat.S_IWOTH else None
        if bad and not self.policy.mode_allowed(dest, self.cpn, self.eprefix):
            return f"{dest}: {bad} (mode {mode:04o}; binhost.mode_allow)"
        return None

    def _link_problem(self, member: tarfile.TarInfo, dest: str) -> str | None:
        target = member.linkname
        if not target or _BAD_CHARS.search(target) or any("\udc80" <= ch <= "\udcff" for ch in target):
            return f"{dest}: a symlink with an empty or unprintable target"
        resolved = posixpath.normpath(target if target.startswith("/")
                                      else posixpath.join(posixpath.dirname(dest), target))
        resolved = "/" + resolved.lstrip("/")
        root = self.policy.protected(resolved, self.cpn, self.eprefix)
        if root is not None:
            return f"{dest}: a symlink to {resolved}, in the protected path {root}"
        return None


def _image_path(name: str) -> str | None:
    """``/usr/bin/x`` for ``image/usr/bin/x``; None for anything not normalized below image/."""
    if not name.startswith("image/") or _BAD_CHARS.search(name):
        return None
    if any("\udc80" <= ch <= "\udcff" for ch in name):  # bytes that were not UTF-8
        return None
    if len(name.encode("utf-8")) > MAX_PATH_BYTES:
        return None
    parts = name[len("image/"):].split("/")
    if any(part in ("", ".", "..") or len(part.encode("utf-8")) > 255 for part in parts):
        return None
    return "/" + "/".join(parts)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _views(dest: str, eprefix: str) -> tuple[str, ...]:
    """``dest`` and, in a prefix package, ``dest`` relative to the prefix."""
    if eprefix and dest.startswith(eprefix + "/"):
        return dest, dest[len(eprefix):]
    return (dest,)


def _ancestors(dest: str) -> Iterable[str]:
    parts = dest.split("/")[1:-1]
    for end in range(1, len(parts) + 1):
        yield "/" + "/".join(parts[:end])


def _allowed(entries: Sequence[str], dest: str, cpn: str) -> bool:
    for entry in entries:
        package, sep, pattern = entry.partition(":")
        if not sep:
            package, pattern = "*", entry
        if fnmatch.fnmatchcase(cpn, package) and fnmatch.fnmatchcase(dest, pattern):
            return True
    return False


def _clean_path(path: str) -> str:
    return "/" + posixpath.normpath("/" + path.strip()).lstrip("/")


def _value_problem(key: str, value: str, eapi: str) -> str | None:
    grammar = _GRAMMAR.get(key)
    if grammar is not None:
        return None if grammar.fullmatch(value) else f"{key} {_show(value)} is not well-formed"
    tokens = _TOKENS.get(key)
    if tokens is not None:
        bad = [token for token in value.split() if not tokens.fullmatch(token)]
        return f"{key} has malformed entries: {_show(' '.join(bad[:3]))}" if bad else None
    if key in _DEPENDENCIES or key in _PLAIN_DEP_STRINGS:
        return _dep_problem(key, value, eapi)
    return None


def _dep_problem(key: str, value: str, eapi: str) -> str | None:
    import portage
    from portage.dep import Atom, use_reduce

    try:
        use_reduce(value, matchall=True, token_class=Atom if key in _DEPENDENCIES else None,
                   eapi=eapi if eapi and portage.eapi_is_supported(eapi) else None)
    except Exception as exc:  # InvalidDependString, InvalidAtom...
        return f"{key} is not a valid dependency string ({_show(str(exc))})"
    if key in _PLAIN_DEP_STRINGS:
        bad = [t for t in value.split() if not re.fullmatch(r"\|\||[()]|!?[A-Za-z0-9_][A-Za-z0-9+_.-]*\??", t)]
        if bad:
            return f"{key} has malformed entries: {_show(' '.join(bad[:3]))}"
    return None


def _show(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _raise(info: GpkgInfo, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise PolicyViolation(f"{info.cpv}: " + "; ".join(problems[:MAX_LISTED]) + more)
