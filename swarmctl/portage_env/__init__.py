"""Running real portage (from PyPI) in self-contained prefixes."""
