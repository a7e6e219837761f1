"""Chaos tests: a real swarm on test-bed hosts under random faults (see tests/chaos_engine)."""
