"""Pure views: a core module's data in, a rich renderable out (no I/O, no terminal needed).

Gathering and assessment stay in the core modules (swarmctl.status, .doctor,
.monitor); styles come from swarmctl.cli.terminal.
"""
