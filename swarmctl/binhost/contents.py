"""Read a gpkg's inner tars as streams, with caps on what they unpack to.

A gpkg's ``metadata.tar.zst`` and ``image.tar.zst`` are compressed, and compression
is the one place where a small upload can become huge: 50 KB of zstd unpacks to a GiB
of zeros. Portage's own reader (``gpkg.unpack_metadata``) reads the whole metadata tar
into memory, so such a bomb took the binhost to 2.2 GB. Here both inner tars are
decompressed through portage's own decompressor command (``tar_stream_reader``, the
same program a client runs), read in stream mode (``tarfile`` mode ``r|``) and counted
as they go: past the cap the decompressor is killed and the package is refused. No
member is ever held in memory whole: metadata values are read up to a per-value cap,
image members are skipped over (only their headers matter), and tar's own extension
headers (pax, GNU long names), which ``tarfile`` reads into memory, are bounded too.
"""

from __future__ import annotations

import contextlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmctl.binhost.gpkg import GpkgError, PolicyViolation

#: Unpacked sizes below this never count against the expansion ratio (small packages
#: of text or zeros legitimately compress a lot).
RATIO_FLOOR = 256 * 1024 * 1024
#: Largest pax / GNU long-name header accepted (a path is at most 4 KiB).
MAX_EXTENSION_HEADER = 1024 * 1024
_CHUNK = 256 * 1024
_EXTENSION_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                    tarfile.SOLARIS_XHDTYPE)


@dataclass(frozen=True)
class UnpackLimits:
    """Caps on what a package may unpack to (see the ``binhost.max_*`` settings).

    Attributes:
        metadata_bytes: Largest unpacked metadata tar.
        image_bytes: Largest unpacked image tar.
        ratio: Largest unpacked/packed ratio of an inner tar above :data:`RATIO_FLOOR`
            (0: no ratio cap).
        value_bytes: Longest metadata value kept (and accepted for keys the index carries).
    """

    metadata_bytes: int = 64 * 1024 * 1024
    image_bytes: int = 16 * 1024**3
    ratio: float = 200.0
    value_bytes: int = 32 * 1024

    def cap(self, absolute: int, packed: int) -> int:
        """The cap for one inner tar of ``packed`` bytes."""
        if self.ratio <= 0:
            return absolute
        return min(absolute, max(RATIO_FLOOR, int(self.ratio * packed)))


class _Capped:
    """A read-only stream that refuses to deliver more than ``limit`` bytes in total."""

    def __init__(self, source: Any, limit: int, what: str, packed: int, setting: str) -> None:
        self.source, self.limit, self.what, self.packed, self.setting = source, limit, what, packed, setting
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size if size is not None and size >= 0 else _CHUNK)
        self.count += len(data)
        if self.count > self.limit:
            raise PolicyViolation(f"the {self.what} unpacks to more than {self.limit} bytes ({self.packed} bytes "
                                  f"packed): refused as a decompression bomb ({self.setting}, "
                                  "binhost.max_unpacked_ratio)")
        return data  # type: ignore[no-any-return]

    def drain(self) -> None:
        """Read to the end, so trailing data counts and the decompressor can exit."""
        while self.read(_CHUNK):
            pass


class _BoundedTarInfo(tarfile.TarInfo):
    """``tarfile`` reads pax and GNU long-name headers into memory whole: bound them first."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENSION_TYPES and self.size > MAX_EXTENSION_HEADER:
            raise PolicyViolation(f"a tar extension header of {self.size} bytes (more than "
                                  f"{MAX_EXTENSION_HEADER}) in front of {self.name!r}")
        return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]


@contextlib.contextmanager
def inner_tar(path: Path, reader: Any, name: str, absolute_cap: int, limits: UnpackLimits) -> Iterator[tarfile.TarFile]:
    """Stream the inner tar ``name`` ("metadata" or "image") of a verified gpkg.

    Args:
        path: The gpkg file (its Manifest already verified by ``reader``).
        reader: The ``portage.gpkg.gpkg`` that verified it (knows the compressions).
        name: Which inner tar.
        absolute_cap: The absolute cap on its unpacked size.
        limits: The ratio cap.

    Yields:
        A ``tarfile`` in stream mode: iterate it once, in order.

    Raises:
        PolicyViolation: It unpacks past its cap, or carries an oversized extension header.
        GpkgError: It cannot be decompressed or is not a tar.
    """
    from portage.gpkg import tar_stream_reader

    try:
        container = tarfile.open(path, "r:")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as exc:
        raise GpkgError(f"{path.name}: not a readable tar file ({exc})") from None
    with container:
        try:
            member, compression = reader._get_inner_tarinfo(container, name)
            command = reader._get_decompression_cmd(compression)
        except Exception as exc:  # portage raises its own exception types
            raise GpkgError(f"{path.name}: no readable {name} member ({exc})") from None
        stream = tar_stream_reader(container.extractfile(member), command)
        setting = "binhost.max_metadata_bytes" if name == "metadata" else "binhost.max_unpacked_bytes"
        capped = _Capped(stream, limits.cap(absolute_cap, member.size), f"{name} tar", member.size, setting)
        finished = False
        try:
            with tarfile.open(fileobj=capped, mode="r|", tarinfo=_BoundedTarInfo) as inner:  # type: ignore[call-overload]
                yield inner
            capped.drain()
            finished = True
        except PolicyViolation:
            raise
        except GpkgError:
            raise
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise GpkgError(f"{path.name}: {name} member is not a readable tar ({_one_line(exc)})") from None
        finally:
            if finished:
                try:
                    stream.close()
                except Exception as exc:  # CompressorOperationFailed: bad compressed data
                    raise GpkgError(f"{path.name}: {name} member does not decompress ({_one_line(exc)})") \
                        from None
            else:
                stream.kill()


def read_metadata(path: Path, reader: Any, limits: UnpackLimits) -> tuple[dict[str, bytes], frozenset[str]]:
    """Every metadata value of a verified gpkg that fits ``limits.value_bytes``.

    Returns:
        The values, and the keys whose values were longer than the cap: those are left
        out (skipped over by the stream, never read); the policy refuses a package
        whose index values are too long.

    Raises:
        PolicyViolation: A member that is not a plain ``metadata/KEY`` file, or the
            metadata unpacks past its cap.
        GpkgError: The metadata cannot be read.
    """
    values: dict[str, bytes] = {}
    oversized: set[str] = set()
    with inner_tar(path, reader, "metadata", limits.metadata_bytes, limits) as tar:
        for member in tar:
            key = _metadata_key(member)
            if key in values or key in oversized:
                raise PolicyViolation(f"metadata member {member.name!r} appears twice")
            if member.size > limits.value_bytes:
                oversized.add(key)
                continue  # skipped over by the stream, never read
            handle = tar.extractfile(member)
            values[key] = handle.read(limits.value_bytes + 1) if handle is not None else b""
    return values, frozenset(oversized)


def _metadata_key(member: tarfile.TarInfo) -> str:
    name = member.name
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "metadata" or not parts[1] or parts[1] in (".", ".."):
        raise PolicyViolation(f"metadata member {name!r} is not metadata/KEY")
    if not member.isreg():
        raise PolicyViolation(f"metadata member {name!r} is not a regular file")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in parts[1]):
        raise PolicyViolation(f"metadata member {name!r} has a control character or space in its name")
    return parts[1]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
