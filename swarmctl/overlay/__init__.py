"""The bundled sample overlay: a handful of real ebuilds for demos and tests.

Packages (repository ``swarm-sample``), all self-contained (no SRC_URI, no eclasses):

* ``dev-libs/libgreet-1``: compiles C with ``${CC:-gcc}`` into a static library.
* ``app-misc/greet-data-1``: data file.
* ``app-misc/greeter-1``: C program; DEPEND on libgreet (build), RDEPEND on
  greet-data (run); its ELF is executed during the build.
* ``dev-util/stamp-1``: a build tool; ``app-misc/banner-1`` needs it as BDEPEND.
* ``app-misc/hello-1`` and ``app-misc/hello-extras-1`` (RDEPEND on hello).
* ``app-misc/swarm-world-1``: meta package (RDEPEND banner, greeter, hello;
  PDEPEND hello-extras) -- the default world, see :data:`DEFAULT_WORLD`.
* ``app-broken/broken-1``: fails in src_compile on purpose; in its own category
  and outside the default world, so only tests that ask for it build it.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

#: Atoms of the sample world (what a demo site "needs").
DEFAULT_WORLD: tuple[str, ...] = ("app-misc/swarm-world",)

#: Every CPV the default world pulls in, leaves first (a valid build order).
DEFAULT_CPVS: tuple[str, ...] = (
    "dev-libs/libgreet-1",
    "app-misc/greet-data-1",
    "dev-util/stamp-1",
    "app-misc/hello-1",
    "app-misc/greeter-1",
    "app-misc/banner-1",
    "app-misc/swarm-world-1",
    "app-misc/hello-extras-1",
)

#: A package that always fails to build.
BROKEN_CPV = "app-broken/broken-1"

#: The repository name in ``profiles/repo_name``.
REPO_NAME = "swarm-sample"


def overlay_source() -> Path:
    """Directory of the overlay as shipped inside the installed package."""
    return Path(str(resources.files(__package__).joinpath("tree")))


def install_overlay(dest: Path) -> Path:
    """Copy the sample overlay to ``dest`` (created; existing files are overwritten).

    Args:
        dest: Target repository directory, e.g. ``PREFIX/var/db/repos/swarm-sample``.

    Returns:
        ``dest`` as an absolute path, ready for :func:`swarmctl.portage_env.prefix.make_prefix`.
    """
    dest = Path(dest).absolute()
    shutil.copytree(overlay_source(), dest, dirs_exist_ok=True)
    return dest
