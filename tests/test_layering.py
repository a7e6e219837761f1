"""The package's layering: the CLI sits on top, and only the terminal module spells a style."""

from __future__ import annotations

import ast
from pathlib import Path

from swarmctl import keys

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "swarmctl"
KEYS = PACKAGE / "keys.py"
CLI = PACKAGE / "cli"
#: The entry point (python -m swarmctl) is the one module outside the CLI that starts it.
ENTRY = PACKAGE / "__main__.py"
TERMINAL = CLI / "terminal.py"
#: Keyword arguments of rich that take a style.
STYLE_ARGS = {"style", "border_style", "header_style", "row_styles", "title_style"}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path}:{line}"


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def upward_imports(path: Path) -> list[str]:
    """Where a module outside swarmctl/cli/ imports swarmctl.cli (at any depth: lazy imports count)."""
    tree = ast.parse(path.read_text(), str(path))
    return [f"{_where(path, line)} imports {name}" for line, name in _imported(tree)
            if name == "swarmctl.cli" or name.startswith("swarmctl.cli.")]


def style_literals(path: Path) -> list[str]:
    """Styles spelled outside the terminal module: a literal style= argument or rich markup in a string."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in STYLE_ARGS and isinstance(node.value, ast.Constant) \
                and node.value.value:
            found.append(f"{_where(path, node.value.lineno)} {node.arg}={node.value.value!r}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "[/]" in node.value:
            found.append(f"{_where(path, node.lineno)} markup {node.value!r}")
    return found


def test_no_module_outside_the_cli_imports_it() -> None:
    offenders = [hit for path in _modules() if not path.is_relative_to(CLI) and path != ENTRY
                 for hit in upward_imports(path)]
    assert offenders == []


def test_only_the_terminal_module_spells_a_style() -> None:
    offenders = [hit for path in _modules() if path != TERMINAL for hit in style_literals(path)]
    assert offenders == []


def spelled_keys(path: Path) -> list[str]:
    """String literals that spell a Redis key (the ``swarm:`` namespace) instead of asking swarmctl.keys."""
    tree = ast.parse(path.read_text(), str(path))
    return [f"{_where(path, node.lineno)} {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(keys.NAMESPACE)]


def test_only_the_keys_module_spells_a_key() -> None:
    files = [p for top in ("swarmctl", "tests", "bench") for p in sorted((REPO / top).rglob("*.py"))]
    assert [hit for path in files if path != KEYS for hit in spelled_keys(path)] == []


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    """A lazy import inside a function (the form that hid the old upward imports) and inline styles."""
    sample = tmp_path / "probe.py"
    sample.write_text("def view():\n"
                      "    from swarmctl.cli import terminal\n"
                      "    import swarmctl.cli.views.monitor\n"
                      "    from swarmctl import cli\n"
                      "    return Text('x', style='bold'), '[bold]x[/]'\n")
    assert [hit.split(" ", 1)[1] for hit in upward_imports(sample)] == [
        "imports swarmctl.cli", "imports swarmctl.cli.terminal", "imports swarmctl.cli.views.monitor",
        "imports swarmctl.cli"]
    assert len(style_literals(sample)) == 2
    sample.write_text("client.xlen('swarm:events')\n")
    assert len(spelled_keys(sample)) == 1
