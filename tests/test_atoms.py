"""Package names are validated against the PMS grammar before they go anywhere."""

from __future__ import annotations

import pytest

from swarmctl.atoms import split_cpv, validate_atom, validate_cp, validate_cpv
from swarmctl.exceptions import InvalidAtom


@pytest.mark.parametrize("cpv", ["sys-devel/llvm-19.1.7", "dev-qt/qtbase-6.8.2", "app-misc/foo-1.0_rc1_p2-r3",
                                 "=www-client/firefox-128.0", "dev-libs/libxml2-2.13.5", "x11-libs/gtk+-3.24.43"])
def test_valid_cpvs(cpv: str) -> None:
    assert validate_cpv(cpv) == cpv.lstrip("=")


@pytest.mark.parametrize("bad", ["www-client/firefox", "app-misc/x-1;rm -rf /", "../etc/passwd-1", "a/b-1 c",
                                 "app-misc/$(reboot)-1", "app-misc/foo-1-2", "", "app-misc/fo\no-1", "-x/y-1",
                                 "app-misc/foo-bar-1.0a1", "a" * 300 + "/b-1"])
def test_invalid_cpvs(bad: str) -> None:
    with pytest.raises(InvalidAtom):
        validate_cpv(bad)


def test_split() -> None:
    assert split_cpv("sys-devel/llvm-19.1.7-r1") == ("sys-devel", "llvm", "19.1.7-r1")


@pytest.mark.parametrize("atom", [">=dev-lang/python-3.11:3.11", "app-misc/foo", "=a/b-1*", "a/b:0::gentoo",
                                  "~sys-devel/gcc-14.2.0", "dev-qt/qtbase:6/6.8"])
def test_world_atoms(atom: str) -> None:
    assert validate_atom(atom) == atom


@pytest.mark.parametrize("bad", [">=a/b", "a/b-1", "<a/b-1*", "a/b;x", "a/b::../x"])
def test_bad_world_atoms(bad: str) -> None:
    with pytest.raises(InvalidAtom):
        validate_atom(bad)


def test_cp() -> None:
    assert validate_cp("app-misc/foo") == "app-misc/foo"
    with pytest.raises(InvalidAtom):
        validate_cp("app-misc/foo-1")
