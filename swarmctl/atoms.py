"""Gentoo package names, validated against the PMS grammar.

A job is one CPV (``category/package-version``). Anything that does not parse
is refused here, before it can reach Redis, a file name or an argv list.
"""

from __future__ import annotations

import re

from swarmctl.exceptions import InvalidAtom

# PMS 3.1: category and package names; 3.2: versions. ASCII only, as portage's grammar:
# ``[0-9]`` not ``\d`` (which also matches Unicode digits such as U+FF11), and full matches
# (``$`` would let a trailing newline through).
_CATEGORY = r"[A-Za-z0-9_][A-Za-z0-9+_.-]*"
_PN = r"[A-Za-z0-9_][A-Za-z0-9+_-]*"
_VERSION = r"[0-9]+(?:\.[0-9]+)*[a-z]?(?:_(?:alpha|beta|pre|rc|p)[0-9]*)*(?:-r[0-9]+)?"
_SLOT = r"[A-Za-z0-9_][A-Za-z0-9+_.-]*"

_CPV_RE = re.compile(rf"(?P<cat>{_CATEGORY})/(?P<pn>{_PN})-(?P<pv>{_VERSION})", re.ASCII)
_CP_RE = re.compile(rf"(?P<cat>{_CATEGORY})/(?P<pn>{_PN})", re.ASCII)
_ATOM_RE = re.compile(
    rf"(?P<op><=|>=|<|>|=|~)?(?P<body>{_CATEGORY}/{_PN}(?:-{_VERSION})?)(?P<glob>\*)?"
    rf"(?::(?P<slot>{_SLOT}(?:/{_SLOT})?[*=]?|[*=]))?(?:::(?P<repo>{_PN}))?", re.ASCII
)
_PN_LOOKS_VERSIONED = re.compile(rf"-{_VERSION}\Z", re.ASCII)
MAX_LENGTH = 256


def _check_length(text: str) -> None:
    if len(text) > MAX_LENGTH:
        raise InvalidAtom(f"package name too long ({len(text)} characters, at most {MAX_LENGTH})")


def validate_cpv(text: str) -> str:
    """Return ``text`` (a leading ``=`` dropped) if it is a valid CPV, else raise InvalidAtom."""
    if not isinstance(text, str):
        raise InvalidAtom(f"not a package: {text!r}")
    candidate = text.strip()
    candidate = candidate.removeprefix("=")
    _check_length(candidate)
    match = _CPV_RE.fullmatch(candidate)
    if match is None or _PN_LOOKS_VERSIONED.search(match["pn"]) or match["cat"] in (".", ".."):
        raise InvalidAtom(
            f"not a valid Gentoo package version {text!r} (expected category/name-version, "
            "e.g. sys-devel/llvm-19.1.7)"
        )
    return candidate


def split_cpv(cpv: str) -> tuple[str, str, str]:
    """``("sys-devel", "llvm", "19.1.7")`` for ``sys-devel/llvm-19.1.7`` (pv keeps -rN)."""
    match = _CPV_RE.fullmatch(validate_cpv(cpv))
    assert match is not None
    return match["cat"], match["pn"], match["pv"]


def cp_of(cpv: str) -> str:
    """``category/package`` of a CPV."""
    category, pn, _ = split_cpv(cpv)
    return f"{category}/{pn}"


def validate_cp(text: str) -> str:
    """A ``category/package`` name without version."""
    candidate = text.strip()
    _check_length(candidate)
    match = _CP_RE.fullmatch(candidate)
    if match is None or _PN_LOOKS_VERSIONED.search(match["pn"]):
        raise InvalidAtom(f"not a valid Gentoo package name {text!r} (expected category/name)")
    return candidate


def validate_atom(text: str) -> str:
    """A dependency atom as found in a world file (operators, slots, repo)."""
    candidate = text.strip()
    _check_length(candidate)
    match = _ATOM_RE.fullmatch(candidate)
    if match is None:
        raise InvalidAtom(f"not a valid Gentoo atom {text!r}")
    has_version = _CPV_RE.fullmatch(match["body"]) is not None
    if bool(match["op"]) != has_version or (match["glob"] and match["op"] != "="):
        raise InvalidAtom(f"not a valid Gentoo atom {text!r} (operator and version go together)")
    return candidate


_BUILD_ID = re.compile(r"-([1-9][0-9]{0,9})$")  # ASCII digits, as the rest of the grammar


def split_build_id(text: str) -> tuple[str, int | None]:
    """``("app-misc/hello-1", 3)`` for ``app-misc/hello-1-3``, ``("hello-1", 3)`` for ``hello-1-3``.

    Binary packages carry a BUILD_ID after the version (emerge's output, gpkg
    file names). A PN never ends in a hyphen and a version (PMS 3.1.2), so a
    trailing ``-N`` after a valid version is the BUILD_ID; without one the
    text comes back with None.
    """
    match = _BUILD_ID.search(text)
    if match is None:
        return text, None
    head = text[:match.start()]
    try:
        validate_cpv(head if "/" in head else f"any/{head}")
    except InvalidAtom:
        return text, None
    return head, int(match[1])
