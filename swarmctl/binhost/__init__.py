"""The binhost: verifies uploaded gpkg files, publishes them atomically, keeps ``Packages``."""
