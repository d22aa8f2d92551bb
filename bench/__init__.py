"""Benchmarks and long-running checks of threads-poller (not part of the installed package)."""
