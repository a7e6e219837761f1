"""The docs stay true: commands they show parse, settings they list are read, times match the roles."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from swarmctl.cli import cli
from swarmctl.defaults import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([*ROOT.glob("docs/*.md"), ROOT / "README.md", *ROOT.glob("roles/*/README.md"),
               ROOT / "inventory/README.md"])
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_SPAN = re.compile(r"`([^`\n]+)`")
_STOP = {"#", "|", "||", "&&", ";", "\\"}


def _snippets(path: Path) -> list[str]:
    """Lines of the fenced code blocks and the inline code spans of a Markdown file."""
    text = path.read_text()
    lines = [line for block in _FENCE.findall(text) for line in block.splitlines()
             if not line.lstrip().startswith("#")]  # comments describe, they do not run
    prose = _FENCE.sub("", text)
    return lines + _SPAN.findall(prose)


def _swarmctl_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for line in _snippets(path):
            for match in re.finditer(r"(?:^|[\s/$(])swarmctl\s+(.*)", line):
                try:
                    words = shlex.split(match.group(1), comments=False)
                except ValueError:
                    words = match.group(1).split()
                args: list[str] = []
                for word in words:
                    if word in _STOP or word.startswith((">", "<", "#")):
                        break
                    if word.endswith((";", ")", ",")):  # the end of a command quoted in prose
                        args.append(word.rstrip(";),."))
                        break
                    args.append(word)
                found.append((f"{path.relative_to(ROOT)}: swarmctl {match.group(1).strip()}", args))
    return found


def _options(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


COMMANDS = _swarmctl_commands()


def test_the_docs_show_swarmctl_commands() -> None:
    assert len(COMMANDS) > 40


@pytest.mark.parametrize(("where", "args"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_swarmctl_command_in_the_docs_parses(where: str, args: list[str]) -> None:
    """Each subcommand path exists and each --option belongs to it (or is a global option)."""
    command: click.Command = cli
    allowed = _options(cli)
    rest = list(args)
    while rest:
        word = rest[0]
        if isinstance(command, click.Group) and word in command.commands:
            command = command.commands[word]
            allowed |= _options(command)
            rest.pop(0)
        elif word in _options(cli):  # a global option and its value, before the subcommand
            rest = rest[2:] if not word.startswith("--verbose") and word not in ("-v",) else rest[1:]
        else:
            break
    if command is cli:
        assert not any(not w.startswith("-") for w in rest), f"{where}: no such command"
        return
    assert not isinstance(command, click.Group) or not rest or rest[0].startswith("-"), \
        f"{where}: {rest[0]!r} is not a subcommand of {command.name}"
    for word in rest:
        option = word.strip("[]").split("=")[0]
        if option.startswith("-") and re.fullmatch(r"--?[a-z][a-z-]*", option):
            assert option in allowed, f"{where}: {option} is not an option of {command.name}"


def test_every_setting_is_read_by_code() -> None:
    """A documented setting that nothing reads is a false promise (docs/configuration.md lists all).

    Read means: some module reads attribute ``.key`` and names section ``.section`` (code aliases
    the section, ``cfg = config.drone; cfg.hung_idle_seconds``).
    """
    sources = [p.read_text() for p in (ROOT / "swarmctl").rglob("*.py") if p.name != "defaults.py"]
    unread = [f"{s.section}.{s.key}" for s in SETTINGS
              if not any(re.search(rf"\.{s.section}\b", text) and re.search(rf"\.{s.key}\b", text)
                         for text in sources)]
    assert unread == []


def test_every_ansible_playbook_command_names_an_inventory() -> None:
    """ansible.cfg names no inventory: a command without -i would run against nothing."""
    assert "inventory" not in (ROOT / "ansible.cfg").read_text().split("[defaults]")[-1].split("[")[0].lower() \
        .replace("# ", "")
    bad = [f"{path.relative_to(ROOT)}: {line.strip()}" for path in DOCS for line in _snippets(path)
           if re.search(r"(^|\s)ansible-playbook\s", line) and not re.search(r"\s-i\s", line)]
    assert bad == []


def test_the_nightly_time_in_the_docs_is_the_cron_default() -> None:
    defaults = yaml.safe_load((ROOT / "roles/swarm_cron/defaults/main.yml").read_text())
    nightly = next(j for j in defaults["swarm_cron_jobs"] if "nightly" in j["name"])
    when = f"{int(nightly['hour']):02d}:{int(nightly['minute']):02d}"
    architecture = (ROOT / "docs/architecture.md").read_text()
    stated = re.search(r"cron \(cronie\) on the binhost, (\d\d:\d\d)", architecture)
    assert stated and stated.group(1) == when
