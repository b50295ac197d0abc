"""Benchmark scenarios for tidings: ``python -m bench`` (see docs/benchmarks.md).

Everything runs on this machine and talks only to 127.0.0.1: an nginx receiver,
a hung TCP receiver, tidings itself as a subprocess, and the load generators.
Every loop is bounded in count and in time.
"""
