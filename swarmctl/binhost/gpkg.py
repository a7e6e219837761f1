"""Verify a gpkg binary package and read what it says it is.

A gpkg (``<PF>-<BUILD_ID>.gpkg.tar``) is an uncompressed tar holding one directory
with ``gpkg-1``, ``metadata.tar.zst``, ``image.tar.zst`` and a ``Manifest`` listing the
size and checksums of the other members. :func:`inspect_gpkg` lets portage's own
reader check that Manifest (every member, every byte) and then reads the metadata
(CATEGORY, PF, BUILD_ID, dependencies...) the index needs.

Portage's gpkg reader only wants a handful of settings from a full portage config
(FEATURES, compression flags, MAKEOPTS), so the binhost does not need a portage
prefix to verify uploads: :class:`_ReaderSettings` stands in for one. Uploads are
unsigned (the binhost signs them after these checks), so the stand-in reads without
signature checks; published, signed packages are read with the verification settings
of :class:`swarmctl.binhost.signing.VerifyKeyring` instead.
"""

from __future__ import annotations

import logging
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarmctl.atoms import validate_cpv
from swarmctl.exceptions import InvalidAtom, SwarmError

if TYPE_CHECKING:
    from swarmctl.binhost.contents import UnpackLimits

logger = logging.getLogger("swarmctl.binhost.gpkg")

#: Package file name suffix.
GPKG_SUFFIX = ".gpkg.tar"

#: Largest metadata member accepted (it is decompressed in memory by portage).
MAX_METADATA_BYTES = 32 * 1024 * 1024

# Metadata files that are not one text value (ebuild copy, compressed environment).
_SKIPPED_METADATA = re.compile(r"(\.ebuild$|\.bz2$|^environment)")


class GpkgError(SwarmError):
    """The file is not a valid gpkg, or its Manifest does not match its content."""


class PolicyViolation(GpkgError):
    """A well-formed gpkg whose content the binhost's policy refuses (see ``binhost.policy``)."""


@dataclass(frozen=True)
class GpkgInfo:
    """What a verified gpkg says about itself.

    Attributes:
        cpv: ``CATEGORY/PF`` from the package's metadata.
        category: CATEGORY.
        pf: PF (package name, version and revision).
        build_id: BUILD_ID (multi-instance number), None when the package has none.
        build_time: BUILD_TIME in seconds since the epoch, None when absent.
        basename: The directory name inside the tar (``PF-BUILD_ID`` or ``PF``).
        metadata: Every single-value text metadata entry, stripped (USE, SLOT,
            DEPEND, RDEPEND, CHOST, repository...).
        oversized: Metadata keys whose values exceeded the value cap (left out).
    """

    cpv: str
    category: str
    pf: str
    build_id: int | None
    build_time: int | None
    basename: str
    metadata: dict[str, str] = field(default_factory=dict)
    oversized: frozenset[str] = frozenset()



class _ReaderSettings(dict[str, str]):
    """The part of ``portage.config`` that portage's gpkg reader touches."""

    features: frozenset[str] = frozenset({"binpkg-ignore-signature"})

    def environ(self) -> dict[str, str]:
        return dict(self)


def inspect_gpkg(path: Path, settings: Any = None, limits: UnpackLimits | None = None) -> GpkgInfo:
    """Verify ``path``'s Manifest and return its identity and metadata.

    Args:
        path: A ``.gpkg.tar`` file.
        settings: A ``portage.config`` to use instead of the minimal stand-in.
        limits: Caps on the unpacked metadata (default: the settings' defaults).

    Returns:
        The package's identity and metadata.

    Raises:
        GpkgError: Not a gpkg, a member does not match the Manifest (truncated,
            flipped byte, extra or missing member), or its metadata names no valid CPV.
    """
    from swarmctl.binhost.contents import UnpackLimits, read_metadata

    reader = _open(Path(path), settings)
    _check_metadata_size(Path(path))
    try:
        reader._verify_binpkg()
    except Exception as exc:  # portage raises many types (DigestException, tarfile, OSError...)
        raise GpkgError(f"{Path(path).name}: {_describe(exc).replace(str(path), Path(path).name)}") from None
    # Not reader.get_metadata(): it holds the whole unpacked metadata tar in memory.
    raw, oversized = read_metadata(Path(path), reader, limits or UnpackLimits())
    metadata = {
        key: value.decode("utf-8", "replace").strip()
        for key, value in raw.items()
        if isinstance(value, bytes) and not _SKIPPED_METADATA.search(key)
    }
    category = metadata.get("CATEGORY", "")
    pf = metadata.get("PF", "")
    try:
        cpv = validate_cpv(f"{category}/{pf}")
    except InvalidAtom:
        raise GpkgError(f"{Path(path).name}: metadata names no valid package "
                        f"(CATEGORY={category!r}, PF={pf!r})") from None
    return GpkgInfo(
        cpv=cpv, category=category, pf=pf,
        build_id=_int_or_none(metadata.get("BUILD_ID")),
        build_time=_int_or_none(metadata.get("BUILD_TIME")),
        basename=str(reader.prefix or ""),
        metadata=metadata,
        oversized=oversized,
    )


def manifest_content(path: Path) -> frozenset[str]:
    """The Manifest's ``DATA`` entries of the package's content members (signatures left out).

    The same for an upload and the copy the binhost signed from it (signing adds
    ``.sig`` members and clearsigns the Manifest, the other members stay as they are),
    so it tells a drone's retry of a publish whose upload record was lost. Empty when
    the file cannot be read.
    """
    try:
        with tarfile.open(path, "r:") as container:
            member = next((m for m in container.getmembers() if m.name.endswith("/Manifest") and m.isfile()), None)
            handle = container.extractfile(member) if member is not None else None
            text = handle.read(1024 * 1024).decode("utf-8", "replace") if handle is not None else ""
    except (tarfile.TarError, OSError, EOFError):
        return frozenset()
    content = set()
    for words in (line.split() for line in text.splitlines()):
        if len(words) > 3 and words[0] == "DATA" and not words[1].endswith(".sig"):
            # "DATA name size ALGO hash ALGO hash...": portage writes the hashes in no fixed order
            hashes = sorted(zip(words[3::2], words[4::2], strict=False))
            content.add(" ".join([*words[1:3], *(f"{algo}:{value}" for algo, value in hashes)]))
    return frozenset(content)


def reader_for(path: Path) -> Any:
    """Portage's gpkg reader for ``path`` (its Manifest is not verified here)."""
    return _open(Path(path), None)


def _open(path: Path, settings: Any) -> Any:
    try:
        from portage.gpkg import gpkg
    except ImportError as exc:  # pragma: no cover - portage is a hard requirement here
        raise GpkgError(f"portage is not installed: {exc}") from None
    return gpkg(settings if settings is not None else _ReaderSettings(MAKEOPTS="-j1"), None,
                str(path), verify_signature=False)


def _check_metadata_size(path: Path) -> None:
    try:
        with tarfile.open(path, "r:") as container:
            for member in container.getmembers():
                if "/metadata.tar" in member.name and member.size > MAX_METADATA_BYTES:
                    raise GpkgError(f"{path.name}: metadata member too large ({member.size} bytes)")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise GpkgError(f"{path.name}: not a readable tar file ({_describe(exc)})") from None


def _int_or_none(text: str | None) -> int | None:
    """A positive decimal number as portage writes it (1-10 digits), else None."""
    if text and re.fullmatch(r"[1-9][0-9]{0,9}", text.strip()):
        return int(text)
    return None


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
