"""Malicious gpkg files made from a real one: changed metadata, extra image members, bombs.

The result always verifies as a gpkg (its Manifest is recomputed), so only the binhost's
content policy and caps stand between it and the clients. Everything is streamed through
``zstd``: a bomb's gigabyte never sits in this process's memory either.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

#: An extra member: its header, and its data (bytes, or a number of zero bytes to stream).
Member = tuple[tarfile.TarInfo, bytes | int]


class Zeros(io.RawIOBase):
    """``size`` zero bytes, read in chunks."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left)
        buffer[:count] = b"\0" * count
        self.left -= count
        return count


def member(name: str, data: bytes | int = b"", *, kind: bytes = tarfile.REGTYPE, mode: int = 0o644,
           link: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info, data


def zstd(data: bytes, decompress: bool = False) -> bytes:
    args = ["zstd", "-q", "-d", "-c"] if decompress else ["zstd", "-q", "-c", "-3"]
    return subprocess.run(args, input=data, capture_output=True, check=True).stdout


def _compressed_tar(write: Callable[[tarfile.TarFile], None], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """A tar written by ``write``, streamed through zstd (only the compressed bytes are held)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(["zstd", "-q", "-c", "-3"], stdin=subprocess.PIPE, stdout=out)
        assert proc.stdin is not None
        with tarfile.open(fileobj=proc.stdin, mode="w|", format=fmt) as tar:
            write(tar)
        proc.stdin.close()
        assert proc.wait() == 0
        out.seek(0)
        return out.read()


def _add(tar: tarfile.TarFile, info: tarfile.TarInfo, data: bytes | int) -> None:
    if info.isreg():
        info.size = data if isinstance(data, int) else len(data)
        source: BinaryIO = Zeros(data) if isinstance(data, int) else io.BytesIO(data)  # type: ignore[assignment]
        tar.addfile(info, source)
    else:
        info.size = 0
        tar.addfile(info)


def _copy_inner(packed: bytes, tar: tarfile.TarFile, replace: dict[str, bytes | int] | None = None,
                prefix: str = "metadata") -> None:
    """Copy an inner tar, with the values of ``replace`` (added as ``prefix/KEY`` if missing)."""
    left = dict(replace or {})
    with tarfile.open(fileobj=io.BytesIO(zstd(packed, decompress=True))) as inner:
        for info in inner.getmembers():
            key = info.name.split("/", 1)[-1]
            if key in left:
                _add(tar, info, left.pop(key))
            else:
                data = inner.extractfile(info).read() if info.isreg() else b""  # type: ignore[union-attr]
                _add(tar, info, data)
    for key, value in left.items():
        _add(tar, tarfile.TarInfo(f"{prefix}/{key}"), value)


def forged_gpkg(real: Path, dest: Path, *, metadata: dict[str, bytes | int | str] | None = None,
                top: str | None = None, extra_member: str | None = None,
                image_members: Sequence[Member] = (), metadata_members: Sequence[Member] = ()) -> Path:
    """``real`` with changed metadata values (str/bytes, or a number of zero bytes), another
    top directory, extra metadata or image members; its Manifest recomputed so it verifies."""
    with tarfile.open(real) as outer:
        members = {m.name.split("/", 1)[1]: outer.extractfile(m).read()  # type: ignore[union-attr]
                   for m in outer.getmembers() if m.isfile()}
        old_top = outer.getmembers()[0].name.split("/", 1)[0]
    replace = {k: (v.encode() + b"\n" if isinstance(v, str) else v) for k, v in (metadata or {}).items()}
    extras = list(metadata_members)
    if extra_member:
        extras.append(member(extra_member, b"owned\n"))

    def write_metadata(tar: tarfile.TarFile) -> None:
        _copy_inner(members["metadata.tar.zst"], tar, replace)
        for info, data in extras:
            _add(tar, info, data)

    def write_image(tar: tarfile.TarFile) -> None:
        _copy_inner(members["image.tar.zst"], tar, prefix="image")
        for info, data in image_members:
            _add(tar, info, data)

    members["metadata.tar.zst"] = _compressed_tar(write_metadata)
    if image_members:
        pax = any(info.pax_headers for info, _ in image_members)
        members["image.tar.zst"] = _compressed_tar(write_image, tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT)
    lines = []
    for name in ("gpkg-1", "metadata.tar.zst", "image.tar.zst"):
        data = members[name]
        lines.append(f"DATA {name} {len(data)} BLAKE2B {hashlib.blake2b(data).hexdigest()} "
                     f"SHA512 {hashlib.sha512(data).hexdigest()}")
    members["Manifest"] = ("\n".join(lines) + "\n").encode()
    with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as out:
        for name in ("gpkg-1", "metadata.tar.zst", "image.tar.zst", "Manifest"):
            info = tarfile.TarInfo(f"{top or old_top}/{name}")
            info.size = len(members[name])
            out.addfile(info, io.BytesIO(members[name]))
    return dest
