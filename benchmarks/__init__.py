"""Benchmarks of issue 8 (P1-P7): `python3 dev.py bench` or `make bench`; see benchmarks/cli.py."""
