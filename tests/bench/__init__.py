"""Benchmarks: ``make bench`` runs :mod:`tests.bench.run`."""
