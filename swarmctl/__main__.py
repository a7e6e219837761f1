"""``python -m swarmctl``."""

from swarmctl.cli import main

main()
