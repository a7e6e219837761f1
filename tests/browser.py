"""Look at a page as a person would: headless Chromium takes a screenshot, a small PNG reader reads it."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1"]


def chromium() -> str:
    """The chromium binary, or a skip (a failure under SWARM_REQUIRE_ALL) naming the Debian package."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("needs Debian's chromium package (apt-get install chromium)")
    return found


def screenshot(page: Path, png: Path, width: int, height: int, timeout: float = 90) -> Path:
    """Render ``page`` (a local file) to ``png`` at ``width`` x ``height``, in a fresh empty profile.

    Headless Chromium draws nothing into a very short window, so it is never less than 400 high.
    """
    height = max(height, 400)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               f"--screenshot={png}", f"--window-size={width},{height}", page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=timeout)
    assert png.exists(), f"chromium wrote no screenshot (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
    return png


class Png:
    """An 8-bit RGB or RGBA PNG, decoded (enough for Chromium's screenshots)."""

    def __init__(self, path: Path) -> None:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
        pos, idat = 8, b""
        while pos < len(data):
            length, kind = struct.unpack(">I4s", data[pos:pos + 8])
            body = data[pos + 8:pos + 8 + length]
            if kind == b"IHDR":
                self.width, self.height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
                assert depth == 8 and colour in (2, 6) and interlace == 0, "only 8-bit RGB(A), not interlaced"
                self.channels = 3 if colour == 2 else 4
            elif kind == b"IDAT":
                idat += body
            pos += 12 + length
        self.rows = self._unfilter(zlib.decompress(idat))

    def _unfilter(self, raw: bytes) -> list[bytearray]:
        stride, bpp = self.width * self.channels, self.channels
        rows: list[bytearray] = []
        prior = bytearray(stride)
        for y in range(self.height):
            kind = raw[y * (stride + 1)]
            line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                up = prior[i]
                corner = prior[i - bpp] if i >= bpp else 0
                if kind == 1:
                    line[i] = (line[i] + left) & 0xFF
                elif kind == 2:
                    line[i] = (line[i] + up) & 0xFF
                elif kind == 3:
                    line[i] = (line[i] + (left + up) // 2) & 0xFF
                elif kind == 4:
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                    line[i] = (line[i] + pred) & 0xFF
            rows.append(line)
            prior = line
        return rows

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        i = x * self.channels
        row = self.rows[y]
        return row[i], row[i + 1], row[i + 2]

    def count(self, colour: tuple[int, int, int], tolerance: int = 24) -> int:
        """Pixels within ``tolerance`` of ``colour`` on every channel."""
        return sum(1 for y in range(self.height) for x in range(self.width)
                   if close(self.pixel(x, y), colour, tolerance))


def close(a: tuple[int, int, int], b: tuple[int, int, int], tolerance: int = 24) -> bool:
    return all(abs(p - q) <= tolerance for p, q in zip(a, b, strict=True))


def hex_colour(text: str) -> tuple[int, int, int]:
    text = text.lstrip("#")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
