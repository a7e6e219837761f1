"""Package names are validated against the PMS grammar before they go anywhere."""

from __future__ import annotations

import pytest

from swarmctl.atoms import split_build_id, split_cpv, validate_atom, validate_cp, validate_cpv
from swarmctl.exceptions import InvalidAtom
from tests.helpers import run_cli


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


@pytest.mark.parametrize(("text", "split"), [
    ("app-misc/hello-1-3", ("app-misc/hello-1", 3)),  # emerge's "binary" line
    ("hello-1-3", ("hello-1", 3)),  # a gpkg file name without .gpkg.tar
    ("sys-devel/gcc-14.2.0-r1-12", ("sys-devel/gcc-14.2.0-r1", 12)),
    ("app-misc/hello-1", ("app-misc/hello-1", None)),  # the 1 is the version, not a build id
    ("hello-1", ("hello-1", None)),
    ("app-misc/hello-1-r2", ("app-misc/hello-1-r2", None)),
    ("app-misc/hello-1-0", ("app-misc/hello-1-0", None)),  # build ids start at 1
])
def test_build_id_is_split_only_after_a_valid_version(text: str, split: tuple[str, int | None]) -> None:
    assert split_build_id(text) == split


@pytest.mark.parametrize("bad", [
    "app-misc/hello-\uff11",            # FULLWIDTH DIGIT ONE
    "app-misc/hello-\u0661",             # ARABIC-INDIC DIGIT ONE
    "app-misc/hello-1.\u0662",
    "app-misc/hello-1_rc\uff11",
    "app-misc/hello-1-r\uff11",
    "app-misc/h\u00e9llo-1",
    "app-misc/hello\uff11-1",
])
def test_only_ascii_versions_and_names_as_in_portage(bad: str) -> None:
    """PMS (and portage's regexes) allow ASCII digits only; ``\\d`` would accept any Unicode digit."""
    with pytest.raises(InvalidAtom):
        validate_cpv(bad)
    with pytest.raises(InvalidAtom):
        validate_atom(f"={bad}")


def test_unicode_digits_are_refused_from_the_cli(swarm_env: dict[str, str]) -> None:
    proc = run_cli(["queue", "add", "app-misc/hello-\uff11"], swarm_env, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "not a valid Gentoo package version" in proc.stderr
    assert run_cli(["queue", "list", "--json"], swarm_env).stdout.strip() == "[]"
