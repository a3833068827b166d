"""The performance figures P1-P11 (README "Performance"): `python3 dev.py bench` or `make bench`; see benchmarks/cli.py."""
