"""Bring a test bed up or down from another process (molecule create/destroy, manual poking).

Usage:
    python tests/testbed/cli.py up --hosts 2 --prefix mdr --inventory FILE [--var k=v ...]
                                   [--group NAME=1,2 ...]
    python tests/testbed/cli.py down --prefix mdr
    python tests/testbed/cli.py status --prefix mdr

``up`` leaves the hosts running after it exits (their supervisors are detached) and writes
an Ansible inventory; ``down`` tears down everything the bed with that prefix made.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.testbed import TestBed, TestBedError, teardown_prefix
else:
    from . import TestBed, TestBedError, teardown_prefix


def _parse_value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start hosts and write an inventory")
    up.add_argument("--hosts", type=int, default=1)
    up.add_argument("--prefix", default="sw")
    up.add_argument("--inventory", type=Path, required=True)
    up.add_argument("--var", action="append", default=[], help="k=v for group all (v parsed as JSON)")
    up.add_argument("--group", action="append", default=[], help="NAME=1,2 child group of hosts")
    up.add_argument("--restart-delay", type=float, default=3.0)
    down = sub.add_parser("down", help="tear down the bed with this prefix")
    down.add_argument("--prefix", default="sw")
    st = sub.add_parser("status", help="print the bed's hosts as JSON")
    st.add_argument("--prefix", default="sw")
    args = parser.parse_args(argv)

    try:
        if args.cmd == "up":
            extra = {}
            for item in args.var:
                key, _, value = item.partition("=")
                extra[key] = _parse_value(value)
            groups = {}
            for item in args.group:
                name, _, idx = item.partition("=")
                groups[name] = [int(x) for x in idx.split(",") if x]
            bed = TestBed(args.hosts, args.prefix, restart_delay=args.restart_delay).start()
            bed.inventory(args.inventory, extra, groups=groups or None)
            print(f"test bed {args.prefix}: {args.hosts} host(s) up; inventory {args.inventory}")
        elif args.cmd == "down":
            teardown_prefix(args.prefix)
            print(f"test bed {args.prefix}: down")
        else:
            bed = TestBed.attach(args.prefix)
            print(
                json.dumps(
                    [
                        {
                            "name": h.name,
                            "address": h.address,
                            "machine_id": h.machine_id,
                            "pid1": bed.pid1(h.index),
                            "boot_id": bed.boot_id(h.index),
                        }
                        for h in bed.hosts
                    ],
                    indent=1,
                )
            )
    except TestBedError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
